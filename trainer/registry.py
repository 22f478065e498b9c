"""The model registry: version folders under MIMIC_DATA_DIR/models/<target>/<version>/ and a
`model_versions` row for each. A folder is written under a temporary name and renamed into
place, and its row is added only after that, so a crash never leaves a half model behind.
"""

from __future__ import annotations

import json
import math
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import and_, bindparam, case, delete, exists, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from mimic.core.ids import is_slack_id
from mimic.core.store import Coverage, ModelVersion, Store
from mimic.trainer.corpus import BASE, Target
from mimic.trainer.lexicon import Lexicon, WordGuard
from mimic.trainer.model import CharLSTM, CheckpointError, Slots, load_model
from mimic.trainer.novelty import NoveltyIndex
from mimic.trainer.sampler import (
    DEDICATED_BOOST,
    DEDICATED_HEAT,
    DEFAULT_TEMPERATURE,
    END_ODDS,
    LONG_QUANTILE,
    Primer,
    Row,
    Voice,
    boost_for,
    contrast_net,
)
from mimic.trainer.vocab import Vocab
from mimic.trainer.wording import Wording

# A version folder's files (with config.json, metrics.json and loss.png for people to read).
WEIGHTS, NOVELTY, LEXICON, LENGTHS = "model.pt", "novelty.npy", "lexicon.txt", "lengths.json"
WORDING = "wording.npz"


class RegistryError(RuntimeError):
    pass


# What loading a version whose files are missing or damaged raises.
UNLOADABLE = (CheckpointError, RegistryError, OSError, ValueError)


class NotAllowed(RegistryError):
    """The target may no longer have a model (its person opted out while it trained)."""


def models_root(data_dir: Path) -> Path:
    return Path(data_dir) / "models"


def _inside(path: Path, data_dir: Path) -> Path:
    """`path`, if it lies inside the models folder; the registry writes and deletes nothing
    else, whatever an id or a row says."""
    root = models_root(data_dir).resolve()
    resolved = path.resolve()
    if resolved == root or not resolved.is_relative_to(root):
        raise RegistryError(f"{path} is not inside {models_root(data_dir)}: the registry "
                            "refuses to touch it.")
    return path


def target_dir(data_dir: Path, target: Target) -> Path:
    """The folder of a target's versions."""
    return _inside(models_root(data_dir) / target.dirname, data_dir)


def version_dir(data_dir: Path, row: ModelVersion) -> Path:
    """Where a version's files are. Rows hold paths relative to MIMIC_DATA_DIR, so the data
    folder can move (or be copied to another machine) without touching the registry."""
    return _inside(Path(data_dir) / row.path, data_dir)


