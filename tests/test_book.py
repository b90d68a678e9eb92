"""The built book as a reader sees it: every page loads in headless Chromium without a JavaScript error, every
image and internal link resolves, no page carries an error or stderr output; screenshots go to artifacts/."""

from __future__ import annotations

import re
import shutil
import subprocess

import nbformat
import pytest
from conftest import ROOT

from taskstudy.book import bookcheck


def chromium() -> str:
    """Debian's chromium, installed through apt when missing."""
    if shutil.which("chromium") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True)
    return bookcheck.chromium()


@pytest.fixture(scope="module")
def server(built_study):
    html = built_study / "book/_build/html"
    with bookcheck.serve(html) as base:
        yield html, base


@pytest.mark.slow
def test_every_page_renders_with_working_links_and_images(server, built_study):
    html, base = server
    chapters = {p.stem for p in (built_study / "notebooks").glob("*.ipynb")}
    assert chapters <= {p.stem for p in bookcheck.pages(html)}
    problems = bookcheck.page_problems(html, base, chromium())
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_screenshots_of_intro_and_a_chapter(server):
    html, base = server
    shots = {"intro.png": "book/intro.html", "chapter_scenes.png": "book/chapters/01_scenes.html"}
    made = bookcheck.screenshots(html, base, chromium(), ROOT / "artifacts", shots)
    assert [p.name for p in made] == list(shots)
    assert all(p.stat().st_size > 10_000 for p in made)


@pytest.mark.slow
def test_wide_tables_scroll_inside_the_page(server):
    """Chapter 01's task dictionary (the widest table) ends inside the page's article column at 1400 px and
    scrolls in its own box (_static/taskstudy.css), instead of running past the right edge."""
    html, base = server
    assert bookcheck.wide_table_problems(html, base, chromium()) == []


@pytest.mark.slow
def test_no_page_carries_error_or_stderr_output(built_study):
    assert bookcheck.output_problems(built_study / "book/chapters") == []


@pytest.mark.slow
def test_the_check_names_a_broken_image_and_a_stderr_output(built_study, tmp_path):
    """`taskstudy book --check` on a copy of the built book with one image removed and one stderr output added
    fails, naming both (and a clean book passes the checks that need no browser)."""
    assert bookcheck.check_book(built_study, browser=False) == []
    copy = tmp_path / "study"
    for part in ("book/_build/html", "book/chapters", "notebooks"):
        shutil.copytree(built_study / part, copy / part)
    image = next((copy / "book/_build/html/_images").glob("*.png"))
    image.unlink()
    nb_path = copy / "book/chapters/01_scenes.ipynb"
    nb = nbformat.read(nb_path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="Traceback (most recent call last)"))
    nbformat.write(nb, nb_path)
    problems = bookcheck.check_book(copy, browser=False)
    assert any("01_scenes.ipynb" in p and "stderr" in p for p in problems)
    html = copy / "book/_build/html"
    showing = [p for p in bookcheck.pages(html) if image.name in p.read_text()]  # the page that shows the image
    assert showing
    with bookcheck.serve(html) as base:
        broken = bookcheck.page_problems(html, base, chromium(), only=showing)
    assert any(image.name in p and "broken img" in p for p in broken)


@pytest.mark.slow
def test_intro_numbers_come_from_the_chapters(built_study):
    """The intro's findings are glued from executed chapters: the page shows the value the chapter computed."""
    page = (built_study / "book/_build/html/book/intro.html").read_text()
    nb = nbformat.read(built_study / "book/chapters/02_task_networks.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    beaten = re.search(r"(\d+) of (\d+) task networks beat both", text)
    assert beaten and f'<span class="pasted-text">{beaten.group(1)}</span>' in page


@pytest.mark.slow
def test_every_chapter_figure_has_a_caption(built_study):
    problems = bookcheck.caption_problems(built_study / "book/_build/html")
    assert not problems, "\n".join(problems)
