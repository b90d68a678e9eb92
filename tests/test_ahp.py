"""Step III (Taskonomy Sec. 3.3): win matrices, W' = W / W^T, principal eigenvector, affinity matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskstudy.taskonomy.ahp import (
    BASELINES,
    affinity_matrix,
    ahp_matrix,
    ahp_weights,
    raw_quality,
    sources_key,
    win_matrix,
)


def make_scores(skill: dict[str, dict[str, float]], n_images: int = 200, noise: float = 1.0, seed: int = 0
                ) -> pd.DataFrame:
    """Per-image scores: target -> {sources key: mean score}; score = mean + shared image effect + noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for target, by_src in skill.items():
        base = rng.normal(size=n_images)
        for src, mu in by_src.items():
            s = mu + base + noise * rng.normal(size=n_images)
            rows += [(target, src, src.count("+") + 1, i, float(v)) for i, v in enumerate(s)]
    return pd.DataFrame(rows, columns=["target", "sources", "order", "image", "score"])


def test_consistent_matrix_gives_back_v_exactly():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 8, 12):
        v = rng.uniform(0.1, 5.0, n)
        v /= v.sum()
        W = v[:, None] / (v[:, None] + v[None, :])  # then W / W^T = v_i / v_j exactly
        assert np.allclose(ahp_matrix(W), v[:, None] / v[None, :])
        np.testing.assert_allclose(ahp_weights(W), v, rtol=1e-10, atol=1e-12)


def test_reciprocal_structure():
    scores = make_scores({"t": {"a": 0.0, "b": 0.3, "c": 1.0, "d": -0.5}})
    W, names = win_matrix(scores, "t")
    assert names == ["a", "b", "c", "d"]
    np.testing.assert_allclose(W + W.T, 1.0)
    np.testing.assert_allclose(np.diag(W), 0.5)
    Wp = ahp_matrix(W)
    np.testing.assert_allclose(Wp * Wp.T, 1.0)
    np.testing.assert_allclose(np.diag(Wp), 1.0)
    # clipping keeps W' finite when a source wins every image
    Wp = ahp_matrix(np.array([[0.5, 1.0], [0.0, 0.5]]))
    assert np.isclose(Wp[0, 1], 0.999 / 0.001) and np.isclose(Wp[0, 1] * Wp[1, 0], 1.0)


def test_weights_positive_sum_one_and_order_respected():
    scores = make_scores({"t": {"a": 0.0, "b": 0.5, "c": 1.0}}, n_images=500)
    W, names = win_matrix(scores, "t")
    w = ahp_weights(W)
    assert (w > 0).all() and np.isclose(w.sum(), 1.0)
    assert list(np.array(names)[np.argsort(w)]) == ["a", "b", "c"]


def test_invariance_to_source_order():
    scores = make_scores({"t": {"a": 0.0, "b": 0.2, "c": 0.9, "d": -0.4, "e": 0.1}})
    W, names = win_matrix(scores, "t")
    w = dict(zip(names, ahp_weights(W), strict=True))
    perm = ["d", "b", "e", "a", "c"]
    W2, names2 = win_matrix(scores, "t", perm)
    assert names2 == perm
    np.testing.assert_allclose(ahp_weights(W2), [w[n] for n in perm], rtol=1e-10)
    shuffled = scores.sample(frac=1.0, random_state=3)
    pd.testing.assert_frame_equal(affinity_matrix(shuffled), affinity_matrix(scores))


def test_source_winning_every_image_gets_top_weight():
    scores = make_scores({"t": {"a": 0.0, "b": 0.2, "c": 0.1}}, noise=0.3)
    best = scores[scores["sources"] == "a"].assign(sources="z", score=lambda d: d["score"] + 100.0)
    W, names = win_matrix(pd.concat([scores, best]), "t")
    z = names.index("z")
    assert all(W[z, j] == 1.0 for j in range(len(names)) if j != z)
    assert np.argmax(ahp_weights(W)) == z


def test_ties_count_half():
    scores = make_scores({"t": {"a": 0.0}})
    twin = scores.assign(sources="b")
    W, _ = win_matrix(pd.concat([scores, twin]), "t")
    np.testing.assert_allclose(W, 0.5)
    np.testing.assert_allclose(ahp_weights(W), [0.5, 0.5])


def test_affinity_matrix_rows_orders_baselines_and_missing():
    skill = {
        "t1": {"t1": 1.0, "t2": 0.5, "t3": 0.0, "t1+t2": 1.2, "scratch": 0.2, "full": 1.5, "random": -1.0},
        "t2": {"t1": 0.1, "t2": 1.0, "t1+t2": 0.9, "full": 1.4},
        "novel": {"t1": 0.3, "t2": 0.6, "t3": 0.0},
    }
    scores = make_scores(skill)
    P1 = affinity_matrix(scores, max_order=1)
    # the target's own network `full` is a candidate (the paper's self column), first; scratch and random are not
    assert list(P1.columns) == ["full", "t1", "t2", "t3"] and list(P1.index) == ["novel", "t1", "t2"]
    np.testing.assert_allclose(P1.sum(axis=1), 1.0)
    assert np.isnan(P1.at["t2", "t3"]) and np.isnan(P1.at["novel", "full"])
    assert P1.loc["t1"].idxmax() == "full" and P1.loc["t2"].idxmax() == "full"
    P2 = affinity_matrix(scores, max_order=2)
    assert list(P2.columns) == ["full", "t1", "t2", "t3", "t1+t2"]
    np.testing.assert_allclose(P2.sum(axis=1), 1.0)  # first- and higher-order sources share one vector
    assert P2.loc["novel"].idxmax() == "t2"
    assert not {"scratch", "random"} & set(P2.columns)
    P0 = affinity_matrix(scores, max_order=2, exclude=BASELINES)  # the source sets alone
    assert P0.loc["t1"].idxmax() == "t1+t2" and "full" not in P0.columns


def test_raw_quality_and_sources_key():
    scores = make_scores({"t": {"a": 2.0, "b": 0.0}}, noise=0.0)
    rq = raw_quality(scores)
    assert rq.at["t", "a"] - rq.at["t", "b"] == pytest.approx(2.0)
    assert sources_key(("normals", "depth_zbuffer")) == "depth_zbuffer+normals"
    assert sources_key("normals+depth_zbuffer") == "depth_zbuffer+normals"


def test_errors():
    scores = make_scores({"t": {"a": 0.0, "b": 1.0}})
    with pytest.raises(KeyError, match="no scores for target 'x'"):
        win_matrix(scores, "x")
    with pytest.raises(KeyError, match="'c'"):
        win_matrix(scores, "t", ["a", "c"])
    with pytest.raises(ValueError, match="duplicate"):
        win_matrix(pd.concat([scores, scores.head(1)]), "t")
    with pytest.raises(ValueError, match="square"):
        ahp_weights(np.ones((2, 3)))
