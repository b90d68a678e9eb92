"""Task2Vec (Achille et al. 2019): the Fisher embedding's shape, determinism and label-permutation invariance,
the domain embedding, the distances, Model2Vec, and the probe's pretraining data disjoint from the family's. A tiny
random probe on random images: every test runs in well under a second or two."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from taskstudy.nn.heads import fit_head
from taskstudy.task2vec import distances, fisher, selection
from taskstudy.task2vec import task2vec as t2v

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
def probe() -> fisher.Probe:
    torch.manual_seed(0)
    return fisher.Probe(n_classes=10, width=4, depth=1).eval()


@pytest.fixture(scope="module")
def task() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(N) % K
    x = torch.rand(N, 3, 16, 16, generator=g) * 0.5
    x[:, 0] += 0.4 * y[:, None, None] / K  # a learnable cue: the red level says the class
    return x, y


def embed(probe: fisher.Probe, x: torch.Tensor, y: torch.Tensor, seed: int = 0, mc: int = 4) -> np.ndarray:
    return fisher.fisher_embedding(probe, x, y, K, mc_samples=mc, seed=seed, head_steps=100)


def test_one_entry_per_filter(probe, task):
    e = embed(probe, *task, mc=1)
    w = 4  # Encoder(width=4, depth=1): stem w; stage 1: 2 convs of w; stage 2: 2 of 2w + a 1x1 shortcut of 2w;
    assert fisher.n_filters(probe.encoder) == w + 2 * w + 3 * 2 * w + 3 * 4 * w  # stage 3: 3 convs of 4w
    assert e.shape == (fisher.n_filters(probe.encoder),)
    assert np.all(np.isfinite(e)) and np.all(e >= 0) and e.sum() > 0


def test_same_task_twice_is_identical(probe, task):
    assert np.array_equal(embed(probe, *task, mc=1), embed(probe, *task, mc=1))


def test_class_permutation_gives_near_identical_embedding(probe, task):
    x, y = task
    perm = torch.tensor([2, 0, 3, 1])
    e, e_perm = embed(probe, x, y), embed(probe, x, perm[y])
    other = embed(probe, x, (y + (torch.arange(N) // K) % 2) % K)  # a different task on the same images
    d = distances.symmetric_distance(e, e_perm)
    assert d < PERM_TOL
    assert d < distances.symmetric_distance(e, other) / 3
    # the retrained head is exactly permutation-equivariant (convex problem from a symmetric start)
    f = fisher.features(probe, x)
    h, hp = fit_head(f, y, K), fit_head(f, perm[y], K)
    torch.testing.assert_close(hp.weight[perm], h.weight, atol=1e-4, rtol=1e-3)


def test_distances():
    rng = np.random.default_rng(0)
    a, b = rng.random(20) + 0.1, rng.random(20) + 0.1
    assert distances.symmetric_distance(a, a) == pytest.approx(0, abs=1e-12)
    assert distances.symmetric_distance(a, 3 * a) == pytest.approx(0, abs=1e-12)  # scale-free
    assert distances.symmetric_distance(a, b) == pytest.approx(distances.symmetric_distance(b, a))
    assert distances.symmetric_distance(a, b) > 0
    m = np.stack([a, b, a * b])
    t0 = distances.trivial_embedding(m)
    sym, asym = distances.distance_matrix(m, "sym"), distances.distance_matrix(m, "asym", alpha=0.2)
    assert np.allclose(sym, sym.T) and np.allclose(np.diag(sym), 0)
    assert asym[0, 1] == pytest.approx(distances.asymmetric_distance(a, b, t0, alpha=0.2))
    assert asym[0, 1] == pytest.approx(sym[0, 1] - 0.2 * distances.symmetric_distance(a, t0))
    assert sorted(distances.cluster_order(sym)) == [0, 1, 2]


def test_expert_selection_ratio():
    names = ["colour|shape=sphere", "colour|shape=cone", "shape|colour=red"]
    m = np.array([[1.0, 1.0, 0.1], [1.0, 0.9, 0.1], [0.1, 0.1, 1.0]])
    err = pd.DataFrame([[0.1, 0.2, 0.5], [0.3, 0.1, 0.6], [0.6, 0.7, 0.1]], index=names, columns=names)
    sel = selection.expert_selection(names, m, err, alpha=0.0).set_index("task")
    assert sel.loc["colour|shape=sphere", "chosen expert"] == "colour|shape=cone"
    assert sel.loc["colour|shape=sphere", "ratio"] == pytest.approx(0.3 / 0.3)
    assert (sel["ratio"] >= 1).all() and (sel["random ratio"] >= 1).all()


def test_domain_embedding_ignores_labels(probe, task):
    """The domain embedding sees the images only: two tasks on the same images share it; their task
    embeddings differ."""
    x, y = task
    other = (y + (torch.arange(N) // K) % 2) % K
    d1, d2 = fisher.domain_embedding(probe, x, mc_samples=2), fisher.domain_embedding(probe, x, mc_samples=2)
    assert np.array_equal(d1, d2) and d1.shape == (fisher.n_filters(probe.encoder),)
    between_tasks = distances.symmetric_distance(embed(probe, x, y), embed(probe, x, other))
    assert between_tasks > 10 * distances.symmetric_distance(d1, d2)
    assert distances.symmetric_distance(d1, fisher.domain_embedding(probe, x[: N // 2], mc_samples=2)) > 0


def test_model2vec_learns_what_distance_misses():
    """When one generalist expert is best for every target although its task embedding is far from all of them,
    the symmetric distance picks the nearest task's expert, and Model2Vec, trained on the other targets only,
    learns to pick the generalist."""
    rng = np.random.default_rng(0)
    n, k = 8, 16
    m = rng.random((n, k)) + 0.05
    m[0] = np.where(np.arange(k) < 2, 5.0, 0.01)  # the generalist's embedding: unlike every other task's
    names = [f"t{i}" for i in range(n)]
    err = pd.DataFrame(0.5 + 0.1 * rng.random((n, n)), index=names, columns=names)
    err.iloc[0, :] = 0.1  # expert t0 is the best for every other target
    picks = selection.model2vec_picks(names, m, err, steps=300)
    assert sum(picks[t] == "t0" for t in names[1:]) >= n - 2, picks
    sel = selection.expert_selection(names, m, err, alpha=0.0).set_index("task")
    assert (sel.loc[names[1:], "symmetric pick"] != "t0").sum() >= n - 2  # the distance alone misses it
    assert (sel.loc[names[1:], "model2vec ratio"] <= sel.loc[names[1:], "symmetric ratio"]).all()
    assert all(picks[t] != t for t in names)


def test_probe_pretrains_on_data_disjoint_from_the_family(tmp_path):
    """No class and no image of a family task is in the probe's pretraining set (the ImageNet role)."""
    import hashlib
    from pathlib import Path

    from taskstudy.engine import params
    from taskstudy.engine.store import Store
    from taskstudy.world import objects

    root = Path(__file__).resolve().parents[1]
    P = params.load(root / "params/smoke.yaml", [f"common.results_dir={tmp_path / 'results'}"])
    cfg, store = P.section("task2vec"), Store(tmp_path / "results")
    assert t2v.probe_key(P.common, cfg)["data"]["world"] == "pretrain"
    x, y = t2v.pretrain_tensors(store, P.common, cfg, "train")
    pre_classes = {(c.shape, c.colour) for c in objects.classes("pretrain")}
    digest = {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in x}
    for task in [n for n in t2v.family(cfg) if n not in t2v.SCENE_TASKS]:
        td = t2v.task_data(store, P.common, cfg, task)
        assert not digest & {hashlib.sha1(img.numpy().tobytes()).hexdigest() for img in td.x_train}, task
        used = objects.task_families()[[f[0] for f in objects.task_families()].index(task)][1]
        assert not pre_classes & {(objects.classes()[i].shape, objects.classes()[i].colour) for i in used}
    assert int(y.max()) < objects.num_classes("pretrain")


