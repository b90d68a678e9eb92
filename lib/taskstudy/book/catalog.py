"""The chapters' catalog: which chapters exist, what each reads, and whether its executed page is fresh.

Chapters are the notebooks `notebooks/NN_name.ipynb` (ordered by NN); chapter `NN_name` reads params section
`name`. A chapter's upstream chapters are named in its parameters cell by a comment line `# depends:
02_task_networks, 03_transfers`; a chapter whose numbers are timings of this machine says `# runs: alone`. A chapter
is *fresh* when its executed notebook exists and was made from the same notebook source, library code, params
(common, its own section and its upstream chapters' sections) and profile; *stale* when any of those changed;
*missing* when never run. Executing them is `pipeline`'s job.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taskstudy.engine.params import RESERVED, StudyParams, _suggest, notebook_defaults
from taskstudy.engine.paths import chapters_dir, find_root, notebooks_dir
from taskstudy.engine.sections import SECTIONS

NAME = re.compile(r"^(\d\d)_([a-z][a-z0-9_]*)$")


DEPENDS = re.compile(r"^#\s*depends\s*:\s*(.*)$", re.MULTILINE)


ALONE = re.compile(r"^#\s*runs\s*:\s*alone\b", re.MULTILINE)


SCENES_ONLY = re.compile(r"^#\s*needs\s*:\s*scenes\b", re.MULTILINE)  # it needs the renderer, not only data


class ChapterError(RuntimeError):
    """A chapter that is malformed or failed to execute; the message names the chapter (and cell)."""


@dataclass(frozen=True)
class Chapter:
    name: str  # "03_transfers"
    number: int  # 3
    section: str  # "transfers": its params section
    path: Path  # notebooks/03_transfers.ipynb
    depends: tuple[str, ...]  # names of the chapters whose results it reads
    alone: bool = False  # its numbers are timings: nothing runs beside it
    scenes_only: bool = False  # it needs the renderer (`# needs: scenes`): skipped on other data


def runs_dir(root: Path | None = None) -> Path:
    """Run records and in-progress / failed executed notebooks."""
    return (root or find_root()) / "book" / "_runs"


def _parameters_source(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if "parameters" in c.get("metadata", {}).get("tags", []):
            return c.source
    raise ChapterError(f"{path}: no cell tagged 'parameters' (papermill needs one to inject params)")


def chapters(root: Path | None = None) -> list[Chapter]:
    """Every chapter in notebooks/, in order, with its dependencies checked."""
    root = root or find_root()
    out = []
    for p in sorted(notebooks_dir(root).glob("*.ipynb")):
        m = NAME.match(p.stem)
        if not m:
            continue
        src = _parameters_source(p)
        deps = ()
        dm = DEPENDS.search(src)
        if dm:
            deps = tuple(d.strip() for d in dm.group(1).split(",") if d.strip())
        out.append(Chapter(p.stem, int(m.group(1)), m.group(2), p, deps, bool(ALONE.search(src)),
                           bool(SCENES_ONLY.search(src))))
    names = [c.name for c in out]
    for c in out:
        for d in c.depends:
            if d not in names:
                raise ChapterError(f"{c.path}: depends on unknown chapter '{d}'{_suggest(d, names)}")
            if names.index(d) >= names.index(c.name):
                raise ChapterError(f"{c.path}: depends on '{d}', which comes later")
    return out


def select(all_chapters: Sequence[Chapter], wanted: Iterable[str]) -> list[Chapter]:
    """Chapters by full name (03_transfers), number (03 or 3) or section (transfers), in book order."""
    chosen = set()
    for w in wanted:
        hits = [
            c for c in all_chapters
            if w in (c.name, c.section) or (w.isdigit() and int(w) == c.number)
        ]
        if not hits:
            keys = [c.name for c in all_chapters] + [c.section for c in all_chapters]
            raise ChapterError(f"no chapter '{w}'{_suggest(w, keys)}; `taskstudy list` shows them")
        chosen.update(c.name for c in hits)
    return [c for c in all_chapters if c.name in chosen]


def upstream(all_chapters: Sequence[Chapter], chapter: Chapter) -> list[Chapter]:
    """Every chapter `chapter` reads from, transitively, in book order."""
    by_name = {c.name: c for c in all_chapters}
    seen: set[str] = set()
    todo = list(chapter.depends)
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(by_name[d].depends)
    return [c for c in all_chapters if c.name in seen]


def downstream(all_chapters: Sequence[Chapter], selected: Sequence[Chapter]) -> list[Chapter]:
    """The selected chapters plus every chapter that reads their results, transitively, in book order."""
    names = {c.name for c in selected}
    for c in all_chapters:  # book order: a dependency always comes first
        if any(d in names for d in c.depends):
            names.add(c.name)
    return [c for c in all_chapters if c.name in names]


def priority(all_chapters: Sequence[Chapter], chapter: Chapter) -> int:
    """The chapter's place on a run's critical path: first the chapters more chapters wait on (transitively), then,
    of two that as many wait on, the one deeper in a chain of dependencies. `taskstudy run` gives each chapter's
    units this priority on the shared workers (`parallel.set_priority`)."""
    by_name = {c.name: c for c in all_chapters}

    def depth(c: Chapter) -> int:
        return max((1 + depth(by_name[d]) for d in c.depends if d in by_name), default=0)

    return 100 * (len(downstream(all_chapters, [chapter])) - 1) + depth(chapter)


def _notebook_digest(path: Path) -> str:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return hashlib.sha256("\x00".join(c.source for c in nb.cells).encode()).hexdigest()


def _code_digest(path: Path) -> str:
    """What the chapter's cells call of the library (codehash.source_hash): an edit to code the chapter does not
    reach, or to a docstring, leaves it fresh."""
    import nbformat

    from taskstudy.engine.codehash import source_hash

    nb = nbformat.read(path, as_version=4)
    return source_hash("\n".join(c.source for c in nb.cells if c.cell_type == "code"))


def fingerprint(chapter: Chapter, params: StudyParams, all_chapters: Sequence[Chapter], root: Path) -> str:
    """What an executed chapter was made from: notebook, library code, profile and the params it reads."""
    sections = [chapter.section] + [c.section for c in upstream(all_chapters, chapter)]
    parts = [
        params.profile,
        _notebook_digest(chapter.path),
        _code_digest(chapter.path),
        params.digest(*sections),
    ]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:20]


def record_path(chapter: Chapter, root: Path) -> Path:
    return runs_dir(root) / f"{chapter.name}.json"


def read_record(chapter: Chapter, root: Path | None = None) -> dict[str, Any] | None:
    p = record_path(chapter, root or find_root())
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def status(chapter: Chapter, params: StudyParams, all_chapters: Sequence[Chapter], root: Path) -> str:
    """'fresh', 'stale' or 'missing' for this profile and params."""
    executed = chapters_dir(root) / f"{chapter.name}.ipynb"
    rec = read_record(chapter, root)
    if not executed.is_file() or rec is None:
        return "missing"
    if rec.get("fingerprint") != fingerprint(chapter, params, all_chapters, root):
        return "stale"
    for up in upstream(all_chapters, chapter):
        up_rec = read_record(up, root)
        if up_rec is None or up_rec.get("finished", 0) > rec.get("finished", 0):
            return "stale"
    return "fresh"


def chapter_parameters(chapter: Chapter, params: StudyParams, root: Path | None = None) -> dict[str, Any]:
    """What papermill injects: the params file (relative to the study root when inside it: the kernel runs
    there, and a page shows no path of the machine that built it) and the overrides. A chapter of the study reads
    its section from them (its defaults live in taskstudy.engine.sections, once); a user's chapter without a section model
    there keeps its defaults in its parameters cell, and gets the profile's values injected as well."""
    defaults = notebook_defaults(chapter.path)
    builtin = chapter.section in SECTIONS
    own = {} if builtin else params.values(chapter.section)
    extra = [k for k in defaults if k not in RESERVED] if builtin else [k for k in own if k not in defaults]
    if extra:
        raise ChapterError(
            f"{chapter.path}: the parameters cell defines {extra}, which live in the params section "
            f"'{chapter.section}' (taskstudy.engine.sections); keep only params_file and overrides there" if builtin else
            f"{chapter.path}: params section '{chapter.section}' has {extra} but the parameters cell does not"
        )
    file = params.file.resolve()
    if root is not None and file.is_relative_to(root.resolve()):
        file = file.relative_to(root.resolve())
    return {"params_file": str(file), "overrides": list(params.overrides), **own}


def plan(params: StudyParams, wanted: Sequence[str] = (), with_downstream: bool = False,
         force: bool = False, root: Path | None = None) -> list[Chapter]:
    """The chapters `taskstudy run` would execute: the named ones (plus downstream), else every chapter that
    is not fresh (all of them with force)."""
    root = root or find_root()
    chs = chapters(root)
    if wanted:
        todo = select(chs, wanted)
        todo = downstream(chs, todo) if with_downstream else todo
    elif force:
        todo = chs
    else:
        todo = []
        for c in chs:
            if status(c, params, chs, root) != "fresh" or any(u.name in {t.name for t in todo}
                                                              for u in upstream(chs, c)):
                todo.append(c)
    return todo


def skipped_for_data(todo: Sequence[Chapter], params: StudyParams) -> list[Chapter]:
    """The chapters of `todo` that need the renderer (`# needs: scenes`) when the study runs on other data."""
    return [] if params.common.dataset == "scenes" else [c for c in todo if c.scenes_only]
