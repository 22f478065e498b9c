"""The store: SQLAlchemy models of the workspace, the engine, and idempotent writes.

Schema changes go through Alembic (`alembic/versions`); `mimic init` brings a database to head
and every other command calls `open_store`, which refuses a database that is behind.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from operator import itemgetter
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

# The migrations: the top-level alembic/ folder of a checkout, or mimic/migrations installed.
_ABOVE = Path(__file__).resolve().parent.parent
ALEMBIC_DIR = next((p for p in (_ABOVE / "alembic", _ABOVE / "migrations") if p.is_dir()),
                   _ABOVE / "migrations")


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))  # the handle: @name
    display_name: Mapped[str] = mapped_column(String(255), default="")
    real_name: Mapped[str] = mapped_column(String(255), default="")
    is_bot: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    opted_out: Mapped[bool] = mapped_column(Boolean, default=False)
    # Only consulted when MIMIC_CONSENT=opt-in: nobody is learned from until they say yes.
    opted_in: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Channel(Base):
    __tablename__ = "channels"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    is_private: Mapped[bool] = mapped_column(Boolean, default=False)
    is_archived: Mapped[bool] = mapped_column(Boolean, default=False)
    # Direct and group messages: stored only with --include-dms, never trained on.
    is_dm: Mapped[bool] = mapped_column(Boolean, default=False)


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel_id", "ts", name="uq_messages_channel_ts"),
        Index("ix_messages_user_ts", "user_id", "ts"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    channel_id: Mapped[str] = mapped_column(ForeignKey("channels.id", ondelete="CASCADE"))
    # Slack timestamps ("1512085950.000216") are kept as text: they are ids, and float loses digits.
    ts: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    text_raw: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)  # normalised: markup resolved, entities unescaped
    thread_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    subtype: Mapped[str | None] = mapped_column(String(64), nullable=True)
    edited_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)


class Watermark(Base):
    """How far a channel's history has been exported through the Web API.

    Everything at or before `done_ts` is stored. A run walks backwards from the newest message
    to `done_ts`; while it does, `pending_high` is the newest ts of the run and `pending_low` the
    oldest ts stored so far, so a killed run resumes below `pending_low` instead of starting over.
    """

    __tablename__ = "watermarks"

    channel_id: Mapped[str] = mapped_column(
        ForeignKey("channels.id", ondelete="CASCADE"), primary_key=True
    )
    done_ts: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pending_high: Mapped[str | None] = mapped_column(String(32), nullable=True)
    pending_low: Mapped[str | None] = mapped_column(String(32), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    """One import or export: when, from where, and what it counted."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # "import" | "export"
    source: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ModelVersion(Base):
    """One trained model in the registry; its files live under MIMIC_DATA_DIR/models/."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("target", "version", name="uq_model_versions_target"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # "base", "user:U123" or "channel:C123": ids, so a rename keeps the model.
    target: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"), nullable=True)
    data_watermark: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # Digest of the exact corpus: edits, deletions and opt-outs change it, not just new messages.
    data_digest: Mapped[str] = mapped_column(String(64))
    chars_trained: Mapped[int] = mapped_column(Integer)
    val_loss: Mapped[float] = mapped_column(Float)
    device: Mapped[str] = mapped_column(String(32))
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # candidate → active | kept (worse than active) | failed (did not load); active → retired
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    path: Mapped[str] = mapped_column(Text)


class Coverage(Base):
    """A person or public channel a shared (conditioned) model has a vector for: who it can
    imitate, and how well (loss on their held-out messages with their vector and with the
    "anyone" vector: the gap is what the vector knows of them)."""

    __tablename__ = "model_coverage"

    version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    target: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    slot: Mapped[int] = mapped_column(Integer)
    chars: Mapped[int] = mapped_column(Integer)  # eligible characters when it was trained
    val_chars: Mapped[int] = mapped_column(Integer)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss_anyone: Mapped[float | None] = mapped_column(Float, nullable=True)


class RateLimitHit(Base):
    """A request counted against its person's rate limit (PostgreSQL deployments: every
    replica counts in one place). Rows older than a minute are deleted as the person asks
    again."""

    __tablename__ = "rate_limit_hits"
    __table_args__ = (Index("ix_rate_limit_hits_user_at", "user_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class SchemaError(RuntimeError):
    """The database is missing or behind the code's migrations."""


