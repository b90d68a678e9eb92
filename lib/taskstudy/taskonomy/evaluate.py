"""Evaluating taxonomies (Taskonomy, Zamir et al. 2018, Sec. 4.1-4.2, Fig. 9 and Fig. 11).

Gain = win rate of the policy's transfer against a network trained from scratch on the transfer split (source
"scratch"); Quality = win rate against the target's task network trained on the full split (source "full"). Win
rate = share of test images where the transfer scores better, ties counting half. Significance: the BIP's policy
against random feasible policies under the same budget (Fig. 11). A target served by its own network (`full`,
the paper's self) has Quality 0.5 by definition.

Selection and evaluation use different splits: the affinities (and with them every policy) come from the val
split, the scores judged here from the test split. Every function that takes both checks it (`check_splits`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ConstantInputWarning

from taskstudy import uncertainty
from taskstudy.taskonomy.ahp import sources_key
from taskstudy.taskonomy.taxonomy import (
    Taxonomy,
    TaxonomyError,
    _prepare,
    _result,
    solve_taxonomy,
    transfers_from_affinity,
)
from taskstudy.taskonomy.tree import PAPER_NAMES, load_paper_affinities, rank_agreement

GAIN_REF, QUALITY_REF = "scratch", "full"


class SplitError(ValueError):
    """Selection and evaluation on the same split."""


def check_splits(scores: pd.DataFrame, affinity: pd.DataFrame) -> None:
    """Raise SplitError when the scores to evaluate on come from the split the affinities were computed on (as
    recorded in attrs["split"] by transfer.score_table and ahp.affinity_matrix)."""
    a, b = scores.attrs.get("split"), affinity.attrs.get("split")
    if a is not None and a == b:
        raise SplitError(f"the policy was chosen on the {b} split and would be judged on it too: evaluate on the "
                         "test split's scores, select on the val split's")


class _Scores:
    """Per-image scores indexed by (target, sources key), with cached win rates."""

    def __init__(self, scores: pd.DataFrame):
        self.series = {k: g.set_index("image")["score"] for k, g in scores.groupby(["target", "sources"], sort=False)}
        self.cache: dict[tuple[str, str, str], float] = {}

    def has(self, target: str, key: str) -> bool:
        return (target, key) in self.series

    def wins(self, target: str, key: str, ref: str) -> pd.Series:
        """Per-image wins of `key` over `ref` on the images both were scored on (ties half), indexed by image."""
        for name in (key, ref):
            if (target, name) not in self.series:
                raise KeyError(f"no scores for {name!r} -> {target!r}")
        a, b = self.series[(target, key)].align(self.series[(target, ref)], join="inner")
        if len(a) == 0:
            raise ValueError(f"{key!r} and {ref!r} share no test image for target {target!r}")
        return pd.Series(uncertainty.wins(a.to_numpy(), b.to_numpy()), index=a.index)

    def win_rate(self, target: str, key: str, ref: str) -> float:
        k = (target, key, ref)
        if k not in self.cache:
            self.cache[k] = float(self.wins(target, key, ref).mean())
        return self.cache[k]

    def images(self) -> np.ndarray:
        return np.unique(np.concatenate([s.index.to_numpy() for s in self.series.values()]))


def _boot_rates(idx: _Scores, pairs: list[tuple[str, str, str]], n_boot: int, seed: int) -> np.ndarray:
    """(len(pairs), n_boot) bootstrap win rates of (target, key, ref) pairs, all on one paired resample of the
    test images (NaN rows where a pair has no scores)."""
    images = idx.images()
    boot = uncertainty.bootstrap_indices(len(images), n_boot, seed)
    out = np.full((len(pairs), n_boot), np.nan)
    for r, (t, key, ref) in enumerate(pairs):
        if idx.has(t, key) and idx.has(t, ref):
            w = idx.wins(t, key, ref).reindex(images).to_numpy()
            out[r] = np.nanmean(w[boot], axis=1)
    return out


def win_rate(scores: pd.DataFrame, target: str, sources: str | Iterable[str], reference: str | Iterable[str]) -> float:
    """Share of test images where the readout from `sources` beats `reference` on `target` (ties count half)."""
    return _Scores(scores[scores["target"] == target]).win_rate(target, sources_key(sources), sources_key(reference))


def _policy_rates(idx: _Scores, tax: Taxonomy) -> pd.DataFrame:
    rows = []
    for t in tax.policy:
        key = tax.candidate(t)
        rows.append({"target": t, "sources": key,
                     "gain": idx.win_rate(t, key, GAIN_REF) if idx.has(t, GAIN_REF) else np.nan,
                     "quality": idx.win_rate(t, key, QUALITY_REF) if idx.has(t, QUALITY_REF) else np.nan})
    return pd.DataFrame(rows, columns=["target", "sources", "gain", "quality"]).set_index("target")


def policy_gain_quality(scores: pd.DataFrame, taxonomy: Taxonomy, n_boot: int = 0, seed: int = 0) -> pd.DataFrame:
    """Per target of the policy: its source set, Gain (win rate vs "scratch") and Quality (win rate vs "full");
    NaN where the target has no such baseline. With n_boot > 0, 95% bootstrap intervals over test images in
    gain_lo/gain_hi/quality_lo/quality_hi."""
    idx = _Scores(scores)
    rates = _policy_rates(idx, taxonomy)
    if n_boot:
        for metric, ref in (("gain", GAIN_REF), ("quality", QUALITY_REF)):
            b = _boot_rates(idx, [(t, taxonomy.candidate(t), ref) for t in rates.index], n_boot, seed)
            ci = [uncertainty.interval(row) for row in b]
            rates[f"{metric}_lo"], rates[f"{metric}_hi"] = [c[0] for c in ci], [c[1] for c in ci]
    return rates


def _policy_mean_boot(idx: _Scores, taxonomy: Taxonomy, reference: str, n_boot: int, seed: int,
                      targets: Iterable[str] | None = None) -> np.ndarray:
    """(n_boot,) bootstrap samples of the policy's mean win rate over its targets (or `targets`) against
    `reference`; one seed gives the same image resamples to every policy (paired)."""
    chosen = list(taxonomy.policy) if targets is None else [t for t in targets if t in taxonomy.policy]
    b = _boot_rates(idx, [(t, taxonomy.candidate(t), reference) for t in chosen], n_boot, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(b, axis=0)


def _policy_mean_interval(idx: _Scores, taxonomy: Taxonomy, reference: str, n_boot: int, seed: int,
                          targets: Iterable[str] | None = None) -> tuple[float, float]:
    """Bootstrap interval of the policy's mean win rate over its targets (or `targets`) against `reference`."""
    return uncertainty.interval(_policy_mean_boot(idx, taxonomy, reference, n_boot, seed, targets))


