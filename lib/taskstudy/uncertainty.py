"""Uncertainty of the study's headline numbers: paired bootstrap intervals over test images (Efron & Tibshirani
1993, the percentile interval).

Every win rate of the study is a mean over test images of w_i = [a_i > b_i] + 0.5 [a_i = b_i]. Resampling the test
images with replacement (the same resample for every readout and target, since they share the test split) gives
the sampling distribution of any such mean, and of means of them (a policy's mean Gain over its targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


def wins(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image wins of scores a over b (higher is better), ties counting half."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return (a > b) + 0.5 * (a == b)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) image indices drawn with replacement, from an explicit seed."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need n >= 1 and n_boot >= 1, got n={n}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_means(values: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Means of `values` (n,) over each resample of `idx` (n_boot, n): (n_boot,)."""
    return np.asarray(values, dtype=float)[idx].mean(axis=1)


def interval(samples: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile interval of bootstrap samples."""
    s = np.asarray(samples, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return float("nan"), float("nan")
    q = (1 - level) / 2
    return float(np.quantile(s, q)), float(np.quantile(s, 1 - q))


def mean_interval(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = LEVEL
                  ) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-image values (a win rate when values are `wins`)."""
    values = np.asarray(values, dtype=float)
    return interval(bootstrap_means(values, bootstrap_indices(len(values), n_boot, seed)), level)


def verdict(study_lo: float, study_hi: float, paper: float) -> str:
    """A study-vs-paper verdict against the study's interval: 'within noise' when the paper's number lies in it."""
    if not (np.isfinite(study_lo) and np.isfinite(study_hi) and np.isfinite(paper)):
        return "not comparable"
    if study_lo <= paper <= study_hi:
        return "within noise"
    return "study higher" if study_lo > paper else "study lower"


def seed_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, lo, hi): the Student-t interval of the mean of one statistic measured once per training seed (the
    seed band); a single seed gives an infinite band."""
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    m = float(v.mean())
    if v.size == 1:
        return m, float("-inf"), float("inf")
    half = float(student_t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return m, m - half, m + half


def sign_verdict(lo: float, hi: float, expected: int) -> str:
    """The verdict on a finding that says a difference is positive (expected = +1) or negative (-1), given the
    difference's interval: 'reproduced' when the interval excludes 0 on the expected side, 'not reproduced' when
    it excludes 0 on the other, 'within noise' when it holds 0."""
    if expected not in (1, -1):
        raise ValueError(f"expected must be +1 or -1, got {expected}")
    if not (np.isfinite(lo) or np.isfinite(hi)) or np.isnan(lo) or np.isnan(hi):
        return "within noise" if not (np.isnan(lo) or np.isnan(hi)) else "not tested"
    if lo > 0 or hi < 0:
        return "reproduced" if (lo > 0) == (expected > 0) else "not reproduced"
    return "within noise"


def paired_change(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = LEVEL
                  ) -> tuple[str, float, float]:
    """From a to b, judged on their paired difference: `a` and `b` are one statistic's values on the same resamples
    (bootstrap samples drawn with one seed over the same images) or the same seeds, position by position. Returns
    (verdict, lo, hi) with the interval of b - a: "a rise beyond noise" when it lies above 0, "a fall beyond noise"
    when below, else "within noise". Two intervals can overlap while their paired difference excludes 0: the
    shared noise of the images cancels in the difference, which is why overlap is not the test."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired values need one shape, got {a.shape} and {b.shape}")
    lo, hi = interval(b - a, level)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not tested", lo, hi
    return ("a rise beyond noise" if lo > 0 else "a fall beyond noise" if hi < 0 else "within noise"), lo, hi


def change_verdict(a_lo: float, a_hi: float, b_lo: float, b_hi: float) -> str:
    """From a to b, judged on their separate intervals: "a rise beyond noise" when b's lies above a's, "a fall
    beyond noise" when below, else "within noise". Only for independent estimates: numbers from the same images or
    seeds are judged on their paired difference (`paired_change`)."""
    if b_lo > a_hi:
        return "a rise beyond noise"
    if b_hi < a_lo:
        return "a fall beyond noise"
    return "within noise"


def permutation_p(x: np.ndarray, y: np.ndarray, statistic: str, n_perm: int, seed: int) -> float:
    """Two-sided permutation p-value of a rank correlation (pairings of y shuffled), with the +1 correction.
    Vectorised over the permutations: Spearman's rho as the Pearson correlation of average ranks, Kendall's
    tau-b from the signs of all pairs (shuffling y changes neither side's ties), as scipy defines both."""
    rng = np.random.default_rng(seed)
    perms = np.argsort(rng.random((n_perm, len(y))), axis=1)
    if statistic == "spearman":
        rx, ry = stats.rankdata(x), stats.rankdata(y)
        a = rx - rx.mean()
        b = ry[perms] - ry.mean()
        sims = (b @ a) / np.sqrt((a @ a) * (b * b).sum(1))
        observed = (ry - ry.mean()) @ a / np.sqrt((a @ a) * ((ry - ry.mean()) ** 2).sum())
    else:
        i, j = np.triu_indices(len(x), 1)
        sx = np.sign(x[i] - x[j])
        yp = y[perms]
        sy = np.sign(yp[:, i] - yp[:, j])
        norm = np.sqrt(np.count_nonzero(sx) * np.count_nonzero(np.sign(y[i] - y[j])))
        sims = (sy @ sx) / norm
        observed = np.sign(y[i] - y[j]) @ sx / norm
    hits = int((np.abs(sims) >= abs(observed) - 1e-12).sum())
    return (hits + 1) / (n_perm + 1)


def critical_rho(n: int, alpha: float = 0.05) -> float:
    """The smallest |Spearman's rho| over n pairs that is significant at `alpha` (two-sided), by the usual t
    approximation t = rho sqrt((n - 2) / (1 - rho^2))."""
    t = stats.t.ppf(1 - alpha / 2, n - 2)
    return float(t / np.sqrt(n - 2 + t * t))
