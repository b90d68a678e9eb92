"""Step III of Taskonomy (Zamir et al. 2018, Sec. 3.3): ordinal normalisation of transfers with AHP.

For a target t, the win matrix W_t holds w_ij = the fraction of test images on which the readout from source (set)
s_i scores better than the readout from s_j (ties count half). W_t is clipped to [0.001, 0.999], turned into the
pairwise-comparison matrix W'_t = W_t / W_t^T (elementwise), and the principal eigenvector of W'_t, normalised to sum
to 1, gives the target's affinities. Stacking them over targets gives the affinity matrix P (targets x source sets).
Candidates are the target's source sets and, as in the paper's published affinities (its `self` column), the
target's own fully supervised network `full`; `scratch` and `random` are references, not candidates. The win
rates come from the split given (the val split in the study: Step III selects).

Input throughout: the per-image `scores` table (columns target, sources, order, image, score; higher is better;
`sources` = source task names sorted and joined by "+").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from taskstudy import uncertainty

CLIP = (0.001, 0.999)
BASELINES = ("scratch", "full", "random")  # score-table names that are not source sets of dictionary tasks
SELF = "full"  # the target's own fully supervised network: the paper's `self` column, a candidate of Steps III-IV
NOT_CANDIDATES = ("scratch", "random")  # references only: never candidates of the affinity matrix


def sources_key(sources: str | Iterable[str]) -> str:
    """Canonical name of a source set: task names sorted and joined by "+" (a string is split on "+" first)."""
    names = sources.split("+") if isinstance(sources, str) else list(sources)
    return "+".join(sorted(names))


def _order(key: str) -> int:
    return 0 if key == SELF else key.count("+") + 1


def _per_image(scores: pd.DataFrame, target: str, candidates: Sequence[str] | None) -> pd.DataFrame:
    """images x candidates table of the target's per-image scores (NaN where a readout has no score)."""
    sub = scores[scores["target"] == target]
    if sub.empty:
        raise KeyError(f"no scores for target {target!r}")
    dup = sub.duplicated(["sources", "image"])
    if dup.any():
        first = sub[dup].iloc[0]
        raise ValueError(f"duplicate score rows for target {target!r}, sources {first['sources']!r}, "
                         f"image {first['image']!r}")
    table = sub.pivot(index="image", columns="sources", values="score")
    if candidates is None:
        return table
    missing = [c for c in candidates if c not in table.columns]
    if missing:
        raise KeyError(f"target {target!r} has no scores for source set(s) {missing}")
    return table[list(candidates)]


