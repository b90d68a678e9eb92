"""Task similarity tree (Taskonomy Sec. 5.3, Fig. 13) and comparison with the paper's published affinities."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskstudy.taskonomy.tree import (
    PAPER_GROUPS,
    PAPER_NAMES,
    adjusted_rand,
    compare_groups,
    cut_groups,
    load_paper_affinities,
    rank_agreement,
    rank_agreement_findings,
    reference_dir,
    task_tree,
)


def two_family_affinity(seed: int = 0) -> pd.DataFrame:
    """targets x sources: sources in family X help targets 0-3, family Y targets 4-7 (plus noise)."""
    rng = np.random.default_rng(seed)
    srcs = ["x1", "x2", "x3", "y1", "y2"]
    P = pd.DataFrame(rng.uniform(0, 0.05, (8, 5)), index=[f"t{i}" for i in range(8)], columns=srcs)
    P.loc[["t0", "t1", "t2", "t3"], ["x1", "x2", "x3"]] += rng.uniform(0.5, 1.0, (4, 3))
    P.loc[["t4", "t5", "t6", "t7"], ["y1", "y2"]] += rng.uniform(0.5, 1.0, (4, 2))
    P["x1+y1"] = 0.3
    P["random"] = 0.1
    return P.div(P.sum(axis=1), axis=0)


def test_tree_recovers_families():
    P = two_family_affinity()
    tree = task_tree(P)
    assert sorted(tree.labels) == ["x1", "x2", "x3", "y1", "y2"]  # higher-order and baseline columns left out
    assert tree.linkage.shape == (4, 4) and tree.metric == "correlation" and tree.method == "average"
    g = cut_groups(tree, 2)
    assert g["x1"] == g["x2"] == g["x3"] != g["y1"] == g["y2"]
    rows = task_tree(P, on="rows", metric="euclidean", method="ward")
    g2 = cut_groups(rows, 2)
    assert len({g2[f"t{i}"] for i in range(4)}) == 1 and g2["t0"] != g2["t7"]


def test_tree_errors():
    with pytest.raises(ValueError, match="on must be"):
        task_tree(two_family_affinity(), on="diagonal")
    with pytest.raises(ValueError, match=">= 2 tasks"):
        task_tree(pd.DataFrame({"a": [1.0]}, index=["a"]))


def test_adjusted_rand_and_compare_groups():
    assert adjusted_rand([1, 1, 2, 2], ["p", "p", "q", "q"]) == pytest.approx(1.0)
    assert adjusted_rand([1, 2, 1, 2], ["p", "p", "q", "q"]) < 0.0 + 1e-9
    groups = {"normals": 1, "reshading": 1, "edge2d": 2, "autoencoding": 2, "class_scene": 3}
    cmp = compare_groups(groups)
    assert set(cmp["task"]) == {"normals", "reshading", "edge2d", "autoencoding"}  # class_scene has no paper task
    assert cmp.attrs["ari"] == pytest.approx(1.0)
    assert set(cmp["paper_group"]) == {"3D", "2D"}


def test_rank_agreement():
    rng = np.random.default_rng(0)
    study = pd.DataFrame(rng.random((3, 6)), index=["normals", "edge2d", "class_scene"],
                         columns=["normals", "edge2d", "reshading", "curvature", "keypoints2d", "full"])
    paper = study.rename(index=PAPER_NAMES, columns=PAPER_NAMES).drop(columns="full")
    ra = rank_agreement(study, paper)
    assert list(ra["target"]) == ["normals", "edge2d", "pooled"]  # class_scene maps to None
    # the own entry and `full` left out: 4 sources per target
    assert ra["rho"].tolist() == pytest.approx([1.0, 1.0, 1.0]) and ra["n"].tolist() == [4, 4, 8]
    assert rank_agreement(study, paper, self_entry=True)["n"].tolist() == [5, 5, 10]
    ra = rank_agreement(study, -paper)
    assert ra["rho"].iloc[:2].tolist() == pytest.approx([-1.0, -1.0])
    text = rank_agreement_findings(ra)
    assert "median per-target rho is -1.00; 0 of 2 are positive. Pooled over 8" in text
    assert "group of the target: 2D -1.00, 3D -1.00." in text


def test_paper_names_and_groups_match_reference():
    try:
        P = load_paper_affinities()
    except FileNotFoundError:
        pytest.skip("paper reference results not present")
    assert P.shape == (22, 27)
    sources = set(P.columns)
    for study_name, paper_name in PAPER_NAMES.items():
        assert paper_name is None or paper_name in sources, study_name
    assert set(PAPER_GROUPS) <= set(P.index)
    for kind in ("wins_vs_task", "wins_vs_pixels"):
        W = load_paper_affinities(kind)
        assert (W["self"] == 0.5).all() if kind == "wins_vs_task" else W.shape[0] == 22
    tree = task_tree(P)
    assert len(cut_groups(tree, 4)) == len(tree.labels)


def test_reference_path_override(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKSTUDY_REFERENCE", str(tmp_path))
    assert reference_dir() == tmp_path
    with pytest.raises(FileNotFoundError, match="TASKSTUDY_REFERENCE"):
        load_paper_affinities()
    (tmp_path / "taskonomy").mkdir()
    pd.DataFrame({"source\\target": ["a", "b"], "a": [0.7, 0.3]}).to_csv(
        tmp_path / "taskonomy" / "affinities_first_order.csv", index=False)
    P = load_paper_affinities()
    assert list(P.index) == ["a"] and list(P.columns) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown kind"):
        load_paper_affinities("losses")


def test_separation_of_two_families():
    from taskstudy.taskonomy.tree import separates, separation

    t = task_tree(two_family_affinity())
    fam = {"x1": "3D", "x2": "3D", "x3": "3D", "y1": "2D", "y2": "2D"}
    sep = separation(t, fam, 2)
    assert sep["3D tasks"] == 3 and sep["2D tasks"] == 2 and sep["ARI on 3D+2D tasks"] == pytest.approx(1.0)
    assert separates(sep) and sep["between 3D and 2D"] > sep["within 3D"]
    mixed = separation(t, {"x1": "3D", "y1": "3D", "x2": "2D", "y2": "2D", "x3": "2D"}, 2)
    assert not separates(mixed) and mixed["ARI on 3D+2D tasks"] < 0.5
