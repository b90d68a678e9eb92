"""Figures used by the chapters: task labels as images, heatmaps with task names, bar charts."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from taskstudy.world import data, scenes
from taskstudy.world import tasks as taskdict

GROUPS = ("2D", "3D", "geometry", "semantic", "held_out")


def _as_image(task: taskdict.Task, label: np.ndarray) -> tuple[np.ndarray, dict]:
    """A displayable image for one sample's label and the imshow arguments."""
    if task.kind == "pixel_classification":
        return label, {"cmap": "tab20", "vmin": 0, "vmax": 19, "interpolation": "nearest"}
    x = np.asarray(label, dtype=np.float32)
    if x.shape[0] == 3:
        if task.name == "normals":
            x = (x + 1) / 2
        return np.clip(x.transpose(1, 2, 0), 0, 1), {}
    if x.shape[0] == 2:  # curvature: the first principal curvature
        x = x[0:1]
    return x[0], {"cmap": "magma"}


def label_panel(ax: plt.Axes, task: taskdict.Task, label: np.ndarray) -> None:
    """Draw one sample's label of `task` on `ax`: an image for pixel tasks, bars or text otherwise."""
    ax.set_xticks([])
    ax.set_yticks([])
    if task.kind.startswith("pixel"):
        img, kw = _as_image(task, label)
        ax.imshow(img, **kw)
    elif task.kind in ("regression", "distribution"):
        v = np.ravel(label)
        ax.bar(range(len(v)), v, color="tab:blue")
        ax.axhline(0, color="k", lw=0.5)
        if task.name == "class_object":
            ax.set_xticks(range(len(v)), [c[:3] for c in scenes.OBJECT_CLASSES], fontsize=5, rotation=90)
    else:
        name = scenes.ROOM_TYPES[int(label)] if task.name == "class_scene" else f"class {int(label)}"
        ax.text(0.5, 0.5, name, ha="center", va="center", fontsize=8, transform=ax.transAxes)


def task_gallery(split_data: dict[str, np.ndarray], group: str, indices: Sequence[int], seed: int) -> plt.Figure:
    """Rows = scenes, columns = the clean image, then each task of `group`: its input when it is not the clean
    image (denoising, colorization, inpainting, jigsaw) and its target."""
    names = [n for n, t in taskdict.TASKS.items() if t.group == group]
    cols: list[tuple[str, str]] = [("rgb", "image")]
    for n in names:
        if taskdict.TASKS[n].input != "rgb":
            cols.append((n, "input"))
        cols.append((n, "target"))
    fig, axes = plt.subplots(len(indices), len(cols), figsize=(1.25 * len(cols), 1.35 * len(indices)),
                             squeeze=False)
    for r, i in enumerate(indices):
        for c, (name, what) in enumerate(cols):
            ax = axes[r, c]
            if name == "rgb":
                label_panel(ax, taskdict.TASKS["autoencoding"], split_data["rgb"][i])
            elif what == "input":
                x = data.task_input({k: v[i : i + 1] for k, v in split_data.items() if k != "rgb_targets"},
                                    name, seed)[0].numpy()
                label_panel(ax, taskdict.TASKS["autoencoding"], x)
            else:
                label_panel(ax, taskdict.TASKS[name], data.target(split_data, name)[i].numpy())
            if r == 0:
                ax.set_title(f"{name}\n({what})" if what == "input" else name, fontsize=7)
    fig.suptitle(f"{group} tasks", fontsize=10)
    fig.tight_layout()
    return fig


def count_bars(counts: pd.DataFrame, x: str, hue: str | None, title: str, ax: plt.Axes | None = None) -> plt.Axes:
    """Bar chart of a tidy count table (columns x, 'count' and optionally hue)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 2.8))
    sns.barplot(counts, x=x, y="count", hue=hue, ax=ax)
    ax.set_title(title)
    ax.set_xlabel(x.replace("_", " "))
    ax.tick_params(axis="x", rotation=30)
    return ax


def heatmap(matrix: pd.DataFrame, title: str, ax: plt.Axes | None = None, fmt: str = ".2f", cmap: str = "viridis",
            annot: bool = True, **kw) -> plt.Axes:
    """A heatmap with the row and column names (tasks) on both axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * matrix.shape[1] + 2, 0.4 * matrix.shape[0] + 1.5))
    sns.heatmap(matrix, annot=annot, fmt=fmt, cmap=cmap, ax=ax, annot_kws={"fontsize": 6}, **kw)
    ax.set_title(title)
    return ax


