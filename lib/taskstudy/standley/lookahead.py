"""Lookahead inter-task affinity in the style of Task Affinity Grouping (Fifty et al., NeurIPS 2021, Eq. 3).

During a multi-task training run, for each task i take one plain SGD step of the shared parameters on task i's loss
alone, theta_s' = theta_s - lr * grad_{theta_s} L_i, keeping every task head fixed, and measure for every task j

    Z_{i->j} = 1 - L_j(batch; theta_s', theta_j) / L_j(batch; theta_s, theta_j).

Positive Z_{i->j}: a step on i lowers j's loss (i helps j). The step is taken on a deep copy of the model, so the
model's parameters and buffers (e.g. BatchNorm running statistics) are left bit-identical. TAG uses the training
optimizer's update: pass the run's `torch.optim.Adam` as `optimizer` and the lookahead step is the step Adam would
take from its current state (moments, step count, learning rate) on task i's gradient alone (`adam_step`); without
it, the step is plain SGD with learning rate `lr`. Stochastic layers (dropout) add noise to the ratio: evaluate in
eval mode or without them. `LookaheadAccumulator` averages Z over batches/steps.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from taskstudy.standley import grouping

LossesFn = Callable[[nn.Module, Any], Mapping[str, torch.Tensor]]


def shared_parameters(model: nn.Module, shared: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """Named parameters whose name equals a prefix in `shared` or starts with prefix + '.'."""
    prefixes = list(shared)
    out = [(n, p) for n, p in model.named_parameters()
           if p.requires_grad and any(n == s or n.startswith(s + ".") for s in prefixes)]
    if not out:
        raise ValueError(f"no trainable parameter of the model matches the shared prefixes {prefixes}")
    return out


def adam_step(param: torch.Tensor, grad: torch.Tensor, state: Mapping[str, Any], group: Mapping[str, Any]
              ) -> torch.Tensor:
    """The parameter after one step of torch.optim.Adam (no amsgrad) from optimizer `state` (exp_avg,
    exp_avg_sq, step; empty before the first step) and param `group` (lr, betas, eps, weight_decay) on `grad`,
    without changing the state (Kingma & Ba 2015, Algorithm 1; torch's form of the bias correction)."""
    if group.get("amsgrad") or group.get("maximize"):
        raise ValueError("adam_step follows plain Adam only (no amsgrad, no maximize)")
    beta1, beta2 = group["betas"]
    g = grad + group["weight_decay"] * param if group["weight_decay"] else grad
    step = float(state["step"]) + 1 if "step" in state else 1.0
    m = state["exp_avg"] * beta1 + (1 - beta1) * g if "exp_avg" in state else (1 - beta1) * g
    v = state["exp_avg_sq"] * beta2 + (1 - beta2) * g * g if "exp_avg_sq" in state else (1 - beta2) * g * g
    denom = (v.sqrt() / (1 - beta2**step) ** 0.5) + group["eps"]
    return param - (group["lr"] / (1 - beta1**step)) * m / denom


def lookahead_affinity(
    model: nn.Module,
    batch: Any,
    losses_fn: LossesFn,
    lr: float,
    shared: Sequence[str],
    tasks: Sequence[str] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
) -> np.ndarray:
    """T x T matrix Z[i, j] = 1 - L_j(after a step on task i) / L_j(before), tasks in `tasks` order.

    `losses_fn(model, batch)` returns {task: scalar loss}; `tasks` defaults to its key order. `shared` lists the
    parameter-name prefixes of the shared part (e.g. ["encoder"]). The step is `optimizer`'s (a torch Adam over the
    model's parameters: its current moments and learning rate) or, without one, SGD with `lr`. The model itself and
    the optimizer's state are not modified.
    """
    return _affinity(model, batch, losses_fn, lr, shared, tasks, optimizer)[0]


def _optimizer_slots(model: nn.Module, optimizer: torch.optim.Optimizer, shared: Sequence[str]
                     ) -> list[tuple[dict, dict]]:
    """(state, group) of every shared parameter of `model`, in shared_parameters order."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    out = []
    for _, p in shared_parameters(model, shared):
        if id(p) not in group_of:
            raise ValueError("the optimizer does not hold every shared parameter of the model")
        out.append((optimizer.state.get(p, {}), group_of[id(p)]))
    return out


def _affinity(
    model: nn.Module, batch: Any, losses_fn: LossesFn, lr: float, shared: Sequence[str], tasks: Sequence[str] | None,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[np.ndarray, list[str]]:
    slots = _optimizer_slots(model, optimizer, shared) if optimizer is not None else None
    work = copy.deepcopy(model)
    params = shared_parameters(work, shared)
    tensors = [p for _, p in params]
    before = losses_fn(work, batch)
    tasks = list(before) if tasks is None else list(tasks)
    missing = [t for t in tasks if t not in before]
    if missing:
        raise KeyError(f"losses_fn returned no loss for tasks {missing}")
    grads = []
    for t in tasks:
        g = torch.autograd.grad(before[t], tensors, retain_graph=True, allow_unused=True)
        grads.append([torch.zeros_like(p) if gi is None else gi for p, gi in zip(tensors, g, strict=True)])
    base = [float(before[t].detach()) for t in tasks]
    originals = [p.detach().clone() for p in tensors]
    z = np.zeros((len(tasks), len(tasks)))
    with torch.no_grad():
        for i in range(len(tasks)):
            for k, (p, p0, g) in enumerate(zip(tensors, originals, grads[i], strict=True)):
                p.copy_(adam_step(p0, g, *slots[k]) if slots is not None else p0 - lr * g)
            after = losses_fn(work, batch)
            for j, t in enumerate(tasks):
                z[i, j] = 1.0 - float(after[t]) / base[j]
    return z, tasks


class LookaheadAccumulator:
    """Running mean of `lookahead_affinity` over the batches (training steps) it is updated with."""

    def __init__(self, losses_fn: LossesFn, lr: float, shared: Sequence[str], tasks: Sequence[str] | None = None):
        self.losses_fn, self.lr, self.shared = losses_fn, lr, list(shared)
        self.tasks: list[str] | None = list(tasks) if tasks is not None else None
        self._sum: np.ndarray | None = None
        self.count = 0

    def update(self, model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer | None = None) -> np.ndarray:
        """Add one batch's affinity matrix (returned; the step `optimizer`'s, or SGD with `lr`); the first batch
        fixes the task order if none was given."""
        z, self.tasks = _affinity(model, batch, self.losses_fn, self.lr, self.shared, self.tasks, optimizer)
        self._sum = z.copy() if self._sum is None else self._sum + z
        self.count += 1
        return z

    def matrix(self) -> np.ndarray:
        """Mean Z over all updates so far (rows: the task stepped on; columns: the task measured)."""
        if self._sum is None:
            raise ValueError("LookaheadAccumulator.matrix() called before any update()")
        return self._sum / self.count

    def frame(self) -> pd.DataFrame:
        """The mean matrix as a labelled pandas DataFrame."""
        return pd.DataFrame(self.matrix(), index=pd.Index(self.tasks, name="step on"),
                            columns=pd.Index(self.tasks, name="loss of"))


def tag_scores(affinity: pd.DataFrame, networks: Sequence[tuple[str, ...]]) -> list[dict[str, float]]:
    """Task Affinity Grouping's objective as a loss table (Fifty et al. 2021, Sec. 3.3): a task in group g scores
    minus the mean lookahead affinity onto it from the group's other tasks, affinity.loc[other, task] (rows: the
    task stepped on, columns: the task measured); alone it scores 0. Lower is better, so `best_grouping` on this
    table serves each task by the chosen group with the highest affinity onto it."""
    out = []
    for net in networks:
        row = {}
        for t in net:
            others = [u for u in net if u != t]
            row[t] = -float(np.mean([affinity.loc[u, t] for u in others])) if others else 0.0
        out.append(row)
    return out


def tag_grouping(affinity: pd.DataFrame, networks: Sequence[tuple[str, ...]], costs: Sequence[float],
                 budget: float, tasks: Sequence[str], full_cost: float = 1.0) -> list[int]:
    """The grouping TAG picks from lookahead affinities alone: the full-size networks (TAG trains no smaller
    ones) whose total affinity onto their tasks is highest within `budget`; indices into `networks`."""
    full = [i for i, c in enumerate(costs) if abs(c - full_cost) < grouping.COST_EPS]
    scores = tag_scores(affinity, [networks[i] for i in full])
    chosen = grouping.best_grouping(scores, [costs[i] for i in full], budget, tasks)
    return sorted(full[k] for k in chosen)
