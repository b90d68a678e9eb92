"""Task2Vec (Achille et al. 2019): the Fisher embedding's shape, determinism and label-permutation invariance,
and the distances. A tiny random probe on random images: every test runs in well under a second or two."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskstudy import task2vec as t2v

N, K = 96, 4  # images, classes
PERM_TOL = 1e-3  # d_sym between a task and its class-relabelled copy (head-fit tolerance only)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one torch thread is fastest (and robust on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def probe() -> t2v.Probe:
    torch.manual_seed(0)
    return t2v.Probe(n_classes=10, width=4, depth=1).eval()


@pytest.fixture(scope="module")
def task() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(N) % K
    x = torch.rand(N, 3, 16, 16, generator=g) * 0.5
    x[:, 0] += 0.4 * y[:, None, None] / K  # a learnable cue: the red level says the class
    return x, y


def embed(probe: t2v.Probe, x: torch.Tensor, y: torch.Tensor, seed: int = 0, mc: int = 4) -> np.ndarray:
    return t2v.fisher_embedding(probe, x, y, K, mc_samples=mc, seed=seed)


def test_one_entry_per_filter(probe, task):
    e = embed(probe, *task, mc=1)
    w = 4  # Encoder(width=4, depth=1): stem w; stage 1: 2 convs of w; stage 2: 2 of 2w + a 1x1 shortcut of 2w;
    assert t2v.n_filters(probe.encoder) == w + 2 * w + 3 * 2 * w + 3 * 4 * w  # stage 3: 3 convs of 4w
    assert e.shape == (t2v.n_filters(probe.encoder),)
    assert np.all(np.isfinite(e)) and np.all(e >= 0) and e.sum() > 0


def test_same_task_twice_is_identical(probe, task):
    assert np.array_equal(embed(probe, *task, mc=1), embed(probe, *task, mc=1))


def test_class_permutation_gives_near_identical_embedding(probe, task):
    x, y = task
    perm = torch.tensor([2, 0, 3, 1])
    e, e_perm = embed(probe, x, y), embed(probe, x, perm[y])
    other = embed(probe, x, (y + (torch.arange(N) // K) % 2) % K)  # a different task on the same images
    d = t2v.symmetric_distance(e, e_perm)
    assert d < PERM_TOL
    assert d < t2v.symmetric_distance(e, other) / 3
    # the retrained head is exactly permutation-equivariant (convex problem from a symmetric start)
    f = t2v.features(probe, x)
    h, hp = t2v.fit_head(f, y, K), t2v.fit_head(f, perm[y], K)
    torch.testing.assert_close(hp.weight[perm], h.weight, atol=1e-4, rtol=1e-3)


def test_distances():
    rng = np.random.default_rng(0)
    a, b = rng.random(20) + 0.1, rng.random(20) + 0.1
    assert t2v.symmetric_distance(a, a) == pytest.approx(0, abs=1e-12)
    assert t2v.symmetric_distance(a, 3 * a) == pytest.approx(0, abs=1e-12)  # scale-free
    assert t2v.symmetric_distance(a, b) == pytest.approx(t2v.symmetric_distance(b, a))
    assert t2v.symmetric_distance(a, b) > 0
    m = np.stack([a, b, a * b])
    t0 = t2v.trivial_embedding(m)
    sym, asym = t2v.distance_matrix(m, "sym"), t2v.distance_matrix(m, "asym", alpha=0.2)
    assert np.allclose(sym, sym.T) and np.allclose(np.diag(sym), 0)
    assert asym[0, 1] == pytest.approx(t2v.asymmetric_distance(a, b, t0, alpha=0.2))
    assert asym[0, 1] == pytest.approx(sym[0, 1] - 0.2 * t2v.symmetric_distance(a, t0))
    assert sorted(t2v.cluster_order(sym)) == [0, 1, 2]


def test_expert_selection_ratio():
    names = ["texture|shape=sphere", "texture|shape=cone", "shape|texture=plain"]
    m = np.array([[1.0, 1.0, 0.1], [1.0, 0.9, 0.1], [0.1, 0.1, 1.0]])
    err = pd.DataFrame([[0.1, 0.2, 0.5], [0.3, 0.1, 0.6], [0.6, 0.7, 0.1]], index=names, columns=names)
    sel = t2v.expert_selection(names, m, err, alpha=0.0).set_index("task")
    assert sel.loc["texture|shape=sphere", "chosen expert"] == "texture|shape=cone"
    assert sel.loc["texture|shape=sphere", "ratio"] == pytest.approx(0.3 / 0.3)
    assert (sel["ratio"] >= 1).all() and (sel["random ratio"] >= 1).all()
