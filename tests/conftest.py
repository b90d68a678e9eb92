"""Shared fixtures: a temporary copy of the study (for end-to-end runs) and the repo root."""

from __future__ import annotations

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