def policy_interval(scores: pd.DataFrame, taxonomy: Taxonomy, n_boot: int = 1000, seed: int = 0,
                    targets: Iterable[str] | None = None) -> dict[str, tuple[float, float]]:
    """95% bootstrap intervals (paired resamples of the test images) of the policy's mean Gain and mean Quality
    over its targets (or over `targets` only)."""
    idx = _Scores(scores)
    return {m: _policy_mean_interval(idx, taxonomy, ref, n_boot, seed, targets)
            for m, ref in (("gain", GAIN_REF), ("quality", QUALITY_REF))}


def _transfers(affinity: pd.DataFrame, max_order: int | None = None) -> pd.DataFrame:
    tr = transfers_from_affinity(affinity)
    return tr if max_order is None else tr[tr["sources"].map(len) <= max_order]


def _default_budgets(tr: pd.DataFrame) -> list[int]:
    return list(range(1, len({s for tup in tr["sources"] for s in tup}) + 1))


def gain_quality_table(scores: pd.DataFrame, affinity: pd.DataFrame, budgets: Sequence[float] | None = None,
                       orders: Sequence[int] = (1, 2, 3, 4), costs: Mapping[str, float] | None = None,
                       importance: Mapping[str, float] | None = None, solver: str = "cbc", n_boot: int = 0,
                       seed: int = 0) -> pd.DataFrame:
    """Fig. 9 / the Gain-Quality table: for each budget (default 1..number of source tasks) and max order, the BIP
    solved on the affinity matrix and the mean Gain and Quality of its policy over targets. Budgets below the
    cheapest feasible one give NaN rows. With n_boot > 0, 95% bootstrap intervals over the test images
    (gain_lo, gain_hi, quality_lo, quality_hi)."""
    check_splits(scores, affinity)
    idx = _Scores(scores)
    tr = _transfers(affinity)
    rows = []
    for budget in budgets or _default_budgets(tr):
        for order in orders:
            row = {"budget": budget, "order": order}
            try:
                tax = solve_taxonomy(tr, budget, costs, importance, max_order=order, solver=solver)
            except TaxonomyError:
                rows.append(row | {"gain": np.nan, "quality": np.nan, "objective": np.nan, "n_sources": np.nan,
                                   "sources": None})
                continue
            rates = _policy_rates(idx, tax)
            row |= {"gain": rates["gain"].mean(), "quality": rates["quality"].mean(), "objective": tax.objective,
                    "n_sources": len(tax.sources), "sources": "+".join(sorted(tax.sources))}
            if n_boot:  # on the table's own index: one pass over the scores for every budget and order
                for m, ref in (("gain", GAIN_REF), ("quality", QUALITY_REF)):
                    boot = _policy_mean_boot(idx, tax, ref, n_boot, seed)
                    row |= dict(zip((f"{m}_lo", f"{m}_hi"), uncertainty.interval(boot), strict=True))
                    row[f"{m}_boot"] = boot  # the same resamples in every row: paired across budgets and orders
            rows.append(row)
    return pd.DataFrame(rows)


