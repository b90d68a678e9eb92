"""Tests of the task dictionary (taskstudy.world.tasks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from taskstudy.world import labels, scenes, tasks


@pytest.fixture(scope="module")
def labelled() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    buf = scenes.render("train", np.arange(12), 1, 24)
    return buf, labels.make_labels(buf)


def test_groups() -> None:
    assert len(tasks.dictionary_tasks()) == 21
    assert len(tasks.held_out_tasks()) >= 3
    assert set(tasks.source_only_tasks()) == {"colorization", "inpainting", "jigsaw"}
    assert not set(tasks.target_tasks()) & set(tasks.source_only_tasks())
    assert not set(tasks.dictionary_tasks()) & set(tasks.held_out_tasks())
    for t in tasks.TASKS.values():
        assert t.kind in tasks.KINDS and t.input in tasks.INPUTS
        assert t.group in ("2D", "3D", "geometry", "semantic", "held_out")


def test_get_task_unknown() -> None:
    assert tasks.get_task("normals").channels == 3
    with pytest.raises(KeyError, match="did you mean 'normals'"):
        tasks.get_task("normal")
    with pytest.raises(ValueError, match="unknown task 'depth_eucl'"):
        tasks.get_task("depth_eucl")


def test_every_label_shape_and_finite(labelled) -> None:  # noqa: ANN001
    buf, lab = labelled
    assert set(lab) == set(tasks.TASKS)
    for name, t in tasks.TASKS.items():
        y = lab[name]
        assert y.shape == t.label_shape(12, 24), name
        assert np.isfinite(y).all(), name
        if t.kind in ("classification", "pixel_classification"):
            assert y.dtype == np.int64 and y.min() >= 0 and y.max() < t.channels, name
        else:
            assert y.dtype == np.float32, name
        if t.kind == "distribution":
            np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)
    assert (lab["jigsaw"] < labels.JIGSAW_K).all() and (lab["jigsaw"] >= 0).all()
    for name in (
        "edge2d",
        "keypoints2d",
        "segment_unsup2d",
        "segment_unsup25d",
        "edge_occlusion",
        "reshading",
    ):
        assert lab[name].min() >= 0 and lab[name].max() <= 1, name
        assert lab[name].max() > 0, name


def test_labels_batch_independent() -> None:
    a = labels.make_labels(scenes.render("val", np.arange(5), 2, 20))
    b = labels.make_labels(scenes.render("val", [3], 2, 20))
    for k in a:
        assert a[k][3:4].tobytes() == b[k].tobytes(), k


def test_loss_and_score(labelled) -> None:  # noqa: ANN001
    _, lab = labelled
    g = torch.Generator().manual_seed(0)
    for name, t in tasks.TASKS.items():
        y = torch.from_numpy(lab[name])
        if t.kind in ("classification", "pixel_classification"):
            shape = (12, t.channels, *y.shape[1:])
            good = torch.nn.functional.one_hot(y, t.channels).movedim(-1, 1).float() * 20
        elif t.kind == "distribution":
            shape = tuple(y.shape)
            good = torch.log(y.clamp(min=1e-6))
        else:
            shape = tuple(y.shape)
            good = y.clone()
        bad = torch.randn(shape, generator=g)
        s_good, s_bad = t.score(good, y), t.score(bad, y)
        assert s_good.shape == (12,) and torch.isfinite(s_bad).all(), name
        assert (s_good >= s_bad).all(), name
        loss = t.loss(bad.requires_grad_(), y)
        assert loss.ndim == 0
        loss.backward()


def test_inputs(labelled) -> None:  # noqa: ANN001
    buf, lab = labelled
    rgb, idx = buf["rgb"], buf["index"]
    assert torch.equal(tasks.make_input("autoencoding", rgb), torch.from_numpy(rgb))
    grey = tasks.make_input("colorization", rgb)
    assert torch.equal(grey[:, 0], grey[:, 1])
    masked = tasks.make_input("inpainting", rgb)
    assert (masked[:, :, 12, 12] == 0.5).all()
    noisy = tasks.make_input("denoising", rgb, idx, seed=1)
    assert torch.equal(noisy, tasks.make_input("denoising", rgb, idx, seed=1))
    assert torch.equal(noisy[4:5], tasks.make_input("denoising", rgb[4:5], idx[4:5], seed=1))
    assert not torch.equal(noisy, torch.from_numpy(rgb))
    with pytest.raises(ValueError, match="index"):
        tasks.make_input("jigsaw", rgb)
    jig = tasks.make_input("jigsaw", rgb, idx, seed=1)
    assert torch.equal(jig, tasks.make_input("jigsaw", rgb, idx, seed=1))
    np.testing.assert_array_equal(lab["jigsaw"], labels.jigsaw_class(idx, 1))


def test_jigsaw_tiles() -> None:
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3).expand(1, 3, 3, 3).repeat_interleave(4, 2)
    x = x.repeat_interleave(4, 3)  # 12x12 image whose tile j has value j
    for c in range(labels.JIGSAW_K):
        y = tasks.shuffle_tiles(x, np.array([c]))
        got = y[0, 0, ::4, ::4].reshape(-1).long().numpy()
        np.testing.assert_array_equal(got, labels.PERMUTATIONS[c])
    assert len({tuple(p) for p in labels.PERMUTATIONS}) == labels.JIGSAW_K
