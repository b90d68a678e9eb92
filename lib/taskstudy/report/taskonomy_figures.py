"""Taskonomy's figures (Zamir et al. 2018): affinities and win rates beside the paper's (Fig. 6-7), the chosen
taxonomy as a graph (Fig. 8), Gain and Quality against the budget (Fig. 9) and against random policies (Fig. 11),
the task trees side by side, and Sec. 5's stability and outside-set checks (chapters 03-07 and 12)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from taskstudy.report.plots import heatmap


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
