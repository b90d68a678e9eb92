"""Transferability estimators: cheap scores of a frozen source representation for a target, without training a
readout. Each estimator is one function of arrays (features X, labels Y or a second representation), higher
meaning "transfers better"; `samples` turns the study's feature maps and labels into those arrays.

- RSA (Dwivedi & Roig, CVPR 2019): Spearman's rho between the representational dissimilarity matrices (1 - Pearson
  correlation between every two images' feature vectors) of the source's and of the target's own task network.
- DDS (Dwivedi et al., ECCV 2020): duality-diagram similarity, the same comparison of two representations through
  their images x images matrices, here with a Laplacian kernel of Euclidean distances (scaled by their median) and
  Pearson's r of the two kernels' upper triangles. The paper's best combination z-scores every feature first; that
  step is left out here so that the score does not change under a rotation of the feature space (which carries
  the same information).
- LogME (You et al., ICML 2021, Algorithm 1): the log marginal evidence per sample of a Bayesian linear regression
  from the features to each label column, alpha and beta maximised by MacKay's fixed point; the mean over columns.
- H-score (Bao et al., ICIP 2019): tr(cov(f)^-1 cov(E[f | y])) for discrete labels y (a small ridge keeps cov(f)
  invertible); it has no definition for continuous targets.
- Linear probe: ridge regression from the features to the labels fitted on half of the images and scored (minus
  the mean squared error) on the other half, both ways: a fixed, small budget of computation (one solve).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.taskonomy.features import features_key, load_features, query_kind
from taskstudy.taskonomy.task_networks import study_tasks, unit_seed
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

#: The estimators of a source representation for a target's labels (LABELLED) or for the target's own
#: representation (PAIRED).
LABELLED = ("LogME", "H-score", "linear probe")
PAIRED = ("RSA", "DDS")
ESTIMATORS = (*PAIRED, *LABELLED)
DISCRETE_KINDS = ("classification", "pixel_classification", "distribution")  # where H-score applies


@dataclass(frozen=True)
class Samples:
    """A target's labels against one source's features, as regression arrays: X (n, D) features, Y (n, C) labels
    (one-hot or class fractions for classification kinds), y (n,) discrete labels where the kind has them (else
    None) and group (n,) the image each sample comes from (for splits by image)."""

    X: np.ndarray
    Y: np.ndarray
    y: np.ndarray | None
    group: np.ndarray


def samples(features: torch.Tensor, labels: torch.Tensor, kind: str, n_classes: int, max_samples: int = 8000,
            seed: int = 0) -> Samples:
    """The (feature, label) samples estimators read. Dense targets (pixel kinds): one sample per cell of the
    feature map, its label the label map average-pooled to the feature map's cells (class fractions for pixel
    classification, the majority class as its discrete label), at most `max_samples` cells drawn at random
    (seeded). Image-level targets: the feature map average-pooled over positions, one sample per image."""
    z = features.float()
    n, d = z.shape[:2]
    if kind in ("pixel_regression", "pixel_classification"):
        h, w = z.shape[2:]
        lab = labels.float() if kind == "pixel_regression" else \
            F.one_hot(labels.long(), n_classes).permute(0, 3, 1, 2).float()
        pooled = F.adaptive_avg_pool2d(lab, (h, w))  # (n, C, h, w)
        X = z.permute(0, 2, 3, 1).reshape(-1, d).numpy()
        Y = pooled.permute(0, 2, 3, 1).reshape(-1, pooled.shape[1]).numpy()
        group = np.repeat(np.arange(n), h * w)
        y = Y.argmax(1) if kind == "pixel_classification" else None
        if len(X) > max_samples:
            keep = np.sort(np.random.default_rng(seed).choice(len(X), max_samples, replace=False))
            X, Y, group = X[keep], Y[keep], group[keep]
            y = None if y is None else y[keep]
        return Samples(X.astype(np.float64), Y.astype(np.float64), y, group)
    X = z.mean(dim=(2, 3)).numpy() if z.dim() == 4 else z.numpy()
    if kind == "classification":
        y = labels.long().numpy()
        Y = np.eye(n_classes)[y]
    else:  # regression, distribution
        Y = labels.float().reshape(n, -1).numpy()
        y = Y.argmax(1) if kind == "distribution" else None
    return Samples(X.astype(np.float64), Y.astype(np.float64), y, np.arange(n))


# --- estimators of a representation against labels ---------------------------------------------------------------

def _logme_column(sigma: np.ndarray, vt: np.ndarray, fty: np.ndarray, yty: float, n: int, d: int,
                  iters: int = 100, tol: float = 1e-5) -> float:
    """LogME of one label column from the eigen-decomposition of F^T F (sigma, vt), F^T y and y^T y."""
    alpha, beta = 1.0, 1.0
    proj = vt @ fty  # V^T F^T y
    for _ in range(iters):
        lam = alpha / beta
        gamma = float((sigma / (sigma + lam)).sum())
        m_coef = proj / (sigma + lam)  # m = V diag(1 / (sigma + lam)) V^T F^T y
        m2 = float((m_coef**2).sum())
        # ||y - F m||^2 = y^T y - 2 m^T F^T y + m^T F^T F m, all in the eigenbasis
        res2 = max(yty - 2 * float(m_coef @ proj) + float((sigma * m_coef**2).sum()), 1e-12)
        alpha, beta_new = gamma / max(m2, 1e-12), (n - gamma) / res2
        done = abs(beta_new - beta) / beta < tol
        beta = beta_new
        if done:
            break
    lam = alpha / beta
    m_coef = proj / (sigma + lam)
    m2 = float((m_coef**2).sum())
    res2 = max(yty - 2 * float(m_coef @ proj) + float((sigma * m_coef**2).sum()), 1e-12)
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * sigma))
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi))
    return float(evidence / n)


def logme(X: np.ndarray, Y: np.ndarray) -> float:
    """LogME (You et al. 2021, Alg. 1): the mean over label columns of the maximised log evidence per sample of
    y = F w + noise, w ~ N(0, 1/alpha), noise ~ N(0, 1/beta). Higher: the features explain the labels better."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64).reshape(len(X), -1)
    n, d = X.shape
    sigma, v = np.linalg.eigh(X.T @ X)
    sigma = np.clip(sigma, 0.0, None)
    vt = v.T
    return float(np.mean([_logme_column(sigma, vt, X.T @ Y[:, j], float(Y[:, j] @ Y[:, j]), n, d)
                          for j in range(Y.shape[1])]))


