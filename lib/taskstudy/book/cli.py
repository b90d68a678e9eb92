"""`taskstudy`: run chapters, build the book, list chapters, clean.

    taskstudy list  [--params FILE] [-p section.key=value ...]
    taskstudy run   [CHAPTER ...] [--params FILE] [-p section.key=value ...] [--downstream] [--force]
    taskstudy book
    taskstudy clean [--results] [--params FILE]

Params are validated before any kernel starts; every error is one line naming the file, key or chapter.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from taskstudy.book import build, catalog, pipeline
from taskstudy.engine import parallel
from taskstudy.engine import params as params_mod
from taskstudy.engine.errors import RealDataError
from taskstudy.engine.paths import RootNotFound, find_root

DEFAULT_PARAMS = "params/default.yaml"


def default_lanes(workers: int, cores: int | None = None) -> int:
    """Chapters side by side by default. With workers, every chapter whose inputs are ready starts (0: no limit): the
    kernels mostly wait for their units, and the scheduler, not a count of lanes, decides what the workers run next
    (units go by the chapter's place on the critical path: `catalog.priority`), so a chapter nothing waits on fills
    the workers' idle turns instead of waiting for a lane. Measured on the AVX2 machine (2 cores, 2 workers): with
    2 and then 3 lanes, chapters 09 and 10 (236 and 656 CPU-s) held their lanes for 45 minutes while their units
    waited, chapter 08 started after 48 minutes, and the study took over 60. Without workers the kernels compute
    themselves: one per core."""
    return 0 if workers > 0 else max(1, cores or os.cpu_count() or 1)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="taskstudy", description="Run the task-transfer study and build its book.")
    sub = ap.add_subparsers(dest="command", required=True)

    def with_params(p: argparse.ArgumentParser) -> None:
        p.add_argument("--params", default=DEFAULT_PARAMS, help=f"profile YAML (default {DEFAULT_PARAMS})")
        p.add_argument("-p", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override one parameter (repeatable), e.g. -p transfers.epochs=20")

    p_list = sub.add_parser("list", help="chapters in order with status fresh / stale / missing")
    with_params(p_list)
    p_run = sub.add_parser("run", help="execute chapters with papermill into book/chapters/")
    p_run.add_argument("chapters", nargs="*", help="chapter names, numbers or sections; default: all not fresh")
    with_params(p_run)
    p_run.add_argument("--downstream", action="store_true", help="also rerun the chapters that read their results")
    p_run.add_argument("--force", action="store_true", help="rerun every chapter, fresh or not")
    p_run.add_argument("--quiet", action="store_true", help="no per-cell progress bar")
    p_run.add_argument("--lanes", type=int, default=None, metavar="N",
                       help="chapters run side by side at most (independent ones, on the shared workers; 1: one "
                            "after another, with a per-cell progress bar; 0: no limit; default: no limit when the "
                            "profile has workers, else one per core)")
    p_book = sub.add_parser("book", help="build the Jupyter Book into book/_build/html")
    p_book.add_argument("--check", action="store_true",
                        help="do not build: check the built book as a reader sees it (taskstudy.book.bookcheck)")
    p_book.add_argument("--screenshots", metavar="DIR", help="with --check: screenshots at 1400 px into DIR")
    p_book.add_argument("--no-browser", action="store_true", help="with --check: only the checks needing no browser")
    p_clean = sub.add_parser("clean", help="remove executed chapters and the built book")
    p_clean.add_argument("--results", action="store_true", help="also remove the profile's results store")
    p_clean.add_argument("--params", default=DEFAULT_PARAMS)
    return ap


def _setup_log(params: params_mod.StudyParams) -> Path:
    log_dir = params.results_root() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / time.strftime(f"run-%Y%m%d-%H%M%S-{os.getpid()}.log")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    for name in ("papermill", "taskstudy"):
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)
        lg.addHandler(handler)
    return path


def load_profile(args: argparse.Namespace) -> params_mod.StudyParams:
    """The profile with `-p` overrides, validated: values and types by the section models, task names by the task
    dictionary (`world.tasks.check_profile`)."""
    from taskstudy.world import tasks as taskdict

    params = params_mod.load(args.params, args.overrides)
    taskdict.check_profile(params)
    return params


def cmd_list(args: argparse.Namespace) -> int:
    root = find_root()
    params = load_profile(args)
    chs = catalog.chapters(root)
    print(f"profile '{params.profile}' ({params.file}); results in {params.results_root()}")
    for c in chs:
        st = catalog.status(c, params, chs, root)
        values = ", ".join(f"{k}={v}" for k, v in params.values(c.section).items())
        deps = f"  <- {', '.join(c.depends)}" if c.depends else ""
        print(f"  {c.name:<22} {st:<8} {values}{deps}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    root = find_root()
    params = load_profile(args)  # validated before any kernel starts
    chs = catalog.chapters(root)
    todo = catalog.plan(params, args.chapters, args.downstream, args.force, root)
    if params.common.dataset == "taskonomy":  # the folder is there, before any kernel starts
        from taskstudy.world import taskonomy_data

        taskonomy_data.root_of(params.common)
    for c in catalog.skipped_for_data(todo, params):
        print(f"{c.name}: needs the rendered scenes (`# needs: scenes`); skipped on common.dataset="
              f"{params.common.dataset}")
        todo.remove(c)
    if not todo:
        print("every chapter is fresh; nothing to run (use --force to rerun)")
        return 0
    for c in todo:  # check every chapter's parameters before the first kernel starts
        catalog.chapter_parameters(c, params)
    log_path = _setup_log(params)
    pipeline.catch_interrupts()
    pipeline.sweep(root, params.results_root())  # temporary files of killed runs
    print(f"running {len(todo)} chapter(s) with profile '{params.profile}'; log: {log_path}")
    from taskstudy.nn import machine

    print(f"machine: {machine.summary(machine.describe(params.common))}")  # measured before any chapter starts
    # several chapters share one Dask cluster (one start-up, one clean shutdown); a single chapter starts its own
    share = len(todo) > 1 and not params.common.cluster.address
    lanes = default_lanes(params.common.workers) if args.lanes is None else args.lanes
    lanes = len(todo) if lanes == 0 else max(1, min(lanes, len(todo)))
    pipeline.ensure_kernel()  # once, before any lane starts a kernel
    os.chdir(root)  # papermill changes the working directory of the process for each kernel start: make it a no-op
    os.environ[pipeline.RUN_ENV] = f"{time.time():.3f}"  # the kernels' records name this run (chapter 15 reads it)
    if lanes > 1:  # kernels side by side share the cores: two kernels of two OpenMP threads each on two cores ran
        # chapter 09 (smoke) 12x slower than alone (spinning threads); one each, 1.2x (measured)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // lanes)))
    started = time.time()
    with parallel.shared_cluster(params.common.workers if share else 0) as client:
        bar = tqdm(total=len(todo), desc="chapters", unit="chapter")
        running: list[str] = []

        def start(c: catalog.Chapter) -> None:
            running.append(c.name)
            bar.set_postfix_str(", ".join(running))

        def done(c: catalog.Chapter, rec: dict) -> None:
            running.remove(c.name)
            bar.set_postfix_str(", ".join(running))
            bar.update()
            tqdm.write(f"  {c.name}: done in {rec['wall_s']:.1f} s ({rec.get('cpu_s', 0):.0f} CPU-s)")

        progress = not args.quiet and lanes == 1  # two chapters' cell bars would overwrite each other
        pipeline.run_chapters(todo, lambda c: pipeline.execute(c, params, chs, root, progress, client), lanes,
                              on_start=start, on_done=done)
        bar.close()
    print(f"{len(todo)} chapter(s) in {time.time() - started:.0f} s, at most {lanes} side by side; executed chapters "
          f"are in {root / 'book' / 'chapters'}; build the book with `taskstudy book`")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    root = find_root()
    if args.check:
        from taskstudy.book import bookcheck

        try:
            problems = bookcheck.check_book(root, Path(args.screenshots) if args.screenshots else None,
                                            browser=not args.no_browser)
        except bookcheck.BookCheckError as e:
            raise catalog.ChapterError(str(e)) from e
        print(bookcheck.report(problems))
        return 1 if problems else 0
    missing = [c.name for c in catalog.chapters(root) if catalog.read_record(c, root) is None]
    if missing:
        raise catalog.ChapterError(f"chapter(s) never run: {', '.join(missing)}; run `taskstudy run` first")
    print("building the book ...", flush=True)
    index = build.build_book(root)
    print(f"book: {index}")
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    root = find_root()
    results = params_mod.load(args.params).results_root() if args.results else None
    for p in build.clean(root, results):
        print(f"removed {p}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {"list": cmd_list, "run": cmd_run, "book": cmd_book, "clean": cmd_clean}
    try:
        return commands[args.command](args)
    except (params_mod.ParamsError, catalog.ChapterError, RootNotFound, RealDataError) as e:
        print(f"taskstudy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("taskstudy: interrupted; finished work is kept in the store, rerun to continue", file=sys.stderr)
        return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
