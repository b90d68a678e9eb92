"""Results store: round trips, corrupt entries recomputed, atomic writes, one writer per key."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from taskstudy.engine.store import Store, stable_hash


def test_key_depends_on_every_param_and_version(tmp_path):
    s = Store(tmp_path)
    k = s.key("x", {"a": 1, "b": [1, 2]})
    assert k == s.key("x", {"b": [1, 2], "a": 1})  # order-free
    assert k != s.key("x", {"a": 2, "b": [1, 2]})
    assert k != s.key("x", {"a": 1, "b": [1, 2]}, version="2")
    assert k != s.key("y", {"a": 1, "b": [1, 2]})


@pytest.mark.parametrize(
    "obj",
    [
        {"w": torch.arange(6.0).reshape(2, 3)},
        {"a": np.arange(5), "b": np.ones((2, 2), np.float32)},
        pd.DataFrame({"target": ["a", "b"], "score": [0.5, 0.25]}),
    ],
)
def test_round_trip(tmp_path, obj):
    s = Store(tmp_path)
    s.save("e", {"p": 1}, obj)
    back = s.load("e", {"p": 1})
    if isinstance(obj, pd.DataFrame):
        pd.testing.assert_frame_equal(back, obj)
    else:
        for k in obj:
            assert np.array_equal(np.asarray(back[k]), np.asarray(obj[k]))


def test_truncated_entry_is_detected_and_recomputed(tmp_path):
    s = Store(tmp_path)
    calls = []
    compute = lambda: calls.append(1) or {"x": np.arange(1000)}  # noqa: E731
    s.get_or_compute("e", {"p": 1}, compute)
    data = next((tmp_path / "e").glob("*.npz"))
    data.write_bytes(data.read_bytes()[:100])  # truncate
    out = s.get_or_compute("e", {"p": 1}, compute)
    assert len(calls) == 2 and s.stats["corrupt"] == 1
    assert np.array_equal(out["x"], np.arange(1000))
    assert s.load("e", {"p": 1}) is not None  # the recomputed entry is valid


class _Planted:
    """What a hostile hand could pickle into a results folder: unpickling it runs code."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["PLANTED_MARKER"]),))


def test_entry_naming_code_is_refused_and_recomputed(tmp_path, monkeypatch, caplog):
    marker = tmp_path / "code ran"
    monkeypatch.setenv("PLANTED_MARKER", str(marker))
    s = Store(tmp_path / "store")
    s.save("e", {"p": 1}, {"w": torch.ones(2), "payload": _Planted()}, fmt="pt")  # the sidecar's checksum matches
    calls = []
    out = s.get_or_compute("e", {"p": 1}, lambda: calls.append(1) or {"w": torch.zeros(2)})
    assert not marker.exists()  # nothing of the entry ran
    assert calls == [1] and s.stats["unsafe"] == 1 and torch.equal(out["w"], torch.zeros(2))
    assert "refused to load" in caplog.text and "names code" in caplog.text
    # what the study stores does load: tensors, numbers, strings, containers, numpy arrays and scalars
    data = {"state": {"w": torch.ones(3)}, "log": {"val": [0.5, 0.25]}, "scores": np.arange(4.0),
            "best": np.float64(0.5), "name": "normals", "shape": (2, 3)}
    s.save("ok", {"p": 1}, data, fmt="pt")
    back = s.load("ok", {"p": 1})
    assert np.array_equal(back["scores"], data["scores"]) and back["best"] == 0.5 and back["shape"] == (2, 3)


def test_edited_entry_checksum_mismatch(tmp_path):
    s = Store(tmp_path)
    s.save("e", {"p": 1}, pd.DataFrame({"a": [1.0, 2.0]}))
    data = next((tmp_path / "e").glob("*.parquet"))
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    assert s.load("e", {"p": 1}) is None
    assert not data.exists()


def test_data_without_sidecar_is_not_an_entry(tmp_path):
    """A crash between the data rename and the sidecar leaves no valid entry."""
    s = Store(tmp_path)
    key = s.key("e", {"p": 1})
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / f"{key}.pt").write_bytes(b"partial")
    assert s.load("e", {"p": 1}) is None
    assert not s.exists("e", {"p": 1})


def test_disk_full_leaves_no_partial_entry(tmp_path, monkeypatch):
    s = Store(tmp_path)

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        s.save("e", {"p": 1}, {"x": torch.zeros(10)})
    assert list((tmp_path / "e").iterdir()) == []
    assert s.load("e", {"p": 1}) is None


def _writer(root: str, marks: str, i: int) -> None:
    s = Store(root)

    def compute():
        Path(marks, f"computed-{i}").write_text("")
        time.sleep(0.5)
        return {"x": np.full(100_000, 7.0)}

    s.get_or_compute("shared", {"k": 1}, compute)


def test_two_concurrent_writers_leave_one_valid_entry(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path / "store"), str(marks), i)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(list(marks.iterdir())) == 1  # computed once; the other process read it
    s = Store(tmp_path / "store")
    assert np.array_equal(s.load("shared", {"k": 1})["x"], np.full(100_000, 7.0))
    assert len(list((tmp_path / "store" / "shared").glob("*.npz"))) == 1
    assert not list((tmp_path / "store" / "shared").glob(".*tmp"))


def test_stable_hash_rejects_unhashable_params():
    with pytest.raises(TypeError, match="cannot hash"):
        stable_hash({"f": object()})
