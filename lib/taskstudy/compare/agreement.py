"""Do the four methods agree on which tasks are related? (the study's own comparison; no paper has it)

Each method gives a task-by-task matrix M with M[a, b] = how much task b helps task a (row: the receiving
task, column: the helper), higher = more related:

- Taskonomy (Zamir et al. 2018, Sec. 3.3): the first-order AHP affinity, P[target, source];
- Task2Vec (Achille et al. 2019, Sec. 3): minus the symmetric distance of the two tasks' embeddings;
- Standley et al. 2020 (Tables 2-4): the relative drop of a's loss when a shares its encoder with b;
- lookahead (Fifty et al. 2021, Eq. 3): Z[b -> a], how a gradient step on b changes a's loss.

`relations` turns a matrix into one value per task pair (ordered, or unordered as the mean of both directions);
`rank_agreement` compares every two methods by Spearman's rho and Kendall's tau over the pairs they both rate,
with permutation p-values (few pairs: five tasks give ten); `disagreements` lists the pairs whose ranks differ
the most between methods.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from taskstudy.uncertainty import permutation_p

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams


def relations(matrix: pd.DataFrame, tasks: Sequence[str], ordered: bool = False) -> pd.Series:
    """One value per pair of distinct `tasks` from M[a, b] (b helps a): indexed (a, b) for every ordered pair,
    or (a, b) with a < b (names sorted) and the mean of M[a, b] and M[b, a] when unordered. A task missing from
    the matrix leaves its pairs NaN."""
    m = matrix.reindex(index=list(tasks), columns=list(tasks)).astype(float)
    if ordered:
        pairs = [(a, b) for a, b in itertools.permutations(sorted(tasks), 2)]
        vals = [m.loc[a, b] for a, b in pairs]
    else:
        pairs = list(itertools.combinations(sorted(tasks), 2))
        vals = [np.mean([m.loc[a, b], m.loc[b, a]]) for a, b in pairs]
    names = ["task", "helper"] if ordered else ["task 1", "task 2"]
    return pd.Series(vals, index=pd.MultiIndex.from_tuples(pairs, names=names), dtype=float)


def rank_agreement(rel: Mapping[str, pd.Series], n_perm: int, seed: int = 0) -> pd.DataFrame:
    """For every two methods: Spearman's rho and Kendall's tau over the pairs both rate, with permutation
    p-values (`n_perm` shuffles, seeded) and the number of pairs."""
    rows = []
    for a, b in itertools.combinations(rel, 2):
        both = pd.concat([rel[a], rel[b]], axis=1, keys=[a, b]).dropna()
        n = len(both)
        row = {"method a": a, "method b": b, "pairs": n}
        if n >= 3 and both[a].nunique() > 1 and both[b].nunique() > 1:
            x, y = both[a].to_numpy(), both[b].to_numpy()
            row |= {"spearman": stats.spearmanr(x, y)[0], "p spearman": permutation_p(x, y, "spearman", n_perm, seed),
                    "kendall": stats.kendalltau(x, y)[0], "p kendall": permutation_p(x, y, "kendall", n_perm, seed)}
        else:
            row |= {"spearman": np.nan, "p spearman": np.nan, "kendall": np.nan, "p kendall": np.nan}
        rows.append(row)
    return pd.DataFrame(rows)


def symmetry(directed: pd.Series) -> float:
    """Pearson correlation of M[a, b] with M[b, a] over the ordered pairs of `relations(..., ordered=True)`
    (1 = a symmetric relation); NaN when a pair is missing."""
    if directed.isna().any():
        return float("nan")
    return float(np.corrcoef(directed.to_numpy(), directed.reindex(directed.index.swaplevel()).to_numpy())[0, 1])


def correlation_matrix(table: pd.DataFrame, methods: Sequence[str], statistic: str = "spearman") -> pd.DataFrame:
    """rank_agreement's statistic as a symmetric methods x methods matrix (1 on the diagonal)."""
    m = pd.DataFrame(np.eye(len(methods)), index=list(methods), columns=list(methods))
    for _, r in table.iterrows():
        m.loc[r["method a"], r["method b"]] = m.loc[r["method b"], r["method a"]] = r[statistic]
    return m


