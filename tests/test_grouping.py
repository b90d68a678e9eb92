"""Standley et al. (ICML 2020) task grouping: exact search vs brute force, coverage, budget, errors, tables."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from taskstudy.standley.grouping import (
    GroupingError,
    best_grouping,
    brute_force_grouping,
    candidate_networks,
    default_budgets,
    estimate_higher_order,
    grouping_table,
    min_cover_cost,
    network_names,
    pairwise_table,
    predicted_grouping,
    total_loss,
)


def _random_table(rng: random.Random, n_tasks: int, max_nets: int, integer: bool = False):
    """Random subset of the candidate networks (always incl. every single-task one), random losses and costs."""
    tasks = [f"t{k}" for k in range(n_tasks)]
    nets = [c for k in range(1, n_tasks + 1) for c in itertools.combinations(tasks, k)]
    nets += [(t,) for t in tasks]
    keep = [(t,) for t in tasks] + rng.sample([n for n in nets if len(n) > 1], k=min(max_nets - n_tasks,
                                                                                   sum(len(n) > 1 for n in nets)))
    rng.shuffle(keep)
    draw = (lambda: float(rng.randint(1, 4))) if integer else (lambda: rng.uniform(0.1, 2.0))
    losses = [{t: draw() for t in net} for net in keep]
    costs = [rng.choice([0.5, 1.0]) for _ in keep]
    return tasks, losses, costs


def _check_cover_budget(tasks, losses, costs, chosen, budget):
    assert chosen == sorted(set(chosen))
    assert sum(costs[i] for i in chosen) <= budget + 1e-9
    for t in tasks:
        assert any(t in losses[i] for i in chosen), t


@pytest.mark.parametrize("integer", [False, True], ids=["continuous", "ties"])
def test_exact_equals_brute_force(integer):
    rng = random.Random(1234 + integer)
    n_compared = 0
    for _ in range(30):
        n_tasks = rng.choice([3, 4])
        tasks, losses, costs = _random_table(rng, n_tasks, max_nets=rng.randint(n_tasks + 2, 11), integer=integer)
        for budget in default_budgets(n_tasks):
            try:
                expected = brute_force_grouping(losses, costs, budget)
            except GroupingError:
                with pytest.raises(GroupingError):
                    best_grouping(losses, costs, budget)
                continue
            got = best_grouping(losses, costs, budget)
            assert got == expected  # same indices: the tie-breaking is deterministic and shared
            _check_cover_budget(tasks, losses, costs, got, budget)
            bip = best_grouping(losses, costs, budget, method="bip")
            _check_cover_budget(tasks, losses, costs, bip, budget)
            assert math.isclose(total_loss(losses, bip), total_loss(losses, got), rel_tol=1e-9)
            n_compared += 1
    assert n_compared >= 50


def test_full_candidate_set_three_tasks_equals_brute_force():
    rng = random.Random(7)
    tasks = ["a", "b", "c"]
    nets, costs = candidate_networks(tasks)
    for _ in range(10):
        losses = [{t: rng.uniform(0.5, 1.5) * (1.2 if c < 1 else 1.0) for t in net}
                  for net, c in zip(nets, costs, strict=True)]
        for budget in default_budgets(3):
            got = best_grouping(losses, costs, budget)
            assert got == brute_force_grouping(losses, costs, budget)
            _check_cover_budget(tasks, losses, costs, got, budget)


def test_candidate_counts():
    nets, costs = candidate_networks(["seg", "depth", "normals", "keypoints", "edges"])
    assert len(nets) == 31 + 5 == len(costs)
    assert sum(c == 1.0 for c in costs) == 31 and sum(c == 0.5 for c in costs) == 5
    assert len({n for n, c in zip(nets, costs, strict=True) if c == 1.0}) == 31
    assert nets[-1] == ("edges",) and costs[-1] == 0.5
    assert len(candidate_networks(["a", "b", "c"])[0]) == 7 + 3
    names = network_names(nets, costs)
    assert "seg+depth" in names and "edges (x0.5)" in names


def test_budget_error_names_budget_and_cheapest():
    losses = [{"a": 1.0, "b": 1.0}, {"a": 0.5}, {"b": 0.5}]
    costs = [1.0, 1.0, 1.0]
    assert min_cover_cost(losses, costs) == 1.0
    for method in ("bnb", "bip"):
        with pytest.raises(GroupingError, match=r"budget 0\.5.*cheapest covering choice costs 1"):
            best_grouping(losses, costs, 0.5, method=method)
    with pytest.raises(GroupingError, match=r"budget 0\.5"):
        brute_force_grouping(losses, costs, 0.5)


def test_uncovered_task_named():
    with pytest.raises(GroupingError, match="'normals'"):
        best_grouping([{"seg": 1.0}, {"depth": 1.0}], [1.0, 1.0], 5.0, tasks=["seg", "depth", "normals"])


def test_small_hand_example():
    # A pair that helps both beats two separate networks at budget 1; at budget 2 separate full nets are better.
    losses = [{"a": 0.8, "b": 0.9}, {"a": 0.7}, {"b": 0.6}, {"a": 1.0}, {"b": 1.0}]
    costs = [1.0, 1.0, 1.0, 0.5, 0.5]
    assert best_grouping(losses, costs, 1.0) == [0]
    assert best_grouping(losses, costs, 1.5) == [2, 3]  # b full alone (0.6) + a half size (1.0) beats the pair (1.7)
    assert best_grouping(losses, costs, 2.0) == [1, 2]


def test_pairwise_sign_convention():
    single = {"a": 1.0, "b": 2.0, "c": 1.0}
    pair = {("a", "b"): {"a": 0.8, "b": 2.5}, ("c", "a"): {"a": 1.0, "c": 0.5}}
    tab = pairwise_table(single, pair)
    assert tab.loc["a", "b"] == pytest.approx(0.2)  # b helps a: positive
    assert tab.loc["b", "a"] == pytest.approx(-0.25)  # a hurts b: negative
    assert tab.loc["c", "a"] == pytest.approx(0.5) and tab.loc["a", "c"] == pytest.approx(0.0)
    assert math.isnan(tab.loc["a", "a"]) and math.isnan(tab.loc["b", "c"])
    assert list(tab.index) == ["a", "b", "c"] == list(tab.columns)


def test_higher_order_estimate_and_prediction():
    tasks = ["a", "b", "c"]
    nets, costs = candidate_networks(tasks)
    measured = {("a",): {"a": 1.0}, ("b",): {"b": 1.0}, ("c",): {"c": 1.0},
                ("a", "b"): {"a": 0.6, "b": 0.8}, ("a", "c"): {"a": 1.0, "c": 1.2}, ("b", "c"): {"b": 0.9, "c": 1.1}}
    losses = []
    for net, c in zip(nets, costs, strict=True):
        if c < 1:
            losses.append({net[0]: 1.3})
        elif net in measured:
            losses.append(measured[net])
        else:
            losses.append({})  # not trained: the approximation must not need it
    est = estimate_higher_order(losses, nets)
    abc = nets.index(("a", "b", "c"))
    assert est[abc] == pytest.approx({"a": 0.8, "b": 0.85, "c": 1.15})
    chosen = predicted_grouping(losses, nets, costs, 2.0)
    assert sum(costs[i] for i in chosen) <= 2.0
    assert chosen == best_grouping(est, costs, 2.0)
    assert [nets[i] for i in chosen] == [("c",), ("a", "b")]
    with pytest.raises(GroupingError, match="pair"):
        estimate_higher_order([{"a": 1.0, "b": 1.0, "c": 1.0}], [("a", "b", "c")])


def test_grouping_table():
    rng = random.Random(3)
    tasks = ["seg", "depth", "normals", "keypoints", "edges"]
    nets, costs = candidate_networks(tasks)
    losses = [{t: rng.uniform(0.5, 1.5) for t in net} for net in nets]
    names = network_names(nets, costs)
    tab = grouping_table(losses, costs, names, predicted=estimate_higher_order(losses, nets))
    assert list(tab["budget"]) == [1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]
    assert (tab["best_cost"] <= tab["budget"] + 1e-9).all()
    assert (tab["best_loss"] <= tab["all_in_one_loss"] + 1e-12).all()
    sep = tab["all_separate_loss"]
    assert sep[tab["budget"] < 2.5].isna().all() and sep[tab["budget"] >= 2.5].notna().all()
    assert (tab["best_loss"][sep.notna()] <= sep[sep.notna()] + 1e-12).all()
    assert (tab["best_loss"] <= tab["predicted_loss"] + 1e-12).all()
    assert tab["best_loss"].is_monotonic_decreasing
    assert tab.loc[tab["budget"] == 5.0, "all_separate_loss"].item() == pytest.approx(
        sum(min(losses[i][t] for i, n in enumerate(nets) if n == (t,)) for t in tasks))