def random_policies(transfers: pd.DataFrame, budget: float, n: int, seed: int = 0,
                    costs: Mapping[str, float] | None = None, max_order: int | None = None,
                    importance: Mapping[str, float] | None = None, max_tries: int = 1000) -> list[Taxonomy]:
    """n random feasible policies (Fig. 11's baseline): source tasks are added in random order while the budget
    allows (a random maximal subset), then each target takes a uniformly random candidate whose sources all lie in
    the subset; subsets leaving a target without a candidate are redrawn (up to max_tries per policy)."""
    pb = _prepare(transfers, costs, importance, max_order, None)
    rng = np.random.default_rng(seed)
    groups = [[i for i, e in enumerate(pb.edges) if e[0] == t] for t in pb.targets]
    out: list[Taxonomy] = []
    for _ in range(n):
        for _try in range(max_tries):
            chosen_src: set[str] = set()
            spent = 0.0
            for j in rng.permutation(len(pb.sources)):
                if spent + pb.cost[j] <= budget + 1e-9:
                    chosen_src.add(pb.sources[j])
                    spent += pb.cost[j]
            feasible = [[i for i in g if set(pb.edges[i][1]) <= chosen_src] for g in groups]
            if all(feasible):
                picks = [f[int(rng.integers(len(f)))] for f in feasible]
                out.append(_result(pb, picks, budget, max_order, "random"))
                break
        else:
            raise TaxonomyError(f"no random feasible policy found for budget {budget} in {max_tries} draws")
    return out


def significance(scores: pd.DataFrame, affinity: pd.DataFrame, budgets: Sequence[float] | None = None,
                 n_random: int = 100, seed: int = 0, max_order: int = 1, costs: Mapping[str, float] | None = None,
                 importance: Mapping[str, float] | None = None, solver: str = "cbc") -> pd.DataFrame:
    """Fig. 11: per budget, the taxonomy's mean Quality and Gain against those of n_random random feasible
    policies. percentile = share of random policies the taxonomy beats (ties half); p = (1 + #random >= taxonomy)
    / (1 + n_random). The random policies' means are kept in the list columns random_quality / random_gain."""
    check_splits(scores, affinity)
    idx = _Scores(scores)
    tr = _transfers(affinity, max_order)
    rows = []
    for k, budget in enumerate(budgets or _default_budgets(tr)):
        try:
            tax = solve_taxonomy(tr, budget, costs, importance, max_order=max_order, solver=solver)
        except TaxonomyError:
            continue
        row: dict = {"budget": budget}
        rand = random_policies(tr, budget, n_random, seed + k, costs, max_order, importance)
        ours_rates = _policy_rates(idx, tax).mean(numeric_only=True)
        rand_rates = pd.DataFrame([_policy_rates(idx, p).mean(numeric_only=True) for p in rand])
        for metric in ("quality", "gain"):
            ours, dist = ours_rates[metric], rand_rates[metric].to_numpy()
            row |= {f"taxonomy_{metric}": ours, f"random_{metric}_mean": dist.mean(),
                    f"{metric}_percentile": float(((dist < ours) + 0.5 * (dist == ours)).mean()),
                    f"{metric}_p": float((1 + (dist >= ours).sum()) / (1 + len(dist))),
                    f"random_{metric}": dist.tolist()}
        rows.append(row)
    return pd.DataFrame(rows)


__all__ = ["win_rate", "policy_gain_quality", "policy_interval", "gain_quality_table", "random_policies",
           "significance", "first_order_win_rates", "win_rate_intervals", "random_encoder_table",
           "mean_win_rate_interval",
           "paper_transfer_beside", "check_splits"]


