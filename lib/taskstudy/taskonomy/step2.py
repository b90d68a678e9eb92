"""Taskonomy Step II (Zamir et al. 2018, Sec. 3.2) as a whole: which readouts to train, then train and score them.

`transfers` follows the paper (`transfers.strategy: full`): every first-order readout, then the beam search's higher
orders. Step II is what made Taskonomy cost 47,886 GPU-hours, so the study also offers adaptive strategies that
train fewer first-order readouts (beyond the paper; chapter 14 measures what they keep of the taxonomy):

- `pruned`: per target, only the `keep` sources a transferability estimator (`taskonomy.estimators`, on the val
  split's frozen features) ranks highest;
- `halving`: successive halving (Jamieson & Talwalkar 2016; Li et al. 2018): every source's readout at the first
  short budget of `rungs` (epochs), the better 1/`eta` of a target's sources by mean val loss kept for the next
  budget, and so on up to the full budget `epochs`;
- `pruned+halving`: halving among the estimator's top `keep`.

Each rung and the last keep at least `beam` sources, so the beam search has its candidates. A source pruning drops
was never trained: it is absent from the target's score tables and affinities (AHP rates the sources it has), never
filled in. A source successive halving drops was trained, for fewer epochs: it is rated by that readout, the one at
the last budget it reached (the multi-fidelity view of Hyperband), so its per-image scores mostly lose to the
readouts that went on, and the BIP can still choose it (with only the full budget's sources rated, the default
run's BIP had no feasible choice at budgets 1, 2 and 4: fp32 on the AVX2 machine, 2026-12-07). The higher orders are
the beam search's over the sources rated at the full budget. Every readout goes through `transfer.run_readouts`
(the one runner); a readout at the full budget has the full Step II's key, so a strategy reuses the stored ones.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from taskstudy.engine.store import Store
from taskstudy.taskonomy import estimators
from taskstudy.taskonomy.features import RANDOM, VERSION, cache_features, query_kind
from taskstudy.taskonomy.task_networks import StepResult, study_tasks, task_networks
from taskstudy.taskonomy.transfer import (
    beam_sets,
    first_order_sets,
    readout_key,
    run_readouts,
    score_table,
    score_tables,
    sources_key,
)
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

Sets = dict[str, list[tuple[str, ...]]]  # target -> source sets


@dataclass
class FirstOrder:
    """What a strategy decided: the first-order source sets each target is rated on at the full budget, and every
    shorter budget it trained on the way (epochs -> source sets), with the estimator's CPU seconds if it used one."""

    rated: Sets
    rungs: list[tuple[int, Sets]] = field(default_factory=list)
    estimator_cpu_s: float = 0.0


def _floor(params: StudyParams, n: int) -> int:
    """The fewest sources a strategy keeps per target: the beam's, or all when there are fewer."""
    return min(n, params.section("transfers").beam)


def full(params: StudyParams, targets: Sequence[str], sources: Sequence[str]) -> FirstOrder:
    """The paper's Step II: every dictionary task is a source of every target."""
    return FirstOrder({t: [(s,) for s in sources] for t in targets})


def pruned(params: StudyParams, targets: Sequence[str], sources: Sequence[str],
           candidates: Sets | None = None) -> FirstOrder:
    """Per target, the `transfers.keep` sources (of `candidates`, default every source) that `transfers.estimator`
    scores highest on the val split's frozen features; a target the estimator cannot score (H-score on a continuous
    target) keeps all its candidates."""
    cfg = params.section("transfers")
    cand = candidates or full(params, targets, sources).rated
    est = estimators.estimate(params, list(targets), list(sources), names=[cfg.estimator])
    scores = est.matrix(cfg.estimator)
    rated = {}
    for t in targets:
        names = [s[0] for s in cand[t]]
        row = scores.loc[t, names].astype(float) if t in scores.index else pd.Series(np.nan, index=names)
        if row.isna().all():
            rated[t] = list(cand[t])
            continue
        k = max(cfg.keep, _floor(params, len(names)))
        top = row.fillna(-np.inf).sort_values(ascending=False, kind="stable").index[:k]
        rated[t] = [(s,) for s in names if s in set(top)]
    return FirstOrder(rated, estimator_cpu_s=float(est.cpu_s.get(cfg.estimator, 0.0)))


def budget_params(params: StudyParams, epochs: int) -> StudyParams:
    """The profile with the readouts' budget set to `epochs` (a rung of successive halving): the readouts' keys
    then carry that budget, so each rung's readouts are store entries of their own."""
    return params.with_overrides(f"transfers.epochs={epochs}")


def keep_better(val: pd.DataFrame, sets: Sets, keep: int) -> Sets:
    """Per target, the `keep` source sets with the highest mean val score (the lowest val loss), in their order
    in `sets`; ties go to the set listed first. Reads the val split only: a test table is refused."""
    if val.attrs.get("split") != "val":
        raise ValueError("successive halving keeps sources by their val loss: give it the val split's scores")
    out = {}
    for t, ss in sets.items():
        mean = val[val.target == t].groupby("sources")["score"].mean()
        names = [sources_key(s) for s in ss]
        ranked = mean.reindex(names).fillna(-np.inf).sort_values(ascending=False, kind="stable")
        top = set(ranked.index[:keep])
        out[t] = [s for s in ss if sources_key(s) in top]
    return out