def _as_label(task: taskdict.Task, pred: np.ndarray) -> np.ndarray:
    """A network output turned into the label's form: class ids from logits, a distribution from logits."""
    if task.loss_name == "ce":
        return pred.argmax(0)
    if task.loss_name == "kl":
        e = np.exp(pred - pred.max())
        return e / e.sum()
    return pred


def prediction_gallery(results: dict, test: dict[str, np.ndarray], task_names: Sequence[str], n: int) -> plt.Figure:
    """Rows = tasks; for each of `n` test scenes the target and the task network's prediction side by side."""
    fig, axes = plt.subplots(len(task_names), 2 * n + 1, figsize=(1.2 * (2 * n + 1), 1.2 * len(task_names)),
                             squeeze=False)
    for r, name in enumerate(task_names):
        task = taskdict.TASKS[name]
        target = data.target(test, name).numpy()
        preds = results[name]["predictions"]
        axes[r, 0].text(0.5, 0.5, name, ha="center", va="center", fontsize=7, transform=axes[r, 0].transAxes)
        axes[r, 0].axis("off")
        for i in range(n):
            label_panel(axes[r, 1 + 2 * i], task, target[i])
            label_panel(axes[r, 2 + 2 * i], task, _as_label(task, preds[i]))
            if r == 0:
                axes[r, 1 + 2 * i].set_title(f"scene {i}\ntarget", fontsize=7)
                axes[r, 2 + 2 * i].set_title(f"scene {i}\nprediction", fontsize=7)
    fig.tight_layout()
    return fig


# ---- Taskonomy Steps III-IV and the task tree (Zamir et al. 2018, Fig. 7, 8, 11, 13) --------------------------


def rank_side_by_side(raw: pd.DataFrame, affinity: pd.DataFrame, axes: Sequence[plt.Axes] | None = None
                      ) -> plt.Figure:
    """Fig. 7's point as ranks: for every target (row), the rank of each source (1 = best) by raw mean test loss
    (left) and by AHP affinity (right), on the first-order sources both tables have."""
    cols = [c for c in affinity.columns if c in raw.columns and "+" not in str(c)]
    rows = [r for r in affinity.index if r in raw.index]
    r_raw = raw.loc[rows, cols].rank(axis=1, ascending=False)
    r_ahp = affinity.loc[rows, cols].rank(axis=1, ascending=False)
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(0.6 * len(cols) + 5, 0.32 * len(rows) + 2), sharey=True)
    fig = axes[0].figure
    for ax, r, title in ((axes[0], r_raw, "rank by raw test loss"), (axes[1], r_ahp, "rank by AHP affinity")):
        sns.heatmap(r, ax=ax, cmap="mako", annot=True, fmt=".0f", annot_kws={"fontsize": 5}, cbar=False)
        ax.set_title(title)
        ax.set_xlabel("source task")
    axes[0].set_ylabel("target task")
    axes[1].set_ylabel("")
    fig.tight_layout()
    return fig


def taxonomy_graph(policy: dict[str, tuple[str, ...]], supervised: Sequence[str], affinity: pd.DataFrame,
                   ax: plt.Axes | None = None, title: str = "", label_size: float = 11) -> plt.Axes:
    """A taxonomy (Fig. 8) as a graph: supervised source tasks (left, highlighted) -> the targets they serve
    (right); a target served by several sources (higher order) gets one edge from each. Edge width is the
    transfer's affinity relative to the largest one drawn; supervised targets served by their own network carry
    no edge; a supervised task served by another supervised task gets a curved (purple) edge. `label_size`: task
    names in points, readable when a 2 x 2 grid of 6.5-inch panels is shown at page width."""
    import networkx as nx

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 5))
    sup = set(supervised)
    g = nx.DiGraph()
    for s in sorted(sup):
        g.add_node(s, layer=0)
    for t in sorted(policy):
        if t not in sup:
            g.add_node(t, layer=1)
    edges = []
    for t, srcs in policy.items():
        if tuple(srcs) == (t,):
            continue
        key = "+".join(sorted(srcs))
        w = float(affinity.at[t, key]) if t in affinity.index and key in affinity.columns else np.nan
        edges += [(s, t, w) for s in srcs]
    wmax = max([w for *_, w in edges if np.isfinite(w)], default=1.0)
    for s, t, w in edges:
        g.add_edge(s, t, width=0.6 + 3.5 * (w / wmax if np.isfinite(w) else 0.2))
    pos = nx.multipartite_layout(g, subset_key="layer", align="vertical")
    colors = ["tab:orange" if n in sup else "lightsteelblue" for n in g.nodes]
    nx.draw_networkx_nodes(g, pos, ax=ax, node_color=colors, node_size=260, edgecolors="k", linewidths=0.5)
    for inner in (False, True):  # edges between two supervised tasks are drawn curved, so they stay visible
        es = [(u, v) for u, v in g.edges if (u in sup and v in sup) == inner]
        nx.draw_networkx_edges(g, pos, ax=ax, edgelist=es, width=[g.edges[e]["width"] for e in es], alpha=0.6,
                               arrowsize=8, edge_color="tab:purple" if inner else "tab:gray", node_size=260,
                               connectionstyle="arc3,rad=0.6" if inner else "arc3")
    for n, (x, y) in pos.items():
        ax.text(x + (-0.06 if n in sup else 0.06), y, n, fontsize=label_size, va="center",
                ha="right" if n in sup else "left")
    ax.set_title(title, fontsize=label_size + 1, wrap=True)
    ax.set_axis_off()
    ax.margins(x=0.7, y=0.05)
    return ax