def mean_win_rate_interval(scores: pd.DataFrame, taxonomy: Taxonomy, reference: str, n_boot: int = 1000,
                           seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval (paired resamples of the test images) of the policy's mean win rate over its targets
    against `reference` (any score-table name: scratch, full, imagenet, a source task, ...)."""
    return _policy_mean_interval(_Scores(scores), taxonomy, reference, n_boot, seed)


def random_encoder_table(scores: pd.DataFrame, val_scores: pd.DataFrame | None = None, n_boot: int = 1000,
                         seed: int = 0) -> pd.DataFrame:
    """Per target (Build item 3 of issue 17): the random encoder's readout against the best trained source (chosen
    on `val_scores` when given) and against the target's full network, as test win rates with 95% bootstrap
    intervals. `verdict`: "random features solve it" when the random readout beats the full network beyond noise
    (interval above 0.5), "no source learns it" when the best source does not beat the random readout beyond
    noise (interval of random-vs-best reaching 0.5), else "transfer measurable"."""
    chooser = _Scores(scores if val_scores is None else val_scores)
    idx = _Scores(scores)
    first = scores.loc[(scores["order"] == 1) & ~scores["sources"].isin(["random", GAIN_REF, QUALITY_REF]),
                       ["target", "sources"]].drop_duplicates()
    pairs, best = [], {}
    for t, g in first.groupby("target"):
        if not idx.has(t, "random"):
            continue
        best[t] = max(g["sources"], key=lambda s, t=t: chooser.series[(t, s)].mean() if chooser.has(t, s) else -np.inf)
        pairs.append((t, "random", best[t]))
        if idx.has(t, QUALITY_REF):
            pairs.append((t, "random", QUALITY_REF))
    ci = win_rate_intervals(scores, pairs, n_boot, seed).set_index(["target", "reference"])
    rows = []
    for t, b in best.items():
        vb = ci.loc[(t, b)]
        vf = ci.loc[(t, QUALITY_REF)] if (t, QUALITY_REF) in ci.index else pd.Series({"rate": np.nan, "lo": np.nan,
                                                                                      "hi": np.nan})
        verdict = ("random features solve it" if vf["lo"] > 0.5 else
                   "no source learns it" if vb["hi"] >= 0.5 else "transfer measurable")
        rows.append({"target": t, "best source": b, "random vs best": vb["rate"], "vs best lo": vb["lo"],
                     "vs best hi": vb["hi"], "random vs full": vf["rate"], "vs full lo": vf["lo"],
                     "vs full hi": vf["hi"], "verdict": verdict})
    return pd.DataFrame(rows).set_index("target")


def win_rate_intervals(scores: pd.DataFrame, pairs: Sequence[tuple[str, str, str]], n_boot: int = 1000,
                       seed: int = 0) -> pd.DataFrame:
    """Win rate and 95% bootstrap interval (paired resamples of the test images) of each (target, sources,
    reference) triple: columns target, sources, reference, rate, lo, hi."""
    idx = _Scores(scores)
    b = _boot_rates(idx, list(pairs), n_boot, seed)
    rows = []
    for (t, key, ref), row in zip(pairs, b, strict=True):
        lo, hi = uncertainty.interval(row)
        rate = idx.win_rate(t, key, ref) if idx.has(t, key) and idx.has(t, ref) else np.nan
        rows.append({"target": t, "sources": key, "reference": ref, "rate": rate, "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def first_order_win_rates(scores: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Targets x sources: win rate of every first-order readout (the `random` encoder's included) against
    `reference` ("full": Quality, "scratch": Gain) on the same target; also `full` against `reference` when
    reference is "scratch" (the paper's `self` source in its Gain table)."""
    idx = _Scores(scores)
    first = scores.loc[scores["order"] == 1, ["target", "sources"]].drop_duplicates()
    rows = {(t, s): idx.win_rate(t, s, reference) for t, s in first.itertuples(index=False) if idx.has(t, reference)}
    if reference == GAIN_REF:
        rows |= {(t, QUALITY_REF): idx.win_rate(t, QUALITY_REF, GAIN_REF) for t in first["target"].unique()
                 if idx.has(t, QUALITY_REF) and idx.has(t, GAIN_REF)}
    out = pd.Series(rows, dtype=float).unstack()
    out.index.name, out.columns.name = "target", "sources"
    return out


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
