"""One training loop for every network of the study: seeded, deterministic on CPU, resumable.

Mini-batch Adam over in-memory tensors with the learning rate decayed to zero along a half cosine over all steps
(Loshchilov & Hutter 2017, without restarts): on this study's short runs the decay is what lets the last
epochs settle instead of hovering at the constant-rate noise floor. The shuffling order of epoch e comes from a
generator seeded with (seed, e), and the rate is a function of the step, so a run resumed from a checkpoint after
epoch e continues exactly as an uninterrupted run. A checkpoint (model, optimiser, epoch, loss history) is
written atomically after every epoch when a path is given.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from taskstudy.parallel import progress

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # passes over the training tensors
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 0.0  # L2 penalty
    seed: int = 0  # initialisation and shuffling


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight initialisation) and return a generator for the data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """'cpu', 'cuda' or 'auto' (CUDA when present)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _save_checkpoint(path: Path, state: dict) -> None:
    from taskstudy.store import atomic_write

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def cosine_lr(lr: float, step: int, total: int) -> float:
    """The learning rate at `step` of `total`: lr * (1 + cos(pi * step / total)) / 2."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    desc: str | None = None,
    params: list[nn.Parameter] | None = None,
) -> list[float]:
    """Train `model` on (inputs, targets); return the mean training loss of every epoch.

    `params` restricts the optimised parameters (readouts on a frozen encoder); `checkpoint` makes the run
    resumable: if the file exists, training continues after its last finished epoch.
    """
    device = torch.device(device)
    model.to(device)
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    history: list[float] = []
    start = 0
    if checkpoint is not None and checkpoint.is_file():
        state = torch.load(checkpoint, weights_only=False)
        if state.get("config") == asdict(cfg):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            history, start = state["history"], state["epoch"]
    n = inputs.shape[0]
    steps = -(-n // cfg.batch_size)
    for epoch in range(start, cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        total, count = 0.0, 0
        for j, i in enumerate(progress(range(0, n, cfg.batch_size), desc=desc, leave=False, disable=desc is None)):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg.lr, epoch * steps + j, cfg.epochs * steps)
            idx = order[i : i + cfg.batch_size]
            x, y = inputs[idx].to(device), targets[idx].to(device)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        history.append(total / count)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "history": history,
                "epoch": epoch + 1, "config": asdict(cfg),
            })
    return history


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Outputs of `model` in eval mode, batched, on the CPU."""
    model.eval().to(device)
    outs = [model(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, inputs.shape[0], batch_size)]
    return torch.cat(outs)


def per_image(score_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], pred: torch.Tensor,
              target: torch.Tensor) -> np.ndarray:
    """Per-image scores (higher is better) as float64 numpy."""
    return score_fn(pred, target).detach().double().numpy()