def _pairwise_wins(scores: pd.DataFrame, target: str, candidates: Sequence[str] | None
                   ) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Per image, who beats whom among the target's readouts: (images, names, wins, both) with wins[k, i, j] =
    1 if readout i beats j on image k, 0.5 on a tie, 0 otherwise or where either has no score, and
    both[k, i, j] = 1 where both have a score on image k."""
    table = _per_image(scores, target, candidates)
    a = table.to_numpy(dtype=float)
    valid = ~np.isnan(a)
    both = valid[:, :, None] & valid[:, None, :]
    with np.errstate(invalid="ignore"):
        wins = uncertainty.wins(a[:, :, None], a[:, None, :])
    return table.index.to_numpy(), [str(c) for c in table.columns], np.where(both, wins, 0.0), both.astype(float)


def _weighted_win_matrix(target: str, names: list[str], wins: np.ndarray, both: np.ndarray,
                         weights: np.ndarray) -> np.ndarray:
    """W_t with image k counted `weights[k]` times (1 for W_t itself, the resampling counts for a bootstrap)."""
    count = np.tensordot(weights, both, axes=1)
    if (count == 0).any():
        i, j = (int(v[0]) for v in np.nonzero(count == 0))
        raise ValueError(f"target {target!r}: source sets {names[i]!r} and {names[j]!r} share no test image")
    return np.tensordot(weights, wins, axes=1) / count


def win_matrix(scores: pd.DataFrame, target: str, candidates: Sequence[str] | None = None
               ) -> tuple[np.ndarray, list[str]]:
    """W_t of Sec. 3.3 (Eq. before W'): w_ij = share of test images where source set i beats j; ties count half.

    `candidates` are "+"-joined source-set names (default: every source set scored for the target, in sorted
    order). Each pair is compared on the images both readouts were scored on. Returns (W, names); W + W^T = 1 and
    the diagonal is 0.5.
    """
    cands = None if candidates is None else [sources_key(c) for c in candidates]
    images, names, wins, both = _pairwise_wins(scores, target, cands)
    return _weighted_win_matrix(target, names, wins, both, np.ones(len(images))), names


def ahp_matrix(W: np.ndarray) -> np.ndarray:
    """W' of Sec. 3.3: W clipped to [0.001, 0.999], then W / W^T elementwise (reciprocal: w'_ji = 1 / w'_ij)."""
    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.shape[0] == 0:
        raise ValueError(f"W must be a non-empty square matrix, got shape {W.shape}")
    if not np.isfinite(W).all():
        raise ValueError("W has non-finite entries")
    Wc = np.clip(W, *CLIP)
    return Wc / Wc.T


def ahp_weights(W: np.ndarray) -> np.ndarray:
    """AHP weights of one target (Sec. 3.3): the principal eigenvector of W' = clip(W) / clip(W)^T (Perron vector:
    positive), normalised to sum 1."""
    Wp = ahp_matrix(W)
    if Wp.shape[0] == 1:
        return np.ones(1)
    vals, vecs = np.linalg.eig(Wp)
    v = np.abs(np.real(vecs[:, int(np.argmax(np.real(vals)))]))
    return v / v.sum()


def candidate_sets(scores: pd.DataFrame, target: str, max_order: int = 1,
                   exclude: Iterable[str] = NOT_CANDIDATES) -> list[str]:
    """The target's candidates: source sets of order <= max_order that contain no excluded name (and `full`
    unless excluded), sorted by order then name (`full` first, as order 0)."""
    excl = set(exclude)
    sets = scores.loc[scores["target"] == target, "sources"].unique()
    keep = [s for s in sets if _order(s) <= max_order and not excl.intersection(s.split("+"))]
    return sorted(keep, key=lambda s: (_order(s), s))


def affinity_matrix(scores: pd.DataFrame, max_order: int = 1,
                    exclude: Iterable[str] = NOT_CANDIDATES) -> pd.DataFrame:
    """The affinity matrix P (Sec. 3.3, Fig. 7): rows = targets, columns = source sets (order <= max_order, sorted
    by order then name). Per target, the AHP weights over all its candidate source sets of every order up to
    max_order, so each row sums to 1 (as the paper: first- and higher-order sources share one vector), `full` (the
    paper's self) among them unless excluded. NaN where a target has no readout from a source set. attrs["split"]
    is the scores' split."""
    rows = {}
    for target in sorted(scores["target"].unique()):
        cands = candidate_sets(scores, target, max_order, exclude)
        if cands:
            W, names = win_matrix(scores, target, cands)
            rows[target] = pd.Series(ahp_weights(W), index=names)
    return _as_affinity(rows, scores)


def _as_affinity(rows: dict[str, pd.Series], scores: pd.DataFrame) -> pd.DataFrame:
    P = pd.DataFrame(rows).T
    P = P[sorted(P.columns, key=lambda s: (_order(s), s))]
    P.index.name, P.columns.name = "target", "sources"
    P.attrs["split"] = scores.attrs.get("split")
    return P


def bootstrap_affinities(scores: pd.DataFrame, max_order: int = 1, n_boot: int = 100, seed: int = 0,
                         exclude: Iterable[str] = NOT_CANDIDATES) -> list[pd.DataFrame]:
    """Affinity matrices of `n_boot` resamples (with replacement, one seeded draw shared by every target and
    readout) of the images behind `scores`: the sampling spread of Step III, from which any number computed from
    the affinities gets a bootstrap interval. A resample counts each image as often as it was drawn, so its W_t is
    the count-weighted W_t of the images (the pairwise wins computed once per target, not per resample)."""
    images = np.sort(scores["image"].unique())
    rng = np.random.default_rng(seed)
    counts = [pd.Series(rng.choice(images, size=len(images), replace=True)).value_counts() for _ in range(n_boot)]
    rows: list[dict[str, pd.Series]] = [{} for _ in range(n_boot)]
    for target in sorted(scores["target"].unique()):
        cands = candidate_sets(scores, target, max_order, exclude)
        if not cands:
            continue
        own, names, wins, both = _pairwise_wins(scores, target, cands)
        for b, c in enumerate(counts):
            W = _weighted_win_matrix(target, names, wins, both, c.reindex(own, fill_value=0).to_numpy(float))
            rows[b][target] = pd.Series(ahp_weights(W), index=names)
    return [_as_affinity(r, scores) for r in rows]


def raw_quality(scores: pd.DataFrame, exclude: Iterable[str] = ()) -> pd.DataFrame:
    """Mean test score per (target, sources) as a targets x source-sets table, to set beside the AHP ranking
    (the raw-loss view that Sec. 3.3 argues is not comparable across targets). Higher is better."""
    excl = set(exclude)
    keep = ~scores["sources"].map(lambda s: bool(excl.intersection(s.split("+"))))
    table = scores[keep].groupby(["target", "sources"])["score"].mean().unstack("sources")
    return table[sorted(table.columns, key=lambda s: (_order(s), s))]
