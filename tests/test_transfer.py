"""Steps I-II on tiny data: only missing units are computed, frozen encoders stay frozen, beam search is exact."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from taskstudy.engine.params import load
from taskstudy.engine.store import Store, file_sha256
from taskstudy.taskonomy import features, step2, transfer_checks
from taskstudy.taskonomy import task_networks as tn
from taskstudy.taskonomy import transfer as tr

TASKS = ["autoencoding", "normals", "depth_zbuffer", "class_scene"]


@pytest.fixture
def params(tmp_path, repo_root):
    def make(tasks):
        return load(repo_root / "params/smoke.yaml",
                    [f"common.results_dir={tmp_path}", f"common.tasks=[{', '.join(tasks)}]",
                     "common.n_train=24", "common.n_transfer=16", "common.n_test=12"])
    return make


def test_adding_a_task_recomputes_only_its_units(params):
    p4 = params(TASKS)
    s1 = tn.task_networks(p4)
    s2 = step2.transfers(p4)
    assert sorted(s1.computed) == sorted(TASKS)
    n = len(TASKS)
    first = [c for c in s2.computed if c.count("+") == 0 and not c.endswith(tr.SCRATCH)]
    assert len(first) == n * (n + 1)  # every target from every source and the random encoder

    p5 = params([*TASKS, "edge2d"])
    s1b = tn.task_networks(p5)
    s2b = step2.transfers(p5)
    assert s1b.computed == ["edge2d"]
    assert s2b.computed and all("edge2d" in c for c in s2b.computed), s2b.computed
    first_b = [c for c in s2b.computed if "+" not in c.split("<-")[1] and not c.endswith(tr.SCRATCH)]
    assert len(first_b) == 2 * (n + 1)  # the new target (n+1 sources + random) and n old targets from it
    table = s2b.results["scores"]
    assert set(table.target) == {*TASKS, "edge2d"}
    assert step2.transfers(p5).computed == []  # everything now cached


def test_readouts_leave_frozen_encoders_bit_identical(params):
    p = params(TASKS[:2])
    tn.task_networks(p)
    store = Store.for_params(p)
    files = sorted((store.root / "task_network").glob("*.pt"))
    before = [file_sha256(f) for f in files]
    enc = features.frozen_encoder(p, "normals")
    state = {k: v.clone() for k, v in enc.state_dict().items()}
    step2.transfers(p)
    tr.predict(enc, torch.rand(4, 3, 16, 16))
    assert all(torch.equal(state[k], v) for k, v in enc.state_dict().items())  # BN statistics included
    assert [file_sha256(f) for f in files] == before


def test_a_readout_unit_derives_nothing_from_the_profile(params, monkeypatch):
    """Issue 39, item 4: what a readout uses (the protocol: store, sections, kernels; its features' keys) is derived
    once in the client and handed down: a unit runs with every derivation from the profile made to fail, and gives
    the scores the profile-level call gives."""
    p = params(TASKS[:3])
    tn.task_networks(p)
    step2.transfers(p, baselines=False)
    sets = (("autoencoding",), ("depth_zbuffer",), ("autoencoding", "depth_zbuffer"))
    unit = tr.TargetUnit(tr.protocol(p), "normals", sets, False, 0, tr.unit_features(p, "normals", sets))
    expected = tr.train_readouts(p, "normals", list(sets))

    def derived_again(*args, **kwargs):  # noqa: ANN202
        raise AssertionError("derived from the profile inside the unit")

    for owner, name in [(tr, "kernels"), (tr, "protocol"), (tr, "readout_key"), (features, "features_key"),
                        (features, "feature_keys"), (tn, "network_key"), (Store, "for_params")]:
        monkeypatch.setattr(owner, name, derived_again)
    got = tr.target_unit(unit)["readouts"]
    assert set(got) == set(sets)
    for s in sets:
        np.testing.assert_array_equal(got[s][0], expected[s][0])


def test_beam_search_takes_exactly_top_b_and_their_combinations():
    rng = np.random.default_rng(0)
    means = {"a": -1.0, "b": -0.2, "c": -0.5, "d": -0.1, "e": -3.0}
    rows = [{"target": "t", "sources": s, "order": 1, "image": i, "score": m + 0.01 * rng.standard_normal()}
            for s, m in means.items() for i in range(50)]
    rows += [{"target": "t", "sources": tr.RANDOM, "order": 1, "image": i, "score": 10.0} for i in range(50)]
    table = pd.DataFrame(rows)
    sets = tr.beam_sets(table, "t", beam=3, max_order=3)
    top = ("b", "c", "d")
    assert sets == [*itertools.combinations(top, 2), top]
    assert tr.beam_sets(table, "t", beam=2, max_order=2) == [("b", "d")]


def test_average_baseline_has_the_network_output_form():
    y = torch.tensor([0, 1, 1, 2])
    avg = tn.average_prediction("class_scene", y, 3)
    assert avg.shape == (3, 5)
    assert torch.allclose(torch.softmax(avg[0], 0)[:3], torch.tensor([0.25, 0.5, 0.25]), atol=1e-4)


def test_the_papers_neck_and_decoder_readout_outputs_the_targets_form():
    from taskstudy.nn.models import make_readout

    z = torch.rand(2, 64, 8, 8)
    for kind, out, shape in [("pixel_regression", 3, (2, 3, 32, 32)), ("pixel_classification", 5, (2, 5, 32, 32)),
                             ("classification", 7, (2, 7))]:
        small, paper = make_readout(kind, 64, out, 16), make_readout(kind, 64, out, 16, "decoder", 32)
        assert small(z).shape == paper(z).shape == shape
    assert sum(p.numel() for p in paper.parameters()) > sum(p.numel() for p in small.parameters())
    with pytest.raises(ValueError, match="unknown readout"):
        make_readout("pixel_regression", 64, 3, 16, "mlp")


def test_capacity_comparison_trains_each_readout_on_the_sample_and_ranks_them_on_val(params):
    p = params(["autoencoding", "normals", "edge2d"])
    table = transfer_checks.capacity_comparison(p, targets=("normals", "edge2d"), sources=("autoencoding",))
    readouts = {"width 4", *transfer_checks.CAPACITY_VARIANTS}
    assert set(table.readout) == readouts and len(table) == 2 * len(readouts)
    # every variant trained a readout of its own: no two share a val loss on a (target, source) pair
    assert (table.groupby(["target", "source"])["val loss"].nunique() == len(readouts)).all()
    assert np.isfinite(table["val loss"]).all() and (table["val loss"] > 0).all()
    params_of = table.groupby("readout")["parameters"].first()
    assert params_of["width 8"] < params_of["width 32"]
    assert params_of["neck + decoder"] != params_of["width 4"]
    assert table.loc[table["profile's"], "readout"].eq("width 4").all()
    summary = transfer_checks.capacity_summary(table)
    assert set(summary.index) == readouts
    assert summary["pairs"].eq(2).all()
    # a variant that is the profile's own readout is not trained twice
    wide = load(p.file, [*p.overrides, "transfers.readout_width=32"])
    assert set(transfer_checks.capacity_comparison(wide, targets=("normals",), sources=("autoencoding",)).readout) == \
        {"width 32", "width 8", "neck + decoder"}