def gain_quality_bands(gq: pd.DataFrame) -> plt.Figure:
    """Mean Gain and Quality of the BIP's policy against the budget, one line per max order, with the 95% bootstrap
    bands of evaluate.gain_quality_table(n_boot > 0) (the paper's Fig. 9, averaged over targets)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
    for ax, metric in zip(axes, ("gain", "quality"), strict=True):
        for (o, g), ls in zip(gq.groupby("order"), ("-", "--", ":", "-."), strict=False):
            line, = ax.plot(g.budget, g[metric], marker="o", ls=ls, label=f"order <= {o}")
            ax.fill_between(g.budget, g[f"{metric}_lo"], g[f"{metric}_hi"], color=line.get_color(), alpha=0.15)
        ax.set_xlabel("supervision budget (source tasks)")
        ax.set_ylabel(f"mean {metric} (win rate)")
        ax.set_title(f"{metric.capitalize()}: win rate against " + ("scratch" if metric == "gain" else
                                                                      "full supervision"))
        ax.set_ylim(0, 1)
    axes[0].legend()
    fig.tight_layout()
    return fig


def significance_strip(sig: pd.DataFrame, metric: str = "quality", ax: plt.Axes | None = None) -> plt.Axes:
    """Fig. 11: per budget, the mean `metric` (quality or gain) of the random feasible policies (points and a box)
    and of the taxonomy (a red diamond)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    long = sig[["budget", f"random_{metric}"]].explode(f"random_{metric}")
    long[f"random_{metric}"] = long[f"random_{metric}"].astype(float)
    order = sorted(sig["budget"].unique())
    sns.boxplot(long, x="budget", y=f"random_{metric}", order=order, ax=ax, color="lightgray", fliersize=0)
    sns.stripplot(long, x="budget", y=f"random_{metric}", order=order, ax=ax, color="gray", size=2, alpha=0.5)
    ax.scatter(range(len(order)), sig.set_index("budget").loc[order, f"taxonomy_{metric}"], marker="D",
               color="tab:red", zorder=5, label="taxonomy (BIP)")
    ax.set_xlabel("supervision budget (source tasks)")
    ax.set_ylabel(f"mean {metric} (win rate)")
    ax.legend(loc="lower right", fontsize=7)
    return ax


