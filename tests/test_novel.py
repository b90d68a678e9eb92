"""Novel-task experiment (Taskonomy Sec. 4.3): affinities over dictionary sources, the BIP's choice, the table of
win rates against the alternatives, the ImageNet-like encoder (store-cached)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskstudy.taskonomy import novel
from taskstudy.taskonomy.novel import IMAGENET, SELF_SUPERVISED

SOURCES = ["depth", "edges", *SELF_SUPERVISED]


def synthetic_scores(n: int = 40, seed: int = 0) -> pd.DataFrame:
    """Two novel targets; "depth" is clearly best for t1 and "edges" for t2; full is better than everything."""
    rng = np.random.default_rng(seed)
    frames = []
    quality = {"t1": {"depth": 2.0, "edges": 0.5}, "t2": {"depth": 0.3, "edges": 2.0}}
    for t in ("t1", "t2"):
        names = [*SOURCES, "depth+edges", IMAGENET, "random", "scratch", "full"]
        for s in names:
            base = {"full": 5.0, "scratch": -1.0, "random": -2.0, IMAGENET: 0.0, "depth+edges": 1.0}.get(
                s, quality[t].get(s, 0.0))
            frames.append(pd.DataFrame({"target": t, "sources": s, "order": s.count("+") + (s not in (
                "full", "scratch")), "image": np.arange(n), "score": base + 0.1 * rng.standard_normal(n)}))
    return pd.concat(frames, ignore_index=True)


def test_affinity_excludes_baselines_and_imagenet():
    aff = novel.novel_affinity(synthetic_scores(), max_order=2)
    assert set(aff.index) == {"t1", "t2"}
    assert IMAGENET not in aff.columns and not {"random", "scratch", "full"} & set(aff.columns)
    assert "depth+edges" in aff.columns
    np.testing.assert_allclose(aff.sum(axis=1), 1.0)
    assert aff.loc["t1"].idxmax() == "depth" and aff.loc["t2"].idxmax() == "edges"


def test_taxonomy_choice_and_table():
    scores = synthetic_scores()
    aff = novel.novel_affinity(scores, max_order=1)
    tax = novel.novel_taxonomy(aff, budget=0, max_order=1)  # 0 = every dictionary task may be used
    assert tax.policy == {"t1": ("depth",), "t2": ("edges",)}
    table = novel.comparison(scores, tax)
    assert list(table.index) == ["t1", "t2", "mean", "mean lo", "mean hi"]
    assert (table.loc[["t1", "t2"], ["scratch", IMAGENET, "autoencoding"]] == 1.0).all().all()
    assert table.loc["mean lo", "scratch"] == table.loc["mean hi", "scratch"] == 1.0  # every image won: no spread
    assert (table.loc[["t1", "t2"], "full"] == 0.0).all()
    assert table.loc["mean", "scratch"] == 1.0
    losses = novel.loss_table(scores, tax)
    assert (losses["taxonomy"] < losses["scratch"]).all() and (losses["full"] < losses["taxonomy"]).all()
    side = novel.paper_beside(table)
    assert set(side["against"]) == {"scratch", IMAGENET, "colorization", "jigsaw", "full"}
    assert side.loc[side.against == "full", "paper (mean win rate)"].item() == pytest.approx(0.325)
    assert side.set_index("against").at["full", "verdict"] == "study lower"  # 0.0 [0, 0] against the paper's 0.325


def test_mean_findings_sort_alternatives_by_their_interval():
    cols = ["scratch", "imagenet", "full"]
    table = pd.DataFrame({"taxonomy's sources": ["", "", ""], "scratch": [0.7, 0.6, 0.8],
                          "imagenet": [0.5, 0.4, 0.6], "full": [0.3, 0.2, 0.45]},
                         index=["mean", "mean lo", "mean hi"])[["taxonomy's sources", *cols]]
    first, *rest = novel.mean_findings(table, n_train=100, epochs=4)
    assert "beats scratch beyond noise, is within noise of imagenet, and loses to full beyond noise" in first
    assert "Quality = 0.30 [0.20, 0.45]" in first and rest == []  # full is not beaten: no caveat
    table.loc[["mean", "mean lo", "mean hi"], "full"] = [0.7, 0.6, 0.8]
    assert "100 scenes for 4 epochs" in novel.mean_findings(table, n_train=100, epochs=4)[1]
    side = pd.DataFrame({"against": ["scratch", "full"], "paper (mean win rate)": [0.9, 0.3],
                         "study (mean win rate)": [0.7, 0.6], "verdict": ["study lower", "study higher"]})
    assert novel.beside_findings(side).startswith("The study agrees with the paper on which side of 0.5 the "
                                                  "taxonomy falls for 1 of 2 alternatives (not for: full).")


def test_budget_one_restricts_sources():
    scores = synthetic_scores()
    aff = novel.novel_affinity(scores, max_order=1)
    tax = novel.novel_taxonomy(aff, budget=1, max_order=1)
    assert len(tax.sources) == 1 and len({tax.policy["t1"], tax.policy["t2"]}) == 1


def test_paper_tables():
    gq = novel.paper_gain_quality()
    assert len(gq) == 22 * 8 and set(gq.metric) == {"gain", "quality"}
    mean = gq.groupby(["metric", "order"]).value.mean()
    assert mean["gain"].is_monotonic_increasing and mean["quality"].is_monotonic_increasing
    assert novel.paper_wins().shape == (10, 8) and (novel.paper_wins()["scratch"] > 0.5).all()


def test_imagenet_encoder_is_cached(tmp_path):
    from taskstudy.engine.params import load

    params = load("params/smoke.yaml", [f"common.results_dir={tmp_path}", "common.image_size=16",
                                        "novel_tasks.imagenet_n_images=96", "novel_tasks.imagenet_epochs=1"])
    first = novel.imagenet_encoder(params)
    assert 0.0 <= first["test_accuracy"] <= 1.0 and len(first["log"]["val_loss"]) == first["epochs"] == 1
    assert first["chance"] == pytest.approx(1 / 32) and first["classes"] == 32  # the pretrain world's classes
    again = novel.imagenet_encoder(params)
    assert again["wall_s"] == first["wall_s"]  # read from the store, not retrained
    enc = novel._load_imagenet(params)
    assert enc.out_channels == 4 * params.section("task_networks").width
