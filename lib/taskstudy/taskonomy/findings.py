"""Taskonomy's findings on the study's numbers (Zamir et al. 2018, Sec. 4.1-4.2, Fig. 9): Step II's first-order Gain
and Quality beside the paper's published ones with a verdict per measure, the paper's qualitative claims checked on
both, whether Gain and Quality rise with the budget and the order (decided on paired differences), and the mean
Gain and Quality per order beside the paper's. The numbers themselves come from `evaluate`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ConstantInputWarning

from taskstudy import uncertainty
from taskstudy.taskonomy.evaluate import (
    GAIN_REF,
    QUALITY_REF,
    first_order_win_rates,
    policy_gain_quality,
    policy_interval,
    win_rate_intervals,
)
from taskstudy.taskonomy.taxonomy import solve_taxonomy
from taskstudy.taskonomy.tree import PAPER_NAMES, load_paper_affinities, rank_agreement


def paper_transfer_beside(scores: pd.DataFrame, val_scores: pd.DataFrame | None = None, n_boot: int = 0,
                          seed: int = 0) -> pd.DataFrame:
    """First-order Gain and Quality of the study beside the paper's published ones (reference/taskonomy,
    wins_vs_pixels and wins_vs_task), per target both have. Columns (measure, "paper" / "study"): the best
    transfer from another task (over the sources both have, chosen on `val_scores` when given, so the test split
    only judges it; its name under "best source"), its Gain and Quality, the random encoder's Gain and Quality, the
    task network's win rate against scratch (the paper's `self` row of its Gain table), and Spearman rho between
    the two orders of the shared sources by Quality. With n_boot > 0 every study win rate gets its 95% bootstrap
    interval over the test images (measure, "study lo" / "study hi") and a verdict against the paper's number
    (measure, "verdict": within noise, study higher, study lower)."""
    study = {"gain": first_order_win_rates(scores, GAIN_REF), "quality": first_order_win_rates(scores, QUALITY_REF)}
    chooser = study["quality"] if val_scores is None else first_order_win_rates(val_scores, QUALITY_REF)
    paper = {"gain": load_paper_affinities("wins_vs_pixels"), "quality": load_paper_affinities("wins_vs_task")}
    with warnings.catch_warnings():  # a constant win-rate row (tiny profiles) has no rank correlation: NaN
        warnings.simplefilter("ignore", category=ConstantInputWarning)
        rho = rank_agreement(study["quality"], paper["quality"]).set_index("target")["rho"]
    rows, pairs = {}, {}
    for t in study["quality"].index:
        pt = PAPER_NAMES.get(t)
        if pt is None or pt not in paper["quality"].index:
            continue
        shared = {s: PAPER_NAMES[s] for s in study["quality"].columns
                  if s != t and PAPER_NAMES.get(s) is not None and PAPER_NAMES[s] in paper["quality"].columns}
        if not shared:
            continue
        best_s = max(shared, key=lambda s: chooser.at[t, s])
        best_p = max(shared, key=lambda s: paper["quality"].at[pt, shared[s]])
        row = {("best source", "paper"): best_p, ("best source", "study"): best_s}
        for m, ref in (("gain", GAIN_REF), ("quality", QUALITY_REF)):
            row[(f"best {m}", "paper")] = paper[m].at[pt, shared[best_p]]
            row[(f"best {m}", "study")] = study[m].at[t, best_s]
            row[(f"random {m}", "paper")] = paper[m].at[pt, "random"]
            row[(f"random {m}", "study")] = study[m].at[t, "random"]
            pairs[(t, f"best {m}")] = (t, best_s, ref)
            pairs[(t, f"random {m}")] = (t, "random", ref)
        row[("network vs scratch", "paper")] = paper["gain"].at[pt, "self"]
        row[("network vs scratch", "study")] = study["gain"].at[t, QUALITY_REF]
        pairs[(t, "network vs scratch")] = (t, QUALITY_REF, GAIN_REF)
        row[("rank rho (quality)", "study vs paper")] = rho.get(t, np.nan)
        rows[t] = row
    if n_boot and rows:
        ci = win_rate_intervals(scores, list(pairs.values()), n_boot, seed)
        for (t, measure), (_, r) in zip(pairs, ci.iterrows(), strict=True):
            rows[t][(measure, "study lo")], rows[t][(measure, "study hi")] = r["lo"], r["hi"]
            rows[t][(measure, "verdict")] = uncertainty.verdict(r["lo"], r["hi"], rows[t][(measure, "paper")])
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.columns = pd.MultiIndex.from_tuples(out.columns)
    out.index.name = "target"
    return out


def _trend(gq: pd.DataFrame, metric: str, by: str, fixed: str) -> tuple[float, int, int]:
    """Median over the `fixed` axis of Spearman(metric, by); how often the largest `by` beats the smallest; how many
    comparisons (a constant metric: rho 0, no rise)."""
    from scipy.stats import spearmanr

    rhos, rises, n = [], 0, 0
    for _, g in gq.dropna(subset=[metric]).groupby(fixed):
        if g[by].nunique() > 1:
            rhos.append(0.0 if g[metric].nunique() == 1 else float(spearmanr(g[by], g[metric]).statistic))
            g = g.sort_values(by)
            rises += int(g[metric].iloc[-1] > g[metric].iloc[0] + 1e-9)
            n += 1
    return (float(np.median(rhos)) if rhos else float("nan")), rises, n


def gain_quality_trends(gq: pd.DataFrame) -> pd.DataFrame:
    """Do Gain and Quality rise with the budget and with the order (the paper's Fig. 9)? Per metric and axis: the
    median Spearman rho over the other axis, how many of those comparisons end higher than they start, and the
    verdict ("rises" when rho > 0 and more than half end higher). Then, on the paired bootstrap samples of
    `gain_quality_table(..., n_boot > 0)` (the same test-image resamples in every row): order 1 from the smallest to
    the largest budget, and at the largest budget from order 1 to the highest order, each judged on the interval of
    the paired difference (`uncertainty.paired_change`; "change lo", "change hi")."""
    from taskstudy.uncertainty import paired_change

    rows = []
    for metric in ("gain", "quality"):
        for by, fixed in (("budget", "order"), ("order", "budget")):
            rho, rises, n = _trend(gq, metric, by, fixed)
            if n:
                rows.append({"metric": metric, "along": by, "rho": rho, "rises": rises, "comparisons": n,
                             "verdict": "rises" if rho > 0 and rises > n / 2 else "does not rise"})
    ok = gq.dropna(subset=["gain", "quality"])
    lo_b, hi_b, hi_o = ok.budget.min(), ok.budget.max(), ok.order.max()
    at = ok.set_index(["budget", "order"])
    changes = [("budget", (lo_b, 1), (hi_b, 1))] + ([("order", (hi_b, 1), (hi_b, hi_o))] if hi_o > 1 else [])
    for along, a, b in changes:
        if a not in at.index or b not in at.index:
            continue
        for metric in ("quality", "gain"):
            x, y = at.loc[a], at.loc[b]
            verdict, lo, hi = paired_change(x[f"{metric}_boot"], y[f"{metric}_boot"])
            rows.append({"metric": metric, "along": along, "from": f"budget {a[0]}, order {a[1]}",
                         "to": f"budget {b[0]}, order {b[1]}", "start": x[metric], "end": y[metric],
                         "start interval": (x[f"{metric}_lo"], x[f"{metric}_hi"]),
                         "end interval": (y[f"{metric}_lo"], y[f"{metric}_hi"]),
                         "change lo": lo, "change hi": hi, "verdict": verdict})
    return pd.DataFrame(rows)


def verdict_counts(beside: pd.DataFrame) -> pd.DataFrame:
    """`paper_transfer_beside`'s verdicts counted per measure (rows: measures; columns: verdicts)."""
    verdicts = beside.xs("verdict", axis=1, level=1)
    return verdicts.apply(lambda col: col.value_counts()).fillna(0).astype(int).T


def transfer_claims(beside: pd.DataFrame) -> pd.DataFrame:
    """The paper's qualitative Step II claims (Sec. 4.1), each checked on the paper's published numbers and on the
    study's, over the targets both have (`paper_transfer_beside`): does each hold, and do the two agree. Per claim
    the number it rests on for each side (count of targets, or a median)."""
    n = len(beside)
    med = beside.median(numeric_only=True)

    def count(m: str, who: str) -> int:
        return int((beside[(m, who)] > 0.5).sum())

    rho = float(beside[("rank rho (quality)", "study vs paper")].median())
    rows = [
        ("the best transfer beats scratch on most targets", count("best gain", "paper"),
         count("best gain", "study"), lambda v: v > n / 2),
        ("the best transfer falls short of the task network on most targets", count("best quality", "paper"),
         count("best quality", "study"), lambda v: v < n / 2),
    ]
    out = [{"claim": c, "paper": p, "study": s, "paper holds": f(p), "study holds": f(s)} for c, p, s, f in rows]
    out.append({"claim": "the random encoder's Gain is below the best transfer's (medians)",
                "paper": f"{med[('random gain', 'paper')]:.2f} < {med[('best gain', 'paper')]:.2f}",
                "study": f"{med[('random gain', 'study')]:.2f} < {med[('best gain', 'study')]:.2f}",
                "paper holds": bool(med[("random gain", "paper")] < med[("best gain", "paper")]),
                "study holds": bool(med[("random gain", "study")] < med[("best gain", "study")])})
    out.append({"claim": "the sources rank in the paper's order (median rho > 0)", "paper": "-",
                "study": f"{rho:.2f}", "paper holds": True, "study holds": bool(rho > 0)})
    table = pd.DataFrame(out).set_index("claim")
    table["agree"] = table["paper holds"] == table["study holds"]
    table.attrs["targets"] = n
    return table


def quality_finding(beside: pd.DataFrame, n_train: int, n_transfer: int) -> tuple[str, str]:
    """The paper's "a transfer rarely reaches the task network" (Sec. 4.1, Quality < 0.5), from
    `paper_transfer_beside`: the sentence and its verdict ("reproduced" when the best transfer beats the task
    network on fewer than half of the targets)."""
    quality = beside[("best quality", "study")]
    above = int((quality > 0.5).sum())
    text = (f"the best transfer beats the task network (trained on {n_train / n_transfer:.0f}x the transfer data) "
            f"on {above} of {len(beside)} targets, median Quality {quality.median():.2f}")
    return text, "reproduced" if above < len(beside) / 2 else "not reproduced"


def paper_gain_quality_by_order(scores: pd.DataFrame, transfers: pd.DataFrame, paper: pd.DataFrame, budget: float,
                                orders: Sequence[int], n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The paper's mean Gain and Quality per transfer order (`paper`: tidy task, order, metric, value) beside the
    study's BIP policy at `budget`, on the tasks both have, each study mean with its 95% bootstrap interval and the
    verdict of the paper's number against it (`uncertainty.verdict`). attrs["shared"]: those tasks."""
    from taskstudy.uncertainty import verdict

    shared = sorted(set(paper.task.dropna()) & set(transfers.target))
    rows = []
    for o in orders:
        tax = solve_taxonomy(transfers, budget, max_order=o)
        study = policy_gain_quality(scores, tax).loc[shared]
        ci = policy_interval(scores, tax, n_boot=n_boot, seed=seed, targets=shared)
        pp = paper[paper.task.isin(shared) & (paper.order == o)].groupby("metric").value.mean()
        row: dict[str, Any] = {"order": o}
        for m in ("gain", "quality"):
            row |= {f"paper {m}": pp[m], f"study {m}": study[m].mean(), f"study {m} 95%":
                    f"[{ci[m][0]:.2f}, {ci[m][1]:.2f}]", f"{m} verdict": verdict(*ci[m], pp[m])}
        rows.append(row)
    out = pd.DataFrame(rows).set_index("order")
    out.attrs["shared"] = shared
    return out
