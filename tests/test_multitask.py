"""Multi-task networks for every task group (Standley et al. 2020): units, store reuse, grouping, lookahead."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from taskstudy import grouping, multitask, params

TASKS = ["segment_semantic", "depth_zbuffer", "edge2d"]


def _params(results: Path) -> params.StudyParams:
    return params.load("params/smoke.yaml", [
        f"common.results_dir={results}", "common.workers=0", f"task_grouping.tasks={TASKS}",
        "task_grouping.width=4", "task_grouping.decoder_width=4", "task_grouping.epochs=2",
        "task_grouping.early_epoch=1", "task_grouping.batch_size=32", "task_grouping.train_images=32",
        "task_grouping.lookahead_every=1",
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[multitask.GroupingRun, multitask.GroupingRun]:
    P = _params(tmp_path_factory.mktemp("results"))
    return multitask.train_all(P), multitask.train_all(P)


def test_every_group_and_half_size_network(runs: tuple[multitask.GroupingRun, multitask.GroupingRun]) -> None:
    first, _ = runs
    n = len(TASKS)
    assert len(first.networks) == len(first.results) == 2**n - 1 + n
    assert len(first.computed) == 2**n - 1 + n
    assert sorted(first.costs).count(multitask.HALF_COST) == n
    for net, r in zip(first.networks, first.results, strict=True):
        assert set(r["losses"]) == set(net) == set(r["early_losses"]) == set(r["scores"])
        assert all(math.isfinite(v) for v in r["losses"].values())
        assert all(len(s) == 32 for s in r["scores"].values())  # smoke n_test: one score per test image


def test_rerun_computes_nothing(runs: tuple[multitask.GroupingRun, multitask.GroupingRun]) -> None:
    first, second = runs
    assert second.computed == []
    assert second.losses() == first.losses()
    assert second.lookahead.equals(first.lookahead)


def test_best_grouping_covers_tasks_within_budget(runs: tuple[multitask.GroupingRun, multitask.GroupingRun]) -> None:
    run, _ = runs
    losses = run.losses()
    for budget in grouping.default_budgets(len(TASKS)):
        chosen = grouping.best_grouping(losses, run.costs, budget, run.tasks)
        assert set().union(*(run.networks[i] for i in chosen)) == set(TASKS)
        assert sum(run.costs[i] for i in chosen) <= budget + 1e-9
    table = multitask.budget_table(run)
    assert (table["best_loss"] <= table["all_in_one_loss"] + 1e-12).all()
    assert (table["best_loss"] <= table["predicted_loss"] + 1e-12).all()
    assert multitask.pairwise(run).shape == (len(TASKS), len(TASKS))


def test_lookahead_matrix(runs: tuple[multitask.GroupingRun, multitask.GroupingRun]) -> None:
    look = runs[0].lookahead
    assert list(look.index) == list(look.columns) == TASKS
    assert look.notna().all().all()


def test_network_outputs_and_half_cost() -> None:
    net = multitask.MultiTaskNetwork(TASKS, width=4, decoder_width=4)
    out = net(torch.zeros(2, 3, 16, 16))
    assert set(out) == set(TASKS)
    assert out["depth_zbuffer"].shape == (2, 1, 16, 16)
    w = multitask.half_width(8, 1, 32)
    assert abs(multitask.encoder_macs(w, 1, 32) / multitask.encoder_macs(8, 1, 32) - 0.5) < 0.1
