"""Adaptive Step II (issue 40): each strategy trains only what it says, halving keeps sources by val loss, and a
pruned target's affinities rate only the sources it kept."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import copy_study

from taskstudy.engine.params import load
from taskstudy.taskonomy import ahp, step2
from taskstudy.taskonomy.features import RANDOM
from taskstudy.taskonomy.transfer import score_table, sources_key


def _table(means: dict[str, dict[str, float]], split: str) -> pd.DataFrame:
    rows = [(t, s, 1, i, m + 0.01 * i) for t, ms in means.items() for s, m in ms.items() for i in range(4)]
    table = pd.DataFrame(rows, columns=["target", "sources", "order", "image", "score"])
    table.attrs["split"] = split
    return table


def test_halving_keeps_the_better_sources_by_val_loss_never_by_test():
    val = _table({"t": {"a": -3.0, "b": -1.0, "c": -2.0, "d": -0.5}}, "val")  # score = -loss: d, b best
    sets = {"t": [("a",), ("b",), ("c",), ("d",)]}
    assert step2.keep_better(val, sets, 2) == {"t": [("b",), ("d",)]}  # listed order kept
    assert step2.keep_better(val, sets, 1) == {"t": [("d",)]}
    test = val.copy()
    test.attrs["split"] = "test"
    with pytest.raises(ValueError, match="val loss"):
        step2.keep_better(test, sets, 2)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = copy_study(tmp_path_factory.mktemp("step2"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TASKSTUDY_ROOT", str(root))
        yield root, mp


def _params(root, store, *extra):
    """The smoke profile on 5 tasks, with its own results folder `store` (so each strategy's count starts empty)."""
    return load(str(root / "params/smoke.yaml"), ["common.tasks=[autoencoding, edge2d, normals, depth_zbuffer, "
                                                  "segment_semantic]", "transfers.max_order=2",
                                                  f"common.results_dir={root / store}", *extra])


def _readouts(computed: list[str]) -> list[tuple[str, str]]:
    return [tuple(c.split("<-")) for c in computed if not c.endswith("<-scratch")]


@pytest.mark.slow
def test_each_strategy_trains_only_what_it_says(study):
    root, _ = study
    targets, sources = ["normals", "segment_semantic"], ["autoencoding", "depth_zbuffer", "edge2d", "normals",
                                                         "segment_semantic"]
    # pruned: the estimator's top 3 sources per target at the full budget, the random baseline, the beam's pairs
    P = _params(root, "pruned", "transfers.strategy=pruned", "transfers.keep=3", "transfers.beam=2")
    r = step2.transfers(P, targets=targets)
    first = [(t, s) for t, s in _readouts(r.computed) if "+" not in s]
    assert sorted(first) == sorted((t, sources_key(s)) for t in targets
                                   for s in [*r.results["first_order"].rated[t], (RANDOM,)])
    assert all(len(r.results["first_order"].rated[t]) == 3 for t in targets)
    pairs = [(t, s) for t, s in _readouts(r.computed) if "+" in s]
    assert len(pairs) == len(targets)  # beam 2: one pair per target, of rated sources
    rated = {t: {x[0] for x in r.results["first_order"].rated[t]} for t in targets}
    assert all(set(s.split("+")) <= rated[t] for t, s in pairs) and all(rated[t] < set(sources) for t in targets)
    # a pruned target's affinities rate only the sources it kept
    aff = ahp.affinity_matrix(r.results["val_scores"], max_order=1, exclude=ahp.BASELINES)
    for t in targets:
        assert set(aff.loc[t].dropna().index) == rated[t]

    # halving at 1 epoch then the full budget (2): all 5 sources at 1 epoch, ceil(5/2) = 3 at the full budget
    H = _params(root, "halving", "transfers.strategy=halving", "transfers.rungs=[1]", "transfers.eta=2",
                "transfers.epochs=2", "transfers.beam=2")
    h = step2.transfers(H, targets=targets)
    fo = h.results["first_order"]
    assert [e for e, _ in fo.rungs] == [1] and all(len(fo.rungs[0][1][t]) == 5 for t in targets)
    assert all(len(fo.rated[t]) == 3 for t in targets)
    short = step2.budget_params(H, 1)
    val = score_table(short, fo.rungs[0][1], with_baselines=False, split="val")
    assert fo.rated == step2.keep_better(val, fo.rungs[0][1], 3)
    first = sorted((t, s) for t, s in _readouts(h.computed) if "+" not in s)
    assert first == sorted((t, sources_key(s)) for t in targets for s in [*fo.rated[t], (RANDOM,)])
    # the 2 sources halving dropped are rated by their 1-epoch readouts: trained, so not absent; never refilled
    hv = h.results["val_scores"]
    for t in targets:
        dropped = [s for s in fo.rungs[0][1][t] if s not in fo.rated[t]]
        assert len(dropped) == 2
        for s in dropped:
            got = hv[(hv.target == t) & (hv.sources == sources_key(s))].score.to_numpy()
            want = val[(val.target == t) & (val.sources == sources_key(s))].score.to_numpy()
            assert len(got) == len(want) > 0 and np.array_equal(got, want)
    aff = ahp.affinity_matrix(hv, max_order=1, exclude=ahp.BASELINES)
    assert all(set(aff.loc[t].dropna().index) == set(sources) for t in targets)

    # full: every source, and a rerun of the paper's Step II after the strategies trains no readout twice
    F = _params(root, "halving", "transfers.beam=2", "transfers.epochs=2")
    f = step2.transfers(F, targets=targets)
    again = {(t, s) for t, s in _readouts(f.computed)}
    assert not again & {(t, s) for t, s in _readouts(h.computed) if "+" not in s}  # the full budget's are reused
    assert np.isclose(len(f.results["plan"]["normals"]), 5 + 1 + 1)  # 5 sources, random, the beam's pair


def test_the_finding_names_the_cheapest_level_that_holds_quality_everywhere():
    from taskstudy.compare import adaptive_study as ad

    fid = pd.DataFrame({"fraction of Step II": [0.08, 0.3, 0.5], "pooled rho": [0.6, 0.8, 0.9],
                        "mean jaccard": [0.4, 0.7, 0.9], "Quality held": ["3/8", "8/8", "8/8"],
                        "Quality held everywhere": [False, True, True]},
                       index=pd.Index(["cheap", "middle", "dear"], name="level"))
    band = pd.DataFrame({"pooled rho": [0.85, 0.9], "mean jaccard": [0.7, 0.8]})
    base = pd.DataFrame({"pooled rho": [0.5, 0.95, 0.97], "mean jaccard": [0.4, 0.9, 1.0],
                         "within seed band": [False, True, True]}, index=fid.index)
    text = ad.finding(fid, base, band)
    assert "'middle'" in text and "30%" in text and "not met" in text and "0.85 to 0.90" in text
    outside = ad.finding(fid, base.assign(**{"within seed band": [False, False, True]}), band)
    assert "'dear'" in outside and "50%" in outside  # the cheaper one is outside the seed band on the base
    none = ad.finding(fid.assign(**{"Quality held everywhere": False}), base, band)
    assert none.startswith("No level") and "'middle'" in none  # nearest: the most cells held, listed first
    assert "no feasible choice" not in none
    infeasible = ad.finding(fid.assign(**{"Quality held everywhere": False, "no feasible choice": [5, 2, 0]}),
                            base, band)
    assert "2 of its missed cells had no feasible choice" in infeasible  # the nearest's own count, said why

