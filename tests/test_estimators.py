"""Transferability estimators on inputs with a known answer (issue 22): each test fails if the estimator loses the
property the chapter relies on."""

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import multivariate_normal, ortho_group

from taskstudy.compare import estimator_study as es
from taskstudy.engine import params as study_params
from taskstudy.taskonomy import estimators as est
from taskstudy.world import tasks as taskdict


def _informative(n=400, d=16, seed=0):
    """Features of which two columns are the labels (plus noise), features of pure noise, and the labels."""
    rng = np.random.default_rng(seed)
    y = rng.normal(size=(n, 2))
    good = np.hstack([y + 0.1 * rng.normal(size=(n, 2)), rng.normal(size=(n, d - 2))])
    noise = rng.normal(size=(n, d))
    return good, noise, y


def test_logme_prefers_features_that_contain_the_labels():
    good, noise, y = _informative()
    assert est.logme(good, y) > est.logme(noise, y) + 1.0


def test_logme_is_the_maximum_evidence_over_alpha_beta():
    """LogME is max over (alpha, beta) of log N(y; 0, F F^T / alpha + I / beta) / n: computed directly from the
    Gaussian density on a grid, never above LogME's fixed point and close to it at the grid's best."""
    rng = np.random.default_rng(1)
    n, d = 60, 4
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    ours = est.logme(X, y[:, None])
    grid = [multivariate_normal(np.zeros(n), X @ X.T / a + np.eye(n) / b).logpdf(y) / n
            for a, b in itertools.product(np.geomspace(0.01, 100, 25), np.geomspace(0.01, 100, 25))]
    assert max(grid) <= ours + 1e-6
    assert ours - max(grid) < 0.01


def test_hscore_prefers_class_informative_features():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 4, size=500)
    means = rng.normal(size=(4, 8)) * 3
    good = means[y] + rng.normal(size=(500, 8))
    noise = rng.normal(size=(500, 8))
    assert est.hscore(good, y) > 10 * est.hscore(noise, y)
    assert est.hscore(noise, y) < 0.1  # about (classes - 1) * d / n for features independent of the labels


def test_linear_probe_prefers_informative_features_and_splits_by_image():
    good, noise, y = _informative()
    group = np.arange(len(y))
    assert est.linear_probe(good, y, group) > est.linear_probe(noise, y, group) + 0.5
    # samples of one image all land in one fold: a probe cannot score an image it was fitted on
    dup = np.repeat(noise, 2, axis=0), np.repeat(y, 2, axis=0), np.repeat(group, 2)
    assert est.linear_probe(*dup) < -0.8  # memorising a duplicate would give a near-zero error


def test_rsa_of_a_representation_with_itself_is_one():
    z = np.random.default_rng(3).normal(size=(50, 4, 3, 3))
    v = est.rsa_vector(z)
    assert est.rsa(v, v) == pytest.approx(1.0)
    other = est.rsa_vector(np.random.default_rng(4).normal(size=(50, 4, 3, 3)))
    assert abs(est.rsa(v, other)) < 0.2


def test_dds_is_invariant_to_an_orthogonal_rotation_and_a_scale():
    rng = np.random.default_rng(5)
    z = rng.normal(size=(60, 12))
    q = ortho_group.rvs(12, random_state=6)
    a, b = est.dds_vector(z), est.dds_vector(3.0 * z @ q)
    assert np.allclose(a, b, atol=1e-9)
    assert est.dds(a, b) == pytest.approx(1.0)
    assert est.dds(a, est.dds_vector(rng.normal(size=(60, 12)))) < 0.3


def test_samples_pool_dense_labels_to_the_feature_cells():
    feats = torch.randn(3, 5, 2, 2)
    labels = torch.zeros(3, 8, 8, dtype=torch.long)
    labels[:, :4, :4] = 2  # the top-left cell of every image is class 2
    s = est.samples(feats, labels, "pixel_classification", n_classes=3)
    assert s.X.shape == (12, 5) and s.Y.shape == (12, 3)
    assert np.allclose(s.Y.sum(1), 1.0)
    assert list(s.y[::4]) == [2, 2, 2] and set(s.y) == {0, 2}
    assert list(s.group) == [0] * 4 + [1] * 4 + [2] * 4
    sub = est.samples(feats, labels, "pixel_classification", n_classes=3, max_samples=5, seed=0)
    assert len(sub.X) == 5
    img = est.samples(feats, torch.tensor([0, 1, 1]), "classification", n_classes=2)
    assert img.X.shape == (3, 5) and np.allclose(img.X, feats.mean(dim=(2, 3)).numpy())
    assert img.Y.tolist() == [[1, 0], [0, 1], [0, 1]]


