"""The papers' claims and Standley et al.'s best grouping (reference/), and the tables that set them beside the
study's numbers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from taskstudy import reference
from taskstudy.standley import grouping, grouping_report, training
from taskstudy.task2vec import task2vec_report
from taskstudy.taskonomy import evaluate

CHAPTERS = ("02_task_networks", "03_transfers", "09_task2vec", "10_task_grouping")
PAPER_TASKS = ["segment_semantic", "depth_zbuffer", "normals", "keypoints2d", "edge2d"]


def test_claims_load_with_their_sources():
    df = reference.claims()
    assert list(df.columns) == reference.CLAIM_COLUMNS
    assert not df.duplicated(["chapter", "finding"]).any()
    assert set(CHAPTERS) <= set(df["chapter"])
    assert df["source"].str.startswith("seeds/00").all()
    assert df[["claim", "where", "paper"]].notna().all().all()
    nine = reference.claims("09_task2vec")
    assert nine["number"].isna().all()  # the Task2Vec review states no numbers
    assert reference.claims("10_task_grouping").at["best_grouping", "number"] == "2.5 units"
    with pytest.raises(KeyError):
        reference.claims("99_nothing")


def test_reference_file_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TASKSTUDY_REFERENCE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="claims.csv"):
        reference.claims()


def test_standley_best_grouping():
    df = reference.standley_best_grouping()
    assert list(df.columns) == reference.GROUPING_COLUMNS
    assert df.shape == (7, 7)
    assert df["serves"].dtype == bool
    served = df[df["serves"]]
    assert sorted(served["task"]) == sorted(PAPER_TASKS)  # every task served by exactly one network
    assert df.drop_duplicates("network")["cost"].sum() == pytest.approx(df["budget"].iloc[0]) == 2.5


def test_first_order_win_rates():
    rows = []
    for src, vals in {"a": [1, 1, 1], "b": [0, 0, 0], "random": [0, -1, 0]}.items():
        rows += [{"target": "t", "sources": src, "order": 1, "image": i, "score": v} for i, v in enumerate(vals)]
    rows += [{"target": "t", "sources": "full", "order": 0, "image": i, "score": 0.0} for i in range(3)]
    rows += [{"target": "t", "sources": "scratch", "order": 0, "image": i, "score": -0.5} for i in range(3)]
    scores = pd.DataFrame(rows)
    quality = evaluate.first_order_win_rates(scores, "full")
    assert quality.loc["t", "a"] == 1 and quality.loc["t", "b"] == 0.5 and quality.loc["t", "random"] == 1 / 3
    gain = evaluate.first_order_win_rates(scores, "scratch")
    assert gain.loc["t", "full"] == 1 and gain.loc["t", "random"] == pytest.approx(2 / 3)


def test_task2vec_paper_beside():
    f = {"n_tasks": 4, "d_same_attribute": 0.1, "d_different_attribute": 0.3, "attribute_p": 0.01,
         "distance_tracks_attributes": True, "norm_error_spearman": -0.2, "norm_error_p": 0.5,
         "norm_tracks_error": False, "n_best_chosen": 3, "ratio_median": 1.0, "sym_ratio_median": 1.2}
    sel = pd.DataFrame({"chosen expert": list("abcd"), "symmetric pick": list("abcc")})
    df = task2vec_report.paper_beside(f, sel).set_index("finding")
    assert df.loc["distance", "agrees"] and not df.loc["norm", "agrees"]
    assert df.loc["expert", "agrees"] and df.loc["metric", "agrees"] and df.loc["dataset_size", "agrees"] is None
    assert (df["paper's number"] == "not in the sources").all()


def _study(losses_of, seeds: int = 3) -> training.GroupingStudy:
    """Three seeds of the same synthetic losses (val = test, each seed's scaled a little); a 1/k single-task network
    has 10% more loss per k."""
    nets, costs = grouping.candidate_networks(PAPER_TASKS)
    runs = []
    for s in range(seeds):
        scale = 1 + 0.01 * np.random.default_rng(s).standard_normal()  # the seed: every loss a little off
        results = [{"losses": (ls := {t: losses_of(net, c, t) * scale for t in net}),
                    "val_losses": ls, "early_losses": ls, "size": "full" if c == 1 else "half"}
                   for net, c in zip(nets, costs, strict=True)]
        single = {net[0]: r for net, c, r in zip(nets, costs, results, strict=True) if len(net) == 1 and c == 1}
        equal = {k: {t: {"losses": {t: r["losses"][t] * (1 + 0.1 * k)}} for t, r in single.items()}
                 for k in range(2, 6)}
        equal[1] = single
        runs.append(training.GroupingRun(tasks=PAPER_TASKS, networks=nets, costs=costs, results=results,
                                          lookahead=None, computed=[], wall_s=0.0, config=None, equal=equal, seed=s))
    return training.GroupingStudy(runs={"control": runs}, computed=0, total=0, wall_s=0.0)


def test_multitask_paper_beside_recovers_the_papers_grouping():
    groups = [{"segment_semantic", "depth_zbuffer"}, {"keypoints2d", "edge2d"}]

    def loss(net, cost, t):  # the paper's partners help each other; normals do best alone and help the others
        if t == "normals":
            return 1.0 if len(net) == 1 else 1.5
        partners = set(net) - {t}
        helped = any(partners <= g for g in groups) and partners
        return 0.6 if helped else (0.8 if partners == {"normals"} else 1.0) + 0.3 * (cost < 1) + 0.1 * len(partners)

    df = grouping_report.paper_beside(_study(loss)).set_index("finding")
    assert list(df.columns) == ["paper (Standley et al. 2020)", "where", "paper's number", "study", "agrees",
                                "verdict"]
    assert "10/10" in df.loc["best_grouping", "study"] and df.loc["best_grouping", "verdict"] == "reproduced"
    assert df.loc["normals_alone", "verdict"] == "reproduced"
    assert df.loc["equal_budget", "verdict"] == "reproduced"  # 1/k networks are worse: multi-task wins
    assert np.isin(df["agrees"].dropna(), [True, False]).all()


def test_task2vec_sentences_follow_the_findings():
    f = {"attribute_tasks": 6, "d_same_attribute": 0.1, "d_different_attribute": 0.3, "attribute_p": 0.01,
         "nn_same_attribute": 0.8, "nn_chance": 0.4, "distance_tracks_attributes": True, "d_same_palette": 0.2,
         "d_different_palette": 0.25, "norm_error_spearman": -0.2, "norm_error_p": 0.5,
         "norm_error_spearman_objects": 0.1, "norm_error_p_objects": 0.7, "norm_tracks_error": False, "n_tasks": 4,
         "ratio_median": 1.1, "ratio_mean": 1.2, "ratio_max": 1.9, "worst_task": "t", "factor": 2.0,
         "n_within_factor": 4, "n_best_chosen": 2, "sym_ratio_median": 1.3, "m2v_ratio_median": 1.4, "m2v_n_best": 1,
         "random_ratio_median": 1.05, "within_factor": True, "beats_random": False}
    assert "follows task similarity **holds**" in task2vec_report.distance_finding(f)
    assert "tracks difficulty **does not hold**" in task2vec_report.norm_finding(f)
    pick = task2vec_report.selection_finding(f, alpha=0.15)
    assert "best **holds** by the median" in pick and "uninformed choice **does not hold**" in pick
    d = {"same_images_task": 0.2, "same_images_domain": 0.1, "attribute_gap_task": 0.05, "attribute_p_task": 0.01,
         "attribute_gap_domain": 0.0, "attribute_p_domain": 0.6}
    assert task2vec_report.domain_finding(d).endswith("the labels, as in the paper.")
    assert "unlike the paper" in task2vec_report.domain_finding(d | {"same_images_domain": 0.3})
    side = pd.DataFrame({"finding": ["a", "b", "c"], "agrees": [True, False, None], "study": ["x", "y", "z"]})
    assert task2vec_report.beside_summary(side) == ("Of the 3 findings the sources state (none with a number), the "
                                                    "study tests 2 and agrees with 1 (a); it does not agree on b: y "
                                                    "(why: below).")


def test_the_papers_numbers_live_under_reference_only():
    """issue 39, step 5: no table of published numbers in the library's code; the Taskonomy novel-task and
    Gain/Quality tables come from reference/ through the one loader."""
    import re
    from pathlib import Path

    from taskstudy import reference
    from taskstudy.taskonomy import novel

    wins = novel.paper_wins()
    assert wins.loc["Normals", "scratch"] == pytest.approx(0.97) and wins.shape == (10, 8)
    gq = novel.paper_gain_quality()
    assert len(gq) == 22 * 2 * 4 and gq["task"].isna().sum() == 4 * 2 * 4
    lib = Path(reference.__file__).parent
    for path in lib.rglob("*.py"):
        text = path.read_text()
        assert not re.search(r"(\[\d\d, \d\d, \d\d, \d\d, \d\d){2}", text), path  # rows of a published table
        assert not re.search(r"^\w+\|[^|]+\|[.\d ]+$", text, flags=re.M), path  # the old pipe-delimited table