def hscore(X: np.ndarray, y: np.ndarray, ridge: float = 1e-6) -> float:
    """H-score (Bao et al. 2019): tr(cov(f)^-1 cov(E[f|y])) for discrete labels y; cov(f) gets `ridge` times its
    mean eigenvalue on the diagonal so that a rank-deficient representation stays invertible."""
    X = np.asarray(X, np.float64)
    Xc = X - X.mean(0)
    cov = Xc.T @ Xc / len(X)
    cov += ridge * np.trace(cov) / len(cov) * np.eye(len(cov))
    y = np.asarray(y)
    cond = np.zeros_like(Xc)
    for c in np.unique(y):
        cond[y == c] = Xc[y == c].mean(0)
    cov_cond = cond.T @ cond / len(X)
    return float(np.trace(np.linalg.solve(cov, cov_cond)))


def linear_probe(X: np.ndarray, Y: np.ndarray, group: np.ndarray, ridge: float = 1e-3) -> float:
    """A ridge probe, two-fold by image: fitted on the samples of even-indexed images and scored on the odd ones,
    then the other way; returns minus the mean squared error over both held-out halves (features standardised
    on the fitting half; ridge `ridge` times the mean eigenvalue of X^T X)."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64).reshape(len(X), -1)
    fold = np.asarray(group) % 2 == 0
    errors = []
    for fit in (fold, ~fold):
        a, b = X[fit], X[~fit]
        mu, sd = a.mean(0), a.std(0) + 1e-8
        a, b = (a - mu) / sd, (b - mu) / sd
        a1, b1 = np.hstack([a, np.ones((len(a), 1))]), np.hstack([b, np.ones((len(b), 1))])
        gram = a1.T @ a1
        reg = ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
        reg[-1, -1] = 0.0  # the intercept is not penalised
        w = np.linalg.solve(gram + reg, a1.T @ Y[fit])
        errors.append(float(((b1 @ w - Y[~fit]) ** 2).mean()))
    return -float(np.mean(errors))


# --- estimators of a representation against another -------------------------------------------------------------

def _upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(len(m), k=1)]


def rdm(features: np.ndarray) -> np.ndarray:
    """Representational dissimilarity matrix (Kriegeskorte et al. 2008): 1 - Pearson's r between every two images'
    flattened feature vectors, (n, n)."""
    z = np.asarray(features, np.float64).reshape(len(features), -1)
    return 1.0 - np.corrcoef(z)


def rsa_vector(features: np.ndarray) -> np.ndarray:
    """What RSA compares of one representation: the ranks of its RDM's upper triangle (computed once per
    representation, then paired with every other)."""
    return rankdata(_upper(rdm(features)))


def rsa(ranks_a: np.ndarray, ranks_b: np.ndarray) -> float:
    """RSA (Dwivedi & Roig 2019): Spearman's rho between two representations' RDMs (Pearson's r of the ranks that
    `rsa_vector` gives)."""
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def laplacian_kernel(features: np.ndarray) -> np.ndarray:
    """exp(-||x_i - x_j|| / median distance) between every two images' flattened, centred feature vectors: the
    images x images matrix DDS compares (rotation- and scale-invariant)."""
    z = np.asarray(features, np.float64).reshape(len(features), -1)
    z = z - z.mean(0)
    sq = (z**2).sum(1)
    dist = np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0, None))
    scale = np.median(_upper(dist))
    return np.exp(-dist / (scale if scale > 0 else 1.0))


def dds_vector(features: np.ndarray) -> np.ndarray:
    """What DDS compares of one representation: the upper triangle of its Laplacian kernel."""
    return _upper(laplacian_kernel(features))


def dds(kernel_a: np.ndarray, kernel_b: np.ndarray) -> float:
    """DDS (Dwivedi et al. 2020): Pearson's r between two representations' kernels (the `dds_vector`s)."""
    return float(np.corrcoef(kernel_a, kernel_b)[0, 1])


def labelled_estimator(name: str) -> Callable[[Samples], float]:
    """The function scoring a source's Samples for a target under estimator `name` (NaN where it has no
    definition: H-score on continuous labels)."""
    if name == "LogME":
        return lambda s: logme(s.X, s.Y)
    if name == "H-score":
        return lambda s: hscore(s.X, s.y) if s.y is not None else float("nan")
    if name == "linear probe":
        return lambda s: linear_probe(s.X, s.Y, s.group)
    raise ValueError(f"unknown labelled estimator {name!r} (one of {LABELLED})")


CHANCE = "random scores"  # a seeded random score per (target, source): the estimator that knows nothing


@dataclass
class Estimates:
    """Every estimator's score of every (target, source) pair, and what each cost."""

    scores: pd.DataFrame  # estimator, target, source, score (higher: transfers better, by the estimator)
    cpu_s: dict[str, float]  # estimator -> CPU seconds for the whole table (features already cached)

    def matrix(self, name: str) -> pd.DataFrame:
        """One estimator's scores as targets x sources."""
        sub = self.scores[self.scores.estimator == name]
        return sub.pivot(index="target", columns="source", values="score")


