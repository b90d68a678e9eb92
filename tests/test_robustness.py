"""Robustness of the taxonomy (Taskonomy Sec. 5.1-5.2): agreement helpers on hand-made inputs with known answers,
variations as params overrides only, and the outside-ranking comparison."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

from taskstudy import uncertainty
from taskstudy.engine import params
from taskstudy.engine.params import ParamsError
from taskstudy.taskonomy import outside
from taskstudy.taskonomy import robustness as rb


def matrix(rows: dict[str, list[float]], cols: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, index=cols).T


def run(name: str, affinity: pd.DataFrame, pol: dict[int, set[str]]) -> rb.Run:
    return rb.Run(name, [], affinity, {k: frozenset(v) for k, v in pol.items()}, 0, 0, 0.0)


def test_rank_correlations_of_affinity_matrices_on_known_inputs():
    cols = ["a", "b", "c", "d"]
    ref = matrix({"t1": [0.4, 0.3, 0.2, 0.1], "t2": [0.1, 0.2, 0.3, 0.4]}, cols)
    same_order = matrix({"t1": [0.9, 0.05, 0.03, 0.02], "t2": [0.0, 0.1, 0.2, 0.7]}, cols)
    reversed_t2 = matrix({"t1": [0.4, 0.3, 0.2, 0.1], "t2": [0.4, 0.3, 0.2, 0.1]}, cols)
    assert rb.per_target_rho(ref, same_order).tolist() == pytest.approx([1.0, 1.0])
    assert rb.per_target_rho(ref, reversed_t2).tolist() == pytest.approx([1.0, -1.0])
    # pooled over the 8 cells: ranks 8 7 6 5 | 5 6 7 8 (ties averaged) against 8 7 6 5 | 8 7 6 5
    x = [0.4, 0.3, 0.2, 0.1, 0.1, 0.2, 0.3, 0.4]
    y = [0.4, 0.3, 0.2, 0.1, 0.4, 0.3, 0.2, 0.1]
    from scipy.stats import spearmanr

    assert rb.pooled_rho(ref, reversed_t2) == pytest.approx(spearmanr(x, y).statistic)
    assert rb.pooled_rho(ref, ref) == pytest.approx(1.0)


def test_correlations_use_only_shared_targets_and_sources():
    ref = matrix({"t1": [0.4, 0.3, 0.2, 0.1], "t2": [0.1, 0.2, 0.3, 0.4]}, ["a", "b", "c", "d"])
    sub = matrix({"t1": [0.5, 0.3, 0.2], "t9": [0.2, 0.3, 0.5]}, ["a", "b", "d"])  # no c, no t2, extra t9
    rho = rb.per_target_rho(ref, sub)
    assert list(rho.index) == ["t1"] and rho["t1"] == pytest.approx(1.0)
    flat = matrix({"t1": [0.25, 0.25, 0.25, 0.25], "t2": [0.1, 0.2, 0.3, 0.4]}, ["a", "b", "c", "d"])
    assert np.isnan(rb.per_target_rho(ref, flat)["t1"])  # a constant row has no ranking


def test_jaccard_and_source_overlap():
    assert rb.jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert rb.jaccard({"a"}, {"a"}) == 1.0
    assert rb.jaccard(set(), set()) == 1.0
    assert rb.jaccard({"a"}, {"b"}) == 0.0
    ov = rb.source_overlap({1: {"a"}, 2: {"a", "b"}, 3: {"a", "b", "c"}}, {1: {"b"}, 2: {"a", "b"}})
    assert ov.to_dict() == {1: 0.0, 2: 1.0}  # budget 3 solved by one run only


def test_compare_resolves_the_reference_on_a_smaller_dictionary():
    # reference: at budget 1 the BIP supervises c (0.7 + 0.2 > 0.2 + 0.5); without c, it takes a.
    ref_aff = matrix({"t1": [0.2, 0.1, 0.7], "t2": [0.5, 0.3, 0.2]}, ["a", "b", "c"])
    ref = run("base", ref_aff, rb.policies(ref_aff, [1, 2]))
    small_aff = matrix({"t1": [0.8, 0.2], "t2": [0.9, 0.1]}, ["a", "b"])
    small = run("small", small_aff, rb.policies(small_aff, [1, 2]))
    out = rb.compare(ref, small, [1, 2])
    assert out["targets"] == 2 and out["sources"] == 2
    assert out["jaccard@1"] == 1.0  # both choose {a} once c is not a candidate
    assert out["jaccard@2"] == 1.0
    # pooled over the 4 shared cells: ranks (2, 1, 4, 3) against (3, 2, 4, 1): 1 - 6 * 6 / (4 * 15)
    assert out["pooled rho"] == pytest.approx(0.4)
    assert np.isnan(out["median target rho"])  # two shared sources per target: too few to rank
    assert ref.policies[1] == frozenset({"c"})  # compared as it stands, budget 1 would have overlapped 0


def test_stability_verdicts_against_the_seed_spread():
    cols = ["a", "b", "c", "d"]
    base = matrix({"t1": [0.4, 0.3, 0.2, 0.1], "t2": [0.1, 0.2, 0.3, 0.4]}, cols)
    seed = matrix({"t1": [0.4, 0.2, 0.3, 0.1], "t2": [0.1, 0.2, 0.4, 0.3]}, cols)  # two swaps
    good = matrix({"t1": [0.5, 0.3, 0.15, 0.05], "t2": [0.05, 0.15, 0.3, 0.5]}, cols)  # same order as base
    bad = matrix({"t1": [0.1, 0.2, 0.3, 0.4], "t2": [0.4, 0.3, 0.2, 0.1]}, cols)  # everything reversed
    runs = {"base": run("base", base, {1: {"a"}}), "seed 1": run("seed 1", seed, {1: {"a"}}),
            "good": run("good", good, {1: {"a"}}), "bad": run("bad", bad, {1: {"d"}})}
    spread = rb.seed_spread(runs, [1])
    assert list(spread.pair) == ["base vs seed 1"]
    table = rb.stability_table(runs, [1])
    assert table.loc["good", "pooled rho"] == pytest.approx(1.0)
    assert bool(table.loc["good", "pooled rho stable"]) and bool(table.loc["good", "mean jaccard stable"])
    assert not table.loc["bad", "pooled rho stable"] and not table.loc["bad", "mean jaccard stable"]
    assert table.loc["bad", "mean jaccard"] == 0.0


def test_ranking_agreement_on_known_rankings():
    acc = pd.Series({"a": 0.9, "b": 0.7, "c": 0.5, "d": 0.3, "e": 0.1, "f": 0.05})
    same = pd.Series({"a": 0.5, "b": 0.2, "c": 0.1, "d": 0.08, "e": 0.06, "f": 0.06 - 1e-3, "random": 0.9})
    out = outside.ranking_agreement(acc, same, n_perm=400, seed=0)
    assert out["rho"] == pytest.approx(1.0) and out["n"] == 6
    assert out["p"] == pytest.approx(2 / 720, abs=0.02)  # exact two-sided p of a perfect 6-ranking: 2/720
    rev = outside.ranking_agreement(acc, -same, n_perm=400, seed=0)
    assert rev["rho"] == pytest.approx(-1.0)


def test_every_variation_is_a_params_override_of_the_profile():
    P = params.load(ROOT / "params/default.yaml")
    plan = rb.variations(P)
    cfg = P.section("robustness")
    assert list(plan)[: 1 + len(cfg.seeds)] == ["base", *[f"seed {s}" for s in cfg.seeds]]
    base = rb.variation_params(P, [])
    # the default base trains exactly like the main study (issue 17): fewer tasks, never a smaller budget
    assert cfg.n_train is None and cfg.epochs is None
    assert base.common.tasks == cfg.tasks and base.common.n_train == P.common.n_train
    assert base.section("task_networks") == P.section("task_networks")
    assert base.section("transfers").max_order == 1
    assert base.section("transfers").model_copy(update={"max_order": 1}) == base.section("transfers")
    smoke = params.load(ROOT / "params/smoke.yaml")  # a profile may still shorten its base, and it shows
    assert rb.variation_params(smoke, []).common.n_train == smoke.section("robustness").n_train
    assert base.common.split_seed == P.common.seed  # the splits stay the main run's when the seed changes
    for name, ov in plan.items():
        Q = rb.variation_params(P, ov)
        changed = {k for k, v in params.flatten(Q.as_dict()).items() if params.flatten(base.as_dict()).get(k) != v}
        touched = {o.split("=", 1)[0] for o in ov}
        assert changed <= touched, (name, changed - touched)  # nothing but the override differs from the base
    # one notebook serves every variation: none is a copied chapter
    assert len(list((ROOT / "notebooks").glob("*robustness*.ipynb"))) == 1


def test_seed_override_keeps_the_splits_and_split_seed_changes_them():
    from taskstudy.world import data

    P = params.load(ROOT / "params/smoke.yaml")
    seed = rb.variation_params(P, ["common.seed=1"])
    split = rb.variation_params(P, ["common.split_seed=1"])
    base = rb.variation_params(P, [])
    assert data.split_key(seed.common, "test") == data.split_key(base.common, "test")
    assert data.split_key(split.common, "test") != data.split_key(base.common, "test")
    # the main profile's split keys did not change with the new field (every cached split stays valid)
    assert data.split_key(P.common, "test")["seed"] == P.common.seed


def test_a_bad_variation_fails_at_load_naming_it(tmp_path):
    raw = params.read_yaml(ROOT / "params/smoke.yaml")
    raw["robustness"]["variations"] = {"typo": ["transfers.readout_widht=8"]}
    f = tmp_path / "bad.yaml"
    f.write_text(json.dumps(raw))
    with pytest.raises(ParamsError, match=r"robustness.variations.typo.*readout_widht"):
        params.load(f)
    raw["robustness"]["variations"] = {}
    raw["robustness"]["tasks"] = ["normals", "normalz"]
    f.write_text(json.dumps(raw))
    from taskstudy.world import tasks as taskdict

    with pytest.raises(ParamsError, match="robustness.tasks.*normalz"):  # the task dictionary checks names
        taskdict.check_profile(params.load(f))


def test_critical_rho_matches_the_t_test_threshold():
    from scipy import stats

    for n in (8, 21, 40):
        r = uncertainty.critical_rho(n)
        t = r * np.sqrt((n - 2) / (1 - r * r))
        assert 2 * stats.t.sf(t, n - 2) == pytest.approx(0.05)
    assert uncertainty.critical_rho(10) > uncertainty.critical_rho(40)  # more pairs, a smaller rho suffices


def test_linear_probe_reads_what_the_representation_holds():
    import torch

    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    x = 0.2 * torch.rand(300, 3, 8, 8, generator=gen)
    x[torch.arange(300), y] += 0.5  # the class is which channel is bright
    d = {"x_train": x[:200], "y_train": y[:200], "x_test": x[200:], "y_test": y[200:], "n_classes": 3}
    identity = torch.nn.Identity()
    assert outside.probe_accuracy(identity, d, grid=2, weight_decay=1e-3, steps=50) > 0.95
    shuffled = {**d, "y_train": d["y_train"][torch.randperm(200, generator=gen)]}
    assert outside.probe_accuracy(identity, shuffled, grid=2, weight_decay=1e-3, steps=50) < 0.6  # chance is 1/3


def test_outside_set_from_a_cifar100_copy(tmp_path):
    from test_realdata import _write_cifar

    root = tmp_path / "cifar"
    _write_cifar(root, per_class=2)
    over = ["robustness.outside_dataset=cifar100", f"robustness.cifar_root={root}", "robustness.outside_train=50",
            "robustness.outside_test=30", f"common.results_dir={tmp_path / 'results'}"]
    P = params.load(ROOT / "params/smoke.yaml", over)
    d = outside.outside_data(P)
    size = P.common.image_size
    assert d["x_train"].shape == (50, 3, size, size) and d["x_test"].shape == (30, 3, size, size)
    assert d["n_classes"] == 100 and 0 <= int(d["y_train"].min()) and int(d["y_train"].max()) < 100
    assert 0.0 <= float(d["x_train"].min()) and float(d["x_train"].max()) <= 1.0
    assert outside.outside_name(P).startswith("CIFAR-100")
    with pytest.raises(ValueError, match="cifar_root"):
        outside.outside_key(params.load(ROOT / "params/smoke.yaml", ["robustness.outside_dataset=cifar100"]))


def test_stability_targets_and_per_target_seed_rho():
    idx, cols = ["t1", "t2", "t3", "t4"], ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(0)
    base = pd.DataFrame(rng.random((4, 5)), index=idx, columns=cols)
    same = base.copy()
    flipped = base.copy()
    flipped.loc["t4"] = -base.loc["t4"]  # one target's ranking reversed by the seed
    runs = {name: rb.Run(name, [], aff, {}, 0, 0, 0.0) for name, aff in
            (("base", base), ("seed 1", same), ("seed 2", flipped))}
    table = rb.seed_rho_per_target(runs)
    assert list(table.columns) == ["base vs seed 1", "base vs seed 2", "seed 1 vs seed 2"]
    assert table.loc["t4", "base vs seed 1"] == pytest.approx(1.0)
    assert table.loc["t4", "base vs seed 2"] == pytest.approx(-1.0)
    spread = rb.seed_spread(runs, [])
    met = rb.stability_targets(spread)
    assert met.loc["lowest target rho", "worst seed pair"] == pytest.approx(-1.0)
    assert not met.loc["lowest target rho", "met"] and met.loc["median target rho", "met"]
    text = rb.stability_finding(spread, table)
    assert "lowest target rho worst -1.00" in text and "not met" in text
    assert "below 0.5 in some seed pair: t4 (-1.00)" in text and "t1" not in text.split("pair:")[1].split(".")[0]
    assert f"rankings of {int(spread['sources'].min()) - 1} sources" in text  # chance level without the own entry


@pytest.mark.slow
def test_variations_side_by_side_on_a_cluster_equal_one_by_one(tmp_path):
    """`run_variations` runs the variations concurrently on the cluster's workers: each unit is trained once, and
    every run's affinities and chosen sources equal those of the variations run one after another (both on Dask
    workers, whose single-threaded training is deterministic)."""
    from taskstudy.engine.parallel import close_clients

    def load(folder: str) -> params.StudyParams:
        return params.load(ROOT / "params/smoke.yaml", [f"common.results_dir={tmp_path / folder}", "common.workers=2",
                                                        "common.n_transfer=16", "common.n_val=16", "common.n_test=16"])

    one, side = load("one"), load("side")
    try:
        serial = {name: rb.run_variation(one, name, ov, [1, 2]) for name, ov in rb.variations(one).items()}
        together = rb.run_variations(side, rb.variations(side), [1, 2])
    finally:
        close_clients()
    assert list(together) == list(serial)
    assert sum(r.trained for r in together.values()) == sum(r.trained for r in serial.values()) > 0
    for name, run in serial.items():
        pd.testing.assert_frame_equal(together[name].affinity, run.affinity)
        assert together[name].policies == run.policies


def test_outside_beside_states_each_verdict():
    import pandas as pd

    from taskstudy.taskonomy.outside import outside_beside

    agree = pd.DataFrame({"rho": [0.6, 0.2, -0.7], "p": [0.01, 0.3, 0.02], "n": [12, 12, 12]},
                         index=["class_object", "class_scene", "other"])
    side = outside_beside(agree, ["class_object", "class_scene", "other"])
    assert side.verdict.tolist() == ["reproduced", "not reproduced: positive but not significant at 0.05",
                                     "not reproduced: significantly negative"]
    assert side.at["class_scene", "outside set (paper)"] == "MIT Places" and side.at["other", "sources"] == 12


def test_rank_agreement_leaves_the_own_entry_out():
    """Two matrices that agree only on each target's own entry (ranked first in both, every other source drawn
    independently): about 0.5 with the own entry (1 - 6 * 10 / 120 for 5 sources), about 0 without it."""
    rng = np.random.default_rng(0)
    tasks = ["a", "b", "c", "d", "e"]

    def draw() -> pd.DataFrame:
        m = pd.DataFrame(rng.random((5, 5)), index=tasks, columns=tasks)
        return m.mask(np.eye(5, dtype=bool), 2.0)  # the own entry first

    without, with_self = [], []
    for _ in range(300):
        a, b = draw(), draw()
        without.append(rb.per_target_rho(a, b).mean())
        with_self.append(rb.per_target_rho(a, b, self_entry=True).mean())
    assert np.mean(with_self) == pytest.approx(0.5, abs=0.03)
    assert abs(np.mean(without)) < 0.03
    assert rb.per_target_rho(a, b).notna().all()  # 4 sources left per target: still a ranking


def test_rank_agreement_leaves_the_baselines_out():
    cols = ["a", "b", "c", "random", "full"]
    ref = matrix({"t1": [0.4, 0.3, 0.2, 0.05, 0.05]}, cols)
    other = matrix({"t1": [0.4, 0.3, 0.2, 0.9, 0.8]}, cols)  # disagrees only on the baselines
    assert rb.per_target_rho(ref, other)["t1"] == pytest.approx(1.0)


def test_outside_finding_counts_the_task_encoders_above_the_random_one():
    ranking = pd.DataFrame({"source": ["a", "b", "c", "random"], "accuracy": [0.40, 0.20, 0.35, 0.30],
                            "computed": [True, False, False, True]})
    text = outside.outside_finding(ranking, "object world")
    assert text.startswith("Outside set: object world. Probe accuracy from 0.20 (b) to 0.40 (a)")
    assert "the random encoder 0.30, beaten by 2 of 3 task encoders" in text
    assert text.endswith("2 probes fitted now, 2 read from the store.")


def test_budget_variations_are_judged_against_the_seed_band():
    """issue 38, item 4: a budget variation that reorders more than two seeds do is called so, one that reorders
    less is within the band; both sentences follow the table."""
    cols = ["a", "b", "c", "d", "e"]
    base = matrix({"t1": [0.4, 0.3, 0.2, 0.1, 0.0], "t2": [0.0, 0.1, 0.2, 0.3, 0.4]}, cols)
    seed = matrix({"t1": [0.4, 0.2, 0.3, 0.1, 0.0], "t2": [0.0, 0.1, 0.3, 0.2, 0.4]}, cols)  # one swap each
    same = matrix({"t1": [0.5, 0.3, 0.15, 0.05, 0.0], "t2": [0.0, 0.05, 0.15, 0.3, 0.5]}, cols)
    moved = matrix({"t1": [0.0, 0.1, 0.2, 0.3, 0.4], "t2": [0.4, 0.3, 0.2, 0.1, 0.0]}, cols)
    runs = {"base": run("base", base, {1: {"a"}}), "seed 1": run("seed 1", seed, {1: {"a"}}),
            rb.BUDGET_VARIATIONS[0]: run(rb.BUDGET_VARIATIONS[0], same, {1: {"a"}}),
            rb.BUDGET_VARIATIONS[1]: run(rb.BUDGET_VARIATIONS[1], moved, {1: {"e"}}),
            "another": run("another", same, {1: {"a"}})}
    spread = rb.seed_spread(runs, [1])
    sens = rb.budget_sensitivity(rb.stability_table(runs, [1]), spread)
    assert list(sens.index) == list(rb.BUDGET_VARIATIONS)  # the budget variations only
    assert sens.loc[rb.BUDGET_VARIATIONS[0], "verdict"].startswith("within")
    assert sens.loc[rb.BUDGET_VARIATIONS[1], "verdict"].startswith("below")
    text = rb.budget_finding(sens)
    assert f"{rb.BUDGET_VARIATIONS[0]}: pooled rho 1.00" in text and "no more under it than" in text
    assert "moves beyond what a change of seed does" in text
    assert rb.seed_runs(runs) == ["base", "seed 1"]


def test_the_default_base_leaves_eight_sources_per_target(repo_root):
    """issue 38, item 2: with the own entry left out, at least 8 sources per target, 3 training seeds, and the
    budget variations in the default profile."""
    P = params.load(repo_root / "params/default.yaml")
    cfg = P.section("robustness")
    assert len(cfg.tasks) - 1 >= 8 and len(cfg.seeds) + 1 >= 3
    assert cfg.n_train is None and cfg.epochs is None  # trained exactly like the main study
    assert cfg.variations["readouts annealed on plateaus"] == rb.BUDGET_OVERRIDES["readouts annealed on plateaus"]


def test_the_base_shares_the_main_studys_networks_and_chapter_02s_check(repo_root):
    """The base's seed-0 Step I networks are the main study's, and its 2x-epochs variation's are chapter 02's
    convergence check's (the same keys: trained once)."""
    from math import ceil

    from taskstudy.taskonomy.task_networks import network_key

    P = params.load(repo_root / "params/default.yaml")
    base = rb.variation_params(P, [])
    longer = rb.variation_params(P, rb.BUDGET_OVERRIDES["Step I at 2x epochs"])
    net = P.section("task_networks")
    check = P.with_overrides(f"task_networks.epochs={net.check_epochs}",
                             f"task_networks.patience={ceil(net.patience * net.check_epochs / net.epochs)}")
    for task in net.check_tasks:
        assert network_key(base.common, base.section("task_networks"), task) == \
            network_key(P.common, net, task)
        assert network_key(longer.common, longer.section("task_networks"), task) == \
            network_key(check.common, check.section("task_networks"), task)


