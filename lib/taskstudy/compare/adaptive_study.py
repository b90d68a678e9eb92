"""Chapter 14: Taskonomy at a fraction of its cost (beyond the papers; issue 40). Each adaptive Step II strategy of
`taskonomy.step2`, at a few compute levels, against the full Step II of chapter 03:

- cost: the readout seconds a strategy spent (every rung of successive halving, its readouts at the full budget,
  the higher orders, and its estimator's CPU seconds) as a fraction of the full Step II's (first- and higher-order
  readouts; the random-encoder baseline and the scratch networks, which every strategy trains alike, left out of
  both). Readout seconds are each stored readout's share of its group's training time on one thread.
- fidelity: (a) Spearman's rho of the first-order affinities (Step III, val) per target and pooled, the target's
  own entry and the baselines left out, over the sources the strategy rated; (b) the BIP's choices (Step IV) at
  every budget and order: the same sources or not, and their Jaccard overlap; (c) Gain and Quality on test, the
  strategy's taxonomy against the full one's on the same bootstrap resamples of the test images, judged on the
  interval of their paired difference (`uncertainty.paired_change`).

The yardstick is the full Step II against itself retrained with another seed, which the study has on chapter 12's
base only: so each level is also run on the base (`on_base`, cheap: the base's readouts are the main study's) and
set against that band on the band's own footing. A level needs to agree with the full Step II no better than a
rerun does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from taskstudy import uncertainty
from taskstudy.engine.store import Store
from taskstudy.taskonomy import ahp, evaluate, step2
from taskstudy.taskonomy import robustness as rb
from taskstudy.taskonomy.features import RANDOM, VERSION
from taskstudy.taskonomy.transfer import readout_key

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

FULL = "full Step II"


@dataclass
class Level:
    """One strategy at one compute level: its Step II tables and what it cost."""

    name: str
    overrides: list[str]
    val: pd.DataFrame  # per-image val scores (selection)
    test: pd.DataFrame  # per-image test scores (evaluation)
    rated: dict[str, int]  # target -> first-order sources rated at the full budget
    cost_s: float  # readout seconds spent (rungs, full budget, higher orders) + the estimator's CPU seconds
    wall_s: float  # this run's wall time (most of it store reads when the readouts are there)
    computed: int  # readouts and scratch networks trained by this run


def readout_seconds(P: StudyParams, plan: Mapping[str, Sequence[tuple[str, ...]]]) -> float:
    """The summed training seconds of the stored readouts in `plan` under the profile `P` (the random-encoder
    baseline left out); a readout missing from the store is an error."""
    store, total = Store.for_params(P), 0.0
    for target, sets in plan.items():
        for sources in sets:
            if sources == (RANDOM,):
                continue
            saved = store.load("readout", readout_key(P, target, sources), VERSION)
            if saved is None:
                raise KeyError(f"no stored readout {target} <- {'+'.join(sources)}: run Step II first")
            total += float(saved["wall_s"])
    return total


def run_level(P: StudyParams, name: str, overrides: Sequence[str]) -> Level:
    """Step II with `overrides` (a strategy and its settings) on top of `P`: its tables, and its cost."""
    start = time.perf_counter()
    Q = P.with_overrides(*overrides)
    r = step2.transfers(Q)
    fo = r.results["first_order"]
    cost = sum(readout_seconds(step2.budget_params(Q, e), sets) for e, sets in fo.rungs)
    cost += readout_seconds(Q, r.results["plan"]) + fo.estimator_cpu_s
    return Level(name, list(overrides), r.results["val_scores"], r.results["scores"],
                 {t: len(v) for t, v in fo.rated.items()}, cost, time.perf_counter() - start, len(r.computed))


def run_levels(P: StudyParams, levels: Mapping[str, Sequence[str]]) -> dict[str, Level]:
    """The full Step II (the profile's own, `transfers.strategy=full`) and every level of `levels` (name ->
    overrides), one after another (each level's units run side by side on the workers)."""
    out = {FULL: run_level(P, FULL, ["transfers.strategy=full"])}
    out.update({name: run_level(P, name, ov) for name, ov in levels.items()})
    return out


def _first_order(val: pd.DataFrame) -> pd.DataFrame:
    return ahp.affinity_matrix(val, max_order=1, exclude=ahp.BASELINES)


def _joint_test(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """One test table holding both runs' readouts (a readout both have is the same store entry: kept once), so
    that both taxonomies are scored on the same images and the same bootstrap resamples."""
    out = pd.concat([a, b], ignore_index=True).drop_duplicates(["target", "sources", "order", "image"])
    out.attrs["split"] = "test"
    return out


def _chosen(sources: Any) -> set[str]:
    """The sources a `gain_quality_table` row supervises ("a+b"); none where the budget was infeasible."""
    return set(sources.split("+")) if isinstance(sources, str) and sources else set()


def taxonomies(levels: Mapping[str, Level], budgets: Sequence[int], orders: Sequence[int], max_order: int,
               n_boot: int, seed: int) -> pd.DataFrame:
    """Per level, budget and order: the BIP's chosen sources on the level's affinities (val, with the `full`
    self candidate as in chapter 05) and their Gain and Quality on test beside the full Step II's, the paired
    change of Quality and Gain with its interval, whether the same sources are chosen and their Jaccard overlap."""
    full = levels[FULL]
    rows = []
    for name, lv in levels.items():
        if name == FULL:
            continue
        test = _joint_test(full.test, lv.test)
        kw = {"budgets": budgets, "orders": orders, "n_boot": n_boot, "seed": seed}
        ref = evaluate.gain_quality_table(test, ahp.affinity_matrix(full.val, max_order=max_order), **kw)
        got = evaluate.gain_quality_table(test, ahp.affinity_matrix(lv.val, max_order=max_order), **kw)
        for (_, r), (_, g) in zip(ref.iterrows(), got.iterrows(), strict=True):
            a, b = _chosen(r["sources"]), _chosen(g["sources"])
            row = {"level": name, "budget": r["budget"], "order": r["order"], "sources": g["sources"],
                   "full sources": r["sources"], "same": a == b, "jaccard": rb.jaccard(a, b)}
            for m in ("quality", "gain"):
                verdict, lo, hi = ("not tested", np.nan, np.nan) if not isinstance(g.get(f"{m}_boot"), np.ndarray) \
                    else uncertainty.paired_change(r[f"{m}_boot"], g[f"{m}_boot"])
                row |= {m: g[m], f"full {m}": r[m], f"{m} change": g[m] - r[m], f"{m} lo": lo, f"{m} hi": hi,
                        f"{m} verdict": verdict}
            rows.append(row)
    return pd.DataFrame(rows)


def fidelity(levels: Mapping[str, Level], tax: pd.DataFrame) -> pd.DataFrame:
    """One row per level: its cost as a fraction of the full Step II's, the sources rated per target, its rank
    agreement with the full Step II (per-target rho: mean, median, lowest, and the targets it is defined on;
    pooled rho), the mean Jaccard of the BIP's choices and how many (budget, order) cells choose the same sources,
    and at how many cells its Quality is within noise of (or better than) the full taxonomy's, and at how many its
    BIP had no feasible choice (the sources it rated cannot serve every target within the budget)."""
    full = levels[FULL]
    ref = _first_order(full.val)
    rows = []
    for name, lv in levels.items():
        if name == FULL:
            continue
        aff = _first_order(lv.val)
        rho = rb.per_target_rho(ref, aff)
        t = tax[(tax.level == name) & tax["full quality"].notna()]  # the cells where the full BIP is feasible
        held = t["quality verdict"].isin(["within noise", "a rise beyond noise"])
        rows.append({"level": name, "fraction of Step II": lv.cost_s / full.cost_s, "cost s": lv.cost_s,
                     "sources per target": float(np.mean(list(lv.rated.values()))),
                     "mean target rho": float(rho.mean()), "median target rho": float(rho.median()),
                     "lowest target rho": float(rho.min()), "targets": int(rho.notna().sum()),
                     "pooled rho": rb.pooled_rho(ref, aff), "mean jaccard": float(t["jaccard"].mean()),
                     "same choices": f"{int(t['same'].sum())}/{len(t)}",
                     "Quality held": f"{int(held.sum())}/{len(t)}", "Quality held everywhere": bool(held.all()),
                     "no feasible choice": int(t["quality"].isna().sum()),
                     "trained now": lv.computed})
    return pd.DataFrame(rows).set_index("level")


def beam_floor(P: StudyParams, levels: Mapping[str, Level]) -> float:
    """The share of the full Step II's readouts that any strategy keeping the beam search trains at the full budget
    at least: per target `beam` first-order readouts and every higher-order one over them, against the full Step
    II's first-order and higher-order readouts (by count; the random baseline left out)."""
    tr = P.section("transfers")
    n_first = float(np.mean(list(levels[FULL].rated.values())))
    beam = min(tr.beam, n_first)
    higher = sum(math.comb(int(beam), k) for k in range(2, tr.max_order + 1))
    return (beam + higher) / (n_first + higher)


def seed_band(P: StudyParams, budgets: Iterable[int]) -> pd.DataFrame:
    """The full Step II against itself retrained with another seed (chapter 12's base and its seed runs, read from
    the store): `robustness.compare` per seed pair (pooled rho, per-target rho, the BIP's mean Jaccard)."""
    budgets = list(budgets)
    plan = {n: ov for n, ov in rb.variations(P).items() if n in rb.seed_runs(rb.variations(P))}
    return rb.seed_spread(rb.run_variations(P, plan, budgets), budgets)


def on_base(P: StudyParams, levels: Mapping[str, Sequence[str]], budgets: Iterable[int],
            band: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each level run on chapter 12's base (its tasks, first order, the same training seed) against the base's
    full Step II, by `robustness.compare`: the seed band's own footing. Within the band when its pooled rho and
    mean Jaccard reach the lowest any two seeds reach."""
    budgets = list(budgets)
    base = rb.run_variation(P, rb.BASE, [], budgets)
    band = seed_band(P, budgets) if band is None else band  # `seed_band`'s table, when the caller has it
    rows = []
    for name, ov in levels.items():
        r = rb.compare(base, rb.run_variation(P, name, ov, budgets), budgets)
        within = all(r[m] >= band[m].min() - 1e-12 for m in ("pooled rho", "mean jaccard")) if len(band) else None
        rows.append({"level": name, **r, "within seed band": within})
    return pd.DataFrame(rows).set_index("level")


def finding(fid: pd.DataFrame, base: pd.DataFrame, band: pd.DataFrame) -> str:
    """The smallest fraction of the full Step II's readout compute whose taxonomy keeps the full one's Quality at
    every budget and order (paired intervals over the test images) and whose affinities and choices, rerun on
    chapter 12's base, agree with the full Step II's within the seed band; or that no level does, and which comes
    nearest."""
    ok = fid[fid["Quality held everywhere"] & base["within seed band"].reindex(fid.index).fillna(False).astype(bool)]
    ok = ok.sort_values("fraction of Step II")
    where = (f"the full Step II against itself retrained with another seed: pooled rho "
             f"{band['pooled rho'].min():.2f} to {band['pooled rho'].max():.2f}, mean Jaccard "
             f"{band['mean jaccard'].min():.2f} to {band['mean jaccard'].max():.2f}")
    if len(ok):
        name, best = ok.index[0], ok.iloc[0]
        return (f"The cheapest level that keeps the full Step II's Quality at every budget and order (paired "
                f"difference's 95% interval holding 0 or above it) and agrees with it within the seed band on "
                f"chapter 12's base is {name!r}: {best['fraction of Step II']:.0%} of the full Step II's readout "
                f"compute; on the base pooled rho {base.loc[name, 'pooled rho']:.2f}, mean Jaccard "
                f"{base.loc[name, 'mean jaccard']:.2f} ({where}). The goal of 10% or less is "
                f"{'met' if best['fraction of Step II'] <= 0.10 else 'not met'}.")
    near = fid.sort_values("Quality held", key=lambda s: s.str.split("/").str[0].astype(int), ascending=False)
    name = near.index[0]
    infeasible = int(near["no feasible choice"].iloc[0]) if "no feasible choice" in near else 0
    why = (f" {infeasible} of its missed cells had no feasible choice: the sources it rated cannot serve every "
           f"target within the budget." if infeasible else "")
    return (f"No level both keeps the full Step II's Quality at every budget and order and agrees with it within "
            f"the seed band on chapter 12's base. Nearest on Quality: {name!r} ({near['Quality held'].iloc[0]} "
            f"cells, {near['fraction of Step II'].iloc[0]:.0%} of the compute; on the base pooled rho "
            f"{base['pooled rho'].get(name, np.nan):.2f}, mean Jaccard {base['mean jaccard'].get(name, np.nan):.2f}; "
            f"{where}).{why}")


__all__ = ["FULL", "Level", "beam_floor", "fidelity", "finding", "on_base", "readout_seconds", "run_level",
           "run_levels", "seed_band", "taxonomies"]
