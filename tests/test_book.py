"""The built book as a reader sees it: every page loads in headless Chromium without a JavaScript error, every
image and internal link resolves, no page carries an error or stderr output; screenshots go to artifacts/."""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from urllib.parse import unquote, urldefrag, urlparse

import nbformat
import pytest
from conftest import ROOT


def chromium() -> str:
    """Debian's chromium, installed through apt when missing."""
    exe = shutil.which("chromium")
    if exe is None:
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], check=True, capture_output=True)
        exe = shutil.which("chromium")
    assert exe, "chromium could not be installed"
    return exe


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.refs.append(("img", a["src"]))
        if tag == "a" and a.get("href"):
            self.refs.append(("a", a["href"]))


@pytest.fixture(scope="module")
def server(built_study):
    html = built_study / "book/_build/html"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield html, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def load(exe: str, url: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           "--virtual-time-budget=3000", *extra, url], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_every_page_renders_with_working_links_and_images(server, built_study):
    html, base = server
    exe = chromium()
    pages = sorted(p for p in html.rglob("*.html") if "_static" not in p.parts)
    chapters = {p.stem for p in (built_study / "notebooks").glob("*.ipynb")}
    assert chapters <= {p.stem for p in pages}
    problems = []
    for page in pages:
        rel = page.relative_to(html).as_posix()
        if 'http-equiv="Refresh"' in page.read_text() or "http-equiv=\"refresh\"" in page.read_text():
            continue  # a redirect (index.html -> book/intro.html): its target is checked as a page itself
        proc = load(exe, f"{base}/{rel}", "--dump-dom")
        errors = [ln for ln in proc.stderr.splitlines() if "CONSOLE" in ln and re.search(r"Uncaught|Error", ln)]
        problems += [f"{rel}: JS {e}" for e in errors]
        parser = Links()
        parser.feed(proc.stdout)
        for kind, ref in parser.refs:
            url = urlparse(ref)
            if url.scheme in ("http", "https", "mailto", "data") or ref.startswith("#"):
                continue
            target = (page.parent / unquote(urldefrag(url.path).url)).resolve()
            if target.is_dir():
                target = target / "index.html"
            if not target.is_file() or target.stat().st_size == 0:
                problems.append(f"{rel}: broken {kind} {ref}")
    assert not problems, "\n".join(problems[:20])


@pytest.mark.slow
def test_screenshots_of_intro_and_a_chapter(server):
    html, base = server
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    exe = chromium()
    for name, rel in (("intro.png", "book/intro.html"), ("chapter_scenes.png", "book/chapters/01_scenes.html")):
        load(exe, f"{base}/{rel}", f"--screenshot={out / name}", "--window-size=1280,1600")
        assert (out / name).stat().st_size > 10_000


_OVERFLOW_PROBE = """<html><body><iframe id="f" src="book/chapters/01_scenes.html" width="1400" height="1200"></iframe>
<pre id="out">pending</pre><script>
document.getElementById("f").onload = function () {
  var d = this.contentDocument, t = d.querySelector("div.cell_output table.dataframe");
  document.getElementById("out").textContent = "overflow=" + d.defaultView.getComputedStyle(t).overflowX +
    " table_right=" + Math.round(t.getBoundingClientRect().right) +
    " article_right=" + Math.round(d.querySelector("article").getBoundingClientRect().right);
};</script></body></html>"""


@pytest.mark.slow
def test_wide_tables_scroll_inside_the_page(server):
    """Chapter 01's task dictionary (the widest table) ends inside the page's article column at 1400 px and
    scrolls in its own box (_static/taskstudy.css), instead of running past the right edge."""
    html, base = server
    (html / "overflow_probe.html").write_text(_OVERFLOW_PROBE)
    out = load(chromium(), f"{base}/overflow_probe.html", "--dump-dom", "--virtual-time-budget=6000").stdout
    found = re.search(r"overflow=(\w+) table_right=(\d+) article_right=(\d+)", out)
    assert found, out[-500:]
    assert found.group(1) == "auto" and int(found.group(2)) <= int(found.group(3)), found.group(0)


@pytest.mark.slow
def test_no_page_carries_error_or_stderr_output(built_study):
    for path in (built_study / "book/chapters").glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        bad = [o for c in nb.cells for o in c.get("outputs", [])
               if o.output_type == "error" or (o.output_type == "stream" and o.name == "stderr")]
        assert not bad, (path.name, bad[:1])


@pytest.mark.slow
def test_intro_numbers_come_from_the_chapters(built_study):
    """The intro's findings are glued from executed chapters: the page shows the value the chapter computed."""
    page = (built_study / "book/_build/html/book/intro.html").read_text()
    nb = nbformat.read(built_study / "book/chapters/02_task_networks.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    beaten = re.search(r"(\d+) of (\d+) task networks beat both", text)
    assert beaten and f'<span class="pasted-text">{beaten.group(1)}</span>' in page


class Figures(HTMLParser):
    """Counts the plot images (cell outputs) of a page and those inside a <figure> that has a <figcaption>."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[dict] = []
        self.images = 0
        self.captioned = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "figure":
            self.stack.append({"images": 0, "caption": False})
        elif tag == "figcaption" and self.stack:
            self.stack[-1]["caption"] = True
        elif tag == "img" and "_images/" in (dict(attrs).get("src") or ""):
            self.images += 1
            if self.stack:
                self.stack[-1]["images"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "figure" and self.stack:
            fig = self.stack.pop()
            self.captioned += fig["images"] if fig["caption"] else 0


@pytest.mark.slow
def test_every_chapter_figure_has_a_caption(built_study):
    missing = []
    for page in sorted((built_study / "book/_build/html/book/chapters").glob("*.html")):
        f = Figures()
        f.feed(page.read_text())
        if f.captioned < f.images:
            missing.append(f"{page.name}: {f.images - f.captioned} of {f.images} figures without a caption")
    assert not missing, "\n".join(missing)
