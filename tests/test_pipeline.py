"""The pipeline end to end on the smoke profile: real `taskstudy` processes in a fresh copy of the study."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import taskstudy

from taskstudy.book import catalog, pipeline

SMOKE = ["--params", "params/smoke.yaml"]


def html_pages(study: Path) -> set[str]:
    return {p.stem for p in (study / "book/_build/html/book/chapters").glob("*.html")}


def records(study: Path) -> dict[str, float]:
    return {p.stem: json.loads(p.read_text())["finished"] for p in (study / "book/_runs").glob("*.json")}


def source_files(study: Path) -> dict[str, bytes]:
    """Every file of a study but its outputs (results store, executed chapters and run records, built book)."""
    outputs = ("results", "book/_build", "book/chapters", "book/_runs", ".venv", ".git", ".jupyter_cache")
    return {str(p.relative_to(study)): p.read_bytes() for p in study.rglob("*")
            if p.is_file() and not str(p.relative_to(study)).startswith(outputs) and "__pycache__" not in p.parts}


def add_chapter(study: Path, name: str, depends: str | None = None, extra: str = "") -> None:
    """A user's new chapter: a copy of the overview notebook with its own parameter."""
    nb = nbformat.read(study / "notebooks/00_overview.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    section = name[3:]
    cell.source = (f"# depends: {depends}\n" if depends else "") + (
        'params_file = "params/default.yaml"\noverrides = []\nmessage = "hello from the new chapter"\n'
    )
    nb.cells = [c for c in nb.cells if c.cell_type == "markdown"][:1] + [cell] + [
        nbformat.v4.new_code_cell(
            "from taskstudy.engine.params import chapter_params\n"
            f'P = chapter_params(params_file, overrides, "{section}", message=message)\n'
            f'print(P.values("{section}")["message"]){extra}'
        )
    ]
    nb.cells[0].source = f"# A new chapter {name}"
    nb.metadata = {}  # as nbformat writes a notebook made outside JupyterLab: no kernelspec, no language
    nbformat.write(nb, study / "notebooks" / f"{name}.ipynb")


@pytest.mark.slow
def test_run_book_rerun_one_chapter_and_add_a_chapter(built_study, tmp_path):
    # 1. Every chapter of a fresh copy ran on smoke params (the shared fixture) and is a page of the built book.
    study = tmp_path / "study"
    shutil.copytree(built_study, study, symlinks=True)
    assert (study / "book/_build/html/index.html").is_file()
    names = {c.name for c in catalog.chapters(study)}
    assert html_pages(study) == names
    listing = taskstudy("list", *SMOKE, cwd=study).stdout
    assert "missing" not in listing and "stale" not in listing
    assert "every chapter is fresh" in taskstudy("run", *SMOKE, cwd=study).stdout

    # The run put chapters side by side (every ready one), never one beside an `alone` chapter, and accounted each
    # one's CPU (kernel + units) without showing the account cell on its page.
    recs = {p.stem: json.loads(p.read_text()) for p in (study / "book/_runs").glob("*.json")}
    chs = {c.name: c for c in catalog.chapters(study)}
    spans = {n: (r["started"], r["finished"]) for n, r in recs.items()}

    def beside(n: str) -> list[str]:
        return [m for m in spans if m != n and spans[m][0] < spans[n][1] and spans[n][0] < spans[m][1]]

    assert any(beside(n) for n in spans)
    assert all(not beside(n) for n in spans if chs[n].alone) and any(c.alone for c in chs.values())
    assert all(spans[d][1] <= spans[n][0] for n in spans for d in chs[n].depends)  # read only finished chapters
    assert len({r["run"] for r in recs.values()}) == 1 and all(r["cpu_s"] > 0 for r in recs.values())
    assert all(pipeline.ACCOUNT_TAG not in (study / f"book/chapters/{n}.ipynb").read_text() for n in recs)

    # 2. One chapter rerun with a new value: only it is executed, and the value is on the rebuilt page.
    before = records(study)
    taskstudy("run", "overview", *SMOKE, "-p", "overview.packages=[filelock]", "--quiet", cwd=study)
    after = records(study)
    assert after["00_overview"] > before["00_overview"]
    assert {k for k in after if after[k] != before.get(k)} == {"00_overview"}

    # The intro's glued numbers follow a rerun chapter: first order only gives fewer readouts.
    def n_readouts() -> str:
        text = (study / "book/chapters/03_transfers.ipynb").read_text()
        return re.search(r"(\d+) readouts over", text).group(1)

    old = n_readouts()
    taskstudy("run", "transfers", *SMOKE, "-p", "transfers.max_order=1", "-p", "transfers.beam=1", "--quiet",
              cwd=study)
    taskstudy("book", cwd=study)  # one build shows both reruns
    page = (study / "book/_build/html/book/chapters/00_overview.html").read_text()
    assert "filelock" in page
    assert "stale" in taskstudy("list", *SMOKE, cwd=study).stdout  # the book now shows a non-default run
    new = n_readouts()
    intro = (study / "book/_build/html/book/intro.html").read_text()
    assert int(new) < int(old) and f'<span class="pasted-text">{new}</span>' in intro

    # 3. A new notebook is listed, run and in the book; --downstream follows its `# depends:` line. Adding it
    # touches no other file of the study (outputs aside: the store, the executed chapters, the built book).
    sources = source_files(study)
    add_chapter(study, "90_extra", depends="00_overview")
    shutil.rmtree(study / "book/_build")
    assert "90_extra" in taskstudy("list", *SMOKE, cwd=study).stdout
    taskstudy("run", "extra", *SMOKE, "--quiet", cwd=study)
    taskstudy("book", cwd=study)
    assert "90_extra" in html_pages(study)
    assert "hello from the new chapter" in (study / "book/_build/html/book/chapters/90_extra.html").read_text()
    added = source_files(study)
    assert {k for k in added.keys() | sources.keys() if added.get(k) != sources.get(k)} == {"notebooks/90_extra.ipynb"}
    before = records(study)
    taskstudy("run", "overview", *SMOKE, "--downstream", "--quiet", cwd=study)
    after = records(study)
    assert after["00_overview"] > before["00_overview"] and after["90_extra"] > before["90_extra"]


@pytest.mark.slow
def test_bad_params_fail_before_any_kernel(study):
    cases = {
        ("-p", "overview.pakages=[x]"): "did you mean 'packages'",
        ("-p", "common.image_size=7"): "common.image_size",
        ("-p", "common.seed=abc"): "common.seed",
        ("--params", "params/nope.yaml"): "params file not found",
    }
    (study / "params/bad.yaml").write_text("common:\n  seed: [0\n")
    cases[("--params", "params/bad.yaml")] = "malformed YAML"
    for args, expected in cases.items():
        argv = ["run", *args] if args[0] == "--params" else ["run", *SMOKE, *args]
        proc = taskstudy(*argv, cwd=study, check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        err = proc.stderr.strip()
        assert expected in err and len(err.splitlines()) == 1, err
    assert not (study / "book/_runs").exists()  # nothing ran


@pytest.mark.slow
def test_failing_chapter_names_cell_and_keeps_notebook(study):
    add_chapter(study, "91_broken", extra="\nraise RuntimeError('boom in chapter')")
    proc = taskstudy("run", "broken", *SMOKE, "--quiet", cwd=study, check=False)
    assert proc.returncode == 2
    assert "chapter 91_broken failed in cell" in proc.stderr and "RuntimeError: boom in chapter" in proc.stderr
    assert (study / "book/_runs/91_broken.ipynb").is_file()
    assert not (study / "book/chapters/91_broken.ipynb").exists()


def _fake_chapters(spec: dict[str, tuple[str, ...]], alone: tuple[str, ...] = ()) -> list[catalog.Chapter]:
    return [catalog.Chapter(n, i, n, Path(f"{n}.ipynb"), deps, n in alone) for i, (n, deps) in enumerate(spec.items())]


def _timeline(todo: list[catalog.Chapter], lanes: int, fail: str = "") -> tuple[dict, BaseException | None]:
    import threading
    import time

    spans, lock = {}, threading.Lock()

    def run_one(c: catalog.Chapter) -> dict:
        t0 = time.perf_counter()
        time.sleep(0.05 + 0.02 * (c.number % 3))
        if c.name == fail:
            raise catalog.ChapterError(f"chapter {c.name} failed")
        with lock:
            spans[c.name] = (t0, time.perf_counter())
        return {"chapter": c.name}

    try:
        pipeline.run_chapters(todo, run_one, lanes)
    except catalog.ChapterError as e:
        return spans, e
    return spans, None


def test_run_chapters_side_by_side_keeps_dependencies_lanes_and_alone_chapters():
    todo = _fake_chapters({"a": (), "b": ("a",), "c": (), "d": ("b", "c"), "e": (), "f": (), "t": ()}, alone=("t",))
    spans, err = _timeline(todo, lanes=2)
    assert err is None and set(spans) == {c.name for c in todo}
    for c in todo:
        assert all(spans[d][1] <= spans[c.name][0] for d in c.depends)  # started after what it reads finished
    edges = sorted([(t0, 1) for t0, _ in spans.values()] + [(t1, -1) for _, t1 in spans.values()])
    at_once = max(sum(x for _, x in edges[: i + 1]) for i in range(len(edges)))
    assert at_once == 2  # two lanes, both used
    t0, t1 = spans["t"]
    assert all(b <= t0 or a >= t1 for n, (a, b) in spans.items() if n != "t")  # nothing beside `alone`
    one, _ = _timeline(todo, lanes=1)
    ordered = sorted(one, key=lambda n: one[n][0])
    assert all(one[a][1] <= one[b][0] for a, b in zip(ordered, ordered[1:], strict=False))  # one after another


def test_run_chapters_after_a_failure_finishes_the_running_and_starts_nothing():
    todo = _fake_chapters({"a": (), "b": (), "c": ("a",), "d": ()})
    spans, err = _timeline(todo, lanes=2, fail="a")
    assert isinstance(err, catalog.ChapterError) and "chapter a failed" in str(err)
    assert "b" in spans  # ran beside the failing one and finished
    assert "c" not in spans and "d" not in spans  # reads the failed chapter; ready after the failure: not started


def test_account_cell_reports_the_kernels_cpu_and_leaves_the_page():
    nb = pipeline.with_account_cell(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), 801)
    assert "parallel.set_priority(801)" in nb.cells[0].source  # before the chapter's own cells
    cell = nb.cells[-1]
    namespace: dict = {}
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(cell.source, namespace)  # what the kernel runs
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=out.getvalue())]
    account = pipeline.pop_account(nb)
    assert len(nb.cells) == 1 and set(account) == {"kernel_cpu_s", "units_cpu_s"} and account["kernel_cpu_s"] > 0


