"""Is the taxonomy's structure real? Taskonomy (Zamir et al. 2018) Sec. 5.2 and Sec. 5.1.

Sec. 5.2 ("Universality of the structure"): Steps I-IV rerun under changes of the experiment (seed, split,
task-network and readout architecture, amount of transfer data, the task dictionary), each compared with the
main run. Here every variation is a list of dotted params overrides (the `-p section.key=value` of
`taskstudy run`) on top of a *base*: the study restricted to `robustness.tasks` at first order, trained exactly
like the main study (same splits, same calibrated training; `robustness.n_train` / `robustness.epochs` shorten
Step I only when set, and the chapter then says so). Affinities come from the val split, as in the main study.
Every unit
goes through the same store as the main study, so what a variation shares with the base (Step I networks when
only the readout changes, every readout when only the dictionary shrinks) is read, not trained. Agreement of
two runs: Spearman's rho of their affinity matrices (per target and pooled over cells) and the Jaccard overlap
of the source sets the BIP chooses per budget; the spread between training seeds is the yardstick.

Sec. 5.1 (ImageNet, MIT Places), the outside dataset: taskstudy.taskonomy.outside.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pandas as pd
from scipy import stats

from taskstudy import uncertainty
from taskstudy.taskonomy import ahp, step2, taxonomy, transfer, tree
from taskstudy.taskonomy import task_networks as step1
from taskstudy.world import data

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

BASE = "base"


# --- the variations as params overrides -------------------------------------------------------------------------

def base_overrides(P: StudyParams) -> list[str]:
    """The overrides that turn the main study into the reduced base every variation starts from: the task
    subset, first order only, the shorter Step I, and the scene splits pinned to the main run's seed (so a
    `common.seed` override varies training alone)."""
    cfg = P.section("robustness")
    out = [f"common.tasks={json.dumps(list(cfg.tasks))}", f"common.split_seed={data.split_seed(P.common)}",
           "transfers.max_order=1"]
    if cfg.n_train is not None:
        out.append(f"common.n_train={cfg.n_train}")
    if cfg.epochs is not None:
        out.append(f"task_networks.epochs={cfg.epochs}")
    return out


def variations(P: StudyParams) -> dict[str, list[str]]:
    """Name -> overrides on top of the base: the base itself, one run per extra training seed (the yardstick),
    then the section's `variations`."""
    cfg = P.section("robustness")
    out: dict[str, list[str]] = {BASE: []}
    out.update({f"seed {s}": [f"common.seed={s}"] for s in cfg.seeds})
    out.update({name: list(ov) for name, ov in cfg.variations.items()})
    return out


def variation_params(P: StudyParams, overrides: Iterable[str]) -> Any:
    """The validated params of one variation: P's profile and overrides, then the base's, then the variation's."""
    return P.with_overrides(*base_overrides(P), *overrides)


# --- one run of Steps I-IV ----------------------------------------------------------------------------------------

@dataclass
class Run:
    """Steps I-IV of one variation: its first-order affinity matrix, the BIP's source set per budget, and how many
    units (task networks and readouts) were trained now against read from the store."""

    name: str
    overrides: list[str]
    affinity: pd.DataFrame
    policies: dict[int, frozenset[str]]
    trained: int
    reused: int
    wall_s: float
    tasks: list[str] = field(default_factory=list)


def policies(affinity: pd.DataFrame, budgets: Iterable[int]) -> dict[int, frozenset[str]]:
    """Step IV at first order: the supervised source set the BIP chooses for each budget (budgets above the
    number of candidate sources are skipped; a budget no policy fits, as when a strategy rated too few sources of
    some target, chooses nothing: the empty set)."""
    cands = taxonomy.transfers_from_affinity(affinity)
    n = len({s for tup in cands.sources for s in tup})
    out = {}
    for b in (b for b in budgets if b <= n):
        try:
            out[b] = frozenset(taxonomy.solve_taxonomy(cands, b, max_order=1).sources)
        except taxonomy.TaxonomyError:
            out[b] = frozenset()
    return out