def halving(params: StudyParams, targets: Sequence[str], sources: Sequence[str],
            candidates: Sets | None = None) -> FirstOrder:
    """Successive halving over `transfers.rungs` (short budgets, epochs) and then the full budget: at each rung
    the readouts of every target's remaining sources are trained at that budget (`run_readouts`) and the better
    1/eta of them by mean val loss go on (at least `beam`). What reaches the full budget is rated."""
    cfg = params.section("transfers")
    sets = candidates or full(params, targets, sources).rated
    rungs = []
    for epochs in sorted(e for e in cfg.rungs if e < cfg.epochs):
        q = budget_params(params, epochs)
        run_readouts(q, sets, set(), f"halving at {epochs} epochs")
        rungs.append((epochs, sets))
        val = score_table(q, sets, with_baselines=False, split="val")
        sets = {t: keep_better(val, {t: ss}, max(math.ceil(len(ss) / cfg.eta), _floor(params, len(ss))))[t]
                for t, ss in sets.items()}
    return FirstOrder(sets, rungs)


def pruned_halving(params: StudyParams, targets: Sequence[str], sources: Sequence[str]) -> FirstOrder:
    """Successive halving among the estimator's top `keep` sources of each target."""
    first = pruned(params, targets, sources)
    out = halving(params, targets, sources, candidates=first.rated)
    return FirstOrder(out.rated, out.rungs, first.estimator_cpu_s)


def dropped_tables(params: StudyParams, first: FirstOrder) -> dict[str, list[pd.DataFrame]]:
    """Per split (val, test), the score tables of the sources successive halving dropped, each from its readout at
    the last budget it reached (the rung that dropped it): what rates them in the affinities and scores them if the
    BIP chooses them. Empty for the strategies without rungs."""
    out: dict[str, list[pd.DataFrame]] = {"val": [], "test": []}
    for i, (epochs, sets) in enumerate(first.rungs):
        kept = first.rungs[i + 1][1] if i + 1 < len(first.rungs) else first.rated
        dropped = {t: [s for s in ss if s not in kept.get(t, [])] for t, ss in sets.items()}
        dropped = {t: ss for t, ss in dropped.items() if ss}
        if dropped:
            for split, table in score_tables(budget_params(params, epochs), dropped, with_baselines=False).items():
                out[split].append(table)
    return out


STRATEGIES = {"full": full, "pruned": pruned, "halving": halving, "pruned+halving": pruned_halving}


def transfers(params: StudyParams, targets: list[str] | None = None, baselines: bool = True) -> StepResult:
    """Step II: the first-order readouts the strategy (`transfers.strategy`) rates, then the beam search's higher
    orders over them (chosen on val), for every target. Returns the per-image score tables, results['scores'] on
    test (evaluation) and results['val_scores'] on val (selection: AHP, BIP; with successive halving, the sources it
    dropped by their readouts at the budget that dropped them: `dropped_tables`), the plan, the strategy's
    `FirstOrder` and the list of units computed now (the rest were cached). With `baselines=False` neither the
    from-scratch networks nor the random-encoder readouts are trained and the tables have no
    `scratch`/`full`/`random` rows (what a study of the affinities alone needs: AHP leaves them out)."""
    start = time.perf_counter()
    store = Store.for_params(params)
    cfg = params.section("transfers")
    sources = study_tasks(params.common)
    targets = targets or [t for t in sources if not taskdict.get_task(t).source_only]
    task_networks(params, sources)  # Step I first (read from the store when there), so this chapter runs alone
    cache_features(params, [*sources, *([RANDOM] if baselines else [])],
                   tuple(sorted({query_kind(t) for t in targets})))

    chosen = STRATEGIES[cfg.strategy](params, targets, sources)
    first = {t: chosen.rated[t] + (first_order_sets([], random=True) if baselines else []) for t in targets}
    computed = run_readouts(params, first, set(targets) if baselines else set(), "first-order")
    first_val = score_table(params, first, with_baselines=False, split="val")
    higher = {t: beam_sets(first_val, t, cfg.beam, cfg.max_order) for t in targets}
    computed += run_readouts(params, higher, set(), "higher-order")
    plan = {t: first[t] + higher[t] for t in targets}
    tables = score_tables(params, plan, with_baselines=baselines)
    for split, extra in dropped_tables(params, chosen).items():
        if extra:
            tables[split] = pd.concat([tables[split], *extra], ignore_index=True)
            tables[split].attrs["split"] = split
    key = {"plan": {t: [sources_key(s) for s in v] for t, v in plan.items()},
           "readouts": [readout_key(params, t, s) for t, v in plan.items() for s in v]}
    if chosen.rungs:  # the rungs' readouts rate the sources halving dropped
        rungs = [(budget_params(params, e), sets) for e, sets in chosen.rungs]
        key["rungs"] = [readout_key(q, t, s) for q, sets in rungs for t, v in sets.items() for s in v]
    store.save("transfer_scores", key if baselines else {**key, "baselines": False}, tables["test"], VERSION,
               fmt="parquet")
    return StepResult({"scores": tables["test"], "val_scores": tables["val"], "plan": plan, "first_order": chosen},
                      computed, time.perf_counter() - start)


__all__ = ["STRATEGIES", "FirstOrder", "budget_params", "dropped_tables", "full", "halving", "keep_better", "pruned",
           "pruned_halving", "transfers"]
