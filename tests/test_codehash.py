"""Cache keys that survive refactoring (issue 19, item 3): taskstudy.engine.codehash on copies of the package, edited.

Each test copies lib/taskstudy, edits the copy as a refactoring or a real change would, and compares the `code` key
part of every unit kind, and every chapter's code digest, with the unedited copy's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from taskstudy.book import catalog
from taskstudy.engine import codehash

LIB = Path(codehash.__file__).resolve().parents[1]  # the package folder (codehash is in engine/)
NOTEBOOKS = LIB.parents[1] / "notebooks"

# the function that computes each unit kind's stored results: its computation_hash is the kind's key part `code`
UNIT_KINDS = {
    "scene split": ("taskstudy.world.data", "code_version"),
    "object split": ("taskstudy.world.objects", "render_objects"),
    "Step I network": ("taskstudy.taskonomy.task_networks", "train_network_unit"),
    "frozen features": ("taskstudy.taskonomy.features", "_source_features"),
    "readout and scratch": ("taskstudy.taskonomy.transfer", "target_unit"),
    "layer transfer": ("taskstudy.yosinski.layers", "run_unit"),
    "learnability": ("taskstudy.world.learnability", "run_row"),
    "multi-task network": ("taskstudy.standley.multitask", "train_unit"),
    "imagenet encoder": ("taskstudy.taskonomy.novel", "train_imagenet"),
    "novel readout": ("taskstudy.taskonomy.novel", "imagenet_scores"),
    "task2vec probe": ("taskstudy.task2vec.task2vec", "train_probe"),
    "task2vec embedding": ("taskstudy.task2vec.task2vec", "embed_unit"),
    "task2vec expert": ("taskstudy.task2vec.task2vec", "expert_unit"),
    "outside probe": ("taskstudy.taskonomy.outside", "_probe_unit"),
    "taskonomy split": ("taskstudy.world.taskonomy_data", "load_split"),
    "task2vec dense embedding": ("taskstudy.task2vec.task2vec_dense", "dense_unit"),
    "outside data": ("taskstudy.taskonomy.outside", "outside_data"),
    "novel readout unit": ("taskstudy.taskonomy.novel", "novel_readout_unit"),
    "render benchmark": ("taskstudy.report.benchmarks", "bench_render"),
    "estimator scores": ("taskstudy.taskonomy.estimators", "scores_unit"),
}


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name / "taskstudy"
    shutil.copytree(LIB, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit(root: Path, module: str, old: str, new: str) -> None:
    [p] = root.rglob(f"{module}.py")  # the module of that name, in whichever package it sits
    text = p.read_text()
    assert old in text, f"{module}.py no longer holds {old!r}: update the test's edit"
    p.write_text(text.replace(old, new, 1))
    os.utime(p, ns=(p.stat().st_mtime_ns + 10**9,) * 2)  # the memo keys on modification times
    codehash._STATE.clear()  # which are trusted for STATE_TTL_S: as if that time had passed


def _hashes(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(codehash, "ROOT", root)
    out = {kind: codehash.symbol_hash(*sym) for kind, sym in UNIT_KINDS.items()}
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        out[nb.stem] = catalog._code_digest(nb)
    return out


def _changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    return {k for k in a if a[k] != b[k]}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    with pytest.MonkeyPatch.context() as mp:
        return _hashes(_copy(tmp_path_factory.mktemp("base"), "base"), mp)


def test_every_unit_kind_and_chapter_is_hashed(base):
    assert not [k for k, v in base.items() if v == codehash.symbol_hash("taskstudy.nothing", "here")]
    assert len(set(base[k] for k in UNIT_KINDS)) == len(UNIT_KINDS)  # no two kinds share a hash


def test_docstring_comment_and_type_hint_edits_recompute_nothing(tmp_path, monkeypatch, base):
    root = _copy(tmp_path, "docs")
    _edit(root, "train", '"""The learning rate at `step`', '"""(edited) The learning rate at `step`')
    _edit(root, "models", "def make_readout(", "# a new comment\ndef make_readout(")
    _edit(root, "scenes", '"""', '"""An edited module docstring. ')
    _edit(root, "train", "def cosine_lr(lr: float, step: int, total: int) -> float:", "def cosine_lr(lr, step, total):")
    assert _changed(base, _hashes(root, monkeypatch)) == set()


def test_moving_and_renaming_a_function_recomputes_nothing(tmp_path, monkeypatch, base):
    root = _copy(tmp_path, "moved")
    body = '''def cosine_lr(lr: float, step: int, total: int) -> float:
    """The learning rate at `step` of `total`: lr * (1 + cos(pi * step / total)) / 2."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
