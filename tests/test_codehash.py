"""Cache keys that survive refactoring (issue 19, item 3): taskstudy.codehash on copies of the package, edited.

Each test copies lib/taskstudy, edits the copy as a refactoring or a real change would, and compares the `code` key
part of every unit kind, and every chapter's code digest, with the unedited copy's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from taskstudy import codehash, pipeline

LIB = Path(codehash.__file__).resolve().parent
NOTEBOOKS = LIB.parents[1] / "notebooks"

# the function that computes each unit kind's stored results: its computation_hash is the kind's key part `code`
UNIT_KINDS = {
    "scene split": ("taskstudy.data", "code_version"),
    "object split": ("taskstudy.objects", "render_objects"),
    "Step I network": ("taskstudy.task_networks", "train_network_unit"),
    "frozen features": ("taskstudy.transfer", "_source_features"),
    "readout and scratch": ("taskstudy.transfer", "target_unit"),
    "layer transfer": ("taskstudy.layers", "run_unit"),
    "learnability": ("taskstudy.learnability", "run_row"),
    "multi-task network": ("taskstudy.multitask", "train_unit"),
    "imagenet encoder": ("taskstudy.novel", "train_imagenet"),
    "novel readout": ("taskstudy.novel", "imagenet_scores"),
    "task2vec probe": ("taskstudy.task2vec", "train_probe"),
    "task2vec embedding": ("taskstudy.task2vec", "embed_unit"),
    "task2vec expert": ("taskstudy.task2vec", "expert_unit"),
    "outside probe": ("taskstudy.robustness", "_probe_unit"),
    "taskonomy split": ("taskstudy.taskonomy_data", "load_split"),
}


def _copy(tmp_path: Path, name: str) -> Path:
    dst = tmp_path / name / "taskstudy"
    shutil.copytree(LIB, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit(root: Path, module: str, old: str, new: str) -> None:
    p = root / f"{module}.py"
    text = p.read_text()
    assert old in text, f"{module}.py no longer holds {old!r}: update the test's edit"
    p.write_text(text.replace(old, new, 1))
    os.utime(p, ns=(p.stat().st_mtime_ns + 10**9,) * 2)  # the memo keys on modification times


def _hashes(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setattr(codehash, "ROOT", root)
    out = {kind: codehash.symbol_hash(*sym) for kind, sym in UNIT_KINDS.items()}
    for nb in sorted(NOTEBOOKS.glob("*.ipynb")):
        out[nb.stem] = pipeline._code_digest(nb)
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
    _edit(root, "train", "from taskstudy.parallel import progress",
          "from taskstudy.parallel import progress\nfrom taskstudy.schedules import half_cosine as cosine_lr")
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
    from taskstudy import train

    assert codehash.computation_hash(train.cosine_lr) == codehash.symbol_hash("taskstudy.train", "cosine_lr")
    with pytest.raises(TypeError, match="top-level functions"):
        codehash.computation_hash(len)
