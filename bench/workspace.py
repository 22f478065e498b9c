"""The chitchat demo workspace, built and imported through `mimic import`'s own code into a
bench folder (reused on the next run: the import is idempotent)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path

import torch

from mimic.core.config import Settings
from mimic.core.store import Store, make_engine, upgrade
from mimic.exporter.demo_data import build_demo_export
from mimic.exporter.importer import import_export


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():  # the model, not just "x86_64": figures differ a lot between them
        found = dict(line.split(":", 1) for line in cpuinfo.read_text().split("\n\n")[0]
                     .splitlines() if ":" in line)
        found = {key.strip(): value.strip() for key, value in found.items()}
        # A VM may name only the family ("AMD EPYC"): its cache and vector width tell apart
        # hosts whose speeds differed ~5x a request (BENCHMARKS.md, sixteenth session).
        avx = next((f for f in ("avx512f", "avx2") if f in found.get("flags", "").split()), "")
        cache = found.get("cache size")
        extra = ", ".join(x for x in (cache and f"{cache} cache", avx.upper()[:6]) if x)
        cpu = found.get("model name", cpu) + (f" ({extra})" if extra else "")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} CPUs{gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def imported(folder: Path, export_name: str, build: Callable[[Path], object],
             refresh: bool = True, **settings: object) -> tuple[Store, Settings]:
    """(store, settings) of a workspace kept in `folder`; `refresh` builds its export ZIP
    with `build` if missing and imports it through `mimic import`'s code (a no-op once
    done)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = Settings(_env_file=None, DATABASE_URL=f"sqlite:///{folder}/mimic.db",
                      MIMIC_DATA_DIR=str(folder), **settings)
    engine = make_engine(config.database_url)
    upgrade(engine)
    store = Store(engine)
    if not refresh:
        return store, config
    export = folder / export_name
    if not export.exists():
        build(export)
    import_export(store, export)
    return store, config


def chitchat(folder: Path, refresh: bool = True, **settings: object) -> tuple[Store, Settings]:
    """(store, settings) of the chitchat workspace kept in `folder`."""
    return imported(folder, "chitchat-export.zip", build_demo_export, refresh, **settings)


def copied_to(store: Store, database_url: str) -> Store:
    """`store`'s rows, every table, copied into the empty database at `database_url` (for
    benchmarks of a PostgreSQL deployment over a workspace imported and trained on SQLite).
    Model files stay where they are: rows hold paths relative to MIMIC_DATA_DIR."""
    from sqlalchemy import select, text

    from mimic.core.store import Base

    target = Store(make_engine(database_url))
    upgrade(target.engine)
    with store.engine.connect() as source, target.session() as session:
        for table in Base.metadata.sorted_tables:
            rows = source.execute(select(table)).mappings()
            while chunk := rows.fetchmany(5000):
                session.execute(table.insert(), [dict(row) for row in chunk])
            serial = "id" in table.c and table.c.id.autoincrement is True
            if serial and target.dialect == "postgresql":  # new rows go on after the copies
                session.execute(text(f"SELECT setval(pg_get_serial_sequence('{table.name}', "
                                     f"'id'), coalesce(max(id), 0) + 1, false) FROM {table}"))
    return target
