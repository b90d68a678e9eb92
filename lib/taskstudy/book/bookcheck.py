"""Check a built book as a reader sees it (`taskstudy book --check`): the checks CI runs on the smoke book, for any
book already built, the default one included.

In headless Chromium every page loads without a JavaScript error and every image and internal link resolves; wide
tables scroll inside their own box at 1400 px; every plot of a chapter sits in a captioned figure; no executed
chapter carries an error or a stderr output, nor a path of the machine that checks it (`build.page_problems`,
which the build runs too). Screenshots of chosen pages at 1400 px go to a folder, for a reader to look at.
"""

from __future__ import annotations

import functools
import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import nbformat

WIDTH = 1400  # px: the page width the checks and screenshots use
SCREENSHOTS = {"intro.png": "book/intro.html", "findings.png": "book/findings.html",
               "chapter_05_taxonomy.png": "book/chapters/05_taxonomy.html",
               "chapter_10_grouping.png": "book/chapters/10_task_grouping.html"}


class BookCheckError(RuntimeError):
    """The check cannot run (no built book, no browser)."""


def chromium() -> str:
    """The headless browser: Debian's `chromium` on PATH."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise BookCheckError("chromium not found on PATH: install it (Debian: apt-get install chromium)")
    return exe


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base class's name)
        """No request log on stderr: the check prints its problems only."""


@contextmanager
def serve(html: Path) -> Iterator[str]:
    """Serve the built HTML on a free local port for the duration; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(html))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()


def load(exe: str, url: str, *extra: str, budget_ms: int = 3000) -> subprocess.CompletedProcess:
    """One headless page load (`extra`: --dump-dom, --screenshot=..., --window-size=...)."""
    return subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                           f"--virtual-time-budget={budget_ms}", *extra, url], capture_output=True, text=True,
                          timeout=120)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.refs.append(("img", a["src"]))
        if tag == "a" and a.get("href"):
            self.refs.append(("a", a["href"]))


def pages(html: Path) -> list[Path]:
    """The book's pages (redirects left out: their targets are pages themselves)."""
    out = []
    for p in sorted(html.rglob("*.html")):
        text = p.read_text(errors="replace")
        if "_static" not in p.parts and 'http-equiv="Refresh"' not in text and 'http-equiv="refresh"' not in text:
            out.append(p)
    return out


def broken_refs(page: Path, dom: str, rel: str) -> list[str]:
    """Images and internal links of a page's DOM that resolve to no (or an empty) file."""
    parser = _Links()
    parser.feed(dom)
    problems = []
    for kind, ref in parser.refs:
        url = urlparse(ref)
        if url.scheme in ("http", "https", "mailto", "data") or ref.startswith("#"):
            continue
        target = (page.parent / unquote(urldefrag(url.path).url)).resolve()
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or target.stat().st_size == 0:
            problems.append(f"{rel}: broken {kind} {ref}")
    return problems


def page_problems(html: Path, base: str, exe: str, only: Sequence[Path] | None = None) -> list[str]:
    """Every page (or `only` these) loaded in the browser: JavaScript errors, broken images and internal links."""
    problems = []
    for page in pages(html) if only is None else only:
        rel = page.relative_to(html).as_posix()
        proc = load(exe, f"{base}/{rel}", "--dump-dom")
        problems += [f"{rel}: JS {ln.strip()}" for ln in proc.stderr.splitlines()
                     if "CONSOLE" in ln and re.search(r"Uncaught|Error", ln)]
        problems += broken_refs(page, proc.stdout, rel)
    return problems


class _Figures(HTMLParser):
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


def caption_problems(html: Path) -> list[str]:
    """Chapter pages with plots outside a captioned figure."""
    problems = []
    for page in sorted((html / "book/chapters").glob("*.html")):
        f = _Figures()
        f.feed(page.read_text())
        if f.captioned < f.images:
            problems.append(f"{page.name}: {f.images - f.captioned} of {f.images} figures without a caption")
    return problems


