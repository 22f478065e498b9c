"""What `pip install .` ships: one `mimic` package (no generic top-level `bot` or `trainer` in
users' site-packages) with its migrations, working from a fresh environment."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.slack_export import KEPT, write_export, zip_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_built_wheel_installs_and_runs_init_and_import(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("mimic-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"mimic", wheel.name.split("-py")[0]
                                                + ".dist-info"}
    for shipped in ("mimic/cli.py", "mimic/core/store.py", "mimic/bot/app.py",
                    "mimic/trainer/model.py", "mimic/exporter/importer.py",
                    "mimic/migrations/env.py", "mimic/migrations/script.py.mako",
                    "mimic/migrations/versions/0001_initial.py"):
        assert shipped in names

    # A fresh environment: mimic only from the wheel; its dependencies (torch among them)
    # borrowed from this one rather than downloaded again.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True,
                   timeout=300)
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "borrowed.pth").write_text(sysconfig.get_paths()["purelib"])

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{work}/m.db", "COLUMNS": "200",
           "PYTHONPATH": ""}
    where = subprocess.run([python, "-c", "import mimic.core.store as s; print(s.__file__); "
                            "print(s.ALEMBIC_DIR)"], cwd=work, env=env, capture_output=True,
                           text=True, check=True).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where
    export = zip_folder(write_export(tmp_path / "export"), tmp_path / "export.zip")
    for args in (["init"], ["import", str(export)]):
        done = subprocess.run([str(venv / "bin" / "mimic"), *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    assert f"{KEPT} new or edited messages" in done.stdout
