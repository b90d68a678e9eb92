"""Shared fixtures: a temporary copy of the study (for end-to-end runs) and the repo root."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def copy_study(dest: Path) -> Path:
    """Copy the files git would check out (tracked + untracked, not ignored) into `dest`: a fresh clone."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def taskstudy(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """Run the CLI as a user would, in a real process."""
    proc = subprocess.run([str(BIN / "taskstudy"), *args], cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"taskstudy {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# `make test` runs the suite on pytest-xdist workers (`-n auto --dist loadgroup`): the tests that share a costly
# fixture (the built smoke study; the reliability module's reference runs and cluster) stay on one worker, so each
# fixture is built once, while the other worker runs the rest beside them.
GROUPS = {"built_study": "built_study", "reference": "reliability", "after_02": "reliability",
          "cli_cluster": "reliability"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        group = next((g for f, g in GROUPS.items() if f in getattr(item, "fixturenames", ())), None)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per core, at most four (two groups hold the long end-to-end tests)."""
    return max(1, min(4, os.cpu_count() or 1))


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker, torch's threads share the cores with the other workers (no oversubscription)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


@pytest.fixture
def study(tmp_path: Path) -> Path:
    return copy_study(tmp_path / "study")


@pytest.fixture
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def built_study(tmp_path_factory) -> Path:
    """A fresh copy of the study with every chapter run on smoke params and the book built (shared, read-only)."""
    study = copy_study(tmp_path_factory.mktemp("built") / "study")
    taskstudy("run", "--params", "params/smoke.yaml", "--quiet", cwd=study)
    taskstudy("book", cwd=study)
    return study
