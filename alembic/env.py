"""Alembic environment: `mimic init` passes its engine in; the `alembic` CLI reads settings."""

from alembic import context
from mimic.core.store import Base, make_engine

config = context.config
engine = config.attributes.get("engine")
if engine is None:
    from mimic.core.config import get_settings

    engine = make_engine(get_settings().database_url)

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
