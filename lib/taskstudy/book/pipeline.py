"""The chapter pipeline: papermill execution of the chapters `catalog` lists, side by side where they allow it.

`run_chapters` runs independent chapters side by side (on the run's shared workers), each as soon as the chapters
it reads have finished, and an `alone` chapter with nothing beside it. Executed notebooks go to book/chapters/,
which _toc.yml takes by glob, so a new notebook is listed, run and put in the book with no other change.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from taskstudy.book.catalog import (
    Chapter,
    ChapterError,
    chapter_parameters,
    downstream,
    fingerprint,
    priority,
    record_path,
    runs_dir,
)
from taskstudy.engine import faults, parallel
from taskstudy.engine.params import StudyParams
from taskstudy.engine.paths import chapters_dir, find_root, owner_tag, sweep_orphans

log = logging.getLogger(__name__)

KERNEL = "taskstudy"
RUN_ENV = "TASKSTUDY_RUN"  # "<start time>": the `taskstudy run` a kernel belongs to (inherited by the kernels)


def ensure_kernel() -> str:
    """Install the `taskstudy` Jupyter kernel for this environment's Python (once) and return its name."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        if spec.argv and Path(spec.argv[0]).resolve() == Path(sys.executable).resolve():
            return KERNEL
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(kernel_name=KERNEL, display_name="taskstudy (.venv)", prefix=sys.prefix)
    return KERNEL


def data_note(params: StudyParams) -> str | None:
    """One admonition for the page of a chapter run on other data than the rendered scenes (None on scenes)."""
    if params.common.dataset == "scenes":
        return None
    from taskstudy.world import taskonomy_data

    root = taskonomy_data.root_of(params.common)
    fixture = (root / taskonomy_data.FIXTURE_MARK).is_file()
    what = ("a fixture written by `taskstudy.world.taskonomy_fixture` (the study's rendered scenes in the release's "
            "files and encodings): its numbers are a fixture's, not the study's or the paper's" if fixture else
            "its numbers are that data's, not the rendered study's")
    return (f"```{{note}}\nThis chapter ran on a Taskonomy-format folder (`common.dataset: taskonomy`, folder "
            f"`{root.name}`), split by building: {what}.\n```")


def present(nb: Any, chapter: Chapter, injected: dict[str, Any], profile: str, note: str | None = None) -> Any:
    """The executed notebook as a book page (Jupyter Book 1 cell tags): every code input collapsed behind a toggle
    (`hide-input`), the parameters cell and papermill's injected one removed, and in their place one small table of
    what the chapter ran with (profile, params file, overrides, the section's values); papermill's recorded input
    and output paths made relative (the page offers the .ipynb for download). Returns `nb`, changed."""
    import nbformat

    rows = [("profile", profile), *injected.items()]
    table = "\n".join(["| parameter | value |", "|---|---|",
                        *(f"| `{k}` | `{json.dumps(v) if not isinstance(v, str) else v}` |" for k, v in rows)])
    at = None
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        if "parameters" in tags or "injected-parameters" in tags:
            tags.append("remove-cell")
            at = i if at is None else at
        elif "hide-input" not in tags and "remove-input" not in tags and "remove-cell" not in tags:
            tags.append("hide-input")
    pm = nb.metadata.get("papermill", {})  # papermill records the absolute paths it read and wrote
    if "input_path" in pm:
        pm["input_path"] = f"notebooks/{chapter.path.name}"
    if "output_path" in pm:
        pm["output_path"] = f"book/chapters/{chapter.path.name}"
    md = nbformat.v4.new_markdown_cell(f"```{{admonition}} Parameters of this run\n:class: dropdown\n{table}\n```")
    md.metadata["tags"] = ["chapter-parameters"]
    nb.cells.insert(at if at is not None else min(1, len(nb.cells)), md)
    if note:
        banner = nbformat.v4.new_markdown_cell(note)
        banner.metadata["tags"] = ["chapter-data"]
        nb.cells.insert(nb.cells.index(md), banner)
    return nb




_INTERRUPTED = {"flag": False}


