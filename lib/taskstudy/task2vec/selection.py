"""Expert selection and the embedding's findings (Achille et al. 2019, Sec. 4 and 5): the expert Task2Vec picks
for each target against the brute-force best, Model2Vec's learned picks, and the tests of what the distances
show (domain against task embedding, attribute and condition structure)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from taskstudy.task2vec.distances import distance_matrix
from taskstudy.task2vec.task2vec import attribute, condition
from taskstudy.world import objects


def expert_selection(names: Sequence[str], matrix: np.ndarray, errors: pd.DataFrame, alpha: float,
                     n_test: Sequence[int] | None = None) -> pd.DataFrame:
    """For each target: the expert Task2Vec picks (smallest d_asym(expert task -> target), the target's own
    expert excluded), its error, the brute-force best expert and its error, and their ratio. Errors are floored
    at half a test image (0.5 / n_test) so that a best error of zero gives a finite ratio. Also the pick of the
    symmetric distance and the expected ratio of a uniformly random pick."""
    names = list(names)
    asym, sym = distance_matrix(matrix, "asym", alpha), distance_matrix(matrix, "sym")
    m2v = model2vec_picks(names, matrix, errors)
    rows = []
    for j, t in enumerate(names):
        floor = 0.5 / n_test[j] if n_test is not None else 1e-3
        cand = [i for i in range(len(names)) if i != j]
        err = np.array([max(float(errors.loc[names[i], t]), floor) for i in cand])
        pick = cand.index(min(cand, key=lambda i: asym[i, j]))
        pick_sym = cand.index(min(cand, key=lambda i: sym[i, j]))
        best = int(np.argmin(err))
        rows.append({"task": t, "chosen expert": names[cand[pick]], "chosen error": err[pick],
                     "best expert": names[cand[best]], "best error": err[best], "ratio": err[pick] / err[best],
                     "symmetric pick": names[cand[pick_sym]], "symmetric ratio": err[pick_sym] / err[best],
                     "model2vec pick": m2v[t], "model2vec ratio": err[cand.index(names.index(m2v[t]))] / err[best],
                     "random ratio": float(err.mean() / err[best])})
    return pd.DataFrame(rows)


def _sym_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_sym between every row of a (E, K) and of b (T, K): (E, T), differentiable (Eq. 4)."""
    s = a[:, None, :] + b[None, :, :]
    u, v = a[:, None, :] / s, b[None, :, :] / s
    return 1 - (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))


