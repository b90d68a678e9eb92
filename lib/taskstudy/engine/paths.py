"""Where the study lives on disk: the repository root, its notebooks, params and results folders."""

from __future__ import annotations

import os
import re
import socket
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
    installed = Path(__file__).resolve().parents[3]
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


_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_OWNER = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)~(?P<pid>\d+)\.")


def owner_tag() -> str:
    """`<host>~<pid>` of this process, put in the names of its temporary files (store writes, executed notebooks
    in progress) so that a later run can tell what a killed process left behind from a live writer's file."""
    return f"{_HOST}~{os.getpid()}"


def is_orphan(path: Path) -> bool:
    """A temporary file whose writer, a process of this host, no longer runs (it was killed mid-write). Files of
    live processes and of other hosts (a results folder shared over the network) are never orphans. The writer is
    dead too when its pid is a zombie (a killed child nobody reaped: in a container whose pid 1 does not reap) or
    names a process started after the file's last write (the pid was reused: Linux wraps at pid_max, often 32768)."""
    m = _OWNER.search(path.name)
    if not m or m["host"] != _HOST:
        return False
    import psutil

    try:
        writer = psutil.Process(int(m["pid"]))
        if writer.status() == psutil.STATUS_ZOMBIE:
            return True
        started = writer.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    except psutil.AccessDenied:  # another user's live process
        return False
    try:
        written = path.stat().st_mtime
    except FileNotFoundError:  # its writer renamed or removed it meanwhile
        return False
    return started > written + 1.0  # 1 s: process start times are rounded to clock ticks


def sweep_orphans(folder: Path, patterns: tuple[str, ...] = (".*.tmp",)) -> list[Path]:
    """Remove the orphaned temporary files under `folder` (recursively); returns them. Nothing ever reads them,
    this only gives back their space."""
    removed = []
    for pattern in patterns:
        for p in folder.rglob(pattern):
            if is_orphan(p):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
