"""The layer-transfer chapter's figures (Yosinski et al. 2014): the base nets' calibration curves and Fig. 2/3 as
ours beside the paper's."""

from __future__ import annotations

from typing import Any

import pandas as pd

from taskstudy.yosinski.findings import calibration_curves
from taskstudy.yosinski.layers import SPLIT_KINDS


def plot_calibration(runs: pd.DataFrame, max_epochs: int) -> Any:
    """Validation (solid) and training (dotted) loss of every base net against epochs; a ring marks the kept
    epoch. Early stopping is what ends each curve; a curve reaching `max_epochs` hit the ceiling."""
    import matplotlib.pyplot as plt

    curves = calibration_curves(runs)
    fig, axes = plt.subplots(1, len(SPLIT_KINDS), figsize=(11, 3.6), sharey=True, squeeze=False)
    colours = {"baseA": "#c0282d", "baseB": "#1f4e9c"}
    for ax, kind in zip(axes[0], SPLIT_KINDS, strict=True):
        sub = curves[curves.split_kind == kind]
        for (treatment, seed), d in sub.groupby(["treatment", "seed"]):
            c = colours[treatment]
            for split, ls in (("val", "-"), ("train", ":")):
                dd = d[d.split == split]
                ax.plot(dd.epoch, dd.loss, ls=ls, color=c, lw=1.2, alpha=0.8,
                        label=f"{treatment} {split}" if seed == 0 else None)
            best = d[(d.split == "val") & d.best]
            ax.scatter(best.epoch, best.loss, s=30, facecolors="none", edgecolors=c, zorder=3)
        ax.axvline(max_epochs, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{kind} split", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("cross-entropy")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


STYLE: dict[str, dict[str, Any]] = {
    "baseB": {"color": "black", "marker": "o", "mfc": "white"},
    "BnB": {"color": "#1f4e9c", "marker": "o"},
    "BnB+": {"color": "#7fb0e6", "marker": "o"},
    "AnB": {"color": "#c0282d", "marker": "D"},
    "AnB+": {"color": "#f28e8e", "marker": "D"},
    "random": {"color": "#2e8b3e", "marker": "v"},
}


def _panel(ax: Any, df: pd.DataFrame, kind: str, title: str, spread: bool) -> None:
    sub = df[df.split_kind == kind]
    for t, st in STYLE.items():
        d = sub[sub.treatment == t]
        if d.empty:
            continue
        mean = d.groupby("n")["top1"].mean()
        ax.plot(mean.index, mean.to_numpy(), label=t, color=st["color"], marker=st["marker"],
                mfc=st.get("mfc", st["color"]), ms=6, lw=1.5, zorder=3)
        if spread and "seed" in d and d.seed.nunique() > 1:
            lo, hi = d.groupby("n")["top1"].min(), d.groupby("n")["top1"].max()
            ax.fill_between(lo.index, lo.to_numpy(), hi.to_numpy(), color=st["color"], alpha=0.15, lw=0)
            ax.scatter(d.n, d.top1, color=st["color"], s=8, alpha=0.6, zorder=2)
    base = sub[sub.treatment == "baseB"]["top1"]
    if len(base):
        ax.axhline(float(base.mean()), color="black", lw=0.8, ls=":", zorder=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layers n copied from the base net")
    ax.set_ylabel("top-1 accuracy on task B")
    ax.grid(alpha=0.3)


def plot_transfer(ours: pd.DataFrame, paper: pd.DataFrame, dataset: str = "object world") -> Any:
    """The paper's Fig. 2/3 as ours beside theirs: rows = similar / dissimilar split, columns = ours / paper.
    Ours: mean over seeds (line), every seed (dots), min-max band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    names = {"similar": ("random split", "random A/B halves"),
             "dissimilar": ("dissimilar split", "natural -> man-made (A -> B)")}
    for r, kind in enumerate(SPLIT_KINDS):
        _panel(axes[r, 0], ours, kind, f"ours ({dataset}): {names[kind][0]}", spread=True)
        _panel(axes[r, 1], paper, kind, f"Yosinski et al. 2014 (ImageNet): {names[kind][1]}", spread=False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
