"""`mimic demo` end to end on a slice of the chitchat data, and the README's promises: the two
commands at its top exist, and CI runs the test one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import select

from mimic.core.store import Coverage, ModelVersion, Store, make_engine
from mimic.trainer.sampler import DEFAULT_TEMPERATURE

ROOT = Path(__file__).resolve().parent.parent


def run_demo(folder: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160", "MIMIC_DEVICE": "cpu"}
    return subprocess.run([sys.executable, "-m", "mimic.cli", "demo", "--minutes", "0.3",
                           "--limit", "400", "--folder", str(folder)],
                          cwd=cwd, env=env, text=True, capture_output=True, timeout=300)


@pytest.mark.slow
def test_demo_runs_the_whole_loop_then_reuses_it(tmp_path: Path) -> None:
    folder = tmp_path / "demo"
    first = run_demo(folder, tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = first.stdout
    for step in ("mimic import", "mimic train", "what Slack shows"):
        assert step in out
    # Every reply shown went through the Slack app's own handler: generated ones are labelled
    # with the model version that wrote them, and the error cases explain themselves.
    replies = re.findall(r"mimicking [@#]\u2060?(\S+) · temp ([\d.]+) · the workspace model "
                         r"v(\d+)", out)
    assert len(replies) >= 2 and any(
        temp == f"{DEFAULT_TEMPERATURE:g}" for _, temp, _ in replies)
    assert "Temperature 5 is out of range" in out
    assert "No channel called #secret-plans" in out  # the private channel stays hidden
    assert "I can mimic" in out and "Connecting a real workspace" in out
    # Two voices taking turns, and a mention answered in its thread after reading it.
    assert "a conversation between" in out
    thread = out[out.index("· a thread"):]
    assert "you: @mimic be @" in thread and "mimicking @" in thread
    # Someone with only a few messages is imitated too: one vector in the shared model.
    few = re.search(r"@(\S+) has written only ([\d,]+) characters", out)
    assert few and int(few.group(2).replace(",", "")) < 5_000
    assert any(handle == few.group(1) for handle, _temp, _v in replies)

    store = Store(make_engine(f"sqlite:///{folder}/mimic.db"))
    with store.session() as session:
        active = session.scalars(select(ModelVersion).where(ModelVersion.status == "active"))
        targets = {row.target: row for row in active}
        covered = session.scalars(select(Coverage.target)).all()
    assert set(targets) == {"base"} and len(covered) >= 10
    assert (folder / targets["base"].path / "model.pt").is_file()
    for _handle, _temp, version in replies:
        assert int(version) == targets["base"].version
    store.engine.dispose()

    again = run_demo(folder, tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "trained already" in again.stdout and "(0 new)" in again.stdout
    store = Store(make_engine(f"sqlite:///{folder}/mimic.db"))
    with store.session() as session:
        assert len(session.scalars(select(ModelVersion)).all()) == len(targets)
    store.engine.dispose()


def test_readme_opens_with_the_two_commands_and_they_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)\n(.*?)```", readme, re.S)
    assert first_block and readme.index(first_block.group(0)) < 200, "commands at the top"
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert commands[:2] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    for command in commands[:2]:
        target = command.split()[1]
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no {target} target"
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "make test" in ci, ".ci/run must run exactly the README's test command"
    # Every setting .env.example lists is documented in the README's table.
    settings = re.findall(r"^#?\s*([A-Z][A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M)
    assert settings and all(f"`{name}`" in readme for name in settings)
