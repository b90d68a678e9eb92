"""Chapter 13: can a cheap estimate replace Step II? The estimators of `taskstudy.taskonomy.estimators`, computed on
the val split's cached frozen features, against the study's own ground truth (Step III's first-order AHP affinities
on val; the policies' Gain and Quality on test).

Every estimator sees the val split only. Its scores become an affinity row per target by their ranks (normalised
to sum 1: the estimators' scales differ from target to target and from the AHP's), which is what the pooled rank
correlation and the BIP read. The ground truth is the affinity matrix without the `full`/`scratch`/`random`
baselines (an estimator rates readouts of source encoders only), and the BIP is solved at first order on both.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import kendalltau

from taskstudy import uncertainty
from taskstudy.engine.store import Store
from taskstudy.taskonomy import ahp, evaluate, step2, transfer
from taskstudy.taskonomy import estimators as est
from taskstudy.taskonomy import robustness as rb
from taskstudy.taskonomy.estimators import CHANCE, Estimates, estimate

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

TRUTH = "ground truth (AHP)"  # Step III's first-order affinities (val): what the estimators try to predict
CEILING = "ground truth, another seed (ceiling)"  # the truth against itself retrained (chapter 12's seeds)


def ground_truth(P: StudyParams) -> tuple[pd.DataFrame, pd.DataFrame, float]:
    """Step III's first-order affinities on val (no baselines: the candidates an estimator rates), chapter 03's
    test scores (Gain and Quality are judged there) and the summed training seconds of the first-order readouts
    behind the affinities (one thread each, as the estimators' CPU seconds)."""
    step = step2.transfers(P)
    truth = ahp.affinity_matrix(step.results["val_scores"], max_order=1, exclude=ahp.BASELINES)
    store = Store.for_params(P)
    seconds = 0.0
    for target, sets in step.results["plan"].items():
        for sources in sets:
            if len(sources) == 1 and sources[0] != transfer.RANDOM:
                saved = store.load("readout", transfer.readout_key(P, target, sources), transfer.VERSION)
                seconds += float(saved["wall_s"]) if saved is not None else np.nan
    return truth, step.results["scores"], seconds


def rank_affinity(matrix: pd.DataFrame) -> pd.DataFrame:
    """An estimator's scores as an affinity matrix: per target, the sources' ranks (1 = lowest score; ties share
    their mean rank) divided by their sum, so that every row sums to 1 as an AHP row does. attrs["split"] = val."""
    ranks = matrix.rank(axis=1, method="average")
    out = ranks.div(ranks.sum(axis=1), axis=0)
    out.index.name, out.columns.name = "target", "sources"
    out.attrs["split"] = "val"
    return out


def _top1(truth: pd.DataFrame, matrix: pd.DataFrame) -> pd.Series:
    """Per shared target, 1.0 where both name the same best source, 0.0 where not, NaN where either rates none;
    the target's own entry and the baselines left out (as in rank agreement: RSA and DDS rate a task's network
    perfectly against itself)."""
    cols = [c for c in truth.columns if c in matrix.columns and c not in ahp.BASELINES]
    out = {}
    for t in (t for t in truth.index if t in matrix.index):
        own = [c for c in cols if c != t]
        a, b = truth.loc[t, own].astype(float), matrix.loc[t, own].astype(float)
        out[t] = float(a.idxmax() == b.idxmax()) if a.notna().any() and b.notna().any() else np.nan
    return pd.Series(out, dtype=float)


def per_target(truth: pd.DataFrame, estimates: Estimates) -> pd.DataFrame:
    """Spearman's rho of each estimator's source ranking with the ground truth's, per target: estimators x
    targets (NaN where an estimator has no score, e.g. H-score on a continuous target)."""
    return pd.DataFrame({name: rb.per_target_rho(truth, estimates.matrix(name))
                         for name in estimates.scores.estimator.unique()}).T


def _band(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    """The 95% bootstrap interval of the mean over the targets an estimator rates (uncertainty.mean_interval)."""
    values = values[~np.isnan(values)]
    return uncertainty.mean_interval(values, n_boot, seed) if len(values) >= 2 else (np.nan, np.nan)


def agreement(truth: pd.DataFrame, estimates: Estimates, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per estimator: the mean and median over targets of its per-target rho with the ground truth (95% bootstrap
    band over targets for the mean), the pooled rho over every (target, source) cell of its rank affinity, and
    top-1 agreement (the fraction of targets whose best source it names, with its band)."""
    rhos = per_target(truth, estimates)
    rows = []
    for name in rhos.index:
        r = rhos.loc[name].to_numpy(float)
        top = _top1(truth, estimates.matrix(name)).to_numpy(float)
        lo, hi = _band(r, n_boot, seed)
        tlo, thi = _band(top, n_boot, seed)
        rows.append({"estimator": name, "targets": int(np.isfinite(r).sum()), "mean rho": float(np.nanmean(r)),
                     "mean rho lo": lo, "mean rho hi": hi, "median rho": float(np.nanmedian(r)),
                     "pooled rho": rb.pooled_rho(truth, rank_affinity(estimates.matrix(name))),
                     "top-1": float(np.nanmean(top)) if np.isfinite(top).any() else np.nan, "top-1 lo": tlo,
                     "top-1 hi": thi})
    return pd.DataFrame(rows).set_index("estimator")


def taxonomies(scores: pd.DataFrame, truth: pd.DataFrame, estimates: Estimates, budgets: Sequence[int],
               n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """The BIP (first order) solved on the ground truth and on each estimator's rank affinity at every budget;
    each policy's mean Gain and Quality on the test split with 95% bootstrap bands over test images. Rows:
    (estimator, budget)."""
    tables = {TRUTH: truth, **{n: rank_affinity(estimates.matrix(n))
                                              for n in estimates.scores.estimator.unique()}}
    out = []
    for name, aff in tables.items():
        aff = aff.dropna(axis=1, how="all")
        aff = aff.loc[aff.notna().all(axis=1)]  # targets the estimator scores (H-score: the discrete ones)
        g = evaluate.gain_quality_table(scores, aff, budgets=budgets, orders=(1,), n_boot=n_boot, seed=seed)
        out.append(g.assign(estimator=name, targets=len(aff)))
    return pd.concat(out, ignore_index=True).set_index(["estimator", "budget"])


_QUALITY_VERDICT = {"a rise beyond noise": "better", "a fall beyond noise": "worse",
                    "within noise": "as good (within noise)"}


def quality_beside_truth(tax: pd.DataFrame) -> pd.DataFrame:
    """Per estimator and budget, its taxonomy's Quality against the ground truth's at the same budget, judged on
    their paired difference over the same test-image resamples (`uncertainty.paired_change`; "change lo", "change
    hi"): "as good (within noise)" where its interval holds 0, else "worse" or "better". Estimators scored on
    fewer targets than the truth (H-score) are compared with the truth's policy on the same targets only in their
    own rows' Gain/Quality, so they get no verdict here."""
    truth = tax.loc[TRUTH]
    rows = []
    for (name, budget), r in tax.iterrows():
        if name == TRUTH or budget not in truth.index:
            continue
        t = truth.loc[budget]
        if r["targets"] != t["targets"]:
            verdict, lo, hi = "fewer targets", np.nan, np.nan
        else:
            change, lo, hi = uncertainty.paired_change(t["quality_boot"], r["quality_boot"])
            verdict = _QUALITY_VERDICT.get(change, change)
        rows.append({"estimator": name, "budget": budget, "quality": r["quality"], "truth quality": t["quality"],
                     "gain": r["gain"], "truth gain": t["gain"], "change lo": lo, "change hi": hi,
                     "verdict": verdict})
    return pd.DataFrame(rows)


def cost_table(estimates: Estimates, step2_s: float) -> pd.DataFrame:
    """Each estimator's CPU seconds for the whole table against the training seconds of Step II's first-order
    readouts it would replace (both measured by the run that built this book)."""
    rows = [{"estimator": n, "CPU s": s, "Step II s": step2_s, "fraction of Step II": s / step2_s}
            for n, s in estimates.cpu_s.items() if n != CHANCE]
    return pd.DataFrame(rows).set_index("estimator")


def ceiling(runs: Mapping[str, rb.Run]) -> dict[str, float]:
    """How well the ground truth agrees with itself across training seeds (chapter 12's base): the mean per-target
    rho and the pooled rho, averaged over seed pairs (and the mean rho's lowest and highest pair). No estimator can
    be expected to agree with the truth better."""
    seeds = rb.seed_rho_per_target(runs)
    if seeds.empty:
        return {"mean rho": np.nan, "pooled rho": np.nan, "pairs": 0, "lowest": np.nan, "highest": np.nan}
    per_pair = seeds.drop(index="pooled").mean()
    return {"mean rho": float(per_pair.mean()), "pooled rho": float(seeds.loc["pooled"].mean()),
            "pairs": seeds.shape[1], "lowest": float(per_pair.min()), "highest": float(per_pair.max())}


def on_base(across: pd.DataFrame) -> pd.DataFrame:
    """Each estimator on the ceiling's own footing (issue 38, item 2): its mean per-target rho against the truth of
    each training-seed run of chapter 12's base (`across_variations`' seed columns: the base's targets and sources,
    the ones `ceiling` measures on), averaged over the seed runs, with the lowest and highest run."""
    runs = across[rb.seed_runs(across.columns)]
    return pd.DataFrame({"mean rho": runs.mean(axis=1), "lowest": runs.min(axis=1), "highest": runs.max(axis=1),
                         "runs": runs.notna().sum(axis=1)})


def against_ceiling(base: pd.Series, top: Mapping[str, float]) -> str:
    """An estimator's `on_base` row against the ceiling, both on the base's targets and sources: below it when
    its best seed run stays under the truth's lowest seed pair, else within the ceiling's reach."""
    if not np.isfinite(base["mean rho"]) or not np.isfinite(top["mean rho"]):
        return "no ceiling on the base"
    where = (f"on the base's targets and sources {base['mean rho']:+.2f} (runs {base['lowest']:+.2f} to "
             f"{base['highest']:+.2f}) against the truth's own seed agreement {top['mean rho']:.2f} (pairs "
             f"{top['lowest']:.2f} to {top['highest']:.2f})")
    return where + (": below it" if base["highest"] < top["lowest"] else ": within its reach")


def headline(table: pd.DataFrame, top: Mapping[str, float], base: pd.DataFrame | None = None) -> list[str]:
    """One verdict per estimator, against chance (0, and the chance estimator's band) over the whole dictionary,
    and against the ceiling `top` (the truth's seed-to-seed agreement) on the ceiling's footing: the estimator's
    rho on chapter 12's base (`on_base`), where given."""
    lines = []
    for name, r in table.iterrows():
        band = f"{r['mean rho']:+.2f} [{r['mean rho lo']:+.2f}, {r['mean rho hi']:+.2f}]"
        if name == CHANCE:
            lines.append(f"- {name}: mean per-target rho {band}, top-1 {r['top-1']:.2f} (the floor).")
            continue
        if r["mean rho lo"] > 0:
            against = "above chance"
            if base is not None and name in base.index:
                against += "; " + against_ceiling(base.loc[name], top)
        elif r["mean rho hi"] < 0:
            against = "below chance: it ranks the sources in the opposite order"
        else:
            against = "within noise of chance"
        lines.append(f"- {name}: mean per-target rho {band} over {int(r['targets'])} targets, {against}; top-1 "
                     f"{r['top-1']:.2f} [{r['top-1 lo']:.2f}, {r['top-1 hi']:.2f}].")
    return lines


def summary_table(table: pd.DataFrame, tax: pd.DataFrame, cost: pd.DataFrame, top: Mapping[str, float],
                  budget: int, base: pd.DataFrame | None = None) -> pd.DataFrame:
    """The chapter's table: per estimator its agreement over the dictionary (mean per-target rho with band,
    pooled rho, top-1) and on chapter 12's base (`on_base`: the ceiling's targets and sources), the Quality of its
    taxonomy at `budget` (band) beside the ground truth's, and its cost as a fraction of Step II's; a last row with
    the truth's own seed-to-seed agreement on the base (the ceiling of the "mean rho, base" column)."""
    rows = []
    for name, r in table.iterrows():
        q = tax.loc[(name, budget)] if (name, budget) in tax.index else None
        on = base["mean rho"].get(name, np.nan) if base is not None else np.nan
        rows.append({"estimator": name, "mean rho": r["mean rho"], "band": f"[{r['mean rho lo']:+.2f}, "
                     f"{r['mean rho hi']:+.2f}]", "mean rho, base": on, "pooled rho": r["pooled rho"],
                     "top-1": r["top-1"],
                     f"Quality @{budget}": np.nan if q is None else q["quality"],
                     "Quality band": "" if q is None else f"[{q['quality_lo']:.2f}, {q['quality_hi']:.2f}]",
                     "cost / Step II": cost["fraction of Step II"].get(name, np.nan)})
    t = tax.loc[(TRUTH, budget)] if (TRUTH, budget) in tax.index else None
    rows.append({"estimator": TRUTH, f"Quality @{budget}": np.nan if t is None else t["quality"],
                 "Quality band": "" if t is None else f"[{t['quality_lo']:.2f}, {t['quality_hi']:.2f}]",
                 "cost / Step II": 1.0})
    rows.append({"estimator": CEILING, "mean rho, base": top["mean rho"]})
    return pd.DataFrame(rows).set_index("estimator")


# --- where Task2Vec and the lookahead apply: chapter 10's tasks -------------------------------------------------

def on_grouping_tasks(P: StudyParams, truth: pd.DataFrame, estimates: Estimates) -> pd.DataFrame:
    """On chapter 10's tasks only (where the study has Task2Vec embeddings and TAG's lookahead: chapters 09-11's
    store entries), every estimator's and those two's mean per-target rho with the ground truth restricted to the
    same sources, a target's own source left out (Task2Vec's distance of a task to itself is 0 by definition, and
    chapter 11 leaves the diagonal out too)."""
    from taskstudy.compare.agreement import task2vec_relation
    from taskstudy.standley import grouping_report, training

    tasks = sorted(P.values("task_grouping")["tasks"])
    matrices = {n: estimates.matrix(n) for n in estimates.scores.estimator.unique()}
    matrices["Task2Vec (-distance)"] = task2vec_relation(P, tasks)
    matrices["lookahead (TAG)"] = grouping_report.mean_lookahead(training.train_all(P).control).T

    def off_diagonal(m: pd.DataFrame) -> pd.DataFrame:
        sub = m.reindex(index=tasks, columns=tasks).astype(float)
        return sub.mask(np.eye(len(tasks), dtype=bool))

    ref = off_diagonal(truth)
    rows = []
    for n, m in matrices.items():
        rho = rb.per_target_rho(ref, off_diagonal(m))
        rows.append({"estimator": n, "targets": int(rho.notna().sum()), "mean rho": float(rho.mean()),
                     "top-1": float(_top1(ref, off_diagonal(m)).mean())})
    return pd.DataFrame(rows).set_index("estimator")


# --- Agostinelli et al.'s question: do the estimators' standings hold across the robustness variations? ----------

def across_variations(P: StudyParams, runs: Mapping[str, rb.Run],
                      names: Iterable[str] = est.ESTIMATORS) -> pd.DataFrame:
    """Every estimator's mean per-target rho with the ground truth of each robustness run (chapter 12's base, its
    training seeds and variations; each run's estimators on that run's own encoders): estimators x runs."""
    cols = {}
    for run_name, run in runs.items():
        Q = rb.variation_params(P, run.overrides)
        e = estimate(Q, names=names)
        cols[run_name] = per_target(run.affinity, e).mean(axis=1)
    return pd.DataFrame(cols)


def standing_agreement(table: pd.DataFrame, reference: str = rb.BASE) -> pd.Series:
    """Kendall's tau between the estimators' order (by mean rho) in each run and in the reference run: 1 = the
    same order of estimators, -1 = reversed; over the estimators both runs rate (H-score rates no target of a run
    without discrete targets)."""
    out = {}
    for c in (c for c in table.columns if c != reference):
        both = table[[reference, c]].dropna()
        out[c] = float(kendalltau(both[reference], both[c]).statistic) if len(both) >= 3 else np.nan
    return pd.Series(out, name="tau", dtype=float)


__all__ = ["CEILING", "TRUTH", "across_variations", "against_ceiling", "agreement", "ceiling",
           "cost_table", "ground_truth", "headline", "on_base", "on_grouping_tasks", "per_target",
           "quality_beside_truth", "rank_affinity", "standing_agreement", "summary_table", "taxonomies"]
