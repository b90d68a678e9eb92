"""Definition hashes kept between processes (issue 39): a walk over the package takes seconds (every `taskstudy
list`, every chapter's kernel); its results depend only on the package's files and the Python that parses them, so
`codehash` keeps them in a file named by the digest of those. A file's edit makes a new digest, never a stale hash.
A cache only: unreadable or unwritable, it is ignored. Plumbing: it moves hashes, it computes none."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


def cache_dir() -> Path:
    """Where definition hashes are kept: $TASKSTUDY_CACHE, else $XDG_CACHE_HOME/taskstudy, else ~/.cache/taskstudy."""
    if os.environ.get("TASKSTUDY_CACHE"):
        return Path(os.environ["TASKSTUDY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "taskstudy"


def content_digest(root: Path, files: Sequence[Path]) -> str:
    """The digest of the package's files (their paths under `root` and bytes) and of the Python version."""
    h = hashlib.sha256(f"{sys.version_info[0]}.{sys.version_info[1]}".encode())
    for p in files:
        h.update(b"\x00" + p.relative_to(root).as_posix().encode() + b"\x00" + p.read_bytes())
    return h.hexdigest()[:24]


def _path(digest: str) -> Path:
    return cache_dir() / "codehash" / f"{digest}.json"


def load(digest: str) -> dict[str, str]:
    """The hashes kept for `digest` ("module:qualname" -> hash), or none."""
    try:
        found = json.loads(_path(digest).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in found.items() if isinstance(k, str) and ":" in k} if isinstance(found, dict) else {}


def save(digest: str, hashes: dict[str, str]) -> None:
    """Keep `hashes` for `digest` (written whole, then renamed: a reader never sees half a file)."""
    path = _path(digest)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(hashes, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