def run_variation(P: StudyParams, name: str, overrides: Sequence[str], budgets: Iterable[int]) -> Run:
    """Steps I-II through the store (trained only where missing), Step III (AHP, first order), Step IV (BIP)."""
    start = time.perf_counter()
    Q = variation_params(P, overrides)
    nets = step1.task_networks(Q)
    readouts = step2.transfers(Q, baselines=False)
    affinity = ahp.affinity_matrix(readouts.results["val_scores"], max_order=1, exclude=ahp.BASELINES)
    total = len(nets.results) + sum(len(v) for v in readouts.results["plan"].values())
    trained = len(nets.computed) + len(readouts.computed)
    return Run(name, list(overrides), affinity, policies(affinity, budgets), trained, total - trained,
               time.perf_counter() - start, step1.study_tasks(Q.common))


def run_variations(P: StudyParams, plan: Mapping[str, Sequence[str]], budgets: Iterable[int]) -> dict[str, Run]:
    """Every variation of `plan` (name -> overrides), side by side on a Dask cluster: one client thread per
    variation submits its units to the same workers, so that one run's last task network does not leave a worker
    idle while the next run waits for it. Units two variations share are claimed once (the store's locks); the
    runs and their numbers are those of running them one after another. In-process (no workers): one by one."""
    budgets = list(budgets)
    if not (P.common.workers or P.common.cluster.address):
        return {name: run_variation(P, name, ov, budgets) for name, ov in plan.items()}
    with ThreadPoolExecutor(max_workers=len(plan)) as pool:
        futures = {name: pool.submit(run_variation, P, name, ov, budgets) for name, ov in plan.items()}
        return {name: f.result() for name, f in futures.items()}


def main_run(P: StudyParams, budgets: Iterable[int]) -> Run:
    """The main study (chapters 02-05, the profile without the base's overrides) as a Run: its first-order
    affinity matrix and policies, from the store."""
    start = time.perf_counter()
    affinity = ahp.affinity_matrix(step2.transfers(P).results["val_scores"], max_order=1, exclude=ahp.BASELINES)
    return Run("main study", [], affinity, policies(affinity, budgets), 0, 0, time.perf_counter() - start,
               step1.study_tasks(P.common))


# --- agreement of two runs --------------------------------------------------------------------------------------

def _shared(a: pd.DataFrame, b: pd.DataFrame) -> tuple[list[str], list[str]]:
    rows = [t for t in a.index if t in b.index]
    cols = [c for c in a.columns if c in b.columns]
    return rows, cols


def _rank_agreement(a: pd.DataFrame, b: pd.DataFrame, self_entry: bool = False) -> pd.DataFrame:
    """tree.rank_agreement on two matrices of the study's own names (a target's own entry, its own network `full`,
    scratch and the random encoder left out unless `self_entry`): per-target rows, then "pooled". A constant row
    has no ranking: NaN, without scipy's warning."""
    names = {n: n for n in [*a.index, *a.columns, *b.index, *b.columns]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=stats.ConstantInputWarning)
        return tree.rank_agreement(a, b, name_map=names, self_entry=self_entry)


def per_target_rho(a: pd.DataFrame, b: pd.DataFrame, self_entry: bool = False) -> pd.Series:
    """Spearman's rho of two affinity matrices' rows over the source sets both have, per shared target, the
    target's own entry and the baselines left out (`tree.rank_agreement`; NaN where fewer than 3 sources are rated
    by both or a row is constant)."""
    out = _rank_agreement(a, b, self_entry)
    out = out[out["target"] != "pooled"]
    return pd.Series(out["rho"].to_numpy(float), index=out["target"].to_list(), dtype=float, name="rho")


def pooled_rho(a: pd.DataFrame, b: pd.DataFrame, self_entry: bool = False) -> float:
    """Spearman's rho over every (target, source set) cell both matrices rate (rows sum to 1, so cells of
    different targets are on one scale), own entries and baselines left out as in `per_target_rho`."""
    out = _rank_agreement(a, b, self_entry)
    return float(out.loc[out["target"] == "pooled", "rho"].iloc[0])


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    """|A & B| / |A | B|; two empty sets agree (1.0)."""
    a, b = set(a), set(b)
    return 1.0 if not a | b else len(a & b) / len(a | b)


