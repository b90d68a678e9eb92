"""Where the study lives on disk: the repository root, its notebooks, params and results folders."""

from __future__ import annotations

import os
from pathlib import Path

MARKERS = ("_config.yml", "notebooks", "params")


class RootNotFound(RuntimeError):
    """Raised when no study folder is found from the current directory upwards."""


def find_root(start: Path | None = None) -> Path:
    """The study root: $TASKSTUDY_ROOT, else the first folder from `start` (cwd) upwards holding
    `_config.yml`, `notebooks/` and `params/`, else the checkout this package was installed from."""
    env = os.environ.get("TASKSTUDY_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).exists() for m in MARKERS):
            return folder
    installed = Path(__file__).resolve().parents[2]
    if all((installed / m).exists() for m in MARKERS):
        return installed
    raise RootNotFound(f"no taskstudy folder (with {', '.join(MARKERS)}) at or above {here}")


def notebooks_dir(root: Path | None = None) -> Path:
    return (root or find_root()) / "notebooks"


def chapters_dir(root: Path | None = None) -> Path:
    """Executed chapter notebooks, assembled into the book."""
    return (root or find_root()) / "book" / "chapters"


def build_dir(root: Path | None = None) -> Path:
    return (root or find_root()) / "book" / "_build"


def reference_dir(root: Path | None = None) -> Path:
    """The papers' published numbers (reference/ in the study, a copy of the project's shared reference);
    $TASKSTUDY_REFERENCE overrides it."""
    env = os.environ.get("TASKSTUDY_REFERENCE")
    return Path(env) if env else (root or find_root()) / "reference"