@dataclass(frozen=True)
class LoadedModel:
    """A published version, ready to sample from: what the bot, `mimic sample` and
    `mimic eval` serve."""

    version_id: int
    version: int
    model: CharLSTM
    vocab: Vocab
    novelty: NoveltyIndex
    reference: CharLSTM | None = None  # what a dedicated model is drawn against
    slots: Slots = Slots()
    guard: WordGuard | None = None
    long_message: int = 0  # past this many characters a reply is drawn to an end (0: never)
    end_odds: float = END_ODDS  # the factor on the end mark's odds, fitted (trainer/lengths.py)
    # The LSTM states after reading recent contexts (bounded; shared by the bot's threads, and
    # with the shared model a dedicated one is drawn against, when loaded with it).
    primer: Primer = field(default=None, compare=False)  # type: ignore[assignment]
    # Each fitted person's own factor on end_odds (trainer/lengths.py): "user:U1" -> x.
    own_odds: Mapping[str, float] = field(default_factory=dict, compare=False)
    # ... and where their own long messages start, in place of long_message: "user:U1" -> chars.
    own_long: Mapping[str, int] = field(default_factory=dict, compare=False)
    # ... and the boost of those whose wording narrowed at the full one (trainer/lengths.py).
    own_boost: Mapping[str, float] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.primer is None:  # frozen: set once, here
            object.__setattr__(self, "primer", Primer(self.vocab))

    def prime(self, rows: Sequence[Row]) -> None:
        """Read the rows' contexts into the primer now, on the calling thread, for every net
        a draw steps (the model and what it is drawn against), all in one pass each."""
        contexts = [row.context for row in rows if row.context]
        nets = (self.model, contrast_net(self.model, self.reference))
        for net in {id(n): n for n in nets if n is not None}.values() if contexts else ():
            self.primer.read(net, contexts)

    def voice(self, target: str, where: str | None = None) -> Voice:
        """The slots to write as `target` ("user:U1", "channel:C1"), said in channel `where`:
        a person is drawn against anyone in the same channel, a channel against anyone
        anywhere."""
        kind, _, ident = target.partition(":")
        channel = self.slots.channel(where) if where else 0
        if kind == "user":
            return Voice(self.slots.person(ident), channel, (0, channel))
        if kind == "channel":
            return Voice(0, self.slots.channel(ident), (0, 0))
        return Voice()

    def row(self, target: str, *, seed_text: str = "", temperature: float = DEFAULT_TEMPERATURE,
            where: str | None = None, context: Sequence[tuple[str, str]] | None = None) -> Row:
        """A row to draw `target`'s next message, after `context` ((author id, text) pairs,
        oldest first, said in `where`), boosted as much as the model read of the target
        (`boost_for`, or its fitted `own_boost`; a dedicated model's with its own boost,
        hotter: see DEDICATED_BOOST),
        starting with a capital as often as the target's messages do (CASE_PRIOR)."""
        channel = self.slots.channel(where) if where else 0
        read = tuple((self.slots.person(author), channel, text)
                     for author, text in context or ())
        wording = self.guard.wording if self.guard is not None else None
        boost = self.own_boost.get(target)
        if boost is None:
            boost = boost_for(wording.count(target) if wording is not None else None)
        if self.reference is not None:
            boost, temperature = DEDICATED_BOOST, min(2.0, temperature * DEDICATED_HEAT)
        return Row(seed_text, temperature, self.voice(target, where), read,
                   self.own_long.get(target, self.long_message),
                   self.end_odds * self.own_odds.get(target, 1.0), boost, target,
                   (wording.capitals(target) or (0, 0)) if wording is not None else (0, 0))


@dataclass(frozen=True)
class Lengths:
    """How a version's replies are drawn to an end (LENGTHS): faster past `long_message`
    characters (the length LONG_QUANTILE of the workspace's messages stay within; 0: never),
    or past a fitted person's own (`own_long`), and at `end_odds` x the model's own odds of
    ending (fitted: trainer/lengths.py); and the lower boost fitted to a person whose wording
    narrowed at the full one (`own_boost`)."""

    long_message: int = 0
    end_odds: float = END_ODDS
    own_odds: Mapping[str, float] = field(default_factory=dict)  # "user:U1" -> x end_odds
    own_long: Mapping[str, int] = field(default_factory=dict)  # "user:U1" -> characters
    own_boost: Mapping[str, float] = field(default_factory=dict)  # "user:U1" -> boost


def save_lengths(path: Path, lengths: Lengths, fit: dict[str, Any] | None = None) -> None:
    """Write LENGTHS, with how `end_odds` was fitted for people to read."""
    path.write_text(json.dumps({"quantile": LONG_QUANTILE, "long_message": lengths.long_message,
                                "end_odds": lengths.end_odds, "own_odds": dict(lengths.own_odds),
                                "own_long": dict(lengths.own_long),
                                "own_boost": dict(lengths.own_boost),
                                **({"fit": fit} if fit else {})}))