def test_chapters_others_wait_on_get_their_units_run_first(repo_root, monkeypatch):
    """Chapters side by side share the workers: the units of the chapter on the critical path go first
    (catalog.priority), and map_units hands the scheduler that priority."""
    from taskstudy.engine import parallel

    chs = {c.name: c for c in catalog.chapters(repo_root)}
    prio = {n: catalog.priority(list(chs.values()), c) for n, c in chs.items()}
    assert prio["02_task_networks"] > prio["03_transfers"] > prio["12_robustness"] > prio["10_task_grouping"]
    assert prio["10_task_grouping"] > prio["08_layer_transfer"]  # others wait on 10, on 08 none

    seen = {}

    class Client:
        def map(self, fn, units, key, retries, priority):
            seen["priority"] = priority
            raise RuntimeError("enough")

        def cancel(self, futures):
            pass

    monkeypatch.setattr(parallel, "get_client", lambda workers, address: Client())
    parallel.set_priority(prio["03_transfers"])
    try:
        with pytest.raises(RuntimeError, match="enough"):
            parallel.map_units(abs, [1, 2], workers=2)
    finally:
        parallel.set_priority(0)
    assert seen["priority"] == prio["03_transfers"]


def test_chapter_discovery_and_selection(repo_root):
    chs = catalog.chapters(repo_root)
    assert chs[0].name == "00_overview"
    assert catalog.select(chs, ["0"]) == catalog.select(chs, ["overview"]) == [chs[0]]
    with pytest.raises(catalog.ChapterError, match="did you mean '00_overview'"):
        catalog.select(chs, ["00_overveiw"])


