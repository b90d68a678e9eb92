"""Evaluating taxonomies (Taskonomy, Zamir et al. 2018, Sec. 4.1-4.2, Fig. 9 and Fig. 11).

Gain = win rate of the policy's transfer against a network trained from scratch on the transfer split (source
"scratch"); Quality = win rate against the target's task network trained on the full split (source "full"). Win
rate = share of test images where the transfer scores better, ties counting half. Significance: the BIP's policy
against random feasible policies under the same budget (Fig. 11). A target served by its own network (`full`,
the paper's self) has Quality 0.5 by definition.

Selection and evaluation use different splits: the affinities (and with them every policy) come from the val
split, the scores judged here from the test split. Every function that takes both checks it (`check_splits`).
The paper's findings read from these numbers (beside its published ones, Fig. 9's trends) are in `findings`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

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
           "mean_win_rate_interval", "check_splits"]


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