def _val_labels(P: StudyParams, target: str) -> Any:
    return data.target(data.scene_split(Store.for_params(P), P.common, "val"), target)


KIND, VERSION = "estimator_scores", "1"  # one store entry per (target, source): every labelled estimator's score


def scores_key(P: StudyParams, target: str, source: str) -> dict[str, Any]:
    """What the labelled estimators' scores of (target, source) depend on: the source's val features in the
    target's query form, the val labels, the samples drawn (max_samples, seed) and the code."""
    return {"target": target, "features": features_key(P, source, "val", query_kind(target)),
            "labels": data.split_key(P.common, "val"), "max_samples": P.section("estimators").max_samples,
            "seed": unit_seed(P.common.seed, "estimator", target, source), "estimators": list(LABELLED),
            "code": computation_hash(scores_unit)}


@dataclass(frozen=True)
class ScoresUnit:
    """The labelled estimators' scores of one target's `sources` still missing from the store (picklable)."""

    params: Any  # StudyParams: common, estimators, and what the features' keys read
    target: str
    sources: tuple[str, ...]


def scores_unit(u: ScoresUnit) -> dict[str, dict[str, dict[str, float]]]:
    """The unit: per source, every labelled estimator's score on the same samples of the val split's cached
    features, and its CPU seconds (the samples' included: each estimator alone would draw them)."""
    P, task = u.params, taskdict.get_task(u.target)
    y, query, cfg = _val_labels(P, u.target), query_kind(u.target), P.section("estimators")
    out = {}
    for s in u.sources:
        t0 = time.process_time()
        smp = samples(load_features(P, (s,), "val", query), y, task.kind, task.channels, cfg.max_samples,
                      seed=unit_seed(P.common.seed, "estimator", u.target, s))
        shared = time.process_time() - t0
        out[s] = {}
        for name in LABELLED:
            t0 = time.process_time()
            score = labelled_estimator(name)(smp)
            out[s][name] = {"score": float(score), "cpu_s": time.process_time() - t0 + shared}
    return out