def test_notebook_without_parameters_cell_is_an_error(study):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")])
    nbformat.write(nb, study / "notebooks/95_nocell.ipynb")
    with pytest.raises(catalog.ChapterError, match="95_nocell.ipynb: no cell tagged 'parameters'"):
        catalog.chapters(study)


def test_committed_notebooks_are_stripped(repo_root):
    for p in (repo_root / "notebooks").glob("*.ipynb"):
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), p
        assert nb.metadata.kernelspec.name == pipeline.KERNEL, p


def test_a_study_chapter_gets_only_the_profile_and_overrides(study):
    from taskstudy.engine import params as P

    chs = {c.name: c for c in catalog.chapters(study)}
    prof = P.load(study / "params/smoke.yaml", ["transfers.epochs=3"])
    got = catalog.chapter_parameters(chs["03_transfers"], prof, study)
    assert got == {"params_file": "params/smoke.yaml", "overrides": ["transfers.epochs=3"]}
    assert {c.name for c in chs.values() if c.scenes_only} == {"01_scenes", "06_novel_tasks"}
    on_folder = P.load(study / "params/smoke.yaml", ["common.dataset=taskonomy", "common.taskonomy_root=/x"])
    assert catalog.skipped_for_data(list(chs.values()), on_folder) == [chs["01_scenes"], chs["06_novel_tasks"]]
    assert catalog.skipped_for_data(list(chs.values()), prof) == []
    nb = nbformat.read(chs["03_transfers"].path, as_version=4)  # a default written back into the cell
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += "\nepochs = 8"
    nbformat.write(nb, chs["03_transfers"].path)
    with pytest.raises(catalog.ChapterError, match=r"defines \['epochs'\].*keep only params_file and overrides"):
        catalog.chapter_parameters(chs["03_transfers"], prof, study)


def test_default_lanes_leave_the_order_to_the_scheduler():
    from taskstudy.book import cli

    assert cli.default_lanes(2) == 0 and cli.default_lanes(4, cores=8) == 0  # with workers: every ready chapter
    assert cli.default_lanes(0, cores=2) == 2 and cli.default_lanes(0, cores=1) == 1  # without: one per core
    assert cli._parser().parse_args(["run"]).lanes is None  # so `run` resolves it from the profile's workers
