"""Distances between Task2Vec embeddings (Achille et al. 2019, Sec. 3): the symmetric distance (cosine of the
Fisher-normalised embeddings), the asymmetric distance of a transfer (minus alpha times the source's distance to
the trivial embedding), the distance matrix of a family and its clustering order."""

from __future__ import annotations

import numpy as np
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform


def _norm(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    s = np.where(s > 0, s, 1.0)
    return a / s, b / s


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    d = np.linalg.norm(u) * np.linalg.norm(v)
    return float(1.0 - (u @ v) / d) if d > 0 else 1.0


def symmetric_distance(a: np.ndarray, b: np.ndarray) -> float:
    """d_sym(a, b) = d_cos(a / (a + b), b / (a + b)) (Achille et al. 2019, Eq. 4)."""
    return max(0.0, _cos(*_norm(np.asarray(a, float), np.asarray(b, float))))


def trivial_embedding(matrix: np.ndarray) -> np.ndarray:
    """t0: the filter-uniform embedding at the family's mean Fisher level."""
    return np.full(matrix.shape[1], float(np.mean(matrix)))


def asymmetric_distance(source: np.ndarray, target: np.ndarray, trivial: np.ndarray, alpha: float) -> float:
    """d_asym(source -> target) = d_sym(source, target) - alpha * d_sym(source, t0) (Achille et al. 2019, Eq. 5):
    how well an expert trained on `source` should serve `target`; complex sources are brought closer."""
    return symmetric_distance(source, target) - alpha * symmetric_distance(source, trivial)


def distance_matrix(matrix: np.ndarray, kind: str = "sym", alpha: float | None = None) -> np.ndarray:
    """Pairwise distances between the rows (tasks) of `matrix`; for kind="asym", entry [a, b] is
    d_asym(a -> b) (row = source, column = target), with `alpha` (`task2vec.alpha`) required."""
    n = len(matrix)
    sym = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            sym[i, j] = sym[j, i] = symmetric_distance(matrix[i], matrix[j])
    if kind == "sym":
        return sym
    if kind != "asym":
        raise ValueError(f"unknown distance kind '{kind}' (sym or asym)")
    if alpha is None:
        raise ValueError("the asymmetric distance needs alpha (task2vec.alpha)")
    t0 = trivial_embedding(matrix)
    comp = np.array([symmetric_distance(m, t0) for m in matrix])
    return sym - alpha * comp[:, None]


def cluster_order(dist: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage hierarchical clustering of a symmetric distance matrix."""
    if len(dist) < 3:
        return np.arange(len(dist))
    return leaves_list(linkage(squareform(dist, checks=False), method="average", optimal_ordering=True))