def catch_interrupts() -> None:
    """Install a SIGINT handler that records the interrupt before raising KeyboardInterrupt: papermill's client
    can swallow a KeyboardInterrupt that lands while it waits on the kernel and go on with the chapter, so
    `execute` checks the record when papermill returns and stops the run there (nothing of the chapter is kept)."""
    import signal

    def handler(signum: int, frame: Any) -> None:
        _INTERRUPTED["flag"] = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def execute(chapter: Chapter, params: StudyParams, all_chapters: Sequence[Chapter], root: Path,
            progress: bool = True, workers: Any = None) -> dict[str, Any]:
    """Run one chapter with papermill into book/chapters/ (atomically); on failure keep the executed notebook
    under book/_runs/ and raise ChapterError naming the cell and the error. `workers`: the client of the run's
    shared Dask cluster, whose workers count towards the chapter's peak memory (their peak since the run began)."""
    import nbformat
    import papermill as pm

    from taskstudy.nn import machine

    machine.describe(params.common)  # measured once per process, before the chapter's kernel loads the machine
    runs = runs_dir(root)
    runs.mkdir(parents=True, exist_ok=True)
    partial = runs / f".{chapter.name}.{owner_tag()}.ipynb"  # per process: two runs of one chapter may overlap
    tmp = tempfile.TemporaryDirectory(prefix="taskstudy-")  # outside the study: a killed run leaves nothing there
    source = Path(tmp.name) / chapter.path.name  # the notebook and its CPU account cell
    failed = runs / f"{chapter.name}.ipynb"
    target = chapters_dir(root) / f"{chapter.name}.ipynb"
    started = time.time()
    injected = chapter_parameters(chapter, params, root)
    os.environ["TQDM_DISABLE"] = "1"  # progress bars belong to the terminal, not to the book's pages
    nbformat.write(with_account_cell(nbformat.read(chapter.path, as_version=4), priority(all_chapters, chapter)),
                   source)
    try:
        with faults.papermill_writes(chapter.name, partial):  # a no-op unless the reliability tests kill here
            pm.execute_notebook(
                str(source),
                str(partial),
                parameters=injected,
                kernel_name=ensure_kernel(),
                language="python",  # a notebook written outside JupyterLab (nbformat) names no kernel language
                cwd=str(root),
                progress_bar=progress,
                log_output=True,
            )
    except pm.PapermillExecutionError as e:
        if _INTERRUPTED["flag"]:  # Ctrl-C reached the kernel as a KeyboardInterrupt in a cell
            partial.unlink(missing_ok=True)
            raise KeyboardInterrupt from None
        os.replace(partial, failed)
        raise ChapterError(
            f"chapter {chapter.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
            f"{e.ename}: {e.evalue}\n  executed notebook kept for inspection: {failed.relative_to(root)}"
        ) from None
    except BaseException:
        partial.unlink(missing_ok=True)  # interrupted: no half-written notebook left behind
        raise
    finally:
        tmp.cleanup()
    if _INTERRUPTED["flag"]:  # a Ctrl-C that papermill's client swallowed
        partial.unlink(missing_ok=True)
        raise KeyboardInterrupt
    nb = nbformat.read(partial, as_version=4)
    cpu = pop_account(nb)
    shown = {**injected, **params.values(chapter.section)}  # the page's table: every value the chapter ran with
    nbformat.write(present(nb, chapter, shown, params.profile, data_note(params)), partial)
    target.parent.mkdir(parents=True, exist_ok=True)
    faults.point("notebook.move", chapter.name)
    os.replace(partial, target)
    failed.unlink(missing_ok=True)  # an earlier failure's notebook is stale now
    record = {
        "chapter": chapter.name,
        "profile": params.profile,
        "params_file": str(params.file),
        "overrides": list(params.overrides),
        "fingerprint": fingerprint(chapter, params, all_chapters, root),
        "started": started,
        "finished": time.time(),
        "wall_s": round(time.time() - started, 2),
        "run": os.environ.get(RUN_ENV),  # the `taskstudy run` it was part of (its start time)
        **cpu,  # kernel_cpu_s, units_cpu_s: what it cost, whatever ran beside it
        "cpu_s": round(cpu.get("kernel_cpu_s", 0.0) + cpu.get("units_cpu_s", 0.0), 2),
        "peak_rss_mb": round(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # largest kernel
                                 parallel.workers_peak_rss_mb(workers)), 1),
        "machine": machine.describe(params.common),  # the CPU and the kernels it resolved: beside every timing
    }
    from taskstudy.engine.store import atomic_write

    atomic_write(record_path(chapter, root), json.dumps(record, indent=1).encode())
    return record


ACCOUNT_TAG = "taskstudy-cpu-account"
ACCOUNT_SOURCE = "import json\nfrom taskstudy.engine import parallel\nprint(json.dumps(parallel.cpu_account()))"