def load_lengths(path: Path) -> Lengths:
    """What save_lengths wrote (ValueError if the file is not one). Versions trained before
    the end's odds were fitted have none: END_ODDS; before people's own long messages, none."""
    try:
        found = json.loads(path.read_text())
        long, odds = found["long_message"], found.get("end_odds", END_ODDS)
        own, own_long = dict(found.get("own_odds", {})), dict(found.get("own_long", {}))
        own_boost = dict(found.get("own_boost", {}))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path} is not a mimic lengths file ({exc})") from None
    for name, value in [("long_message", long), *((f"own_long[{k!r}]", v)
                                                  for k, v in own_long.items())]:
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{path}: {name} must be a whole number >= 0, not {value!r}")
    for name, value in [("end_odds", odds), *((f"own_odds[{k!r}]", v) for k, v in own.items()),
                        *((f"own_boost[{k!r}]", v) for k, v in own_boost.items())]:
        if (not isinstance(value, int | float) or isinstance(value, bool)
                or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{path}: {name} must be a number > 0, not {value!r}")
    for name, keys in [("own_odds", own), ("own_long", own_long), ("own_boost", own_boost)]:
        for key in keys:
            if not (isinstance(key, str) and key.startswith("user:") and is_slack_id(key[5:])):
                raise ValueError(f"{path}: {name} are kept by person (\"user:U…\"), not {key!r}")
    return Lengths(long, float(odds), {key: float(value) for key, value in own.items()},
                   own_long, {key: float(value) for key, value in own_boost.items()})


def load_version(data_dir: Path, row: ModelVersion, device: torch.device | str = "cpu",
                 parent: ModelVersion | None = None, shared: LoadedModel | None = None
                 ) -> LoadedModel:
    """A version ready to serve. A dedicated model comes with its `parent` (the shared model it
    was fine-tuned from) as the reference it is drawn against, when that still loads and
    shares its vocabulary, and with the workspace's lexicon and message lengths from whichever
    of the two has them. With `shared`, the parent already loaded (the bot's cache), its net,
    word guard, lengths and primer are used rather than copies: the bot then writes the
    dedicated model's replies in the shared model's batch (bot/batching.py)."""
    folder = version_dir(data_dir, row)
    model, vocab, slots = load_model(folder / WEIGHTS, device)
    if vocab is None:
        raise RegistryError(f"{folder / WEIGHTS} has no vocabulary")
    reference, lexicons, lengths = None, [folder / LEXICON], [folder / LENGTHS]
    wordings = [folder / WORDING]
    parent_guard, parent_lengths, primer = None, Lengths(), None
    if shared is not None and row.target != "base" and shared.vocab == vocab:
        reference, parent_guard, primer = shared.model, shared.guard, shared.primer
        parent_lengths = Lengths(shared.long_message, shared.end_odds, shared.own_odds,
                                 shared.own_long, shared.own_boost)
    elif parent is not None and row.target != "base":
        try:
            net, parent_vocab, _slots = load_model(version_dir(data_dir, parent) / WEIGHTS,
                                                   device)
            reference = net if parent_vocab == vocab else None
            lexicons.append(version_dir(data_dir, parent) / LEXICON)
            lengths.append(version_dir(data_dir, parent) / LENGTHS)
            wordings.append(version_dir(data_dir, parent) / WORDING)
        except CheckpointError:  # a deleted or broken base: serve plainly, not not at all
            reference = None
    lexicon = next((Lexicon.load(p) for p in lexicons if p.exists()), None)
    found = next((load_lengths(p) for p in lengths if p.exists()), parent_lengths)
    # Versions from before words were counted have none: their replies weigh no words.
    wording = next((Wording.load(p) for p in wordings if p.exists()), None)
    return LoadedModel(row.id, row.version, model, vocab, NoveltyIndex.load(folder / NOVELTY),
                       reference, slots,
                       WordGuard(lexicon, vocab, wording) if lexicon is not None
                       else parent_guard, found.long_message, found.end_odds, primer,
                       found.own_odds, found.own_long, found.own_boost)


def load_served(data_dir: Path, found: Serving, device: torch.device | str, label: str
                 ) -> LoadedModel:
    """`found`'s version loaded, or a RegistryError that names it and what to do (the
    shell's commands; the bot serves the version before instead: bot/replies.py)."""
    try:
        return load_version(data_dir, found.row, device, found.parent)
    except UNLOADABLE as exc:
        if found.row.target == BASE.key:
            which, fix, arg = "the workspace model", "`mimic train --base`", "base"
        else:  # it also reads the workspace model's lexicon and lengths
            which, arg = f"{label}'s own model", label
            fix = f"`mimic train {label}`, or `mimic train --base` if the file is the workspace's"
        raise RegistryError(f"{which} v{found.row.version} does not load ({exc}). Retrain it "
                            f"({fix}) or go back to the version before (`mimic rollback "
                            f"{arg}`).") from None


def parent_of(session: Session, row: ModelVersion) -> ModelVersion | None:
    """The base version `row` was fine-tuned from (whatever its status now)."""
    parent = session.get(ModelVersion, row.parent_id) if row.parent_id else None
    if parent is not None:
        session.expunge(parent)
    return parent


@dataclass(frozen=True)
class Serving:
    """Which version imitates a target: `row` (with `parent`, what it is drawn against), and
    the active shared model's coverage row for the target, if it has one."""

    row: ModelVersion
    parent: ModelVersion | None
    coverage: Coverage | None


# The active versions of a target and of the shared model, each with its coverage of the
# target, in one statement built once: the bot asks on every request, and three statements
# built each time cost 1.4 ms of interpreter time a request (BENCHMARKS.md, fourteenth session).
_SERVING = (select(ModelVersion, Coverage)
            .outerjoin(Coverage, and_(Coverage.version_id == ModelVersion.id,
                                      Coverage.target == bindparam("key")))
            .where(ModelVersion.status == "active",
                   or_(ModelVersion.target == bindparam("key"),
                       ModelVersion.target == bindparam("shared"))))


def serving(session: Session, target: Target) -> Serving | None:
    """The target's dedicated model when one is active and does at least as well on its
    held-out messages as the shared model, else the shared model if it has a vector for the
    target; None when neither imitates it (the shared model for the workspace itself).
    Rows come detached from the session."""
    found = session.execute(_SERVING, {"key": target.key, "shared": BASE.key}).all()
    shared, cover = next(((version, cover) for version, cover in found
                          if version.target == BASE.key), (None, None))
    if target == BASE:  # the shared model itself, in nobody's particular voice
        if shared is not None:
            session.expunge(shared)
        return None if shared is None else Serving(shared, None, None)
    dedicated = next((version for version, _ in found if version.target == target.key), None)
    for row in (dedicated, shared, cover):
        if row is not None:
            session.expunge(row)
    if dedicated is not None and (cover is None or cover.val_loss is None
                                  or dedicated.val_loss <= cover.val_loss):
        parent = session.get(ModelVersion, dedicated.parent_id) if dedicated.parent_id else None
        if parent is not None:
            session.expunge(parent)
        return Serving(dedicated, parent, cover)
    if shared is not None and cover is not None:
        return Serving(shared, None, cover)
    return None


def _retired_before(session: Session, target_key: str, version: int) -> ModelVersion | None:
    """The newest retired version of `target_key` older than `version`: what was active
    before it."""
    return session.scalars(
        select(ModelVersion).where(ModelVersion.target == target_key,
                                   ModelVersion.version < version,
                                   ModelVersion.status == "retired")
        .order_by(ModelVersion.version.desc())).first()


def fallback(session: Session, broken: ModelVersion, target: Target) -> Serving | None:
    """What serves `target` while version `broken` does not load: the version of the same
    model that was active before it (one that still imitates the target). Detached rows."""
    previous = _retired_before(session, broken.target, broken.version)
    if previous is None:
        return None
    cover = session.get(Coverage, (previous.id, target.key))
    if previous.target == BASE.key and cover is None:
        return None
    parent = session.get(ModelVersion, previous.parent_id) if previous.parent_id else None
    for row in (previous, parent, cover):
        if row is not None:
            session.expunge(row)
    return Serving(previous, parent if previous.target != BASE.key else None, cover)


def active_version(session: Session, target_key: str) -> ModelVersion | None:
    return session.scalars(select(ModelVersion).where(
        ModelVersion.target == target_key, ModelVersion.status == "active")).first()


def versions(session: Session, target_key: str | None = None) -> list[ModelVersion]:
    query = select(ModelVersion).order_by(ModelVersion.target, ModelVersion.version)
    if target_key is not None:
        query = query.where(ModelVersion.target == target_key)
    return list(session.scalars(query))


def publish(
    store: Store,
    data_dir: Path,
    target: Target,
    write: Callable[[Path], None],
    verify: Callable[[Path], None],
    row: dict[str, Any],
    promote: bool,
    allowed: Callable[[Session], bool] = lambda _session: True,
    coverage: Sequence[dict[str, Any]] = (),
) -> ModelVersion:
    """Write a new version's files, check they load, add its row, and make it the active one
    if `promote`; otherwise it is 'kept' (or 'failed' if it would not load: never promoted).

    `write(folder)` fills the folder; `verify(folder)` raises if the model cannot be loaded;
    `allowed(session)` is asked at the last moment, in the transaction that would promote:
    False (the person opted out meanwhile) deletes the version and raises NotAllowed.
    `coverage`: a shared model's rows of who it imitates (see mimic.core.store.Coverage); the
    people who opted out meanwhile are left out.
    The version number is reserved (a row) before its folder is moved into place, so two
    trainers never write the same folder, and only a folder no row owns is cleared.
    """
    root = target_dir(data_dir, target)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f".tmp-{uuid.uuid4().hex}"
    staging.mkdir()
    try:
        try:
            write(staging)
        except OSError:
            with store.session() as session:
                if not allowed(session):  # opting out deleted the folder being written
                    raise NotAllowed(f"{target.label} opted out while the model was "
                                     "training; nothing was published.") from None
            raise
        try:
            verify(staging)
            status = "candidate"
        except Exception:  # noqa: BLE001 - any load failure means: never promote
            status = "failed"
        number, version_id = _reserve(store, data_dir, target, row, allowed)
        final = root / str(number)
        if final.exists():  # left by a crash, or by a deleted target: no row owns it
            shutil.rmtree(final)
        staging.rename(final)
        with store.session() as session:
            version = session.get(ModelVersion, version_id)
            refused = version is None or not allowed(session)
            if refused:  # (opting out may have deleted the row already)
                session.execute(delete(ModelVersion).where(ModelVersion.id == version_id))
            elif status == "candidate":
                opted_out = Store.opted_out_ids(session)
                session.add_all(Coverage(version_id=version_id, **c) for c in coverage
                                if c["target"].removeprefix("user:") not in opted_out)
                if promote:
                    # Two trainers finishing at once leave the newer version active, whichever
                    # commits first: older ones are retired, and this one is retired at once
                    # if a newer one is active already (each one statement).
                    newer = aliased(ModelVersion)
                    session.execute(update(ModelVersion).where(
                        ModelVersion.target == target.key, ModelVersion.status == "active",
                        ModelVersion.version < number).values(status="retired"))
                    session.execute(update(ModelVersion).where(ModelVersion.id == version_id)
                                    .values(status=case((exists().where(
                                        newer.target == target.key, newer.status == "active",
                                        newer.version > number), "retired"), else_="active"))
                                    .execution_options(synchronize_session=False))
                    session.refresh(version)
                else:
                    version.status = "kept"
        if refused:
            shutil.rmtree(final, ignore_errors=True)
            raise NotAllowed(f"{target.label} opted out while the model was training; it "
                             "was deleted, not published.")
        assert version is not None
        return version
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _reserve(store: Store, data_dir: Path, target: Target, row: dict[str, Any],
             allowed: Callable[[Session], bool], tries: int = 20) -> tuple[int, int]:
    """Take the next version number with a row ('failed' until the files are in place, so
    a crash in between leaves nothing servable); returns (number, row id). Two trainers
    racing for a number: the unique key refuses one, which takes the next."""
    for _ in range(tries):
        try:
            with store.session() as session:
                if not allowed(session):
                    raise NotAllowed(f"{target.label} opted out while the model was "
                                     "training; nothing was published.")
                number = (session.scalar(select(func.max(ModelVersion.version))
                                         .where(ModelVersion.target == target.key)) or 0) + 1
                path = (target_dir(data_dir, target) / str(number)).relative_to(data_dir)
                version = ModelVersion(target=target.key, version=number, path=path.as_posix(),
                                       status="failed", **row)
                session.add(version)
                session.flush()
                return number, version.id
        except IntegrityError:
            continue
    raise RegistryError(f"could not reserve a version number for {target.label}: too many "
                        "trainers at once")


def rollback(store: Store, target: Target) -> tuple[ModelVersion, ModelVersion]:
    """Re-activate the version that was active before this one (never a 'kept' or 'failed'
    one); returns (now active, was active)."""
    with store.session() as session:
        active = active_version(session, target.key)
        if active is None:
            raise RegistryError(f"{target.label} has no active model to roll back from.")
        previous = _retired_before(session, target.key, active.version)
        if previous is None:
            raise RegistryError(f"{target.label} has no earlier working version than "
                                f"v{active.version}.")
        active.status, previous.status = "retired", "active"
        return previous, active


def delete_target(store: Store, data_dir: Path, target: Target) -> int:
    """Remove every version of a target, files and rows; returns how many were removed."""
    folder = target_dir(data_dir, target)
    with store.session() as session:
        rows = versions(session, target.key)
        for row in rows:
            session.delete(row)
    shutil.rmtree(folder, ignore_errors=True)
    return len(rows)
