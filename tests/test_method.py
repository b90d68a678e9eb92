"""Taskonomy's method as the paper states it (issue 17): queries in the target's and the encoder's form, the
target's own network as a candidate, selection and evaluation on different splits, per-image sanity checks,
jigsaw's input and label from one seed, the tree without own-entry spikes, and training stopped on val."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from taskstudy.engine.params import load
from taskstudy.nn.train import TrainConfig, fit_validated, mean_loss, predict
from taskstudy.taskonomy import ahp, evaluate, features, step2, taxonomy, tree
from taskstudy.taskonomy import task_networks as tn
from taskstudy.taskonomy import transfer as tr
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

TASKS = ["autoencoding", "denoising", "colorization", "inpainting", "normals"]


@pytest.fixture
def tiny(tmp_path, repo_root):
    def make(*extra):
        return load(repo_root / "params/smoke.yaml",
                    [f"common.results_dir={tmp_path}", f"common.tasks=[{', '.join(TASKS)}]", "common.n_train=16",
                     "common.n_transfer=16", "common.n_val=8", "common.n_test=8", *extra])
    return make


# --- queries (fixes 2 and 3) ---------------------------------------------------------------------------------------

def test_denoising_readouts_read_the_noisy_query(tiny):
    p = tiny()
    tn.task_networks(p)
    features.cache_features(p, ["autoencoding", tr.RANDOM], ("rgb", "noisy"))
    test = data.scene_split(tr.Store.for_params(p), p.common, "test")
    noisy = data.network_input(p.common, test, "denoising")
    assert not torch.equal(noisy, data.rgb(test))
    assert features.query_kind("denoising") == "noisy" and features.query_kind("normals") == "rgb"
    enc = features.frozen_encoder(p, "autoencoding")
    z = features.load_features(p, ("autoencoding",), "test", features.query_kind("denoising"))
    torch.testing.assert_close(z, predict(enc, noisy).half().float())
    assert not torch.allclose(z, predict(enc, data.rgb(test)).half().float())


def test_each_encoder_reads_the_query_in_the_form_it_was_trained_on(tiny):
    p = tiny()
    d = data.scene_split(tr.Store.for_params(p), p.common, "val")
    rgb = data.rgb(d)
    grey = features.encoder_view(p, "colorization", "val", "rgb")
    torch.testing.assert_close(grey, taskdict.make_input("colorization", rgb))
    assert torch.equal(grey[:, 0], grey[:, 1])  # one grey channel, replicated
    assert torch.equal(features.encoder_view(p, "normals", "val", "rgb"), rgb)
    assert torch.equal(features.encoder_view(p, "inpainting", "val", "rgb"), rgb)  # the default: the plain query
    q = tiny("transfers.corrupted_view=corrupted")
    masked = features.encoder_view(q, "inpainting", "val", "rgb")
    torch.testing.assert_close(masked, taskdict.make_input("inpainting", rgb))
    noisy = features.encoder_view(q, "denoising", "val", "rgb")
    torch.testing.assert_close(noisy, data.network_input(q.common, d, "denoising"))
    # a noisy query is not corrupted twice
    torch.testing.assert_close(features.encoder_view(q, "denoising", "val", "noisy"), noisy)
    assert features.features_key(p, "inpainting", "val") != features.features_key(q, "inpainting", "val")
    # one view per encoder (issue 38, item 5): inpainting corrupted, denoising plain, keys apart accordingly
    m = tiny("transfers.corrupted_view={inpainting: corrupted}")
    torch.testing.assert_close(features.encoder_view(m, "inpainting", "val", "rgb"), masked)
    assert torch.equal(features.encoder_view(m, "denoising", "val", "rgb"), rgb)
    assert features.features_key(m, "inpainting", "val") == features.features_key(q, "inpainting", "val")
    assert features.features_key(m, "denoising", "val") == features.features_key(p, "denoising", "val")


def test_each_corrupting_encoders_view_is_chosen_on_val_not_test(tiny):
    """issue 38, item 5: per encoder, the view with the lower val loss on more targets; test only judges it."""
    from taskstudy.taskonomy import transfer_checks as tc

    idx = pd.MultiIndex.from_product([["inpainting", "denoising"], ["normals", "edge2d", "segment_semantic"]],
                                     names=["source", "target"])
    # inpainting: the corrupted view is lower on val on 2 of 3 targets but loses on test everywhere;
    # denoising: the plain view is lower on val on 2 of 3 although the corrupted one wins on test
    change = [-0.02, -0.01, 0.05, 0.01, 0.02, -0.04]
    test_rate = [0.30, 0.35, 0.30, 0.70, 0.70, 0.70]
    views = pd.DataFrame({"val loss, plain": 1.0, "val loss, corrupted": [1 + c for c in change],
                          "change (val)": change, "corrupted beats plain (test)": test_rate, "lo": 0.0, "hi": 1.0},
                         index=idx)
    choice = tc.view_choice(tiny(), views)
    assert choice.loc["inpainting", "val chooses"] == "corrupted"
    assert choice.loc["denoising", "val chooses"] == "plain"
    assert choice.loc["inpainting", "chosen view wins (test)"] == pytest.approx(np.mean([0.30, 0.35, 0.30]))
    assert not choice.loc["inpainting", "profile follows val"] and choice.loc["denoising", "profile follows val"]
    text = tc.view_finding(choice)
    assert "inpainting: the corrupted view has the lower val loss on 2 of 3" in text
    assert "denoising: the plain view has the lower val loss on 2 of 3" in text


# --- the target's own network as a candidate (fix 4) --------------------------------------------------------------

def _scores(skill: dict[str, dict[str, float]], n: int = 60, seed: int = 0, split: str = "val") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [{"target": t, "sources": s, "order": 0 if s in ahp.BASELINES else s.count("+") + 1, "image": i,
             "score": m + 0.3 * rng.standard_normal()}
            for t, row in skill.items() for s, m in row.items() for i in range(n)]
    table = pd.DataFrame(rows)
    table.attrs["split"] = split
    return table


SKILL = {t: {"a": 0.0, "b": 0.5, "c": 0.2, t: 1.0, "full": 2.0, "scratch": -0.5, "random": -1.0}
         for t in ("a", "b", "c")}


def test_at_a_budget_covering_every_task_each_target_is_served_by_its_own_network():
    val, test = _scores(SKILL, seed=0, split="val"), _scores(SKILL, seed=1, split="test")
    P = ahp.affinity_matrix(val, max_order=1)
    assert "full" in P.columns and (P.idxmax(axis=1) == "full").all()
    cands = taxonomy.transfers_from_affinity(P)
    own = cands[cands.candidate == "full"]
    assert set(own.target) == {"a", "b", "c"} and all(s == (t,) for t, s in zip(own.target, own.sources,
                                                                                strict=True))
    assert not (cands.candidate == cands.target).any()  # the own-encoder readout yields to `full`
    tax = taxonomy.solve_taxonomy(cands, budget=3, max_order=1)
    assert tax.policy == {"a": ("a",), "b": ("b",), "c": ("c",)}
    assert all(tax.candidate(t) == "full" for t in tax.policy)
    rates = evaluate.policy_gain_quality(test, tax)
    np.testing.assert_allclose(rates["quality"], 0.5)  # the paper's Quality of self
    assert (rates["gain"] > 0.9).all()
    gq = evaluate.gain_quality_table(test, P, budgets=[3], orders=[1])
    assert gq.loc[0, "quality"] == pytest.approx(0.5)


def test_without_a_full_column_the_own_readout_remains_the_candidate():
    val = _scores({t: {k: v for k, v in row.items() if k != "full"} for t, row in SKILL.items()})
    cands = taxonomy.transfers_from_affinity(ahp.affinity_matrix(val, max_order=1))
    tax = taxonomy.solve_taxonomy(cands, budget=3, max_order=1)
    assert all(tax.candidate(t) == t for t in tax.policy)


# --- selection and evaluation on different splits (fix 5) ---------------------------------------------------------

def test_no_gain_quality_or_significance_on_the_split_that_chose_the_policy():
    val = _scores(SKILL, split="val")
    P = ahp.affinity_matrix(val, max_order=1)
    assert P.attrs["split"] == "val"
    with pytest.raises(evaluate.SplitError):
        evaluate.gain_quality_table(val, P, budgets=[1], orders=[1])
    with pytest.raises(evaluate.SplitError):
        evaluate.significance(val, P, budgets=[1], n_random=5)
    test = _scores(SKILL, seed=1, split="test")
    with pytest.raises(ValueError, match="val split"):
        tr.beam_sets(test, "a", beam=2, max_order=2)
    assert len(evaluate.significance(test, P, budgets=[1], n_random=5)) == 1


def test_step_ii_selects_on_val_and_reports_test(tiny):
    p = tiny("transfers.max_order=2", "transfers.beam=2")
    step = step2.transfers(p, targets=["normals", "denoising"])
    val, test = step.results["val_scores"], step.results["scores"]
    assert val.attrs["split"] == "val" and test.attrs["split"] == "test"
    assert len(val[val.target == "normals"].image.unique()) == p.common.n_val
    first = val[(val.order == 1)]
    for t in ("normals", "denoising"):  # the beam's sets are the top-2 first-order sources on val
        assert step.results["plan"][t][-1:] == tr.beam_sets(first, t, beam=2, max_order=2)
    key = tr.readout_key(p, "normals", ("autoencoding",))
    r = tr.Store.for_params(p).load("readout", key, tr.VERSION)
    assert len(r["val_scores"]) == p.common.n_val and len(r["scores"]) == p.common.n_test
    assert 1 <= r["log"]["best_epoch"] <= r["log"]["max_epochs"]


# --- Step I's sanity check per image (fix 6) ----------------------------------------------------------------------

def test_sanity_check_is_a_per_image_win_rate_against_avg_and_rand():
    # lower mean loss than avg, thanks to a few images, but worse than avg on most images: not "well trained"
    net = np.r_[np.full(8, -0.10), np.full(2, -0.01)]
    avg = np.r_[np.full(8, -0.05), np.full(2, -1.00)]
    rand = np.full(10, -2.0)
    assert -net.mean() < -avg.mean()
    step = tn.StepResult({"normals": {"scores": {"network": net, "avg": avg, "rand": rand}}}, [], 0.0)
    row = tn.baseline_table(step).iloc[0]
    assert row["win rate vs avg"] == pytest.approx(0.2) and row["win rate vs rand"] == pytest.approx(1.0)
    assert not row["beats avg and rand"]


# --- jigsaw: input and label from one seed (fix 7) ----------------------------------------------------------------

def test_jigsaw_input_shows_the_permutation_of_its_label_whatever_the_training_seed(repo_root, tmp_path):
    p = load(repo_root / "params/smoke.yaml", [f"common.results_dir={tmp_path}", "common.seed=5",
                                               "common.split_seed=0", "common.n_train=8"])
    d = data.scene_split(tr.Store.for_params(p), p.common, "train")
    x = data.network_input(p.common, d, "jigsaw")
    label = data.target(d, "jigsaw").numpy()
    expected = taskdict.shuffle_tiles(data.rgb(d), label)
    assert torch.equal(x, expected)


# --- the tree without own-entry spikes (fix 8) --------------------------------------------------------------------

def test_the_tree_compares_tasks_without_their_own_entries():
    targets = ["t1", "t2", "t3", "t4", "t5"]
    pattern = pd.Series([0.1, 0.3, 0.2, 0.4, 0.05], index=targets)
    cols = {}
    for s in ("t1", "t2", "only"):  # same transfer-out pattern; t1 and t2 also have a spike at their own row
        v = pattern.copy()
        if s in targets:
            v[s] = 5.0
        cols[s] = v
    cols["other"] = 1 - pattern  # the opposite pattern
    P = pd.DataFrame(cols)
    t = tree.task_tree(P, exclude=())
    d = pd.DataFrame(np.zeros((4, 4)), index=t.labels, columns=t.labels)
    from scipy.spatial.distance import squareform
    d[:] = squareform(tree.masked_pdist(t.vectors))
    assert d.at["t1", "only"] == pytest.approx(0.0, abs=1e-12)
    assert d.at["t1", "t2"] == pytest.approx(0.0, abs=1e-12)
    assert d.at["t1", "other"] > 0.5
    assert tree.cut_groups(t, 2)["only"] == tree.cut_groups(t, 2)["t1"]


# --- training stopped on val --------------------------------------------------------------------------------------

def _overfit_problem():
    g = torch.Generator().manual_seed(0)
    x, xv = torch.randn(32, 20, generator=g), torch.randn(64, 20, generator=g)
    w = torch.randn(20, 1, generator=g)
    y = x @ w + 2.0 * torch.randn(32, 1, generator=g)  # noisy labels: a wide net overfits them
    yv = xv @ w
    return x, y, xv, yv


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 256), nn.ReLU(), nn.Linear(256, 1))


def test_early_stopping_keeps_the_best_val_epoch_and_stops_after_patience(tmp_path):
    x, y, xv, yv = _overfit_problem()
    loss = nn.functional.mse_loss
    cfg = TrainConfig(epochs=200, batch_size=8, lr=1e-2, seed=0)
    net = _net()
    log = fit_validated(net, x, y, loss, cfg, (xv, yv), patience=3)
    assert log.stopped_early and log.epochs_run == log.best_epoch + 3
    assert log.best_val == min(log.val_loss)
    assert mean_loss(net, xv, yv, loss) == pytest.approx(log.best_val)  # the best epoch's weights are kept
    # interrupted mid-run and resumed from its checkpoint: the same curve and the same weights
    ckpt = tmp_path / "c.pt"
    calls = {"n": 0}

    def dying(pred, target):
        calls["n"] += 1
        if calls["n"] > 4 * 3:  # after 3 epochs of 4 steps
            raise KeyboardInterrupt
        return loss(pred, target)

    with pytest.raises(KeyboardInterrupt):
        fit_validated(_net(), x, y, dying, cfg, (xv, yv), patience=3, checkpoint=ckpt)
    b = _net()
    log_b = fit_validated(b, x, y, loss, cfg, (xv, yv), patience=3, checkpoint=ckpt)
    assert log_b.val_loss == log.val_loss and log_b.best_epoch == log.best_epoch
    assert all(torch.equal(u, v) for u, v in zip(net.state_dict().values(), b.state_dict().values(), strict=True))


def test_plateau_schedule_ends_annealed_wherever_it_stops(tmp_path):
    """issue 38, item 4: the rate is divided by 10 at each of two val plateaus and the third stops the run, so a
    run that stops early has still annealed (a cosine stopped early has not); resumable like the cosine."""
    from taskstudy.nn import train

    assert train.plateau_step(best_epoch=5, last_decay=0, epoch=6, decays=0, patience=4) == (0, 0, False)
    assert train.plateau_step(best_epoch=5, last_decay=0, epoch=7, decays=0, patience=4) == (1, 7, False)
    assert train.plateau_step(best_epoch=5, last_decay=7, epoch=8, decays=1, patience=4) == (1, 7, False)
    assert train.plateau_step(best_epoch=5, last_decay=7, epoch=9, decays=1, patience=4) == (2, 9, False)
    assert train.plateau_step(best_epoch=5, last_decay=9, epoch=11, decays=2, patience=4) == (2, 9, True)
    x, y, xv, yv = _overfit_problem()
    loss = nn.functional.mse_loss
    cfg = TrainConfig(epochs=200, batch_size=8, lr=1e-2, seed=0, schedule="plateau")
    rates = []
    net = _net()
    log = fit_validated(net, x, y, loss, cfg, (xv, yv), patience=4,
                        before_step=lambda m, b, opt, step: rates.append(opt.param_groups[0]["lr"]))
    assert log.stopped_early
    assert rates[-1] == pytest.approx(1e-4) and rates[0] == pytest.approx(1e-2)
    assert log.epochs_run >= log.best_epoch + 3 * 2  # three plateaus of ceil(4 / 2) epochs after the best
    assert mean_loss(net, xv, yv, loss) == pytest.approx(log.best_val)
    ckpt = tmp_path / "p.pt"
    calls = {"n": 0}

    def dying(pred, target):
        calls["n"] += 1
        if calls["n"] > 4 * (log.epochs_run - 2):  # killed after a decay, before the stop
            raise KeyboardInterrupt
        return loss(pred, target)

    with pytest.raises(KeyboardInterrupt):
        fit_validated(_net(), x, y, dying, cfg, (xv, yv), patience=4, checkpoint=ckpt)
    log_b = fit_validated(_net(), x, y, loss, cfg, (xv, yv), patience=4, checkpoint=ckpt)
    assert log_b.val_loss == log.val_loss and log_b.best_epoch == log.best_epoch
    with pytest.raises(ValueError, match="val split"):
        train.fit(_net(), x, y, loss, cfg)


def test_readouts_on_the_plateau_schedule_are_their_own_units(tiny):
    p, q = tiny(), tiny("transfers.schedule=plateau")
    assert "schedule" not in tr.readout_key(p, "normals", ("autoencoding",))
    assert tr.readout_key(q, "normals", ("autoencoding",))["schedule"] == "plateau"


def test_early_stopping_reads_only_the_first_val_images_when_told():
    """TrainConfig.val_images (common.val_stop_images): the val loss of every epoch is the first k images' loss;
    images after them (here a wrong label) change nothing."""
    x, y, xv, yv = _overfit_problem()
    k = len(xv) // 2
    spoiled = yv.clone()
    spoiled[k:] += 100.0
    loss = nn.functional.mse_loss
    cfg = TrainConfig(epochs=6, batch_size=8, lr=1e-2, seed=0, val_images=k)
    a, b = _net(), _net()
    log_a = fit_validated(a, x, y, loss, cfg, (xv, yv), patience=10)
    log_b = fit_validated(b, x, y, loss, cfg, (xv, spoiled), patience=10)
    assert log_a.val_loss == log_b.val_loss
    assert log_a.best_val == pytest.approx(mean_loss(a, xv[:k], yv[:k], loss))  # the kept weights
    full = fit_validated(_net(), x, y, loss, TrainConfig(epochs=6, batch_size=8, lr=1e-2, seed=0), (xv, spoiled),
                         patience=10)
    assert full.val_loss[-1] > 10 * log_b.val_loss[-1]


# --- uncertainty of the headline numbers --------------------------------------------------------------------------

def test_bootstrap_intervals_cover_the_rate_and_shrink_with_more_images():
    from taskstudy import uncertainty

    rng = np.random.default_rng(0)
    small, large = rng.random(50) < 0.7, rng.random(2000) < 0.7
    lo_s, hi_s = uncertainty.mean_interval(small.astype(float), n_boot=500, seed=1)
    lo_l, hi_l = uncertainty.mean_interval(large.astype(float), n_boot=500, seed=1)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3  # ~ 1 / sqrt(n)
    assert hi_l - lo_l == pytest.approx(2 * 1.96 * np.sqrt(0.7 * 0.3 / 2000), rel=0.25)
    assert uncertainty.verdict(lo_l, hi_l, 0.7) == "within noise"
    assert uncertainty.verdict(lo_l, hi_l, 0.5) == "study higher"
    assert uncertainty.verdict(lo_l, hi_l, 0.9) == "study lower"


def test_policy_intervals_contain_the_policy_means():
    val, test = _scores(SKILL, seed=0, split="val"), _scores(SKILL, seed=1, split="test")
    P = ahp.affinity_matrix(val, max_order=1, exclude=ahp.BASELINES)  # readouts only: rates below 1
    tax = taxonomy.solve_taxonomy(taxonomy.transfers_from_affinity(P), budget=1, max_order=1)
    per = evaluate.policy_gain_quality(test, tax, n_boot=300, seed=0)
    assert ((per.gain_lo <= per.gain) & (per.gain <= per.gain_hi)).all()
    ci = evaluate.policy_interval(test, tax, n_boot=300, seed=0)
    assert ci["quality"][0] <= per.quality.mean() <= ci["quality"][1]
    assert ci["quality"][1] - ci["quality"][0] > 0
    gq = evaluate.gain_quality_table(test, P, budgets=[1], orders=[1], n_boot=300, seed=0)
    assert gq.loc[0, "quality_lo"] == pytest.approx(ci["quality"][0])


def test_random_encoder_table_flags_targets_random_features_solve_or_no_source_learns():
    skill = {"easy": {"a": 0.5, "b": 0.0, "random": 2.5, "full": 1.0, "scratch": 0.0},  # random beats full
             "dead": {"a": 0.0, "b": 0.0, "random": 0.0, "full": 1.0, "scratch": 0.0},  # nothing beats random
             "fine": {"a": 1.5, "b": 0.0, "random": -1.0, "full": 2.0, "scratch": 0.0}}
    test = _scores(skill, n=200, seed=1, split="test")
    table = evaluate.random_encoder_table(test, _scores(skill, n=200, seed=0), n_boot=300)
    assert table.loc["easy", "verdict"] == "random features solve it"
    assert table.loc["dead", "verdict"] == "no source learns it"
    assert table.loc["fine", "verdict"] == "transfer measurable" and table.loc["fine", "best source"] == "a"
    assert table.loc["fine", "vs best hi"] < 0.5 < table.loc["easy", "vs full lo"]


def test_bootstrap_affinities_spread_shrinks_with_more_images():
    def spread(n):
        rng = np.random.default_rng(0)
        rows = [{"target": t, "sources": s, "order": 1, "image": i, "score": m + rng.standard_normal()}
                for t in ("x", "y") for s, m in zip("abc", (0.0, 0.3, 0.6), strict=True) for i in range(n)]
        boots = ahp.bootstrap_affinities(pd.DataFrame(rows), n_boot=30, seed=1)
        assert all(np.allclose(b.sum(axis=1), 1.0) for b in boots)
        return np.stack([b.to_numpy() for b in boots]).std(axis=0).mean()
    assert spread(400) < spread(50) / 2


def test_bootstrap_affinities_equal_the_affinities_of_explicitly_resampled_images():
    """The count-weighted win matrices are the win matrices of the resampled table itself (the same seeded draw)."""
    rng = np.random.default_rng(3)
    rows = [{"target": t, "sources": s, "order": 1, "image": i, "score": float(rng.integers(0, 4))}  # ties too
            for t in ("x", "y") for s in ("a", "b", "c", "full") for i in range(40)]
    scores = pd.DataFrame(rows)
    boots = ahp.bootstrap_affinities(scores, n_boot=5, seed=7)
    draw_rng = np.random.default_rng(7)
    images = np.sort(scores["image"].unique())
    for b in boots:
        draw = draw_rng.choice(images, size=len(images), replace=True)
        rep = pd.concat([scores[scores.image == i].assign(image=k) for k, i in enumerate(draw)], ignore_index=True)
        pd.testing.assert_frame_equal(b, ahp.affinity_matrix(rep), check_exact=False, rtol=1e-12)


def test_calibration_curves_divide_each_curve_by_its_own_minimum():
    import matplotlib

    matplotlib.use("Agg")
    from taskstudy.report import plots

    rows = [{"target": t, "sources": "a", "epoch": e, "step": e, "split": "val", "loss": scale * (1 + 1 / e),
             "best": e == 4} for t, scale in (("t1", 1.0), ("t2", 10.0)) for e in range(1, 5)]
    fig = plots.calibration_curves(pd.DataFrame(rows), unit="sources", col="target")
    lows = [min(line.get_ydata()) for ax in fig.axes for line in ax.get_lines() if len(line.get_ydata()) == 4]
    assert lows and all(v == pytest.approx(1.0) for v in lows)  # each facet's curve ends at 1, not at 10


def test_ceiling_verdict_reads_the_interval_of_the_change():
    from taskstudy.taskonomy.task_networks import ceiling_verdict

    assert ceiling_verdict(-0.2, -0.05).startswith("still improving")
    assert ceiling_verdict(-0.02, 0.03) == "converged: within noise"
    assert ceiling_verdict(0.01, 0.04).startswith("the longer schedule is worse")
