"""The book's build: what an executed page must not show, the Jupyter Book build, and cleaning up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from taskstudy.book.catalog import ChapterError, runs_dir
from taskstudy.engine.paths import build_dir, chapters_dir, find_root


def page_problems(path: Path, root: Path) -> list[str]:
    """What a reader must not see on an executed chapter's page: error outputs, stderr streams carrying a
    traceback, and absolute paths of the machine that built it (the study root, the Python environment, the home
    folder) in any shown source or output, or in the notebook's metadata (the page's .ipynb download carries it).
    One line per problem."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    machine = sorted({str(p) for p in (root.resolve(), Path(sys.prefix), Path(sys.base_prefix), Path.home())
                      if len(str(p)) > 1}, key=len, reverse=True)
    problems = []
    meta = json.dumps(nb.metadata)
    hit = next((m for m in machine if m in meta), None)
    if hit:
        problems.append(f"{path.stem}: notebook metadata: a path of this machine ({hit})")
    for i, cell in enumerate(nb.cells):
        if "remove-cell" in cell.metadata.get("tags", []):
            continue
        texts = [("source", cell.source)]
        for out in cell.get("outputs", []):
            if out.output_type == "error":
                problems.append(f"{path.stem}: cell {i}: error output {out.ename}: {out.evalue}"[:200])
            elif out.output_type == "stream":
                if out.name == "stderr" and "Traceback" in out.text:
                    problems.append(f"{path.stem}: cell {i}: a traceback on stderr: {out.text.strip().splitlines()[-1]}"
                                    [:200])
                texts.append((f"{out.name} output", out.text))
            for kind, value in out.get("data", {}).items():
                if kind.startswith("text/") or kind == "application/json":
                    texts.append((f"{kind} output", value if isinstance(value, str) else json.dumps(value)))
        for where, text in texts:
            hit = next((m for m in machine if m in text), None)
            if hit:
                line = next(ln for ln in text.splitlines() if hit in ln).strip()
                problems.append(f"{path.stem}: cell {i}: a path of this machine in its {where}: {line}"[:200])
    return problems


def build_book(root: Path | None = None, strict: bool = True) -> Path:
    """Build the Jupyter Book (1.x, execute_notebooks off) into book/_build/html; warnings are errors. A chapter
    whose page a reader must not see (`page_problems`) stops the build first, one line per problem."""
    root = root or find_root()
    problems = [p for path in sorted(chapters_dir(root).glob("*.ipynb")) for p in page_problems(path, root)]
    if problems:
        raise ChapterError("the book is not built: executed chapters hold what a reader must not see\n  "
                           + "\n  ".join(problems))
    exe = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(exe) if exe.exists() else "jupyter-book", "build", str(root), "--path-output", str(root / "book")]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    log_path = build_dir(root) / "build.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(proc.stdout + proc.stderr)
    index = build_dir(root) / "html" / "index.html"
    if proc.returncode != 0 or not index.is_file():
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
        raise ChapterError(f"book build failed (full log: {log_path}):\n{tail}")
    return index


def clean(root: Path | None = None, results: Path | None = None) -> list[Path]:
    """Remove executed chapters, run records and the built book (and a results folder, if given)."""
    root = root or find_root()
    removed = []
    for p in (chapters_dir(root), runs_dir(root), build_dir(root), *([results] if results else [])):
        if p.exists():
            shutil.rmtree(p)
            removed.append(p)
    return removed
