"""The task similarity tree (Taskonomy, Zamir et al. 2018, Sec. 5.3 / Fig. 13) and the paper's own relations.

The paper clusters tasks agglomeratively, each task a vector of its affinities: the columns of the normalised
affinity matrix P (how well the task transfers out to every target). Here: first-order columns of P (baselines
excluded) over the targets every compared task has, distance = 1 - Pearson correlation of the two vectors by
default (scale-free: a source that helps the same targets, whether a lot or a little, sits close), average
linkage; both are parameters. (On the paper's own first-order affinities, cut into 4 groups, this choice agrees
with the paper's four groups better than cosine or Euclidean distance with average linkage.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist
from scipy.special import comb
from scipy.stats import spearmanr

from taskstudy.reference import read_reference
from taskstudy.taskonomy.ahp import BASELINES

# study task name -> the paper's code name (None: no counterpart in the published first-order results)
PAPER_NAMES: dict[str, str | None] = {
    "autoencoding": "autoencoder",
    "denoising": "denoise",
    "edge2d": "edge2d",
    "keypoints2d": "keypoint2d",
    "segment_unsup2d": "segment2d",
    "colorization": "colorization",
    "inpainting": "impainting_whole",
    "jigsaw": "jigsaw",
    "depth_euclidean": "rgb2mist",
    "depth_zbuffer": "rgb2depth",
    "normals": "rgb2sfnorm",
    "reshading": "reshade",
    "curvature": "curvature",
    "edge_occlusion": "edge3d",
    "keypoints3d": "keypoint3d",
    "segment_unsup25d": "segment25d",
    "room_layout": "room_layout",
    "vanishing_point": "vanishing_point_well_defined",
    "segment_semantic": "segmentsemantic_rb",
    "class_object": "class_1000",  # the paper's "Object Cls." (1000 ImageNet classes); class_selected is a subset
    "class_scene": None,  # the paper's scene classes (class_places) are not in the published CSVs
}

# The paper's four groups (Fig. 13, Sec. 5.3: 3D, 2D, low-dimensional geometric, semantic) over its target tasks,
# in its code names. The source-only tasks (colorization, impainting_whole, jigsaw) are not targets there and are
# left out.
PAPER_GROUPS: dict[str, str] = {
    **dict.fromkeys(["rgb2sfnorm", "reshade", "curvature", "edge3d", "keypoint3d", "segment25d", "rgb2depth",
                     "rgb2mist"], "3D"),
    **dict.fromkeys(["autoencoder", "denoise", "edge2d", "keypoint2d", "segment2d"], "2D"),
    **dict.fromkeys(["room_layout", "vanishing_point_well_defined", "ego_motion", "fix_pose", "non_fixated_pose",
                     "point_match"], "geometric"),
    **dict.fromkeys(["class_1000", "class_selected", "segmentsemantic_rb"], "semantic"),
}

KINDS = {"affinities": "affinities_first_order.csv", "wins_vs_task": "wins_vs_task_first_order.csv",
         "wins_vs_pixels": "wins_vs_pixels_first_order.csv"}


@dataclass(frozen=True)
class TaskTree:
    """scipy linkage matrix over `labels`, with the metric, method and the affinity vectors it came from."""

    linkage: np.ndarray
    labels: list[str]
    metric: str
    method: str
    vectors: pd.DataFrame


def _first_order(affinity: pd.DataFrame, exclude: Iterable[str]) -> pd.DataFrame:
    excl = set(exclude)
    cols = [c for c in affinity.columns if "+" not in str(c) and c not in excl]
    return affinity[cols]


def task_tree(affinity: pd.DataFrame, method: str = "average", metric: str = "correlation", on: str = "columns",
              exclude: Iterable[str] = BASELINES) -> TaskTree:
    """Agglomerative clustering of tasks (Sec. 5.3). `affinity`: targets x source sets (affinity_matrix's layout).
    on="columns" (the paper): each source task is the vector of its first-order affinities over the targets;
    on="rows": each target is the vector of its affinities from the source tasks. Targets (or sources) with a
    missing entry are dropped from the vectors. `metric`/`method` go to scipy's pdist/linkage.

    Own entries are left out: a task's affinity to itself (its own-encoder readout) is a spike that a source-only
    task's vector lacks, so two tasks are compared on the entries that are neither's own (masked_pdist)."""
    P = _first_order(affinity, exclude)
    if on == "columns":
        vec = P.T.dropna(axis=1, how="any")
    elif on == "rows":
        vec = P.dropna(axis=1, how="any")
    else:
        raise ValueError(f"on must be 'columns' or 'rows', got {on!r}")
    if len(vec) < 2 or vec.shape[1] == 0:
        raise ValueError(f"need >= 2 tasks with complete affinity vectors, got {vec.shape}")
    Z = linkage(masked_pdist(vec, metric), method=method)
    return TaskTree(Z, [str(i) for i in vec.index], metric, method, vec)


def masked_pdist(vectors: pd.DataFrame, metric: str = "correlation") -> np.ndarray:
    """Condensed pairwise distances (scipy's pdist layout) between the rows of `vectors` (tasks x entries
    named by task), each pair compared without the entries named by either of the two tasks (their own)."""
    names = [str(i) for i in vectors.index]
    cols = [str(c) for c in vectors.columns]
    X = vectors.to_numpy(dtype=float)
    out = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            keep = [k for k, c in enumerate(cols) if c not in (names[i], names[j])]
            if len(keep) < 2:
                raise ValueError(f"tasks {names[i]!r} and {names[j]!r} share fewer than 2 entries besides their own")
            out.append(float(pdist(X[[i, j]][:, keep], metric=metric)[0]))
    return np.array(out)


def cut_groups(tree: TaskTree, k: int) -> dict[str, int]:
    """Cut the tree into (at most) k groups: task -> group number 1..k."""
    ids = fcluster(tree.linkage, t=k, criterion="maxclust")
    return dict(zip(tree.labels, (int(i) for i in ids), strict=True))


def adjusted_rand(a: Iterable, b: Iterable) -> float:
    """Adjusted Rand index of two labelings of the same items (1 = same partition, ~0 = chance)."""
    ct = pd.crosstab(pd.Series(list(a)), pd.Series(list(b))).to_numpy()
    n = ct.sum()
    sum_ij = comb(ct, 2).sum()
    sa, sb = comb(ct.sum(1), 2).sum(), comb(ct.sum(0), 2).sum()
    expected = sa * sb / comb(n, 2)
    top = (sa + sb) / 2 - expected
    return float((sum_ij - expected) / top) if top else 1.0


def compare_groups(groups: Mapping[str, int], name_map: Mapping[str, str | None] | None = PAPER_NAMES,
                   paper_groups: Mapping[str, str] = PAPER_GROUPS) -> pd.DataFrame:
    """The study's groups beside the paper's (Fig. 13) on tasks both have: task, paper name, study group, paper
    group; .attrs["ari"] holds the adjusted Rand index of the two partitions."""
    rows = []
    for task, g in groups.items():
        paper = name_map.get(task) if name_map is not None else task
        if paper in paper_groups:
            rows.append({"task": task, "paper_name": paper, "study_group": g, "paper_group": paper_groups[paper]})
    df = pd.DataFrame(rows, columns=["task", "paper_name", "study_group", "paper_group"])
    df = df.sort_values(["paper_group", "study_group", "task"]).reset_index(drop=True)
    df.attrs["ari"] = adjusted_rand(df["study_group"], df["paper_group"]) if len(df) > 1 else np.nan
    return df


def reference_dir() -> Path:
    """The papers' published numbers (taskstudy.engine.paths.reference_dir)."""
    from taskstudy.engine.paths import reference_dir as _ref

    return _ref()


def load_paper_affinities(kind: str = "affinities") -> pd.DataFrame:
    """The paper's first-order results (StanfordVL/taskonomy, converted to CSV; see reference/README.md) as
    targets x sources (the CSV's transpose, to line up with affinity_matrix). kind: "affinities" (AHP
    affinities), "wins_vs_task" (Quality win rates) or "wins_vs_pixels" (Gain win rates). Sources "self" (the
    task's own fully supervised network) and "random" are kept."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {sorted(KINDS)}")
    df = read_reference(f"taskonomy/{KINDS[kind]}", index_col=0).T
    df.index.name, df.columns.name = "target", "sources"
    return df


def rank_agreement(study: pd.DataFrame, paper: pd.DataFrame,
                   name_map: Mapping[str, str | None] = PAPER_NAMES,
                   exclude: Iterable[str] = BASELINES, self_entry: bool = False) -> pd.DataFrame:
    """Spearman rho, per target, between two matrices of first-order relations on the tasks both have: the study's
    and the paper's, or (name_map the identity) two of the study's. The one rank agreement of the study.

    Both frames are targets x sources (load_paper_affinities' layout). A task t of `study` is compared as
    name_map[t] (tasks mapped to None or absent from `paper` are skipped). A target's own readout (source ==
    target) is left out, and so are the baselines (`exclude`: the target's own network `full`, scratch and the
    random encoder): the own entry ranks first in both matrices almost always and alone lifts rho, so that two
    rankings of 5 sources that agree on nothing else score 0.5 on average (1 - 6 * 10 / 120). `self_entry=True`
    keeps it (say so beside the number). The last row, "pooled", is Spearman rho over all (target, source) pairs
    together; n = pairs compared. The chance level of a rho over n pairs is 0 (its 95% bound:
    uncertainty.critical_rho(n))."""
    excl = set(exclude)
    rows, xs_all, ys_all = [], [], []
    for t in study.index:
        pt = name_map.get(t)
        if pt is None or pt not in paper.index:
            continue
        xs, ys = [], []
        for s in study.columns:
            ps = name_map.get(s) if s not in excl and (self_entry or s != t) else None
            if "+" in str(s) or ps is None or ps not in paper.columns:
                continue
            a, b = study.at[t, s], paper.at[pt, ps]
            if pd.notna(a) and pd.notna(b):
                xs.append(float(a)), ys.append(float(b))
        rho = spearmanr(xs, ys).statistic if len(xs) >= 3 else np.nan
        rows.append({"target": t, "paper_target": pt, "n": len(xs), "rho": float(rho)})
        xs_all += xs
        ys_all += ys
    pooled = spearmanr(xs_all, ys_all).statistic if len(xs_all) >= 3 else np.nan
    rows.append({"target": "pooled", "paper_target": None, "n": len(xs_all), "rho": float(pooled)})
    return pd.DataFrame(rows)


def separation(tree: TaskTree, group: Mapping[str, str], n_groups: int) -> dict[str, float]:
    """How the tree keeps the paper's 3D and 2D tasks apart (Sec. 5, Fig. 13): the mean cophenetic height within
    the 3D tasks, within the 2D tasks and between the two, and the adjusted Rand index of the tree's `n_groups`-cut
    with the 3D/2D labels on those tasks. `group`: task -> the paper's group ("3D", "2D", ...)."""
    from scipy.cluster.hierarchy import cophenet
    from scipy.spatial.distance import squareform

    d = pd.DataFrame(squareform(cophenet(tree.linkage)), index=tree.labels, columns=tree.labels)
    a = [x for x in tree.labels if group.get(x) == "3D"]
    b = [x for x in tree.labels if group.get(x) == "2D"]

    def within(s: list[str]) -> float:
        return float(d.loc[s, s].to_numpy()[np.triu_indices(len(s), 1)].mean())

    cut = cut_groups(tree, n_groups)
    labels = a + b
    return {"3D tasks": len(a), "2D tasks": len(b), "within 3D": within(a), "within 2D": within(b),
            "between 3D and 2D": float(d.loc[a, b].to_numpy().mean()),
            "ARI on 3D+2D tasks": adjusted_rand([cut[x] for x in labels], [group[x] for x in labels])}


def separates(sep: Mapping[str, float]) -> bool:
    """The 3D and 2D tasks join above both within-group heights (`separation`)."""
    return sep["between 3D and 2D"] > max(sep["within 3D"], sep["within 2D"])


def agreement_summary(study: pd.DataFrame, paper: pd.DataFrame, self_entry: bool = False) -> tuple[float, float]:
    """(median per-target rho, pooled rho) of `rank_agreement` between two affinity matrices."""
    g = rank_agreement(study, paper, self_entry=self_entry)
    return float(g[g.target != "pooled"].rho.median()), float(g.set_index("target").at["pooled", "rho"])


def rank_agreement_findings(agree: pd.DataFrame) -> str:
    """`rank_agreement`'s table in sentences: the median and sign count of the per-target rho, the pooled rho,
    and the median rho by the paper's group (3D, 2D, ...) of the target."""
    per_target = agree[agree.target != "pooled"].dropna(subset=["rho"])
    pooled = agree.set_index("target").loc["pooled"]
    by_group = per_target.groupby(per_target.paper_target.map(PAPER_GROUPS)).rho.median()
    by_group = by_group.sort_values(ascending=False, kind="stable")
    return (f"On {len(per_target)} shared targets (about {per_target.n.median():.0f} shared sources each, the "
            f"target's own entry and the baselines left out; chance level 0) the median "
            f"per-target rho is {per_target.rho.median():.2f}; {int((per_target.rho > 0).sum())} of {len(per_target)} "
            f"are positive. Pooled over {int(pooled.n)} (target, source) pairs rho = {pooled.rho:.2f}.\n"
            "Median rho by the paper's group of the target: "
            + ", ".join(f"{g} {r:.2f}" for g, r in by_group.items()) + ".")