def trees_side_by_side(trees: Sequence, titles: Sequence[str], groups: Sequence[dict[str, str]],
                       palette: dict[str, str] | None = None) -> plt.Figure:
    """Dendrograms (taskstudy.taskonomy.tree.TaskTree) side by side, leaf labels coloured by a group per tree (e.g. the
    paper's 3D / 2D / geometric / semantic)."""
    from scipy.cluster.hierarchy import dendrogram

    palette = palette or {"3D": "tab:blue", "2D": "tab:orange", "geometric": "tab:green", "semantic": "tab:red"}
    fig, axes = plt.subplots(1, len(trees), figsize=(5.2 * len(trees), 0.28 * max(len(t.labels) for t in trees) + 1.5))
    for ax, tree, title, grp in zip(np.atleast_1d(axes), trees, titles, groups, strict=True):
        dendrogram(tree.linkage, labels=tree.labels, ax=ax, orientation="left", color_threshold=0,
                   above_threshold_color="k")
        for lab in ax.get_yticklabels():
            lab.set_color(palette.get(grp.get(lab.get_text(), ""), "dimgray"))
            lab.set_fontsize(7)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"distance (1 - {tree.metric})" if tree.metric == "correlation" else f"{tree.metric} distance")
    handles = [plt.Line2D([], [], color=c, marker="s", ls="", label=g) for g, c in palette.items()]
    fig.legend(handles=handles, loc="lower center", ncol=len(palette), fontsize=7, title="paper's group")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def agreement_figure(corr: pd.DataFrame, pair_ranks: pd.DataFrame, title: str) -> plt.Figure:
    """Left: the methods' rank correlations; right: every task pair's rank under each method (1 = most related),
    one line per pair, so crossings show where the methods disagree."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 1.4]})
    sns.heatmap(corr, annot=True, fmt=".2f", cmap="RdBu_r", vmin=-1, vmax=1, center=0, ax=left,
                annot_kws={"fontsize": 8})
    left.set_title("Spearman's rho between methods")
    x = np.arange(pair_ranks.shape[1])
    for pair, row in pair_ranks.iterrows():
        label = " & ".join(pair) if isinstance(pair, tuple) else str(pair)
        right.plot(x, row.to_numpy(), marker="o", label=label)
    right.set_xticks(x, pair_ranks.columns)
    right.invert_yaxis()
    right.set_ylabel("rank of the pair (1 = most related)")
    right.set_title("task pairs ranked by each method")
    right.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def stability_figure(table: pd.DataFrame, spread: pd.DataFrame) -> plt.Figure:
    """Each variation's agreement with the base (pooled Spearman's rho of the affinities, left; mean Jaccard of the
    chosen source sets, right) against the seed-to-seed spread (grey band: lowest to highest over seed pairs)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.45 * len(table) + 1.8), sharey=True)
    y = np.arange(len(table))
    for ax, metric, label in zip(axes, ("pooled rho", "mean jaccard"),
                                 ("Spearman's rho with the base's affinities (pooled)",
                                  "mean Jaccard overlap of the chosen sources"), strict=True):
        if len(spread):
            ax.axvspan(spread[metric].min(), spread[metric].max(), color="0.85", label="seed-to-seed spread")
        stable = table[f"{metric} stable"].fillna(True).astype(bool).to_numpy()
        ax.scatter(table[metric], y, c=np.where(stable, "tab:green", "tab:red"), zorder=3)
        ax.set_xlabel(label)
        ax.set_xlim(min(0.0, float(table[metric].min()) - 0.05), 1.02)
        ax.axvline(0, color="k", lw=0.5)
    axes[0].set_yticks(y, table.index)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("variation (base + overrides)")
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle("agreement with the base run: green within the seed spread, red below it")
    fig.tight_layout()
    return fig


def outside_scatter(accuracy: pd.Series, affinity: pd.DataFrame, targets: Sequence[str], title: str) -> plt.Figure:
    """One panel per target: each source's probe accuracy on the outside set against its affinity to the target
    in the taxonomy, both as ranks (1 = best), so a diagonal is perfect agreement."""
    fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4.6), squeeze=False)
    for ax, t in zip(axes[0], targets, strict=True):
        shared = [s for s in accuracy.index if s in affinity.columns and pd.notna(affinity.loc[t, s])]
        ra = accuracy[shared].rank(ascending=False)
        rt = affinity.loc[t, shared].astype(float).rank(ascending=False)
        ax.scatter(rt, ra, color="tab:blue")
        for s in shared:
            ax.annotate(s, (rt[s], ra[s]), fontsize=6, xytext=(3, 2), textcoords="offset points")
        ax.plot([1, len(shared)], [1, len(shared)], color="0.6", lw=0.8, ls="--")
        ax.set_xlabel(f"rank of the source's affinity to {t} (1 = best)")
        ax.set_ylabel("rank of the source's probe accuracy (1 = best)")
        ax.set_title(t)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def calibration_curves(curves: pd.DataFrame, unit: str, col: str | None = None, col_wrap: int = 3,
                       title: str = "") -> plt.Figure:
    """Validation loss against training steps, each curve divided by its own minimum (so every curve ends at 1
    when training converged), one line per `unit`, facets by `col`; a dot marks the epoch whose weights were
    kept (early stopping on the val split)."""
    val = curves[curves["split"] == "val"].copy()
    curve = [col, unit] if col else [unit]  # one curve per (facet, unit): a source serves several targets
    val["relative val loss"] = val["loss"] / val.groupby(curve)["loss"].transform("min")
    g = sns.relplot(val, x="step", y="relative val loss", hue=unit, col=col, col_wrap=col_wrap if col else None,
                    kind="line", height=2.6, aspect=1.3, legend=len(val[unit].unique()) <= 12,
                    facet_kws={"sharex": False})
    from matplotlib.ticker import FormatStrFormatter

    for ax in g.axes.flat:
        ax.axhline(1.0, color="k", lw=0.5)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(FormatStrFormatter(""))
    best = val[val["best"]]
    panels = g.axes_dict.items() if col else [(None, g.ax)]
    for name, ax in panels:
        part = best if col is None else best[best[col] == name]
        ax.scatter(part["step"], part["relative val loss"], color="k", s=10, zorder=3, label="kept")
    g.set_axis_labels("training steps", "val loss / its minimum")
    if title:
        g.figure.suptitle(title, y=1.02, fontsize=10)
    return g.figure


