"""Readouts trained side by side (taskstudy.nn.grouped) are the readouts trained one by one with the same batch
order."""

from __future__ import annotations

import pytest
import torch

from taskstudy.nn import grouped
from taskstudy.nn.models import make_readout
from taskstudy.nn.train import TrainConfig, fit_validated
from taskstudy.world import tasks as taskdict

CFG = TrainConfig(10, 16, 0.01, seed=7)  # fp32, NCHW: the comparison is to float tolerance


def _data(task: str, n: int, seed: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = taskdict.get_task(task)
    z = [torch.randn(n, 8, 4, 4, generator=g) for _ in range(3)]
    if t.kind == "pixel_regression":
        y = torch.randn(n, t.channels, 16, 16, generator=g)
    elif t.kind == "classification":
        y = torch.randint(0, t.channels, (n,), generator=g)
    else:
        y = torch.randint(0, t.channels, (n, 16, 16), generator=g)
    return z, y


def _readouts(task: str) -> list[torch.nn.Module]:
    t = taskdict.get_task(task)
    out = []
    for r in range(3):
        torch.manual_seed(100 + r)
        out.append(make_readout(t.kind, 8, t.channels, 4))
    return out


@pytest.mark.parametrize("task", ["normals", "segment_semantic", "class_scene"])
def test_side_by_side_equals_one_by_one(task):
    t = taskdict.get_task(task)
    z, y = _data(task, 48, 0)
    zv, yv = _data(task, 24, 1)  # noise labels: the readouts overfit, and stop at different epochs
    alone = _readouts(task)
    logs_alone = [fit_validated(m, z[r], y, t.loss, CFG, (zv[r], yv), patience=2) for r, m in enumerate(alone)]
    together = _readouts(task)
    logs = grouped.fit_readouts(together, z, y, t.per_image_loss, CFG, (zv, yv), patience=2)
    assert [log.best_epoch for log in logs] == [log.best_epoch for log in logs_alone]
    assert [log.epochs_run for log in logs] == [log.epochs_run for log in logs_alone]
    assert len({log.epochs_run for log in logs}) > 1 or task == "class_scene"  # they did stop apart
    for a, b in zip(logs, logs_alone, strict=True):
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-4, abs=1e-5)
    for a, b in zip(together, alone, strict=True):
        for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
            assert torch.allclose(va.float(), vb.float(), rtol=1e-3, atol=1e-4), k


def test_only_one_architecture_groups():
    pix = make_readout("pixel_regression", 8, 3, 4)
    assert grouped.groupable([pix, make_readout("pixel_regression", 8, 3, 4)])
    assert not grouped.groupable([pix, make_readout("pixel_regression", 16, 3, 4)])  # another input width
    assert not grouped.groupable([make_readout("pixel_regression", 8, 3, 4, arch="decoder")])
    with pytest.raises(ValueError, match="share one architecture"):
        grouped.GroupedReadouts([pix, make_readout("classification", 8, 5, 4)])


def test_group_round_trip_keeps_every_weight_and_statistic():
    rs = _readouts("normals")
    for m in rs:
        m.net[1].running_mean.normal_()
    g = grouped.GroupedReadouts(rs)
    for r, m in enumerate(rs):
        got = g.readout_state(r)
        assert got.keys() == m.state_dict().keys()
        assert all(torch.equal(got[k], v) for k, v in m.state_dict().items())
