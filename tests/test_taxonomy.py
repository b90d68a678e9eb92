"""Step IV (Taskonomy Sec. 3.4, Eq. 1-2): the BIP against brute force and HiGHS; error cases; benchmark."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from taskstudy.report.benchmarks import bench_taxonomy
from taskstudy.taskonomy.taxonomy import (
    TaxonomyError,
    brute_force_taxonomy,
    min_budget,
    solve_taxonomy,
    transfers_from_affinity,
)

ROOT = Path(__file__).resolve().parents[1]


def random_instance(rng: np.random.Generator, n: int, order: int, extra_targets: int = 0) -> pd.DataFrame:
    """Every task is a target and a source; some candidates dropped at random; optional source-less novel targets."""
    tasks = [f"t{i}" for i in range(n)]
    rows = []
    for t in tasks + [f"novel{i}" for i in range(extra_targets)]:
        for k in range(1, order + 1):
            for combo in itertools.combinations(tasks, k):
                if k == 1 or rng.random() < 0.7:
                    rows.append((t, combo, float(rng.random())))
    return pd.DataFrame(rows, columns=["target", "sources", "quality"])


def check_policy(tax, transfers: pd.DataFrame, budget, costs=None):
    cand = {(t, tuple(s)) for t, s in zip(transfers["target"], transfers["sources"], strict=True)}
    assert set(tax.policy) == set(transfers["target"])
    for t, srcs in tax.policy.items():
        assert (t, srcs) in cand and set(srcs) <= tax.sources
    assert sum((costs or {}).get(s, 1) for s in tax.sources) <= budget + 1e-9


def test_bip_equals_brute_force_and_highs_on_random_instances():
    rng = np.random.default_rng(2018)
    n_instances = 0
    for inst in range(54):
        n = 3 + inst % 3
        order = 1 + (inst // 3) % 3
        tr = random_instance(rng, n, order, extra_targets=inst % 2)
        costs = {f"t{i}": int(rng.integers(1, 3)) for i in range(n)} if inst % 4 == 3 else None
        importance = {t: float(rng.uniform(0.5, 2)) for t in tr["target"].unique()} if inst % 5 == 4 else None
        total = n if costs is None else sum(costs.values())
        floor = min_budget(tr, costs)
        for budget in range(1, total + 1):
            if budget < floor:
                with pytest.raises(TaxonomyError):
                    brute_force_taxonomy(tr, budget, costs, importance)
                continue
            for max_order in sorted({1, order}):
                bf = brute_force_taxonomy(tr, budget, costs, importance, max_order=max_order)
                cbc = solve_taxonomy(tr, budget, costs, importance, max_order=max_order)
                hi = solve_taxonomy(tr, budget, costs, importance, max_order=max_order, solver="highs")
                assert cbc.objective == pytest.approx(bf.objective, abs=1e-9), (inst, budget, max_order)
                assert hi.objective == pytest.approx(bf.objective, abs=1e-9), (inst, budget, max_order)
                check_policy(cbc, tr, budget, costs)
                check_policy(hi, tr, budget, costs)
                assert all(len(s) <= max_order for s in cbc.policy.values())
        n_instances += 1
    assert n_instances >= 50


def test_self_transfer_is_an_ordinary_candidate():
    tr = pd.DataFrame([("a", ("a",), 1.0), ("a", ("b",), 0.4), ("b", ("b",), 1.0), ("b", ("a",), 0.3)],
                      columns=["target", "sources", "quality"])
    two = solve_taxonomy(tr, 2)
    assert two.policy == {"a": ("a",), "b": ("b",)} and two.objective == pytest.approx(2.0)
    one = solve_taxonomy(tr, 1)
    assert one.sources == frozenset({"b"}) and one.policy == {"a": ("b",), "b": ("b",)}
    assert one.objective == pytest.approx(1.4) and one.budget == 1 and one.solver == "cbc"


def test_string_and_tuple_sources_and_order_limit():
    rows = [("c", "a+b", 0.9), ("c", ("a",), 0.2), ("c", "b", 0.3), ("a", "a", 1.0), ("b", ("b",), 1.0)]
    tr = pd.DataFrame(rows, columns=["target", "sources", "quality"])
    tax = solve_taxonomy(tr, 2)
    assert tax.policy["c"] == ("a", "b")
    tax1 = solve_taxonomy(tr, 2, max_order=1)
    assert tax1.policy["c"] == ("b",) and tax1.max_order == 1
    tr2 = pd.DataFrame([("a", "x", 1.0), ("a", "y", 0.0), ("b", "x", 0.0), ("b", "y", 0.9)],
                       columns=["target", "sources", "quality"])
    assert solve_taxonomy(tr2, 1).sources == {"x"}
    assert solve_taxonomy(tr2, 1, importance={"b": 2.0}).sources == {"y"}  # r_t weighs target b up


def test_costs_change_the_choice():
    tr = pd.DataFrame([("t", ("x",), 1.0), ("t", ("y",), 0.5)], columns=["target", "sources", "quality"])
    assert solve_taxonomy(tr, 1).policy == {"t": ("x",)}
    assert solve_taxonomy(tr, 1, costs={"x": 2, "y": 1}).policy == {"t": ("y",)}
    assert solve_taxonomy(tr, 2, costs={"x": 2, "y": 1}).policy == {"t": ("x",)}


def test_infeasible_budget_names_budget_and_cheapest():
    tr = random_instance(np.random.default_rng(0), 3, 1)
    for solver in ("cbc", "highs"):
        with pytest.raises(TaxonomyError, match=r"budget 0 is infeasible.*cheapest feasible budget 1"):
            solve_taxonomy(tr, 0, solver=solver)
    # every target needs a different, costly source: cheapest is the sum
    tr2 = pd.DataFrame([("a", ("a",), 1.0), ("b", ("b",), 1.0)], columns=["target", "sources", "quality"])
    with pytest.raises(TaxonomyError, match=r"budget 3 is infeasible.*cheapest feasible budget 4"):
        solve_taxonomy(tr2, 3, costs={"a": 2, "b": 2})


def test_target_without_candidate_is_named():
    tr = pd.DataFrame([("a", ("a",), 1.0), ("b", ("a", "c"), 1.0)], columns=["target", "sources", "quality"])
    with pytest.raises(TaxonomyError, match=r"\['b'\].*order <= 1"):
        solve_taxonomy(tr, 3, max_order=1)
    with pytest.raises(TaxonomyError, match=r"\['z'\]"):
        solve_taxonomy(tr, 3, targets=["a", "b", "z"])
    with pytest.raises(TaxonomyError, match=r"\['z'\]"):
        solve_taxonomy(tr, 3, importance={"z": 1.0})
    with pytest.raises(ValueError, match="costs has no entry"):
        solve_taxonomy(tr, 3, costs={"a": 1})
    with pytest.raises(ValueError, match="unknown solver"):
        solve_taxonomy(tr, 3, solver="gurobi")


def test_transfers_from_affinity():
    P = pd.DataFrame({"a": [0.6, np.nan], "b": [0.1, 0.7], "a+b": [0.3, 0.3]}, index=["a", "c"])
    tr = transfers_from_affinity(P)
    assert len(tr) == 5 and ("a", "b") in set(tr["sources"])
    assert solve_taxonomy(tr, 1).policy == {"a": ("b",), "c": ("b",)}  # {a} alone cannot serve c
    assert solve_taxonomy(tr, 2).policy == {"a": ("a",), "c": ("b",)}


def test_taxonomy_benchmark_runs_and_agrees_with_brute_force():
    """The benchmark's instances solve, and the BIP agrees with enumeration where it runs (no time asserted:
    the 1 s target is checked by `make bench`)."""
    rows = bench_taxonomy(n_tasks=(6, 25), orders=(1, 2, 3), budgets=(1, 3, 6), brute_max_tasks=6)
    assert [r["n_tasks"] for r in rows] == [6, 6, 6, 25, 25, 25]
    assert all(r["agree"] for r in rows if r["n_tasks"] == 6)
    assert all(r["bip_s"] > 0 for r in rows)
