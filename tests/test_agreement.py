"""The agreement chapter's helpers (taskstudy.compare.agreement) on hand-made matrices with known answers, and the dense
Task2Vec embedding (taskstudy.task2vec.task2vec_dense): exact per-sample gradients, likelihood draws, determinism."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskstudy import uncertainty
from taskstudy.compare import agreement
from taskstudy.task2vec import fisher
from taskstudy.task2vec import task2vec_dense as dense

TASKS = ["a", "b", "c", "d"]


def _matrix(values: dict[tuple[str, str], float]) -> pd.DataFrame:
    m = pd.DataFrame(0.0, index=TASKS, columns=TASKS)
    for (row, col), v in values.items():
        m.loc[row, col] = v
    return m


def test_relations_unordered_mean_and_ordered_direction():
    m = _matrix({("a", "b"): 1.0, ("b", "a"): 3.0, ("c", "d"): -2.0})
    un = agreement.relations(m, TASKS)
    assert len(un) == 6 and un[("a", "b")] == 2.0 and un[("c", "d")] == -1.0
    od = agreement.relations(m, TASKS, ordered=True)
    assert len(od) == 12 and od[("a", "b")] == 1.0 and od[("b", "a")] == 3.0
    missing = agreement.relations(m.drop(index="d", columns="d"), TASKS)
    assert missing[[p for p in missing.index if "d" in p]].isna().all() and missing.notna().sum() == 3


def test_rank_agreement_identical_reversed_and_missing_pairs():
    x = agreement.relations(pd.DataFrame(np.arange(16.0).reshape(4, 4), index=TASKS, columns=TASKS), TASKS)
    rel = {"same": x, "scaled": 10 * x + 3, "reversed": -x, "partial": x.where(x.index != ("a", "b"))}
    t = agreement.rank_agreement(rel, n_perm=200, seed=0).set_index(["method a", "method b"])
    assert t.loc[("same", "scaled"), "spearman"] == pytest.approx(1.0)
    assert t.loc[("same", "scaled"), "kendall"] == pytest.approx(1.0)
    assert t.loc[("same", "reversed"), "spearman"] == pytest.approx(-1.0)
    # 6 pairs: a perfect (anti-)correlation is matched by 2 of 720 pairings, so p is small but not zero
    assert 1 / 201 <= t.loc[("same", "reversed"), "p spearman"] < 0.05
    assert t.loc[("same", "partial"), "pairs"] == 5
    corr = agreement.correlation_matrix(t.reset_index(), list(rel))
    assert np.allclose(corr.values, corr.values.T) and corr.loc["scaled", "reversed"] == pytest.approx(-1.0)


def test_rank_agreement_p_value_is_large_for_unrelated_rankings():
    rng = np.random.default_rng(3)
    idx = pd.MultiIndex.from_tuples([(str(i), "z") for i in range(12)])
    a, b = pd.Series(rng.normal(size=12), index=idx), pd.Series(rng.normal(size=12), index=idx)
    row = agreement.rank_agreement({"a": a, "b": b}, n_perm=500, seed=1).iloc[0]
    assert abs(row.spearman) < 0.6 and row["p spearman"] > 0.05


def test_disagreements_and_consensus():
    base = agreement.relations(_matrix({("a", "b"): 5, ("a", "c"): 4, ("a", "d"): 3, ("b", "c"): 2,
                                        ("b", "d"): 1}), TASKS)
    flipped = base.copy()
    flipped[("a", "b")] = -10  # ranked first by `base`, last by `flipped`
    dis = agreement.disagreements({"base": base, "flipped": flipped}, top=1)
    assert dis.index[0] == ("a", "b") and dis.iloc[0]["spread"] == 5
    assert dis.iloc[0]["highest by"] == "base" and dis.iloc[0]["lowest by"] == "flipped"
    assert agreement.consensus({"base": base, "flipped": flipped}).index[0] == ("a", "c")


# ----------------------------------------------------------------------------------------- dense Task2Vec


@pytest.fixture(scope="module")
def probe() -> fisher.Probe:
    torch.manual_seed(0)
    return fisher.Probe(n_classes=5, width=4, depth=1).eval()


def test_per_sample_gradients_of_a_dense_output_match_a_loop(probe):
    torch.manual_seed(1)
    x = torch.rand(5, 3, 16, 16)
    head = dense.DenseHead(probe.encoder.out_channels, 2)
    model = torch.nn.Sequential(probe.encoder, head).eval()
    convs = [m for m in probe.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    g = torch.randn(5, 2, 16, 16)
    fast = fisher._per_sample_sq_grads(model, convs, x, g, nll=dense._linear_nll)
    for i in range(5):
        model.zero_grad()
        (model(x[i : i + 1]) * g[i : i + 1]).sum().backward()
        for k, c in enumerate(convs):
            slow = (c.weight.grad.double() ** 2).flatten(1).mean(1)
            assert torch.allclose(fast[k][i], slow, rtol=1e-4, atol=1e-12)


def test_likelihood_draws():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 4, 8, 8)
    ce = dense.output_gradient("segment_semantic", torch.randn(3, 17, 8, 8), 1.0, gen)
    assert torch.allclose(ce.sum(1), torch.zeros(3, 8, 8), atol=1e-6)  # softmax - onehot sums to 0 per pixel
    assert ((ce < 0).sum(1) == 1).all()  # exactly one drawn class per pixel
    l1 = dense.output_gradient("edge2d", out[:, :1], 0.25, gen)
    assert torch.all(l1.abs() == 4.0) and 0.3 < float((l1 > 0).float().mean()) < 0.7
    with pytest.raises(ValueError, match="dense likelihood"):
        dense.output_gradient("class_object", torch.randn(3, 5), 1.0, gen)


def test_dense_embedding_shape_determinism_and_task_check(probe):
    g = torch.Generator().manual_seed(2)
    x = torch.rand(24, 3, 16, 16, generator=g)
    y = x.mean(1, keepdim=True)  # a learnable dense target (grey level)
    e1 = dense.dense_fisher_embedding(probe, x, y, "edge2d", head_steps=20, seed=3)
    e2 = dense.dense_fisher_embedding(probe, x, y, "edge2d", head_steps=20, seed=3)
    assert e1.shape == (fisher.n_filters(probe.encoder),) and np.all(e1 >= 0) and np.array_equal(e1, e2)
    with pytest.raises(ValueError, match="not a dense task"):
        dense.fit_dense_head(torch.rand(4, 16, 4, 4), torch.rand(4, 9), "room_layout")


def test_vectorised_permutation_p_equals_scipy_on_the_same_pairings():
    from scipy import stats

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 10).astype(float), rng.integers(0, 4, 10).astype(float)  # with ties
    perms = np.argsort(np.random.default_rng(5).random((200, 10)), axis=1)  # the pairings permutation_p draws
    for name, f in (("spearman", stats.spearmanr), ("kendall", stats.kendalltau)):
        observed = abs(f(x, y)[0])
        slow = (sum(abs(f(x, y[p])[0]) >= observed - 1e-12 for p in perms) + 1) / 201
        assert uncertainty.permutation_p(x, y, name, 200, 5) == pytest.approx(slow)


def test_symmetry_of_directed_relations():
    m = pd.DataFrame(np.arange(16.0).reshape(4, 4), index=TASKS, columns=TASKS)
    assert agreement.symmetry(agreement.relations(m + m.T, TASKS, ordered=True)) == pytest.approx(1.0)
    assert agreement.symmetry(agreement.relations(m - m.T, TASKS, ordered=True)) == pytest.approx(-1.0)


def test_agreement_summary_names_the_closest_and_weakest_pairs():
    import pandas as pd

    from taskstudy.compare.agreement import agreement_summary

    table = pd.DataFrame({"method a": ["Taskonomy", "Taskonomy", "Standley"],
                          "method b": ["Task2Vec", "Standley", "lookahead"],
                          "spearman": [0.1, -0.3, 0.5], "p spearman": [0.4, 0.04, 0.01], "pairs": [10, 10, 10]})
    s = agreement_summary(table)
    assert s["best"] == "Standley and lookahead" and s["worst"] == "Taskonomy and Standley"
    assert s["n_sig"] == 2 and s["same_run_place"] == 1 and abs(s["mean_rho"] - 0.1) < 1e-12


def test_scene_embeddings_are_runner_units_stored_once(tmp_path):
    """Issue 39, item 5: the dense embeddings run through the one runner, one unit and store entry per task: a
    second call computes only a task it has not seen, and the stored bytes are the unit's own."""
    from pathlib import Path

    from taskstudy.engine import parallel, params

    root = Path(__file__).resolve().parents[1]
    P = params.load(root / "params/smoke.yaml", [f"common.results_dir={tmp_path / 'results'}"])
    before = parallel.COMPUTED.get("task2vec_dense", 0)
    emb = dense.scene_embeddings(P, ["edge2d", "normals"], 16, 5)
    assert parallel.COMPUTED["task2vec_dense"] - before == 2
    again = dense.scene_embeddings(P, ["edge2d", "normals", "depth_zbuffer"], 16, 5)
    assert parallel.COMPUTED["task2vec_dense"] - before == 3 and set(again) == {"edge2d", "normals", "depth_zbuffer"}
    for t, e in emb.items():
        np.testing.assert_array_equal(e, again[t])
    alone = dense.dense_unit(dense.DenseUnit(P.subset("task2vec"), "normals", 16, 5))["embedding"]
    np.testing.assert_array_equal(alone, emb["normals"])
