"""Fault injection for the reliability tests: SIGKILL a `taskstudy run` at an exact point of its work.

This module exists only so that tests/test_reliability.py can kill a run *exactly* in the middle of a store write
or of papermill's writing of an executed notebook, which a test polling from outside cannot hit. It does nothing
unless the environment variable TASKSTUDY_FAULT is set (the normal case: every point returns at once):

    TASKSTUDY_FAULT="<point>:<name>:<n>"

makes the n-th time (counted per process, from 1) that a process reaches <point> for <name> the moment of a
SIGKILL: the `taskstudy run` process and all its descendants (kernels, workers) are killed, the process that
reached the point last. The points:

    store.tmp       name = store entry name: the entry's data is in its temporary file, written and fsynced,
                    not yet renamed into place
    store.sidecar   name = store entry name: the data file is in place, its .meta.json sidecar not yet written
    notebook.write  name = chapter (03_transfers): papermill's n-th write of the executed notebook, killed with
                    the first half of the notebook's bytes written
    notebook.move   name = chapter: the executed notebook is complete in book/_runs, not yet moved to
                    book/chapters and without its run record

The run to kill is the first process that imported this module with TASKSTUDY_FAULT set (the `taskstudy run`
CLI); its pid is passed to its kernels in TASKSTUDY_FAULT_ROOT.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

POINTS = ("store.tmp", "store.sidecar", "notebook.write", "notebook.move")


def _parse(text: str | None) -> tuple[str, str, int] | None:
    if not text:
        return None
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or parts[0] not in POINTS or not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"TASKSTUDY_FAULT='{text}': expected '<point>:<name>:<n>' with point one of {POINTS}")
    return parts[0], parts[1], int(parts[2])


SPEC = _parse(os.environ.get("TASKSTUDY_FAULT"))
_seen: Counter[tuple[str, str]] = Counter()
if SPEC is not None:
    os.environ.setdefault("TASKSTUDY_FAULT_ROOT", str(os.getpid()))  # inherited by the kernels it starts


def armed(where: str, name: str) -> bool:
    """Whether TASKSTUDY_FAULT names this point and name (at any count)."""
    return SPEC is not None and SPEC[:2] == (where, name)


def point(where: str, name: str) -> None:
    """A place where the reliability tests may SIGKILL the run; a no-op unless TASKSTUDY_FAULT names it."""
    if SPEC is None or SPEC[:2] != (where, name):
        return
    _seen[where, name] += 1
    if _seen[where, name] == SPEC[2]:
        kill_run()


def kill_run() -> None:
    """SIGKILL the `taskstudy run` process and every process under it, this one last (never returns)."""
    import psutil

    me = os.getpid()
    try:
        run = psutil.Process(int(os.environ.get("TASKSTUDY_FAULT_ROOT", me)))
        victims = [run, *run.children(recursive=True)]
    except (psutil.Error, ValueError):
        victims = []
    for p in victims:
        if p.pid != me:
            with contextlib.suppress(psutil.Error):
                p.kill()
    os.kill(me, signal.SIGKILL)


@contextlib.contextmanager
def papermill_writes(chapter: str, path: Path) -> Iterator[None]:
    """While papermill executes `chapter` into `path`: the `notebook.write` point at each of its writes (through
    papermill's I/O-handler registry, for this path only). Nothing is registered unless TASKSTUDY_FAULT names
    this chapter's notebook.write."""
    if not armed("notebook.write", chapter):
        yield
        return
    from papermill.iorw import LocalHandler, papermill_io

    class KilledMidWrite(LocalHandler):
        def write(self, buf: str, out: str) -> None:
            if _seen["notebook.write", chapter] + 1 == SPEC[2]:
                with open(out, "w", encoding="utf-8") as f:  # half of the notebook, then the kill
                    f.write(buf[: len(buf) // 2])
                    f.flush()
                    os.fsync(f.fileno())
            else:
                super().write(buf, out)
            point("notebook.write", chapter)

    entry = (str(path), KilledMidWrite())
    papermill_io.register(*entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            papermill_io._handlers.remove(entry)