def ranks(rel: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Rank of every pair under every method (1 = most related), pairs x methods."""
    return pd.DataFrame({k: v.rank(ascending=False) for k, v in rel.items()})


def disagreements(rel: Mapping[str, pd.Series], top: int = 3) -> pd.DataFrame:
    """The `top` pairs whose ranks spread the most across methods (max rank - min rank), with the method that
    ranks each highest and lowest."""
    r = ranks(rel)
    spread = r.max(axis=1) - r.min(axis=1)
    out = pd.DataFrame({"spread": spread, "highest by": r.idxmin(axis=1), "lowest by": r.idxmax(axis=1)})
    out = pd.concat([out, r], axis=1)
    return out.sort_values("spread", ascending=False, kind="stable").head(top)


def consensus(rel: Mapping[str, pd.Series]) -> pd.Series:
    """The mean rank of every pair over the methods that rate it (lower = related by more methods)."""
    return ranks(rel).mean(axis=1).sort_values(kind="stable")


def agreement_summary(table: pd.DataFrame) -> dict[str, object]:
    """The headline of `rank_agreement`'s table: mean Spearman rho over the pairs of methods, the closest and the
    weakest pair, how many correlations are significant at 0.05 (permutation p), and where the two methods measured
    in the same multi-task training (Standley's pairs and the lookahead) place among the pairs (None if absent)."""
    valid = table.dropna(subset=["spearman"])
    best, worst = valid.loc[valid.spearman.idxmax()], valid.loc[valid.spearman.idxmin()]
    same = valid[valid[["method a", "method b"]].apply(set, axis=1) == {"Standley", "lookahead"}]
    return {"n_cmp": len(valid), "mean_rho": float(valid.spearman.mean()),
            "best": f"{best['method a']} and {best['method b']}", "best_rho": float(best.spearman),
            "best_p": float(best["p spearman"]), "worst": f"{worst['method a']} and {worst['method b']}",
            "worst_rho": float(worst.spearman), "worst_p": float(worst["p spearman"]),
            "n_sig": int((valid["p spearman"] < 0.05).sum()),
            "same_run_rho": float(same.spearman.iloc[0]) if len(same) else None,
            "same_run_place": int((valid.spearman > same.spearman.iloc[0]).sum()) + 1 if len(same) else None}


def task2vec_relation(P: StudyParams, tasks: Sequence[str]) -> pd.DataFrame:
    """Task2Vec's relation between `tasks` (Sec. 3): minus the symmetric distance of their dense embeddings (the
    agreement section's Fisher images and head steps), read from the store or computed."""
    from taskstudy.task2vec import task2vec_dense
    from taskstudy.task2vec.distances import distance_matrix

    cfg, tasks = P.section("agreement"), list(tasks)
    emb = task2vec_dense.scene_embeddings(P, tasks, cfg.fisher_images, cfg.head_steps)
    return -pd.DataFrame(distance_matrix(np.stack([emb[t] for t in tasks]), "sym"), index=tasks, columns=tasks)


def method_matrices(P: StudyParams, tasks: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each method's pairwise relation between the study's tasks, read from the store (rows: the task served;
    columns: the task serving it; higher: closer): Taskonomy's first-order AHP affinity on val (Step III),
    Task2Vec's negative symmetric distance of the dense embeddings (`task2vec_relation`), Standley's pair gain and
    the lookahead affinity (seed means; the lookahead's matrix transposed to the same orientation)."""
    from taskstudy.standley import grouping_report, training
    from taskstudy.taskonomy import ahp, step2

    scores = step2.transfers(P).results["val_scores"]  # Step II on val: affinities select
    runs = training.train_all(P).control  # the task-grouping chapter's networks, every seed
    return {
        "Taskonomy": ahp.affinity_matrix(scores, max_order=1),  # P[target, source]
        "Task2Vec": task2vec_relation(P, tasks),
        "Standley": grouping_report.mean_pairwise(runs),  # loss drop of the row task paired with the column
        "lookahead": grouping_report.mean_lookahead(runs).T,  # Z[step on column -> loss of row]
    }