def test_source_separation_names_tied_sources_as_the_reason(monkeypatch, repo_root):
    """A target whose sources lie within the seed noise of each other is named with that measured reason; a
    target with well separated sources is not (issue 38, item 2)."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    level = {"far": {"a": 1.0, "b": 0.5, "c": 0.0, "d": -0.5}, "tied": {"a": 0.0, "b": 0.0, "c": 0.0, "d": 0.0}}
    tables, affinities = {}, {}
    for seed in (0, 1, 2):
        rows, aff = [], {}
        for t, row in level.items():
            means = {s: m + 0.05 * rng.standard_normal() for s, m in row.items()}
            aff[t] = [means[s] for s in "abcd"]
            rows += [{"target": t, "sources": s, "order": 1, "image": i, "score": v} for s, v in means.items()
                     for i in range(4)]
        tables[seed] = pd.DataFrame(rows)
        affinities[seed] = matrix(aff, list("abcd"))
    monkeypatch.setattr(rb.step2, "transfers",
                        lambda Q, baselines=True: SimpleNamespace(results={"val_scores": tables[Q.common.seed]}))
    P = params.load(repo_root / "params/default.yaml")
    runs = {"base": rb.Run("base", [], affinities[0], {}, 0, 0, 0.0),
            **{f"seed {s}": rb.Run(f"seed {s}", [f"common.seed={s}"], affinities[s], {}, 0, 0, 0.0) for s in (1, 2)}}
    sep = rb.source_separation(P, runs)
    assert sep.loc["far", "separation"] > 10 > 2 > sep.loc["tied", "separation"]
    assert sep.loc["far", "worst seed rho"] == pytest.approx(1.0)
    text = rb.separation_finding(sep, floor=0.99)
    assert "tied (worst rho" in text and "far (" not in text
