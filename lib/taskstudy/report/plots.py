"""Figures every part uses: heatmaps with task names, bar charts, training curves, the chapters' costs. Each part's
own figures are in a module of their own (world_figures, taskonomy_figures, layer_transfer)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns


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


def chapter_costs(runs: pd.DataFrame, per_chapter: pd.DataFrame, title: str) -> plt.Figure:
    """Left: each chapter's last run as a bar from its start to its end (seconds since its `taskstudy run` began;
    chapters side by side overlap), shaded by the cores it kept busy (CPU-s / wall s). Right: its CPU-seconds, with
    the targets of the chapters that have one (budgets.chapter_targets)."""
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
