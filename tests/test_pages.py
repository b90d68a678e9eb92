"""The executed chapters as a reader sees them: collapsed code, one parameter table, and a build that refuses a
page with an error, a traceback or a path of the machine that built it (issue 20)."""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
import pytest

from taskstudy.book import build, catalog, pipeline
from taskstudy.engine.params import load


def _page(tmp_path: Path, *cells) -> Path:
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A chapter"), *cells])
    path = tmp_path / "book/chapters/05_x.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _code(source: str = "x = 1", outputs=(), tags=()) -> nbformat.NotebookNode:
    cell = nbformat.v4.new_code_cell(source, outputs=list(outputs))
    cell.metadata["tags"] = list(tags)
    return cell


def test_a_clean_page_has_no_problems(tmp_path):
    out = nbformat.v4.new_output("stream", name="stdout", text="21 task networks\n")
    warn = nbformat.v4.new_output("stream", name="stderr", text="UserWarning: something\n")
    assert build.page_problems(_page(tmp_path, _code(outputs=[out, warn])), tmp_path) == []


@pytest.mark.parametrize("cell, expect", [
    (_code(outputs=[nbformat.v4.new_output("error", ename="ValueError", evalue="bad", traceback=[])]),
     "error output ValueError"),
    (_code(outputs=[nbformat.v4.new_output("stream", name="stderr", text=(
        "Traceback (most recent call last):\n  File x\ndistributed.comm.core.CommClosedError: closed\n"))]),
     "a traceback on stderr: distributed.comm.core.CommClosedError"),
    (_code(f'params_file = "{sys.prefix}/p.yaml"', tags=["injected-parameters", "remove-cell"]), None),  # hidden
    (_code(outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": f"{sys.prefix}/lib/x.py"})]),
     "a path of this machine in its text/plain output"),
])
def test_a_dirty_page_is_named_with_its_problem(tmp_path, cell, expect):
    problems = build.page_problems(_page(tmp_path, cell), tmp_path)
    if expect is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith("05_x: cell 1: ") and expect in problems[0], problems


def test_the_study_root_in_a_shown_source_is_a_problem(tmp_path):
    path = _page(tmp_path, _code(f'open("{tmp_path.resolve()}/results/x.csv")'))
    assert "a path of this machine in its source" in build.page_problems(path, tmp_path)[0]


def test_a_machine_path_in_the_notebook_metadata_is_a_problem(tmp_path):
    path = _page(tmp_path)
    nb = nbformat.read(path, as_version=4)
    nb.metadata["papermill"] = {"input_path": f"{tmp_path.resolve()}/notebooks/05_x.ipynb"}
    nbformat.write(nb, path)
    assert build.page_problems(path, tmp_path) == [f"05_x: notebook metadata: a path of this machine "
                                                      f"({tmp_path.resolve()})"]


def test_the_book_build_refuses_a_dirty_chapter_naming_it(tmp_path):
    _page(tmp_path, _code(outputs=[nbformat.v4.new_output("error", ename="KeyError", evalue="'x'", traceback=[])]))
    with pytest.raises(catalog.ChapterError, match=r"05_x: cell 1: error output KeyError"):
        build.build_book(tmp_path)


def test_injected_params_file_is_relative_to_the_study_root(repo_root):
    P = load(repo_root / "params/smoke.yaml", ["common.seed=3"])
    chapter = next(c for c in catalog.chapters(repo_root) if c.name == "02_task_networks")
    injected = catalog.chapter_parameters(chapter, P, repo_root)
    assert injected["params_file"] == "params/smoke.yaml" and injected["overrides"] == ["common.seed=3"]


def test_present_collapses_code_and_replaces_the_parameter_cells_by_one_table(tmp_path, repo_root):
    nb = nbformat.v4.new_notebook(metadata={"papermill": {"input_path": "/abs/notebooks/02_task_networks.ipynb",
                                                          "output_path": "/abs/book/_runs/.02.x.ipynb"}}, cells=[
        nbformat.v4.new_markdown_cell("# Title"), _code("width = 16", tags=["parameters"]),
        _code('params_file = "params/smoke.yaml"\nwidth = 8', tags=["injected-parameters"]),
        _code("print(1)"), _code("secret()", tags=["remove-input"])])
    chapter = next(c for c in catalog.chapters(repo_root) if c.name == "02_task_networks")
    out = pipeline.present(nb, chapter, {"params_file": "params/smoke.yaml", "overrides": [], "width": 8}, "smoke")
    kinds = [(c.cell_type, c.metadata.get("tags", [])) for c in out.cells]
    assert kinds[1] == ("markdown", ["chapter-parameters"])
    assert "| `width` | `8` |" in out.cells[1].source and "| `profile` | `smoke` |" in out.cells[1].source
    assert all("remove-cell" in c.metadata["tags"] for c in out.cells[2:4])
    assert out.cells[4].metadata["tags"] == ["hide-input"] and out.cells[5].metadata["tags"] == ["remove-input"]
    assert out.metadata.papermill == {"input_path": "notebooks/02_task_networks.ipynb",
                                      "output_path": "book/chapters/02_task_networks.ipynb"}


def test_findings_page_has_a_row_per_claim_and_is_generated_from_the_claims(repo_root):
    from taskstudy import reference

    page = (repo_root / "book/findings.md").read_text()
    assert page == reference.findings_page() + "\n", "regenerate book/findings.md with reference.findings_page()"
    for _, claim in reference.claims().iterrows():
        nb = f"chapters/{claim['chapter']}.ipynb"
        row = next(line for line in page.splitlines() if line.startswith(f"| {claim['finding']} |")
                   and nb in line)
        assert f"{nb}::finding_{claim['finding']}_study:s" in row and f"finding_{claim['finding']}_verdict" in row


def test_every_claim_is_glued_by_its_chapter(repo_root):
    """Each chapter named in claims.csv glues the study cell and verdict of each of its claims (directly, or
    through glue_beside of its beside table)."""
    from taskstudy import reference

    for chapter, rows in reference.claims().groupby("chapter"):
        src = (repo_root / f"notebooks/{chapter}.ipynb").read_text()
        for finding in rows["finding"]:
            assert f'glue_finding(\\"{finding}\\"' in src or "glue_beside(" in src, (chapter, finding)


def test_a_verdict_outside_the_vocabulary_is_refused():
    from taskstudy import reference

    with pytest.raises(ValueError, match="verdict must be one of"):
        reference.glue_finding("x", "y", "agrees")


def test_book_check_needs_a_built_book(tmp_path):
    from taskstudy.book import bookcheck

    with pytest.raises(bookcheck.BookCheckError, match="no built book"):
        bookcheck.check_book(tmp_path, browser=False)


def test_book_check_names_an_uncaptioned_figure_and_a_stderr_output(tmp_path):
    from taskstudy.book import bookcheck

    pages = tmp_path / "book/_build/html/book/chapters"
    pages.mkdir(parents=True)
    (pages / "01_a.html").write_text('<figure><img src="../../_images/x.png"><figcaption>x</figcaption></figure>'
                                     '<img src="../../_images/y.png">')
    (pages / "02_b.html").write_text('<figure><img src="../../_images/z.png"><figcaption>z</figcaption></figure>')
    assert bookcheck.caption_problems(tmp_path / "book/_build/html") == ["01_a.html: 1 of 2 figures without a caption"]
    chapters = tmp_path / "book/chapters"
    chapters.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="a warning")])])
    nbformat.write(nb, chapters / "01_a.ipynb")
    assert bookcheck.output_problems(chapters) == ["01_a.ipynb: cell 0: stderr output 'a warning'"]
