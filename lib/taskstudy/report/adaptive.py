"""The adaptive Step II chapter's figure (beyond the papers): fidelity against the fraction of Step II's compute."""

from __future__ import annotations

from typing import Any

import pandas as pd


def fidelity_figure(fid: pd.DataFrame, band: pd.DataFrame, base: pd.DataFrame | None = None) -> Any:
    """Left: each level's pooled rho with the full Step II's first-order affinities against its fraction of the
    full Step II's readout compute (filled: the whole dictionary; open: the level rerun on chapter 12's base,
    `base`), the full Step II's own seed-to-seed band on that base shaded. Right:
    the share of (budget, order) cells whose Quality stays within noise of the full taxonomy's."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = fid["fraction of Step II"]
    held = fid["Quality held"].str.split("/").apply(lambda p: int(p[0]) / max(int(p[1]), 1))
    for ax, y, label in ((axes[0], fid["pooled rho"], "pooled rho with the full Step II (self excluded)"),
                         (axes[1], held, "cells with Quality within noise of the full")):
        ax.scatter(x, y, color="C0", zorder=3)
        for name, xi, yi in zip(fid.index, x, y, strict=True):
            ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.axvline(0.10, color="grey", ls=":", lw=1)
        ax.set_xlabel("fraction of the full Step II's readout compute")
        ax.set_ylabel(label)
        ax.set_xlim(0, max(1.0, float(x.max()) * 1.05))
    if base is not None:
        axes[0].scatter(x, base["pooled rho"].reindex(fid.index), facecolors="none", edgecolors="C1", zorder=3,
                        label="the level on chapter 12's base")
    if len(band):
        lo, hi = band["pooled rho"].min(), band["pooled rho"].max()
        label = "full Step II vs another seed (chapter 12's base)"
        if hi > lo:
            axes[0].axhspan(lo, hi, color="C1", alpha=0.25, label=label)
        else:
            axes[0].axhline(lo, color="C1", lw=2, label=label)
        axes[0].legend(fontsize=8, loc="lower right")
    axes[1].set_ylim(-0.05, 1.05)
    fig.tight_layout()
    return fig