def _sqlite_pragmas(dbapi_connection: Any, _record: Any, busy_timeout_s: float = 30) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # WAL + NORMAL is durable against process crashes (only an OS crash can lose the last commit).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB: bulk imports touch big indexes
    cursor.close()


# PostgreSQL connections a process keeps open, and the most it opens. SQLAlchemy's default
# keeps 5 and opens 10 more for a burst, closing each extra one as it comes back: every burst
# of concurrent commands connected afresh, and the server started a process for each (half a
# connection a /mimic request, ~3.5 ms of the server's CPU: bench/replicas.py). SQLite's
# connections are cheap to open, and each one kept keeps its page cache: it keeps SQLAlchemy's
# default. Locks take connections of their own (core/lock.py).
POOL_SIZE = 15


def make_engine(database_url: str, *, busy_timeout_s: float = 30) -> Engine:
    """The engine for DATABASE_URL. On SQLite a writer waits up to `busy_timeout_s` for
    another's transaction before "database is locked"."""
    url = make_url(database_url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url)
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas,
                                                         busy_timeout_s=busy_timeout_s))
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=POOL_SIZE, max_overflow=0)


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(ALEMBIC_DIR))
    config.attributes["engine"] = engine
    return config


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(ALEMBIC_DIR)).get_current_head() or ""


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine) -> tuple[str | None, str]:
    """Bring the database to the newest migration; returns (before, after)."""
    from alembic import command

    before = current_revision(engine)
    command.upgrade(_alembic_config(engine), "head")
    return before, head_revision()


def check_schema(engine: Engine) -> None:
    current, head = current_revision(engine), head_revision()
    if current != head:
        state = "has no mimic tables" if current is None else f"is at revision {current}"
        raise SchemaError(
            f"The database {engine.url.render_as_string(hide_password=True)} {state}, "
            f"but this version of mimic needs {head}. Run `mimic init` to bring it up to date."
        )