def test_hscore_applies_to_discrete_targets_only():
    s = est.samples(torch.randn(4, 3, 2, 2), torch.rand(4, 1, 4, 4), "pixel_regression", n_classes=1)
    assert s.y is None and np.isnan(est.labelled_estimator("H-score")(s))
    with pytest.raises(ValueError, match="unknown"):
        est.labelled_estimator("kNN")



# --- the chapter's study functions on synthetic ground truths ---------------------------------------------------

def _truth(targets=("a", "b", "c", "d"), sources=("s1", "s2", "s3", "s4", "s5"), seed=0):
    rng = np.random.default_rng(seed)
    m = pd.DataFrame(rng.dirichlet(np.ones(len(sources)), len(targets)), index=list(targets), columns=list(sources))
    m.attrs["split"] = "val"
    return m


def _estimates(named):
    rows = [(n, t, s, float(m.at[t, s])) for n, m in named.items() for t in m.index for s in m.columns]
    return est.Estimates(pd.DataFrame(rows, columns=["estimator", "target", "source", "score"]),
                        {n: 1.0 for n in named})


def test_rank_affinity_keeps_each_rows_order_and_sums_to_one():
    m = _truth() * 100 - 7  # another scale, negative values
    r = es.rank_affinity(m)
    assert np.allclose(r.sum(axis=1), 1.0)
    assert (r.rank(axis=1) == m.rank(axis=1)).all().all()
    assert r.attrs["split"] == "val"


def test_agreement_of_a_perfect_an_inverted_and_a_partial_estimator():
    truth = _truth()
    partial = truth.copy()
    partial.loc[["c", "d"]] = np.nan  # rates two targets only (as H-score rates discrete targets only)
    E = _estimates({"perfect": truth * 3 + 1, "inverted": -truth, "partial": partial})
    table = es.agreement(truth, E, n_boot=50, seed=0)
    assert table.loc["perfect", "mean rho"] == pytest.approx(1.0)
    assert table.loc["perfect", "top-1"] == 1.0 and table.loc["perfect", "pooled rho"] > 0.9
    assert table.loc["inverted", "mean rho"] == pytest.approx(-1.0) and table.loc["inverted", "top-1"] == 0.0
    assert table.loc["partial", "targets"] == 2 and table.loc["partial", "top-1"] == 1.0
    # set against the ceiling on the ceiling's footing only (issue 38, item 2): each estimator's rho against the
    # truth of the base's seed runs, not its rho over the whole dictionary
    across = pd.DataFrame({"base": [0.95, -1.0, 0.5], "seed 1": [0.9, -0.9, 0.4], "smaller dictionary": [0, 0, 0]},
                          index=["perfect", "inverted", "partial"])
    base = es.on_base(across)
    assert base.loc["perfect", "mean rho"] == pytest.approx(0.925) and base.loc["partial", "highest"] == 0.5
    top = {"mean rho": 0.9, "lowest": 0.85, "highest": 0.95, "pooled rho": 0.95, "pairs": 1}
    lines = es.headline(table, top, base)
    assert any("perfect" in x and "above chance" in x and "within its reach" in x for x in lines)
    assert any("partial" in x and "above chance" in x and ": below it" in x for x in lines)  # 1.0 over the dictionary
    assert any("inverted" in x and "below chance" in x for x in lines)
    assert not any("seed agreement" in x for x in es.headline(table, top))  # no base: no ceiling verdict
    summary = es.summary_table(table, pd.DataFrame(), pd.DataFrame({"fraction of Step II": []}), top, 1, base)
    assert summary.loc[es.CEILING, "mean rho, base"] == 0.9 and np.isnan(summary.loc[es.CEILING, "mean rho"])