def test_report_findings_read_the_family_and_the_selection():
    """task2vec_report.findings on a synthetic family: embeddings that separate shape tasks from colour tasks, a
    selection table with known ratios; its numbers are those of the tests and the table it is given."""
    from taskstudy.task2vec import task2vec_report
    from taskstudy.world import objects

    names = [n for n, _, _ in objects.task_families()]
    rng = np.random.default_rng(0)
    matrix = np.stack([rng.random(16) + (4.0 * (np.arange(16) < 8) if t2v.attribute(n) == "shape" else 0.0)
                       for n in names]) + 0.1
    table = pd.DataFrame({"norm": rng.random(len(names)), "probe error": rng.random(len(names)),
                          "attribute": [t2v.attribute(n) for n in names], "classes": 4})
    ratios = np.linspace(1.0, 3.0, len(names))
    sel = pd.DataFrame({"task": names, "ratio": ratios, "symmetric ratio": ratios + 0.5,
                        "model2vec ratio": ratios, "random ratio": ratios + 1.0})
    f = task2vec_report.findings(names, matrix, table, sel, factor=2.0, seed=0)
    dist = distances.distance_matrix(matrix, "sym")
    att = selection.attribute_test(names, dist, seed=0)
    assert (f["d_same_attribute"], f["d_different_attribute"], f["attribute_p"]) == (att["same"], att["different"],
                                                                                      att["p"])
    assert f["d_same_attribute"] < f["d_different_attribute"]  # shape tasks sit together, apart from colour tasks
    assert f["ratio_median"] == pytest.approx(2.0) and f["worst_task"] == names[-1]
    assert f["n_best_chosen"] == 1 and f["beats_random"]


def test_no_shadow_defaults_for_the_profiles_values(probe, task):
    """issue 39, step 4: alpha and the head's steps come from the profile, not from a library default that could
    drift from it (the functions fail without them)."""
    m = np.abs(np.random.default_rng(0).standard_normal((3, 5)))
    with pytest.raises(ValueError, match="alpha"):
        distances.distance_matrix(m, "asym")
    with pytest.raises(TypeError):
        selection.expert_selection(["a", "b", "c"], m, pd.DataFrame())  # alpha required
    with pytest.raises(ValueError, match="head_steps"):
        fisher.fisher_embedding(probe, *task, K)