def output_problems(chapters: Path) -> list[str]:
    """Executed chapters with an error output or a stderr stream."""
    problems = []
    for path in sorted(chapters.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for i, c in enumerate(nb.cells):
            for o in c.get("outputs", []):
                if o.output_type == "error":
                    problems.append(f"{path.name}: cell {i}: error {o.get('ename', '')}")
                elif o.output_type == "stream" and o.name == "stderr":
                    problems.append(f"{path.name}: cell {i}: stderr output {o.get('text', '')[:80]!r}")
    return problems


_OVERFLOW_PROBE = """<html><body><iframe id="f" src="{page}" width="{width}" height="1200"></iframe>
<pre id="out">pending</pre><script>
document.getElementById("f").onload = function () {{
  var d = this.contentDocument, t = d.querySelector("div.cell_output table.dataframe");
  document.getElementById("out").textContent = t === null ? "no table" : "overflow=" +
    d.defaultView.getComputedStyle(t).overflowX + " table_right=" + Math.round(t.getBoundingClientRect().right) +
    " article_right=" + Math.round(d.querySelector("article").getBoundingClientRect().right);
}};</script></body></html>"""


def wide_table_problems(html: Path, base: str, exe: str, page: str = "book/chapters/01_scenes.html") -> list[str]:
    """The first DataFrame table of `page` (chapter 01's task dictionary, the widest) must end inside the
    article column at WIDTH px and scroll in its own box (_static/taskstudy.css)."""
    probe = html / "overflow_probe.html"
    probe.write_text(_OVERFLOW_PROBE.format(page=page, width=WIDTH))
    try:
        out = load(exe, f"{base}/overflow_probe.html", "--dump-dom", budget_ms=6000).stdout
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r"overflow=(\w+) table_right=(\d+) article_right=(\d+)", out)
    if not found:
        return [f"{page}: the wide-table probe found no table ({out[-200:]!r})"]
    if found.group(1) != "auto" or int(found.group(2)) > int(found.group(3)):
        return [f"{page}: a wide table runs past the page ({found.group(0)})"]
    return []


def screenshots(html: Path, base: str, exe: str, out: Path, shots: dict[str, str] | None = None) -> list[Path]:
    """Screenshots of `shots` (file name -> page) at WIDTH px into `out`; pages the book lacks are skipped."""
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, rel in (SCREENSHOTS if shots is None else shots).items():
        if (html / rel).is_file():
            load(exe, f"{base}/{rel}", f"--screenshot={out / name}", f"--window-size={WIDTH},2400")
            made.append(out / name)
    return made


def check_book(root: Path, shots: Path | None = None, browser: bool = True) -> list[str]:
    """Every check above on the book built under `root` (book/_build/html, book/chapters); one line per problem.
    `shots`: a folder for the screenshots; `browser=False` runs only the checks that need no browser."""
    html = root / "book/_build/html"
    if not (html / "index.html").is_file():
        raise BookCheckError(f"no built book at {html}: build it with `taskstudy book`")
    from taskstudy.book.build import page_problems as build_problems

    problems = output_problems(root / "book/chapters") + caption_problems(html)
    problems += [p for nb in sorted((root / "book/chapters").glob("*.ipynb")) for p in build_problems(nb, root)
                 if "path of this machine" in p]  # the build refuses them too; a copied book may carry them
    missing = {p.stem for p in (root / "notebooks").glob("*.ipynb")} - {p.stem for p in pages(html)}
    problems += [f"{m}: the chapter has no page in the book" for m in sorted(missing)]
    if browser:
        exe = chromium()
        with serve(html) as base:
            problems += page_problems(html, base, exe) + wide_table_problems(html, base, exe)
            if shots is not None:
                screenshots(html, base, exe, shots)
    return problems


def report(problems: Sequence[str]) -> str:
    """The check's verdict as text: one line per problem, or that the book is clean."""
    if not problems:
        return "book check: no problem found"
    return "\n".join([f"book check: {len(problems)} problem(s)", *problems])