class Store:
    """An engine plus a session factory; `with store.session() as s:` is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    # -- idempotent writes shared by the importer, the Web API exporter and live ingestion --

    @staticmethod
    def opted_out_ids(session: Session) -> set[str]:
        """People who opted out: nothing they write is stored again (imports, exports and
        events all skip them), so `forget` stays forgotten."""
        return set(session.scalars(select(User.id).where(User.opted_out)))

    def _insert(self, table: Any) -> Any:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def upsert_users(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or refresh users; never touches `opted_out`, which only the person changes."""
        if not rows:
            return
        stmt = self._insert(User.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={c: stmt.excluded[c] for c in ("name", "display_name", "real_name",
                                                 "is_bot", "deleted")},
        )
        for chunk in _chunks(list(_dedupe(rows, ("id",))), 2000):
            session.execute(stmt, chunk)

    def ensure_users(self, session: Session, ids: Iterable[str]) -> None:
        """Create placeholder rows for authors a user list did not name (left the workspace)."""
        rows = [{"id": uid, "name": uid, "display_name": "", "real_name": "", "is_bot": False,
                 "deleted": True, "opted_out": False} for uid in set(ids)]
        if rows:
            stmt = self._insert(User.__table__).on_conflict_do_nothing(index_elements=["id"])
            for chunk in _chunks(rows, 2000):
                session.execute(stmt, chunk)

    def upsert_channels(self, session: Session, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        stmt = self._insert(Channel.__table__)
        stmt = stmt.on_conflict_do_update(
            index_elements=["id"],
            set_={c: stmt.excluded[c] for c in ("name", "is_private", "is_archived", "is_dm")},
        )
        session.execute(stmt, list(_dedupe(rows, ("id",))))

    def upsert_messages(self, session: Session, rows: Sequence[dict[str, Any]]) -> int:
        """Insert new messages and update those with a newer edit or newly deleted; returns
        how many rows were written. Re-running with the same rows writes nothing, and an old
        copy arriving late (events can come out of order) never overwrites a newer edit.

        Rows need every Message column but `id`. Comparing against what is stored first keeps
        a re-import cheap, and lets new rows take a plain insert.
        """
        unique = list(_dedupe(rows, ("channel_id", "ts")))
        if not unique:
            return 0
        key = itemgetter("channel_id", "ts")
        channels = {r["channel_id"] for r in unique}
        # Core rows through the connection: ORM row processing doubled the cost here.
        stored = {(c, ts): (edited, bool(deleted)) for c, ts, edited, deleted in
                  session.connection().execute(
            select(Message.channel_id, Message.ts, Message.edited_ts, Message.deleted)
            .where(Message.channel_id.in_(channels)))}
        new = sorted((r for r in unique if key(r) not in stored), key=key)
        changed = [r for r in unique if key(r) in stored and _newer(r, *stored[key(r)])]
        table = Message.__table__
        if changed:
            stmt = self._insert(table)
            stmt = stmt.on_conflict_do_update(
                index_elements=["channel_id", "ts"],
                set_={c: stmt.excluded[c] for c in MESSAGE_FIELDS if c not in ("channel_id", "ts")})
            for chunk in _chunks(changed, 5000):
                session.execute(stmt, chunk)
        if new:
            self._insert_many(session, new)
        return len(new) + len(changed)

    def _insert_many(self, session: Session, rows: list[dict[str, Any]]) -> None:
        # Imports bring hundreds of thousands of rows: on SQLite hand plain tuples to the
        # driver's executemany (SQLAlchemy's per-row parameter processing cost more than the
        # insert itself).
        stmt = self._insert(Message.__table__).on_conflict_do_nothing(
            index_elements=["channel_id", "ts"])
        if self.dialect != "sqlite":
            for chunk in _chunks(rows, 5000):
                session.execute(stmt, chunk)
            return
        compiled = stmt.compile(dialect=self.engine.dialect, column_keys=list(MESSAGE_FIELDS))
        session.connection().exec_driver_sql(
            str(compiled), list(map(itemgetter(*compiled.positiontup or ()), rows)))

    @contextmanager
    def deferred_indexes(self, session: Session) -> Iterator[None]:
        """For bulk writes on SQLite: drop the secondary message index and build it once at
        the end, inside the same transaction (so a failed import restores it too)."""
        if self.dialect != "sqlite":
            yield
            return
        conn = session.connection()
        # Python's sqlite3 opens a transaction only before INSERT/UPDATE/DELETE: a DROP INDEX
        # ahead of those would run on its own, committed, and survive a failed import.
        if not conn.connection.driver_connection.in_transaction:
            conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("DROP INDEX IF EXISTS ix_messages_user_ts")
        yield
        conn.exec_driver_sql("CREATE INDEX ix_messages_user_ts ON messages (user_id, ts)")


MESSAGE_FIELDS = ("channel_id", "ts", "user_id", "text_raw", "text", "thread_ts", "subtype",
                  "edited_ts", "deleted")


def _newer(row: dict[str, Any], edited_ts: str | None, deleted: bool) -> bool:
    if row["deleted"] != deleted:
        return bool(row["deleted"])  # deletion is final: a late copy does not revive it
    return float(row["edited_ts"] or 0) > float(edited_ts or 0)


def _dedupe(rows: Iterable[dict[str, Any]], key: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Last row wins: one statement may not touch the same key twice (PostgreSQL refuses)."""
    get = itemgetter(*key)
    return iter({get(r): r for r in rows}.values())


def _chunks(rows: list[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def open_store(database_url: str, *, check: bool = True) -> Store:
    store = Store(make_engine(database_url))
    if check:
        check_schema(store.engine)
    return store