def source_overlap(a: Mapping[int, Iterable[str]], b: Mapping[int, Iterable[str]]) -> pd.Series:
    """Jaccard overlap of the chosen source sets at every budget both runs solved."""
    return pd.Series({k: jaccard(a[k], b[k]) for k in sorted(set(a) & set(b))}, dtype=float, name="jaccard")


def compare(ref: Run, run: Run, budgets: Iterable[int]) -> dict[str, Any]:
    """Agreement of `run` with `ref` on what both contain. When `run` studies fewer tasks, `ref`'s BIP is solved
    again on its affinity restricted to them, so both choose from the same candidates."""
    rows, cols = _shared(ref.affinity, run.affinity)
    same = len(rows) == len(ref.affinity) and len(cols) == len(ref.affinity.columns)
    ref_pol = ref.policies if same else policies(ref.affinity.loc[rows, cols], budgets)
    rho = per_target_rho(ref.affinity, run.affinity)
    jac = source_overlap(ref_pol, run.policies)
    return {"pooled rho": pooled_rho(ref.affinity, run.affinity), "median target rho": float(rho.median()),
            "lowest target rho": float(rho.min()), "lowest target": rho.idxmin() if rho.notna().any() else None,
            "mean jaccard": float(jac.mean()), "targets": len(rows), "sources": len(cols),
            **{f"jaccard@{k}": v for k, v in jac.items()}}


def seed_runs(runs: Iterable[str]) -> list[str]:
    """The training-seed runs among `runs` (run names, or a mapping of them): the base and each `seed s` run."""
    return [n for n in runs if n == BASE or n.startswith("seed ")]


def seed_spread(runs: Mapping[str, Run], budgets: Iterable[int]) -> pd.DataFrame:
    """The yardstick: `compare` for every pair of training-seed runs (the base and each `seed s` run)."""
    names = seed_runs(runs)
    rows = [{"pair": f"{a} vs {b}", **compare(runs[a], runs[b], budgets)} for a, b in itertools.combinations(names, 2)]
    return pd.DataFrame(rows)


#: Issue 17's stability targets for the first-order affinities across training seeds.
STABILITY_TARGETS = {"pooled rho": 0.9, "median target rho": 0.85, "lowest target rho": 0.5}