def model2vec_picks(names: Sequence[str], matrix: np.ndarray, errors: pd.DataFrame, steps: int = 300,
                    weight: float = 1e-2, seed: int = 0) -> dict[str, str]:
    """Model2Vec (Achille et al. 2019, Sec. 3, "Model2Vec"): an embedding per expert, m_i = F_i + b_i (F_i its
    task's embedding, scaled to mean 1; clamped positive), with b_i and a scale gamma learned so that
    softmax_i(-gamma * d_sym(m_i, F_t)) predicts which expert is best for target t (a k-way cross-entropy over
    the experts, L2 weight `weight` on b). Leave-one-target-out: the pick for t uses biases learned on the other
    targets only, so no target's own errors choose its expert. Returns target -> picked expert (never its own)."""
    names = list(names)
    n = len(names)
    f = torch.tensor(np.asarray(matrix, float))
    f = f / f.mean()
    err = torch.tensor(errors.loc[names, names].to_numpy(float))  # [expert, target]
    eye = torch.eye(n, dtype=torch.bool)
    best = err.masked_fill(eye, float("inf")).argmin(0)  # best other expert per target
    picks: dict[str, str] = {}
    for t in range(n):
        train = torch.tensor([j for j in range(n) if j != t])
        torch.manual_seed(seed)
        b = torch.zeros_like(f, requires_grad=True)
        log_gamma = torch.tensor(math.log(10.0), dtype=f.dtype, requires_grad=True)  # distances ~0.1: spread logits
        opt = torch.optim.Adam([b, log_gamma], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            logits = -log_gamma.exp() * _sym_torch((f + b).clamp(min=1e-6), f[train])  # (experts, train targets)
            logits = logits.masked_fill(eye[:, train], float("-inf"))
            loss = F.cross_entropy(logits.T, best[train]) + weight * (b * b).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            d = _sym_torch((f + b).clamp(min=1e-6), f[t : t + 1])[:, 0]
            d[t] = float("inf")
            picks[names[t]] = names[int(d.argmin())]
    return picks


def domain_test(names: Sequence[str], task_matrix: np.ndarray, domain_matrix: np.ndarray) -> dict[str, float]:
    """What the labels add (Sec. 5): mean d_sym between the family's tasks that share every image (the whole-world
    tasks: supercategory, shape, colour, class) under the task and under the domain embedding, and the attribute
    test's gap (same vs different attribute) under each."""
    idx = [i for i, t in enumerate(names) if attribute(t) in ("supercategory", "shape", "colour", "class")
           and condition(t) is None]
    iu = np.triu_indices(len(idx), 1)
    dt, dd = distance_matrix(task_matrix, "sym"), distance_matrix(domain_matrix, "sym")
    at, ad = attribute_test(names, dt), attribute_test(names, dd)
    return {"same_images_task": float(dt[np.ix_(idx, idx)][iu].mean()),
            "same_images_domain": float(dd[np.ix_(idx, idx)][iu].mean()),
            "attribute_gap_task": at["different"] - at["same"], "attribute_p_task": at["p"],
            "attribute_gap_domain": ad["different"] - ad["same"], "attribute_p_domain": ad["p"]}


def attribute_test(names: Sequence[str], dist: np.ndarray, n_perm: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean d_sym between tasks asking the same attribute (shape or colour) vs different ones, over the
    shape/colour tasks; p-value of the gap by permuting the attribute labels (one-sided: same < different)."""
    idx = [i for i, t in enumerate(names) if attribute(t) in ("shape", "colour")]
    lab = np.array([attribute(names[i]) for i in idx])
    d = dist[np.ix_(idx, idx)]
    iu = np.triu_indices(len(idx), 1)

    def gap(lb: np.ndarray) -> tuple[float, float]:
        same = (lb[:, None] == lb[None, :])[iu]
        return float(d[iu][same].mean()), float(d[iu][~same].mean())

    s, o = gap(lab)
    rng = np.random.default_rng(seed)
    null = np.array([np.subtract(*gap(rng.permutation(lab))) for _ in range(n_perm)])
    p = float((np.sum(null <= s - o) + 1) / (n_perm + 1))
    dd = d + np.diag(np.full(len(idx), np.inf))
    nn_same = float(np.mean(lab[np.argmin(dd, axis=1)] == lab))
    chance = float(np.mean([(np.sum(lab == lab[i]) - 1) / (len(lab) - 1) for i in range(len(lab))]))
    return {"same": s, "different": o, "p": p, "nn_same": nn_same, "nn_chance": chance, "n_tasks": len(idx)}


def condition_test(names: Sequence[str], dist: np.ndarray) -> dict[str, float]:
    """Among the 'colour|shape=s' tasks: mean d_sym between two tasks whose shapes are of one super-category (the
    same six colours to tell apart) vs of different ones (objects.SUPERCATEGORIES)."""
    idx = [i for i, t in enumerate(names) if attribute(t) == "colour" and condition(t)]
    group = np.array([next(k for k, v in objects.SUPERCATEGORIES.items() if condition(names[i]) in v) for i in idx])
    iu = np.triu_indices(len(idx), 1)
    same = (group[:, None] == group[None, :])[iu]
    d = dist[np.ix_(idx, idx)][iu]
    return {"same": float(d[same].mean()), "different": float(d[~same].mean())}