def test_quality_verdicts_read_the_paired_difference():
    idx = pd.MultiIndex.from_tuples([("ground truth (AHP)", 1), ("x", 1), ("y", 1), ("w", 1), ("z", 1)],
                                    names=["estimator", "budget"])
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.02, 500)  # the same test-image resamples for every policy
    boot = [0.5 + shared, 0.2 + shared, 0.5 + shared + rng.normal(0, 0.01, 500), 0.48 + shared, 0.5 + shared]
    tax = pd.DataFrame({"quality": [b.mean() for b in boot], "quality_boot": boot,
                        "gain": [0.8] * 5, "targets": [4, 4, 4, 4, 2]}, index=idx)
    out = es.quality_beside_truth(tax).set_index("estimator")
    v = out["verdict"]
    assert v["x"] == "worse" and v["y"].startswith("as good") and v["z"] == "fewer targets"
    # w: 0.02 below the truth, bands of +-0.04 overlap, but the paired difference is -0.02 on every resample
    assert v["w"] == "worse" and out.loc["w", "change hi"] < 0


def test_standing_agreement_is_one_for_the_same_order():
    table = pd.DataFrame({"base": [0.9, 0.5, 0.1], "seed 1": [0.8, 0.4, 0.0], "other": [0.1, 0.5, 0.9]},
                         index=["A", "B", "C"])
    tau = es.standing_agreement(table)
    assert tau["seed 1"] == pytest.approx(1.0) and tau["other"] == pytest.approx(-1.0)
    table.loc["D"] = [0.0, np.nan, -0.5]  # an estimator one run cannot rate is left out of that run's tau
    tau = es.standing_agreement(table)
    assert tau["seed 1"] == pytest.approx(1.0) and tau["other"] == pytest.approx(0.0)  # 3 pairs agree, 3 do not


def test_estimate_reads_the_val_split_only(monkeypatch, repo_root, tmp_path):
    """No estimator sees the test split: every feature and label it reads is the val split's. The labelled scores
    are runner units and store entries: a pair ranked again (chapter 14's levels) is read back, with the same scores
    and CPU account, and nothing sampled; another sample size is another entry."""
    from taskstudy.engine import parallel

    P = study_params.load(repo_root / "params/smoke.yaml", ["common.tasks=[autoencoding, normals, class_scene]",
                                                            f"common.results_dir={tmp_path / 'results'}"])
    seen = []

    def features(params, sources, split, query="rgb"):
        seen.append(split)
        return torch.randn(40, 8, 2, 2, generator=torch.Generator().manual_seed(len(seen)))

    def labels(params, target):
        seen.append("val")  # what the chapter's label loader reads (see below)
        t = taskdict.get_task(target)
        shape = t.label_shape(40, 8)
        return torch.randint(0, t.channels, shape) if "classification" in t.kind else torch.rand(shape)

    monkeypatch.setattr(est, "load_features", features)
    monkeypatch.setattr(est, "_val_labels", labels)
    before = parallel.COMPUTED.get(est.KIND, 0)
    E = est.estimate(P)
    assert set(seen) == {"val"}
    assert set(E.scores.estimator) == {*est.ESTIMATORS, est.CHANCE}
    assert len(E.scores) == len(set(E.scores.estimator)) * 3 * 3  # 3 targets x 3 sources
    assert set(E.cpu_s) >= set(est.ESTIMATORS)
    assert parallel.COMPUTED[est.KIND] - before == 3  # one unit per target

    drawn = []
    real = est.samples
    monkeypatch.setattr(est, "samples", lambda *a, **k: drawn.append(1) or real(*a, **k))
    again = est.estimate(P, names=["LogME"])
    assert not drawn and parallel.COMPUTED[est.KIND] - before == 3
    logme = E.scores[E.scores.estimator == "LogME"].reset_index(drop=True)
    pd.testing.assert_frame_equal(again.scores[again.scores.estimator == "LogME"].reset_index(drop=True), logme)
    assert again.cpu_s["LogME"] == pytest.approx(E.cpu_s["LogME"])
    est.estimate(P.with_overrides("estimators.max_samples=64"), names=["LogME"])
    assert len(drawn) == 9 and parallel.COMPUTED[est.KIND] - before == 6  # another sample size: computed


def test_the_label_loader_reads_val(monkeypatch, repo_root):
    P = study_params.load(repo_root / "params/smoke.yaml")
    splits = []
    monkeypatch.setattr(est.data, "scene_split", lambda store, common, split: splits.append(split) or {})
    monkeypatch.setattr(est.data, "target", lambda split, target: None)
    est._val_labels(P, "normals")
    assert splits == ["val"]