def labelled_scores(P: StudyParams, targets: Sequence[str], sources: Sequence[str]
                    ) -> dict[tuple[str, str], dict[str, dict[str, float]]]:
    """Every labelled estimator's score (and CPU seconds) of every (target, source), from the store: the missing
    ones computed as runner units, one per target (chapter 13 and chapter 14's levels share them)."""
    store = Store.for_params(P)
    small = P.subset("estimators", "transfers", "task_networks")
    keys = {(t, s): scores_key(P, t, s) for t in targets for s in sources}

    def left(u: ScoresUnit) -> ScoresUnit | None:
        missing = tuple(s for s in u.sources if not store.exists(KIND, keys[u.target, s], VERSION))
        return ScoresUnit(small, u.target, missing) if missing else None

    def save(u: ScoresUnit, r: dict[str, dict[str, dict[str, float]]]) -> None:
        for s, row in r.items():
            store.save(KIND, keys[u.target, s], row, VERSION, fmt="json")

    run_units(scores_unit, [ScoresUnit(small, t, tuple(sources)) for t in targets], store=store, kind=KIND,
              key=lambda u: {"target": u.target, "sources": sorted(u.sources)}, version=VERSION, save=save,
              common=P.common, left=left, desc="transferability estimators")
    return {ts: store.load(KIND, k, VERSION) for ts, k in keys.items()}


def estimate(P: StudyParams, targets: Sequence[str] | None = None, sources: Sequence[str] | None = None,
             names: Iterable[str] = ESTIMATORS) -> Estimates:
    """Every estimator in `names` (and the chance estimator) for every target x source on the val split's cached
    features (chapter 03's store entries; each target's query form). RSA and DDS compare a source's representation
    with the target's own task network's; the labelled estimators read `estimators.max_samples` cells per pair
    (`labelled_scores`: stored, as runner units)."""
    sources = list(sources or study_tasks(P.common))
    targets = list(targets or [t for t in sources if not taskdict.get_task(t).source_only])
    names = list(names)
    query = {t: query_kind(t) for t in targets}
    rows, cpu = [], defaultdict(float)
    paired = [n for n in PAIRED if n in names]
    if paired:
        feats = {(s, q): load_features(P, (s,), "val", q) for q in set(query.values()) for s in {*sources, *targets}}
    for name, vector, score in (("RSA", rsa_vector, rsa), ("DDS", dds_vector, dds)):
        if name not in paired:
            continue
        t0 = time.process_time()
        vecs = {k: vector(z.numpy()) for k, z in feats.items()}
        rows += [(name, t, s, score(vecs[s, query[t]], vecs[t, query[t]])) for t in targets for s in sources]
        cpu[name] += time.process_time() - t0
    labelled = [n for n in names if n in LABELLED]
    if labelled:
        for (t, s), row in labelled_scores(P, targets, sources).items():
            for name in labelled:
                rows.append((name, t, s, row[name]["score"]))
                cpu[name] += row[name]["cpu_s"]  # what it cost when computed, also when read again
    rng = np.random.default_rng(unit_seed(P.common.seed, "estimator", CHANCE))
    rows += [(CHANCE, t, s, float(rng.random())) for t in targets for s in sources]
    cpu[CHANCE] = 0.0
    return Estimates(pd.DataFrame(rows, columns=["estimator", "target", "source", "score"]), dict(cpu))


__all__ = ["CHANCE", "DISCRETE_KINDS", "ESTIMATORS", "LABELLED", "PAIRED", "Estimates", "Samples", "dds",
           "dds_vector", "estimate", "hscore", "labelled_estimator", "labelled_scores", "laplacian_kernel",
           "linear_probe", "logme", "rdm", "rsa", "rsa_vector", "samples", "scores_unit"]