def with_account_cell(nb: Any, priority: int = 0) -> Any:
    """`nb` with a first cell giving its units their priority on the shared workers (`parallel.set_priority`) and a
    last cell printing the kernel's CPU account (`parallel.cpu_account`); `pop_account` takes both out of the
    executed notebook, so the page never shows them."""
    import nbformat

    first = nbformat.v4.new_code_cell(f"from taskstudy.engine import parallel\nparallel.set_priority({int(priority)})")
    cell = nbformat.v4.new_code_cell(ACCOUNT_SOURCE)
    for c in (first, cell):
        c.metadata["tags"] = [ACCOUNT_TAG]
    nb.cells.insert(0, first)
    nb.cells.append(cell)
    return nb


def pop_account(nb: Any) -> dict[str, float]:
    """Remove the cells `with_account_cell` added from an executed notebook and return what the account cell
    printed ({} if it is not there)."""
    ours = [c for c in nb.cells if ACCOUNT_TAG in c.get("metadata", {}).get("tags", [])]
    nb.cells = [c for c in nb.cells if c not in ours]
    for cell in reversed(ours):
        text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
        try:
            return {k: v for k, v in json.loads(text.strip().splitlines()[-1]).items() if k.endswith("_s")}
        except (ValueError, IndexError):
            continue
    return {}


def _interrupt_kernels() -> None:
    """Send SIGINT to the Jupyter kernels this process started (a Ctrl-C that reached only this process)."""
    import signal

    import psutil

    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if any("ipykernel" in a for a in child.cmdline()):
                child.send_signal(signal.SIGINT)


def run_chapters(todo: Sequence[Chapter], run_one: Callable[[Chapter], dict[str, Any]], lanes: int = 1,
                 on_start: Callable[[Chapter], None] | None = None,
                 on_done: Callable[[Chapter, dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Execute `todo` with up to `lanes` chapters at once (each `run_one(chapter)` in a thread: its kernel is a
    process of its own). A chapter starts when the chapters of `todo` it depends on have finished; ready chapters
    start in order of how many chapters of `todo` wait on them (then book order), and a chapter marked `alone`
    runs with nothing beside it (they come last). After a failure nothing new starts: the running chapters
    finish (their results are kept) and the first error is raised. Returns the records in the order finished."""
    import queue
    import threading

    names = {c.name for c in todo}
    waiting = {c.name: len(downstream(todo, [c])) for c in todo}
    pending = sorted(todo, key=lambda c: (c.alone, -waiting[c.name], c.number))
    running: dict[str, Chapter] = {}
    done: set[str] = set()
    finished: queue.Queue = queue.Queue()
    records: list[dict[str, Any]] = []
    error: BaseException | None = None

    def lane(c: Chapter) -> None:
        try:
            finished.put((c, run_one(c), None))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which raises it
            finished.put((c, None, e))

    try:
        while True:
            while error is None and pending and len(running) < max(1, lanes):
                ready = [c for c in pending if not any(d in names and d not in done for d in c.depends)]
                if not ready or any(r.alone for r in running.values()) or (ready[0].alone and running):
                    break
                c = ready[0]
                pending.remove(c)
                running[c.name] = c
                if on_start:
                    on_start(c)
                threading.Thread(target=lane, args=(c,), name=f"chapter {c.name}", daemon=True).start()
            if not running:
                break
            c, rec, exc = finished.get()
            del running[c.name]
            if exc is not None:
                error = error or exc
                continue
            done.add(c.name)
            records.append(rec)
            if on_done:
                on_done(c, rec)
    except KeyboardInterrupt:
        _INTERRUPTED["flag"] = True
        _interrupt_kernels()
        deadline = time.time() + 60
        while running and time.time() < deadline:  # let each chapter remove its half-written notebook
            with contextlib.suppress(queue.Empty):
                del running[finished.get(timeout=1)[0].name]
        raise
    if error is not None:
        raise error
    return records


def sweep(root: Path | None = None, results: Path | None = None) -> list[Path]:
    """Remove what killed runs left behind: half-written executed notebooks (book/_runs/.NN_name.<host>~<pid>.ipynb)
    and temporary files in book/_runs and the results store, of processes of this host that no longer run (a
    concurrent run's files are kept). Nothing reads them; `taskstudy run` calls this first to give back space."""
    root = root or find_root()
    removed = sweep_orphans(runs_dir(root), (".*.ipynb", ".*.tmp")) if runs_dir(root).is_dir() else []
    if results is not None and results.is_dir():
        removed += sweep_orphans(results)
    for p in removed:
        log.info("removed %s, left behind by a killed run", p)
    return removed




