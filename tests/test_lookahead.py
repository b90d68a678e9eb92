"""TAG-style lookahead affinity (Fifty et al., NeurIPS 2021, Eq. 3) on a toy shared-encoder regression problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from taskstudy.standley.lookahead import LookaheadAccumulator, lookahead_affinity, shared_parameters

TASKS = ("a", "b", "c")


class Toy(nn.Module):
    """Shared linear layer (+ BatchNorm, to check buffers) and one linear head per task, identically initialised."""

    def __init__(self, d: int = 8, k: int = 6):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(d, k), nn.BatchNorm1d(k))
        self.heads = nn.ModuleDict({t: nn.Linear(k, 1) for t in TASKS})
        for t in TASKS[1:]:
            self.heads[t].load_state_dict(self.heads[TASKS[0]].state_dict())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.encoder(x)
        return {t: head(h).squeeze(-1) for t, head in self.heads.items()}


def losses_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """a and b regress the same target y; c regresses -y (a conflicting task)."""
    x, y = batch
    out = model(x)
    targets = {"a": y, "b": y, "c": -y}
    return {t: ((out[t] - targets[t]) ** 2).mean() for t in TASKS}


def _batches(n: int, seed: int = 0, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    for _ in range(n):
        x = torch.randn(64, d, generator=g)
        yield x, x @ w + 0.1 * torch.randn(64, generator=g)


@pytest.fixture
def model() -> Toy:
    torch.manual_seed(0)
    return Toy()


def _snapshot(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_affinity_signs_and_model_unchanged(model):
    before = _snapshot(model)
    batch = next(_batches(1))
    z = lookahead_affinity(model, batch, losses_fn, lr=0.05, shared=["encoder"])
    assert z.shape == (3, 3)
    assert (np.diag(z) > 0).all()  # a small step on a task lowers its own loss
    assert z[0, 1] > 0 and z[1, 0] > 0  # identical tasks help each other ...
    assert z[0, 1] == pytest.approx(z[0, 0]) and z[1, 0] == pytest.approx(z[1, 1])  # ... exactly as much as themselves
    assert z[0, 2] < 0 and z[2, 0] < 0 and z[1, 2] < 0  # opposite targets conflict
    after = _snapshot(model)
    assert before.keys() == after.keys()
    for k in before:  # parameters and buffers (BatchNorm running stats) bit-identical
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())


def test_accumulator_averages_over_a_training_run(model):
    acc = LookaheadAccumulator(losses_fn, lr=0.05, shared=["encoder"])
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    per_batch = []
    for batch in _batches(5, seed=1):
        per_batch.append(acc.update(model, batch))
        opt.zero_grad()
        sum(losses_fn(model, batch).values()).backward()
        opt.step()
    assert acc.count == 5 and acc.tasks == list(TASKS)
    np.testing.assert_allclose(acc.matrix(), np.mean(per_batch, axis=0))
    assert (np.diag(acc.matrix()) > 0).all()
    frame = acc.frame()
    assert list(frame.index) == list(TASKS) == list(frame.columns)


def test_task_order_and_errors(model):
    batch = next(_batches(1))
    z = lookahead_affinity(model, batch, losses_fn, lr=0.05, shared=["encoder"], tasks=["c", "a"])
    full = lookahead_affinity(model, batch, losses_fn, lr=0.05, shared=["encoder"])
    np.testing.assert_allclose(z, full[np.ix_([2, 0], [2, 0])])
    with pytest.raises(ValueError, match="decoder"):
        lookahead_affinity(model, batch, losses_fn, lr=0.05, shared=["decoder"])
    with pytest.raises(KeyError, match="'d'"):
        lookahead_affinity(model, batch, losses_fn, lr=0.05, shared=["encoder"], tasks=["a", "d"])
    with pytest.raises(ValueError, match="before any update"):
        LookaheadAccumulator(losses_fn, lr=0.05, shared=["encoder"]).matrix()
    assert [n for n, _ in shared_parameters(model, ["encoder.0"])] == ["encoder.0.weight", "encoder.0.bias"]


def test_adam_lookahead_is_the_optimisers_step(model):
    """With the training optimizer passed, the lookahead's shared parameters after a step on task i are exactly
    where torch's Adam, from the same state, moves them on task i's loss alone (heads held fixed); the SGD
    lookahead is a different matrix; the optimizer's state is left unchanged."""
    import copy

    from taskstudy.standley.lookahead import adam_step

    opt = torch.optim.Adam(model.parameters(), lr=0.02, weight_decay=1e-3)
    batches = list(_batches(4, seed=3))
    for b in batches[:3]:  # a few real steps, so the moments and the step count are non-trivial
        loss = sum(losses_fn(model, b).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
    state_before = copy.deepcopy(opt.state_dict())
    batch = batches[3]
    z = lookahead_affinity(model, batch, losses_fn, lr=0.02, shared=["encoder"], optimizer=opt)
    assert str(opt.state_dict()) == str(state_before)

    for i, task in enumerate(TASKS):  # task i's step, by a real Adam on a copy holding the same state
        work = copy.deepcopy(model)
        real = torch.optim.Adam(work.parameters(), lr=0.02, weight_decay=1e-3)
        real.load_state_dict(copy.deepcopy(opt.state_dict()))
        heads = {k: v.clone() for k, v in work.heads.state_dict().items()}
        real.zero_grad()
        losses_fn(work, batch)[task].backward()
        for p in work.heads.parameters():
            p.grad = None  # heads held fixed (Adam skips parameters without a gradient)
        real.step()
        work.heads.load_state_dict(heads)
        after = losses_fn(work, batch)
        base = losses_fn(model, batch)
        expect = [1 - float(after[t]) / float(base[t]) for t in TASKS]
        np.testing.assert_allclose(z[i], expect, rtol=1e-5, atol=1e-6)
    sgd = lookahead_affinity(model, batch, losses_fn, lr=0.02, shared=["encoder"])
    assert not np.allclose(z, sgd)
    p = next(model.encoder.parameters())
    assert torch.equal(adam_step(p, torch.zeros_like(p), {}, {"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8,
                                                            "weight_decay": 0.0}), p)  # zero gradient, no step
