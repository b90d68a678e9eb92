"""Policy evaluation (Taskonomy Sec. 4.1-4.2): win rates, Gain and Quality, significance vs random policies."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskstudy.taskonomy.ahp import affinity_matrix
from taskstudy.taskonomy.evaluate import (
    gain_quality_table,
    policy_gain_quality,
    random_policies,
    significance,
    win_rate,
)
from taskstudy.taskonomy.taxonomy import Taxonomy, solve_taxonomy, transfers_from_affinity

TASKS = ["a", "b", "c", "d", "e"]


def world(n_images: int = 150, seed: int = 0) -> pd.DataFrame:
    """Tasks in two families ({a, b, c}, {d, e}): transfers within a family are good, across are poor; pairs
    a little better than their best member; baselines scratch (below most transfers) and full (above all)."""
    rng = np.random.default_rng(seed)
    fam = {"a": 0, "b": 0, "c": 0, "d": 1, "e": 1}
    rows = []
    for t in TASKS:
        mu = {s: (2.0 if s == t else 1.0 if fam[s] == fam[t] else -1.0) + rng.uniform(0, 0.3) for s in TASKS}
        for i, s in enumerate(TASKS):
            for s2 in TASKS[i + 1:]:
                mu[f"{s}+{s2}"] = max(mu[s], mu[s2]) + 0.2
        mu |= {"scratch": 0.0, "full": 3.0}
        base = rng.normal(size=n_images)
        for src, m in mu.items():
            vals = m + base + 0.5 * rng.normal(size=n_images)
            rows += [(t, src, src.count("+") + 1, i, float(v)) for i, v in enumerate(vals)]
    return pd.DataFrame(rows, columns=["target", "sources", "order", "image", "score"])


@pytest.fixture(scope="module")
def scores() -> pd.DataFrame:
    return world()


def test_win_rate_ties_and_direction():
    df = pd.DataFrame({"target": "t", "sources": ["x", "x", "x", "y", "y", "y"], "order": 1,
                       "image": [0, 1, 2, 0, 1, 2], "score": [1.0, 2.0, 3.0, 0.0, 2.0, 4.0]})
    assert win_rate(df, "t", "x", "y") == pytest.approx(0.5)  # win, tie, loss
    assert win_rate(df, "t", ("x",), "y") + win_rate(df, "t", "y", "x") == pytest.approx(1.0)
    with pytest.raises(KeyError, match="'z'"):
        win_rate(df, "t", "z", "x")


def test_win_rate_on_shared_images_and_source_order(scores):
    assert win_rate(scores, "a", "full", "scratch") > 0.95
    assert win_rate(scores, "a", ("b", "a"), "scratch") == win_rate(scores, "a", "a+b", "scratch")


def test_policy_gain_quality(scores):
    tax = Taxonomy(frozenset({"a", "d"}), {"a": ("a",), "b": ("a",), "e": ("a",)}, 0.0, 2, 1, "manual")
    pgq = policy_gain_quality(scores, tax)
    assert list(pgq.index) == ["a", "b", "e"]
    assert pgq.at["a", "gain"] > 0.9 and pgq.at["b", "gain"] > 0.7 and pgq.at["e", "gain"] < 0.3
    assert (pgq["quality"] < 0.5).all()
    assert pgq.at["a", "quality"] > pgq.at["e", "quality"]


def test_gain_quality_table(scores):
    P = affinity_matrix(scores, max_order=2)
    tab = gain_quality_table(scores, P, budgets=[1, 2, 5], orders=[1, 2])
    assert list(tab[["budget", "order"]].itertuples(index=False, name=None)) == [
        (1, 1), (1, 2), (2, 1), (2, 2), (5, 1), (5, 2)]
    assert tab["gain"].between(0, 1).all() and tab["quality"].between(0, 1).all()
    g = tab.set_index(["budget", "order"])
    assert g.at[(2, 1), "gain"] > g.at[(1, 1), "gain"]  # a second family's source helps the other family
    assert g.at[(5, 1), "quality"] >= g.at[(2, 1), "quality"] - 0.05
    assert g.at[(5, 1), "n_sources"] == 5  # every task served by its own network at full budget
    bad = gain_quality_table(scores, P, budgets=[0], orders=[1])
    assert bad["gain"].isna().all()


def test_random_policies_are_feasible_and_reproducible(scores):
    tr = transfers_from_affinity(affinity_matrix(scores, max_order=2))
    pols = random_policies(tr, 2, 30, seed=5, max_order=2)
    assert len(pols) == 30
    for p in pols:
        assert len(p.sources) <= 2 and set(p.policy) == set(TASKS)
        assert all(set(s) <= p.sources for s in p.policy.values())
    again = random_policies(tr, 2, 30, seed=5, max_order=2)
    assert [p.policy for p in pols] == [p.policy for p in again]
    assert len({tuple(p.policy.items()) for p in pols}) > 5
    costly = random_policies(tr, 3, 10, seed=1, costs={t: 2 for t in TASKS})
    assert all(len(p.sources) == 1 for p in costly)


def test_significance_oracle_beats_random(scores):
    P = affinity_matrix(scores, max_order=1)
    sig = significance(scores, P, budgets=[1, 2, 3], n_random=100, seed=0)
    assert list(sig["budget"]) == [1, 2, 3]
    assert len(sig.at[0, "random_quality"]) == 100
    # at budget 1 the BIP maximises summed affinity, which may favour the smaller family; from 2 on it covers both
    assert (sig["taxonomy_gain"] >= sig["random_gain_mean"])[1:].all()
    assert sig.set_index("budget").at[2, "gain_percentile"] > 0.9
    assert sig.set_index("budget").at[2, "gain_p"] < 0.05
    assert sig["quality_p"].between(0, 1).all()


def test_taxonomy_is_bip_policy(scores):
    P = affinity_matrix(scores, max_order=1)
    tax = solve_taxonomy(transfers_from_affinity(P), 2)
    assert len(tax.sources) == 2 and {"a", "b", "c"} & tax.sources and {"d", "e"} & tax.sources


def test_gain_quality_trends_judge_changes_on_paired_differences():
    from taskstudy.taskonomy.findings import gain_quality_trends
    from taskstudy.uncertainty import change_verdict

    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.01, 1000)  # the test images' noise, common to every row's resamples
    rows = []
    for b in (1, 2, 4):
        for o in (1, 2):
            q = 0.2 + 0.1 * b + 0.01 * o  # Quality rises with the budget; +0.01 with the order, inside its band
            g = 0.5  # Gain is flat
            qb, gb = q + shared, g + shared + rng.normal(0, 0.001, 1000)
            rows.append({"budget": b, "order": o, "quality": q, "quality_lo": np.quantile(qb, 0.025),
                         "quality_hi": np.quantile(qb, 0.975), "quality_boot": qb, "gain": g,
                         "gain_lo": np.quantile(gb, 0.025), "gain_hi": np.quantile(gb, 0.975), "gain_boot": gb})
    t = gain_quality_trends(pd.DataFrame(rows))
    ranks = t[t["rho"].notna()].set_index(["metric", "along"])
    assert ranks.at[("quality", "budget"), "verdict"] == "rises"
    assert ranks.at[("gain", "budget"), "verdict"] == "does not rise" and ranks.at[("gain", "budget"), "rho"] == 0
    changes = t[t["rho"].isna()].set_index(["metric", "along"])
    assert changes.at[("quality", "budget"), "verdict"] == "a rise beyond noise"
    # +0.01 along the order: the two intervals (each about +-0.02) overlap, the paired difference excludes 0
    q = changes.loc[("quality", "order")]
    assert q["start interval"][1] > q["end interval"][0]
    assert change_verdict(*q["start interval"], *q["end interval"]) == "within noise"
    assert q["verdict"] == "a rise beyond noise" and q["change lo"] > 0
    assert changes.at[("gain", "budget"), "verdict"] == "within noise"


def test_paired_change_where_intervals_overlap():
    from taskstudy.uncertainty import change_verdict, interval, paired_change

    rng = np.random.default_rng(1)
    images = rng.normal(0, 1, 2000)
    a, b = images, images + 0.05 + rng.normal(0, 0.01, 2000)
    assert change_verdict(*interval(a), *interval(b)) == "within noise"
    verdict, lo, hi = paired_change(a, b)
    assert verdict == "a rise beyond noise" and 0 < lo < 0.05 < hi
    assert paired_change(b, a)[0] == "a fall beyond noise"
    assert paired_change(a, a + rng.normal(0, 0.01, 2000))[0] == "within noise"
    with pytest.raises(ValueError):
        paired_change(a, b[:10])


def test_transfer_claims_compare_the_paper_and_the_study_per_claim():
    from taskstudy.taskonomy.findings import quality_finding, transfer_claims, verdict_counts

    cols = pd.MultiIndex.from_tuples([(m, w) for m in ("best gain", "best quality", "random gain")
                                      for w in ("paper", "study", "verdict")]
                                     + [("rank rho (quality)", "study vs paper")])
    rows = [[0.9, 0.8, "within noise", 0.2, 0.6, "study higher", 0.1, 0.7, "study higher", 0.4],
            [0.7, 0.6, "within noise", 0.3, 0.7, "study higher", 0.2, 0.9, "study higher", -0.2],
            [0.8, 0.4, "study lower", 0.1, 0.2, "within noise", 0.3, 0.1, "within noise", 0.3]]
    beside = pd.DataFrame(rows, columns=cols)
    claims = transfer_claims(beside)
    assert claims.at["the best transfer beats scratch on most targets", "paper"] == 3
    assert claims.at["the best transfer beats scratch on most targets", "study"] == 2
    assert claims["agree"].tolist() == [True, False, False, True]  # the study's Quality and random Gain are high
    counts = verdict_counts(beside)
    assert counts.at["best gain", "within noise"] == 2 and counts.at["random gain", "study higher"] == 2
    text, verdict = quality_finding(beside, n_train=2000, n_transfer=400)
    assert text == ("the best transfer beats the task network (trained on 5x the transfer data) on 2 of 3 targets, "
                    "median Quality 0.60") and verdict == "not reproduced"


def test_paper_gain_quality_by_order_states_each_number_against_the_interval(scores):
    from taskstudy.taskonomy.findings import paper_gain_quality_by_order

    affinity = affinity_matrix(scores, max_order=2)
    tr = transfers_from_affinity(affinity)
    paper = pd.DataFrame([{"task": t, "order": o, "metric": m, "value": v}
                          for t in ("a", "d", "zz") for o in (1, 2) for m, v in (("gain", 0.99), ("quality", 0.5))])
    side = paper_gain_quality_by_order(scores, tr, paper, budget=2, orders=[1, 2], n_boot=200, seed=0)
    assert side.attrs["shared"] == ["a", "d"] and list(side.index) == [1, 2]  # zz: not in the study
    assert (side["paper gain"] == 0.99).all() and side["study gain"].between(0, 1).all()
    assert set(side["gain verdict"]) <= {"within noise", "study higher", "study lower"}
    assert (side["study gain"] < 0.99).all() == (side["gain verdict"] == "study lower").all()