def object_gallery(images: np.ndarray, labels: np.ndarray, names: Sequence[str], columns: int, title: str
                   ) -> plt.Figure:
    """One image per class of an object world (images (N, 3, H, W) in [0, 1]; the first image of each label),
    in class order, `columns` per row, each titled with its class name."""
    first = [int(np.flatnonzero(labels == k)[0]) for k in range(len(names)) if (labels == k).any()]
    rows = -(-len(first) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.65 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, first, strict=False):
        ax.imshow(images[i].transpose(1, 2, 0).clip(0, 1), interpolation="nearest")
        ax.set_title(names[int(labels[i])], fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def chapter_costs(runs: pd.DataFrame, per_chapter: pd.DataFrame, title: str) -> plt.Figure:
    """Left: each chapter's last run as a bar from its start to its end (seconds since its `taskstudy run` began;
    chapters side by side overlap), shaded by the cores it kept busy (CPU-s / wall s). Right: its CPU-seconds, with
    the targets of the chapters that have one (benchmarks.chapter_targets)."""
    runs = runs.reset_index(drop=True)
    origin = pd.to_numeric(runs["run"], errors="coerce").fillna(runs["start"]).astype(float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.3 * len(runs) + 1.5), sharey=True,
                                      gridspec_kw={"width_ratios": [3, 2]})
    cores = (runs["CPU s"] / runs["wall s"]).fillna(0).clip(0, 2)
    cmap = plt.get_cmap("Blues")
    for i, r in runs.iterrows():
        left.barh(i, r["end"] - r["start"], left=r["start"] - origin[i], color=cmap(0.3 + 0.35 * cores[i]))
    left.set_yticks(range(len(runs)), runs["chapter"])
    left.invert_yaxis()
    left.set_xlabel("seconds since the run began (darker: more cores busy)")
    left.set_title(title)
    right.barh(range(len(runs)), runs["CPU s"].fillna(0), color="tab:blue")
    at = [runs.index[runs["chapter"] == c][0] for c in per_chapter["chapter"]]
    right.scatter(per_chapter["target_cpu_s"], at, marker="|", s=300, color="tab:red", zorder=3,
                  label="the chapter's target (CPU-s)")
    right.set_xlabel("CPU-seconds (kernel and units)")
    if len(per_chapter):
        right.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def rank_agreement_bars(per_target: pd.DataFrame, title: str) -> plt.Figure:
    """Per target, Spearman's rho between the study's and the paper's affinities of the sources (tree.rank_agreement
    rows), green when positive."""
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(per_target) + 1.2))
    ax.barh(per_target.target, per_target.rho, color=np.where(per_target.rho > 0, "tab:green", "tab:red"))
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("Spearman rho, study vs paper affinities of the sources")
    ax.set_ylabel("target task")
    ax.set_title(title)
    return fig


def win_matrices(scores: pd.DataFrame, targets: Sequence[str]) -> plt.Figure:
    """Step III for each target: the first-order win matrix W (share of images on which source i beats j) and the
    AHP weights it gives (ahp.win_matrix, ahp.ahp_weights)."""
    from taskstudy.taskonomy import ahp

    fig, axes = plt.subplots(len(targets), 2, figsize=(15, 6.2 * len(targets)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1]})
    for (ax_w, ax_p), t in zip(axes, targets, strict=True):
        W, names = ahp.win_matrix(scores, t, ahp.candidate_sets(scores, t, max_order=1))
        heatmap(pd.DataFrame(W, index=names, columns=names), f"win matrix W for target {t}", ax=ax_w, fmt=".1f",
                cmap="vlag", vmin=0, vmax=1)
        ax_w.set_xlabel("source j")
        ax_w.set_ylabel("source i (share of images where i beats j)")
        pd.Series(ahp.ahp_weights(W), index=names).sort_values().plot.barh(ax=ax_p, color="tab:blue")
        ax_p.set_xlabel("AHP weight (first order only)")
        ax_p.set_title(f"{t}: affinities")
        ax_p.tick_params(axis="y", labelsize=6)
    fig.tight_layout()
    return fig
