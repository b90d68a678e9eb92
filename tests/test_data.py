"""Scene splits in the store: rendered once, reused, compacted without changing any value."""

from __future__ import annotations

import numpy as np
import torch

from taskstudy.engine.sections import Common
from taskstudy.engine.store import Store
from taskstudy.world import data, scenes


def test_split_cached_and_lossless(tmp_path, monkeypatch):
    calls = []
    real = scenes.generate_split
    monkeypatch.setattr(scenes, "generate_split", lambda *a, **k: calls.append(a) or real(*a, **k))
    common = Common(image_size=16, n_train=20, n_transfer=8, n_test=8)
    store = Store(tmp_path)
    d = data.scene_split(store, common, "transfer")
    assert len(calls) == 1 and len(store.entries("scenes")) == 1
    raw = real("transfer", 8, common.seed, 16, progress=False)
    for task in ("autoencoding", "denoising", "normals", "segment_semantic", "class_scene", "room_layout"):
        assert torch.equal(data.target(d, task), data.target(raw | {"rgb_targets": np.array([])}, task)), task
    assert np.array_equal(d["semantic"], raw["semantic"])
    data._cached_split.cache_clear()
    d2 = data.scene_split(Store(tmp_path), common, "transfer")  # a new process: read from disk, not rendered
    assert len(calls) == 1 and np.array_equal(d2["rgb"], d["rgb"])


def test_split_key_covers_generator_parameters():
    c = Common(image_size=16, n_train=20, n_transfer=8, n_test=8)
    keys = {
        str(data.split_key(x, "train"))
        for x in (c, c.model_copy(update={"seed": 1}), c.model_copy(update={"image_size": 32}),
                  c.model_copy(update={"n_train": 21}))
    }
    assert len(keys) == 4
    assert data.split_key(c, "train") != data.split_key(c, "test")


def test_task_input_is_seeded_per_sample(tmp_path):
    d = data.scene_split(Store(tmp_path), Common(image_size=16, n_train=4, n_transfer=4, n_test=4), "test")
    a = data.task_input(d, "denoising", seed=0)
    assert torch.equal(a, data.task_input(d, "denoising", seed=0))
    assert not torch.equal(a, data.task_input(d, "denoising", seed=1))
    assert torch.equal(data.task_input(d, "autoencoding", seed=0), data.rgb(d))
