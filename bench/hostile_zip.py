"""A decompression bomb against `mimic import`: how fast is it refused, and what does it cost?

Builds a ZIP of the hand-built test export plus one day file that unpacks to 400 MB (a JSON
list of spaces: it packs to about 400 KB), then imports it into a fresh store and prints the
time to the refusal and the growth of the process's peak memory. Goal (issue 11): refused in
under a second, memory growth under 100 MB (it was 2.1 GB, and a 400 MB message stored).

    .venv/bin/python -m bench.hostile_zip
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
import zipfile
from pathlib import Path

from bench.workspace import machine
from mimic.core.store import Store, make_engine, upgrade
from mimic.exporter.importer import BadExportError, import_export
from tests.slack_export import write_export

DAY = "general/2020-09-20.json"


def bomb(folder: Path, megabytes: int) -> Path:
    """The export as a ZIP, with DAY unpacking to `megabytes` MB, written 1 MB at a time."""
    source = write_export(folder / "export")
    path = folder / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(source).as_posix())
        with zf.open(DAY, "w", force_zip64=True) as day:
            day.write(b"[")
            for _ in range(megabytes):
                day.write(b" " * 2**20)
            day.write(b"]")
    return path


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--megabytes", type=int, default=400, help="the day file's size unpacked")
    args = p.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = bomb(folder, args.megabytes)
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(DAY)
        print(f"{path.name}: {path.stat().st_size / 1024:,.0f} KB; {DAY} unpacks to "
              f"{info.file_size / 2**20:,.0f} MB")
        engine = make_engine(f"sqlite:///{folder}/m.db")
        upgrade(engine)
        store = Store(engine)
        before = peak_mb()
        start = time.perf_counter()
        try:
            import_export(store, path)
            verdict = "IMPORTED (the limit did not hold)"
        except BadExportError as exc:
            verdict = f"refused: {exc}"
        seconds = time.perf_counter() - start
        growth = peak_mb() - before
        engine.dispose()
    print(verdict)
    print(f"time to the answer: {seconds:.3f} s (goal < 1 s); peak memory growth: "
          f"{growth:.1f} MB (goal < 100 MB)")


if __name__ == "__main__":
    main()