def seed_rho_per_target(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Spearman's rho of every target's first-order affinities between every two training-seed runs: targets x
    seed pairs, with the pooled rho as a last row."""
    names = seed_runs(runs)
    cols = {}
    for a, b in itertools.combinations(names, 2):
        rho = per_target_rho(runs[a].affinity, runs[b].affinity)
        rho.loc["pooled"] = pooled_rho(runs[a].affinity, runs[b].affinity)
        cols[f"{a} vs {b}"] = rho
    return pd.DataFrame(cols)


def stability_targets(spread: pd.DataFrame, targets: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The seed-to-seed spread against the stability targets: per measure, its worst value over seed pairs, the
    target and whether it is met."""
    targets = STABILITY_TARGETS if targets is None else targets
    rows = [{"measure": m, "worst seed pair": float(spread[m].min()), "mean": float(spread[m].mean()),
             "target": t, "met": bool(spread[m].min() >= t)} for m, t in targets.items()]
    return pd.DataFrame(rows).set_index("measure")


def stability_finding(spread: pd.DataFrame, per_target: pd.DataFrame) -> str:
    """The stability targets, met or not, with the targets below the floor named and the chance level of a
    target's rho for this many sources (the own entry left out)."""
    met, floor = stability_targets(spread), STABILITY_TARGETS["lowest target rho"]
    worst = per_target.drop(index="pooled").min(axis=1)
    low = worst[worst < floor]
    lines = "; ".join(f"{m} worst {r['worst seed pair']:.2f} (mean {r['mean']:.2f}) against >= {r['target']}: "
                      f"{'met' if r['met'] else 'not met'}" for m, r in met.iterrows())
    below = (f"Targets below {floor} in some seed pair: " + ", ".join(f"{t} ({v:.2f})" for t, v in low.items())
             + "." if len(low) else f"No target falls below {floor} in any seed pair.")
    n_src = int(spread["sources"].min()) - 1  # the own entry left out
    return (f"Targets met: {lines}. {below}\nChance level: rho 0; two unrelated rankings of {n_src} sources reach "
            f"|rho| >= {uncertainty.critical_rho(n_src):.2f} in 5% of draws (a target's rho), the pooled rho over "
            f"{int(spread['targets'].min()) * n_src} cells far less.")


def stability_table(runs: Mapping[str, Run], budgets: Iterable[int]) -> pd.DataFrame:
    """One row per variation: its agreement with the base, and whether each measure lies within the
    seed-to-seed spread (at or above the lowest value any two seeds reach)."""
    budgets = list(budgets)
    spread = seed_spread(runs, budgets)
    rows = []
    for name, run in runs.items():
        if name == BASE:
            continue
        row = {"variation": name, "overrides": " ".join(run.overrides), **compare(runs[BASE], run, budgets),
               "trained": run.trained, "reused": run.reused, "wall_s": run.wall_s}
        for m in ("pooled rho", "mean jaccard"):
            row[f"{m} stable"] = bool(row[m] >= spread[m].min() - 1e-12) if len(spread) else None
        rows.append(row)
    return pd.DataFrame(rows).set_index("variation")


# --- why a target's ranking moves between seeds --------------------------------------------------------------------

def source_separation(P: StudyParams, runs: Mapping[str, Run]) -> pd.DataFrame:
    """Why a target's ranking moves between training seeds (issue 38, item 2: a target below the stability target
    is named with a measured reason). Per target, over its first-order sources (its own entry left out): how far
    apart the sources' mean val scores lie (the s.d. across sources of each source's mean over the seed runs:
    *spread*) against how far one source's mean val score moves between seed runs (s.d. across the seed runs,
    averaged over the sources: *seed noise*), and their ratio. At a ratio near 1 or below, the sources are tied
    within the seed noise, and no ranking of them can be stable. Read from the store (the seed runs' readouts)."""
    means = {}
    for name in seed_runs(runs):
        val = step2.transfers(variation_params(P, runs[name].overrides), baselines=False).results["val_scores"]
        val = val[(val["order"] == 1) & (val["sources"] != val["target"]) & (val["sources"] != transfer.RANDOM)]
        means[name] = val.groupby(["target", "sources"])["score"].mean()
    m = pd.DataFrame(means)
    if m.shape[1] < 2:
        return pd.DataFrame()
    spread = m.mean(axis=1).groupby(level="target").std()
    noise = m.std(axis=1).groupby(level="target").mean()
    rho = seed_rho_per_target(runs).drop(index="pooled")
    return pd.DataFrame({"spread": spread, "seed noise": noise, "separation": spread / noise,
                         "mean seed rho": rho.mean(axis=1), "worst seed rho": rho.min(axis=1)})


def separation_finding(sep: pd.DataFrame, floor: float = 0.5) -> str:
    """Chapter 12's sentence on `source_separation`: each target below `floor` in some seed pair with its
    separation, the lowest separation among the others, and the rank correlation of separation with the mean seed
    rho over the targets (with the |rho| chance reaches at p = 0.05 for that many targets)."""
    if sep.empty:
        return "One seed run only: no separation."
    low = sep[sep["worst seed rho"] < floor].sort_values("separation")
    ok = sep.drop(index=low.index)
    rho = float(stats.spearmanr(sep["separation"], sep["mean seed rho"]).statistic) if len(sep) > 2 else float("nan")
    text = (f"Across the {len(sep)} targets, a target's separation and its mean seed-to-seed rho correlate at "
            f"Spearman {rho:+.2f} (chance reaches |rho| {uncertainty.critical_rho(len(sep)):.2f} at p = 0.05). ")
    if low.empty:
        return text + f"No target falls below {floor} in any seed pair."
    named = ", ".join(f"{t} (worst rho {r['worst seed rho']:+.2f}; its sources lie {r['separation']:.2f} seed-noise "
                      "units apart)" for t, r in low.iterrows())
    rest = (f"; every target at or above {floor} has a separation of at least {ok['separation'].min():.2f}"
            if len(ok) else "")
    return text + f"Below {floor} in some seed pair: {named}{rest}."


# --- the variations' verdicts ----------------------------------------------------------------------------------------


def variation_verdicts(table: pd.DataFrame, spread: pd.DataFrame) -> pd.DataFrame:
    """Each variation (the `stability_table` rows that are not seeds) against the seed-to-seed spread: its pooled
    rho and mean Jaccard with the base, whether each lies within the seeds' range ("stable"), the verdict, its least
    stable target, and whether it agrees with the base better than any two seeds agree with each other."""
    v = table.drop(index=[n for n in table.index if n.startswith("seed ")]).copy()
    measures = ("pooled rho", "mean jaccard")
    v["verdict"] = ["within the seed spread on both measures" if all(r[f"{m} stable"] for m in measures) else
                    "below the seed spread on " + " and ".join(m for m in measures if not r[f"{m} stable"])
                    for _, r in v.iterrows()]
    v["above every seed pair"] = v["pooled rho"] > spread["pooled rho"].max()
    return v[["overrides", "pooled rho", "mean jaccard", "verdict", "lowest target", "lowest target rho",
              "above every seed pair"]]


# --- what the training budgets do to the taxonomy (issue 38, item 4) ----------------------------------------------

#: The variations that change a training budget (name -> overrides): Step I's epoch ceiling doubled (patience
#: scaled: chapter 02's check networks are these), and readouts on a rate that has annealed wherever they stop
#: (`transfers.schedule=plateau`), against the base's cosine. The default profile runs the readouts' one.
BUDGET_OVERRIDES = {"Step I at 2x epochs": ["task_networks.epochs=32", "task_networks.patience=6"],
                    "readouts annealed on plateaus": ["transfers.schedule=plateau"]}
BUDGET_VARIATIONS = tuple(BUDGET_OVERRIDES)


def budget_sensitivity(table: pd.DataFrame, spread: pd.DataFrame,
                       names: Sequence[str] = BUDGET_VARIATIONS) -> pd.DataFrame:
    """The budget variations among `stability_table`'s rows against the seed band: their agreement with the base
    (pooled, median and lowest per-target rho, own entries left out; mean Jaccard of the BIP's choices) beside the
    lowest and highest value two training seeds reach, and the verdict of `variation_verdicts`."""
    names = [n for n in names if n in table.index]
    if not names or spread.empty:
        return pd.DataFrame()
    verdicts = variation_verdicts(table, spread)

    def band(m: str) -> str:
        return f"{spread[m].min():.2f} to {spread[m].max():.2f}"

    rows = []
    for n in names:
        r = table.loc[n]
        rows.append({"variation": n, "pooled rho": r["pooled rho"], "seeds' pooled rho": band("pooled rho"),
                     "median target rho": r["median target rho"], "seeds' median rho": band("median target rho"),
                     "lowest target rho": r["lowest target rho"], "lowest target": r["lowest target"],
                     "mean jaccard": r["mean jaccard"], "seeds' jaccard": band("mean jaccard"),
                     "verdict": verdicts.loc[n, "verdict"], "trained": r["trained"]})
    return pd.DataFrame(rows).set_index("variation")


def budget_finding(sens: pd.DataFrame) -> str:
    """Chapter 12's sentence on the budgets, per variation, from `budget_sensitivity`."""
    if sens.empty:
        return "No budget variation in this profile."
    parts = []
    for n, r in sens.iterrows():
        within = r["verdict"].startswith("within")
        seeds_rho, seeds_jac = r["seeds' pooled rho"], r["seeds' jaccard"]
        parts.append(f"{n}: pooled rho {r['pooled rho']:.2f} with the base (two seeds: {seeds_rho}), mean Jaccard "
                     f"{r['mean jaccard']:.2f} ({seeds_jac}), {r['verdict']}: "
                     + ("the taxonomy moves no more under it than under a change of seed" if within else
                        "the taxonomy moves beyond what a change of seed does"))
    return "; ".join(parts) + "."

