"""The task-grouping chapter's figures (Standley et al., ICML 2020)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def budget_figure(tables: pd.DataFrame, title: str, ax: Any = None) -> Any:
    """Total test loss against budget, seed mean with the seeds' range: best grouping, the two baselines, the
    three approximations."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8.5, 4))
    styles = {"best_loss": ("best grouping (chosen on val)", "-", "o"), "all_in_one_loss": ("all-in-one", "--", "s"),
              "all_separate_loss": ("all-separate", "--", "^"),
              "predicted_loss": ("predicted from pairs (higher-order approx.)", ":", "x"),
              "early_loss": ("chosen after early stopping", ":", "+"), "tag_loss": ("TAG (lookahead)", ":", "d")}
    g = tables.groupby("budget")
    for col, (label, ls, marker) in styles.items():
        mean = g[col].mean()
        ax.plot(mean.index, mean.values, ls=ls, marker=marker, label=label)
        ax.fill_between(mean.index, g[col].min().values, g[col].max().values, alpha=0.12)
    ax.set_xlabel("inference budget (full-size encoders)")
    ax.set_ylabel("total test loss (sum over tasks)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.figure.tight_layout()
    return ax