'''
    _edit(root, "train", body, "")
    _edit(root, "train", "from taskstudy.engine.parallel import progress",
          "from taskstudy.engine.parallel import progress\nfrom taskstudy.schedules import half_cosine as cosine_lr")
    (root / "schedules.py").write_text('"""Schedules."""\n\nimport math\n\n\n'
                                       + body.replace("cosine_lr", "half_cosine"))
    assert _changed(base, _hashes(root, monkeypatch)) == set()


def test_a_change_recomputes_only_the_units_and_chapters_that_reach_it(tmp_path, monkeypatch, base):
    root = _copy(tmp_path, "changed")
    _edit(root, "models", "return nn.Sequential(neck, make_decoder(kind, width, out_channels, decoder_width))",
          "return nn.Sequential(neck, make_decoder(kind, width, out_channels, 2 * decoder_width))")  # Step II only
    changed = _changed(base, _hashes(root, monkeypatch))
    assert {"readout and scratch", "03_transfers"} <= changed
    assert not changed & {"Step I network", "scene split", "layer transfer", "multi-task network", "task2vec probe",
                          "01_scenes", "02_task_networks", "08_layer_transfer", "10_task_grouping"}


def test_a_change_to_training_recomputes_every_trained_kind(tmp_path, monkeypatch, base):
    root = _copy(tmp_path, "train")
    _edit(root, "train", "return lr * 0.5 * (1.0 + math.cos(", "return lr * 0.49 * (1.0 + math.cos(")
    changed = _changed(base, _hashes(root, monkeypatch))
    assert {"Step I network", "readout and scratch", "layer transfer", "multi-task network"} <= changed
    assert not changed & {"scene split", "object split", "taskonomy split"}


def test_the_hash_is_the_same_in_any_order(tmp_path, monkeypatch):
    root = _copy(tmp_path, "order")
    monkeypatch.setattr(codehash, "ROOT", root)
    forward = {k: codehash.symbol_hash(*s) for k, s in UNIT_KINDS.items()}
    for memo in (codehash._DONE, codehash._MEMO, codehash._RAW):
        memo.clear()
    backward = {k: codehash.symbol_hash(*s) for k, s in reversed(list(UNIT_KINDS.items()))}
    assert forward == backward


def test_computation_hash_takes_functions_of_the_package():
    from taskstudy.nn import train

    assert codehash.computation_hash(train.cosine_lr) == codehash.symbol_hash("taskstudy.nn.train", "cosine_lr")
    with pytest.raises(TypeError, match="top-level functions"):
        codehash.computation_hash(len)


# ---- keys that survive a move (issue 39, step 1) -------------------------------------------------------------
def _relayout(root: Path, moves: dict[str, str]) -> dict[str, str]:
    """Move modules of the copy at `root` ("engine.store" -> "store": dotted names under the package), drop the
    packages left empty and rewrite every import of them, as `git mv` plus an import rewrite would: returns old
    dotted name -> new."""
    import re

    new = {f"taskstudy.{a}": f"taskstudy.{b}" for a, b in moves.items()}
    for a, b in moves.items():
        dst = root.joinpath(*b.split(".")).with_suffix(".py")
        if dst.parent != root:
            dst.parent.mkdir(parents=True, exist_ok=True)
            (dst.parent / "__init__.py").touch()
        root.joinpath(*a.split(".")).with_suffix(".py").rename(dst)
    for init in root.glob("*/__init__.py"):
        if not [p for p in init.parent.iterdir() if p.name not in ("__init__.py", "__pycache__")]:
            shutil.rmtree(init.parent)

    def from_import(match: re.Match) -> str:
        indent, base = match.group(1), match.group(2)
        names = [n.strip() for n in (match.group(3) or match.group(4)).replace("\n", " ").split(",") if n.strip()]
        by_pkg: dict[str, list[str]] = {}
        for n in names:
            target = new.get(f"{base}.{n.split(' as ')[0]}", f"{base}.{n}").rsplit(".", 1)[0]
            by_pkg.setdefault(target, []).append(n)
        return "\n".join(f"{indent}from {p} import {', '.join(ns)}" for p, ns in by_pkg.items())

    def dotted(match: re.Match) -> str:
        parts = match.group(0).split(".")
        for k in range(len(parts), 1, -1):
            if ".".join(parts[:k]) in new:
                return ".".join([new[".".join(parts[:k])], *parts[k:]])
        return match.group(0)

    for p in root.rglob("*.py"):
        text = p.read_text()
        edited = re.sub(r"^([ \t]*)from (taskstudy(?:\.\w+)*) import (?:\(([^)]*)\)|([\w, ]+)$)", from_import, text,
                        flags=re.M)
        edited = re.sub(r"\btaskstudy(?:\.\w+)+", dotted, edited)
        if edited != text:
            p.write_text(edited)
            os.utime(p, ns=(p.stat().st_mtime_ns + 10**9,) * 2)
    return new


def test_moving_modules_between_packages_recomputes_nothing(tmp_path, monkeypatch, base):
    """Every module of every subpackage (the plumbing in engine/ included) moved back to the package's top, the
    inverse of the layout's move, every import rewritten: no unit kind's key changes."""
    root = _copy(tmp_path, "relaid")
    flat = {f"{p.parent.name}.{p.stem}": p.stem for p in root.glob("*/*.py") if p.name != "__init__.py"}
    assert {"engine.store", "engine.params", "engine.codehash", "taskonomy.transfer"} <= flat.keys()
    new = _relayout(root, flat)
    assert not (root / "engine").exists() and (root / "store.py").exists()
    assert "from taskstudy.store import" in (root / "data.py").read_text()
    monkeypatch.setattr(codehash, "ROOT", root)
    moved = {kind: codehash.symbol_hash(new.get(m, m), name) for kind, (m, name) in UNIT_KINDS.items()}
    assert moved == {k: base[k] for k in UNIT_KINDS}
    # a real change in a moved module still counts, for the kinds that reach it only
    _edit(root, "transfer", "if u.scratch:", "if u.scratch and u.target:")
    after = {kind: codehash.symbol_hash(new.get(m, m), name) for kind, (m, name) in UNIT_KINDS.items()}
    assert _changed(after, moved) == {"readout and scratch"}


def test_definition_texts_are_the_same_under_every_python(tmp_path):
    """Python 3.12 added `type_params` to every def and class: hashed, it changed 900 of 1,110 definition texts
    under 3.13. Each interpreter found here (3.11 to 3.13) reads every definition of the package to the same text."""
    import json
    import subprocess
    import sys

    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    pythons = [sys.executable, *(str(p) for v in (12, 13) for p in sorted(pyenv.glob(f"3.{v}*/bin/python"))[:1])]
    pythons += [p for p in (shutil.which(f"python3.{v}") for v in (12, 13)) if p and "shims" not in p]
    outs = {}
    for py in pythons:
        proc = subprocess.run([py, str(Path(__file__).parent / "codehash_texts.py"), codehash.__file__],
                              capture_output=True, text=True)
        if proc.returncode == 0:
            outs[py] = json.loads(proc.stdout)
    if len(outs) < 2:
        pytest.skip("only one Python version on this machine")
    first = outs[sys.executable]
    assert len(first) > 500
    for py, texts in outs.items():
        assert texts == first, f"{py}: {sum(texts.get(k) != v for k, v in first.items())} definitions differ"


def test_hashes_kept_between_processes_equal_a_fresh_walk(tmp_path, monkeypatch, base):
    """The cache file (one per content of the package's files) gives the hashes a walk gives, and is read: a
    process that finds it does not walk; an edit anywhere makes another file, never a stale hash."""
    monkeypatch.setenv("TASKSTUDY_CACHE", str(tmp_path / "cache"))
    root = _copy(tmp_path, "cached")

    def forget() -> None:
        for memo in (codehash._MEMO, codehash._DONE, codehash._RAW):
            memo.clear()
        codehash._LOADED.clear()

    forget()
    assert _hashes(root, monkeypatch) == base  # walked, then stored
    files = list((tmp_path / "cache/codehash").glob("*.json"))
    assert len(files) == 1
    forget()
    walked = []
    monkeypatch.setattr(codehash, "_raw", lambda *a: walked.append(a) or pytest.fail("walked"))
    assert _hashes(root, monkeypatch) == base and not walked  # read back, no walk
    monkeypatch.undo()
    monkeypatch.setenv("TASKSTUDY_CACHE", str(tmp_path / "cache"))
    forget()
    _edit(root, "train", "def ", "def _unused_helper():\n    return 1\n\n\ndef ")
    _hashes(root, monkeypatch)
    assert len(list((tmp_path / "cache/codehash").glob("*.json"))) == 2


def test_no_unit_or_chapter_reaches_a_name_that_is_not_there(monkeypatch, tmp_path):
    """A reference to a definition the package does not have (a module's attribute left behind by a move) is hashed
    as the bare name: the key changes silently and the code fails only when it runs. Every unit kind's reach and
    every chapter's must resolve."""
    missing: set[str] = set()
    real = codehash._definition

    def recording(module: str, name: str):  # noqa: ANN202
        found = real(module, name)
        if isinstance(found, str) and found.startswith("missing:"):
            missing.add(f"{module}.{name}")
        return found

    monkeypatch.setattr(codehash, "_definition", recording)
    monkeypatch.setenv("TASKSTUDY_CACHE", str(tmp_path))  # a fresh walk, not hashes kept from earlier
    for memo in (codehash._DONE, codehash._MEMO, codehash._RAW):
        memo.clear()
    for sym in UNIT_KINDS.values():
        codehash.symbol_hash(*sym)
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        catalog._code_digest(nb)
    assert not missing, sorted(missing)


def test_file_times_are_trusted_for_a_moment_then_read_again(tmp_path, monkeypatch):
    root = _copy(tmp_path, "ttl")
    monkeypatch.setattr(codehash, "ROOT", root)
    before = codehash._package_state()
    p = root / "nn" / "train.py"
    os.utime(p, ns=(p.stat().st_mtime_ns + 10**9,) * 2)
    assert codehash._package_state() == before  # within STATE_TTL_S: not read again
    monkeypatch.setattr(codehash, "STATE_TTL_S", 0.0)
    assert codehash._package_state() != before  # after it: the edit is seen
