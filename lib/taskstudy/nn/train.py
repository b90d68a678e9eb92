"""One training loop for every network of the study: seeded, deterministic on CPU, resumable.

Mini-batch Adam over in-memory tensors with the learning rate decayed to zero along a half cosine over all steps
(Loshchilov & Hutter 2017, without restarts): on this study's short runs the decay is what lets the last
epochs settle instead of hovering at the constant-rate noise floor. The shuffling order of epoch e comes from a
generator seeded with (seed, e), and the rate is a function of the step, so a run resumed from a checkpoint after
epoch e continues exactly as an uninterrupted run. A checkpoint (model, optimiser, epoch, loss history) is
written atomically after every epoch when a path is given.

Speed: `precision="bf16"` runs forward passes under bfloat16 autocast and `channels_last` lays image batches out as
NHWC. Which pays depends on the CPU: on one with native bf16 (AVX512-BF16 or AMX) the two together trained a Step I
network 2.7x faster than fp32 NCHW; on an AVX2-only CPU bf16 ran at a ninth of fp32's rate, while channels_last
still helped (fp32: 783 against 505 images/s). So a profile says `auto` and `resolve_kernels` decides on the machine
from its capabilities (never from a timing, so one machine always resolves alike and reruns stay byte-identical);
cache keys carry the resolved kernels. The performance chapter measures all four on the machine that built it.
Inference (`predict`, `mean_loss`) stays fp32.

Calibration (`fit_validated`): the loss on a held-out `val` split (its first `val_images` images: on this study's
short runs, validation of a whole 500-image split cost a quarter of a readout's training) is measured after every
epoch, the weights of the best epoch are kept, and training stops once `patience` epochs pass without improvement
(early stopping, Prechelt 1998). The epoch budget `cfg.epochs` is then a ceiling that sets the cosine's length;
the log of training and validation loss against steps is what the calibration figures plot. A run that stops
early has not reached the cosine's low-rate end; `schedule="plateau"` (ReduceLROnPlateau's rule, with early
stopping) instead divides a constant rate by 10 at each of two val plateaus and stops at the third, so every run
ends annealed wherever it stops (chapter 12 measures whether that moves the taxonomy).

Multi-task networks train in the same loop: targets may be a dict of tensors (one per task, indexed alike) and the
model may return a dict; `before_step` sees every batch before the optimiser steps on it (the lookahead affinity
of chapter 10 measures there) and `after_epoch` every finished epoch.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from taskstudy.engine.parallel import progress
from taskstudy.engine.sections import Common

Batch = torch.Tensor | dict[str, torch.Tensor]  # targets / outputs: one tensor, or one per task
LossFn = Callable[[Batch, Batch], torch.Tensor]
StepHook = Callable[[nn.Module, tuple[torch.Tensor, Batch], torch.optim.Optimizer, int], None]
EpochHook = Callable[[nn.Module, int], None]


def _take(t: Batch, idx: torch.Tensor | slice, device: torch.device) -> Batch:
    """Rows `idx` of a tensor or of every tensor of a dict, on `device`."""
    if isinstance(t, dict):
        return {k: v[idx].to(device) for k, v in t.items()}
    return t[idx].to(device)


def _as_float(out: Batch) -> Batch:
    """Outputs in fp32 (losses are computed in fp32 under bf16 autocast)."""
    return {k: v.float() for k, v in out.items()} if isinstance(out, dict) else out.float()


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5  # passes over the training tensors
    batch_size: int = 64  # images per step
    lr: float = 2e-3  # Adam learning rate
    weight_decay: float = 0.0  # L2 penalty
    seed: int = 0  # initialisation and shuffling
    precision: str = "fp32"  # "bf16": forward passes under bfloat16 autocast (losses and weights stay fp32)
    channels_last: bool = False  # image batches and conv weights in NHWC layout (faster CPU convolutions)
    val_images: int | None = None  # early stopping reads the first val_images of the val split (None: all of it)
    schedule: str = "cosine"  # "plateau": a constant rate divided at each val plateau (fit_validated only)


#: oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) under which oneDNN still has bf16 dot-product instructions
_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10")


def native_bf16(device: str = "cpu") -> bool:
    """Whether `device` runs bfloat16 arithmetic natively: on the CPU, AVX512-BF16 or AMX tiles, and oneDNN not held
    below them by ONEDNN_MAX_CPU_ISA; on CUDA, what torch reports."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    if not cap.startswith(_BF16_ISAS):
        return False
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def nhwc_pays(device: str = "cpu") -> bool:
    """Whether channels_last convolutions are the faster layout: on CUDA, and on CPUs where torch's convolutions
    run through oneDNN's vector kernels (capability AVX2 or above; measured on AVX2: 783 against 505 images/s)."""
    if device.startswith("cuda"):
        return True
    return torch.backends.mkldnn.is_available() and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")


def resolve_kernels(precision: str = "auto", channels_last: bool | str = "auto", device: str = "cpu"
                    ) -> dict[str, object]:
    """The training kernels for this machine: `auto` precision is bf16 where `native_bf16`, else fp32; `auto`
    channels_last is `nhwc_pays`. Explicit values are kept."""
    dev = str(resolve_device(device))
    if precision == "auto":
        precision = "bf16" if native_bf16(dev) else "fp32"
    if channels_last == "auto":
        channels_last = nhwc_pays(dev)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    return {"precision": precision, "channels_last": bool(channels_last)}


def kernels(common: Common) -> dict[str, object]:
    """The TrainConfig fields a profile's `common` sets for every network: the kernels (precision, channels_last,
    resolved for this machine by `resolve_kernels`) and how many val images early stopping reads (val_images, from
    common.val_stop_images)."""
    return {**resolve_kernels(common.precision, common.channels_last, common.device),
            "val_images": common.val_stop_images}


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
    from taskstudy.engine.store import atomic_write

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(path, buf.getvalue())


def cosine_lr(lr: float, step: int, total: int) -> float:
    """The learning rate at `step` of `total`: lr * (1 + cos(pi * step / total)) / 2."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))


#: The plateau schedule: the rate is divided by PLATEAU_FACTOR at each of the first PLATEAU_DECAYS plateaus; the
#: next plateau stops the run. A plateau: ceil(patience / 2) epochs without a better val loss (since the best epoch
#: or the last decay, whichever is later).
PLATEAU_FACTOR, PLATEAU_DECAYS = 10.0, 2


def plateau_step(best_epoch: int, last_decay: int, epoch: int, decays: int, patience: int) -> tuple[int, int, bool]:
    """After 1-based `epoch` of a plateau-scheduled run: (decays, last_decay, stop). Unlike the cosine, which spans
    the epoch ceiling, this schedule has annealed whenever the run stops (issue 38, item 4)."""
    if epoch - max(best_epoch, last_decay) < math.ceil(patience / 2):
        return decays, last_decay, False
    if decays < PLATEAU_DECAYS:
        return decays + 1, epoch, False
    return decays, last_decay, True


@dataclass
class TrainLog:
    """What one validated training run did: per-epoch training and validation loss, the epoch whose weights were
    kept (1-based) and the steps of one epoch (so curves can be drawn against steps)."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = 0
    steps_per_epoch: int = 0
    max_epochs: int = 0

    @property
    def epochs_run(self) -> int:
        return len(self.train_loss)

    @property
    def stopped_early(self) -> bool:
        return self.epochs_run < self.max_epochs

    @property
    def best_val(self) -> float:
        return self.val_loss[self.best_epoch - 1] if self.best_epoch else float("nan")

    def as_dict(self) -> dict:
        return asdict(self)


def tail_change(log: dict, epochs: int = 3) -> float:
    """Relative change of the validation loss over the last `epochs` epochs of a TrainLog (as_dict): near zero
    when the curve has flattened, clearly negative while it is still falling."""
    v = log["val_loss"]
    if len(v) <= epochs:
        return float("nan")
    return float((v[-1] - v[-1 - epochs]) / abs(v[-1 - epochs]))


def log_rows(log: dict) -> list[dict]:
    """A TrainLog (as_dict) as tidy rows: epoch, step, split (train / val), loss, best (the kept epoch)."""
    return [{"epoch": e, "step": e * log["steps_per_epoch"], "split": split, "loss": v, "best": e == log["best_epoch"]}
            for e, (tr, va) in enumerate(zip(log["train_loss"], log["val_loss"], strict=True), start=1)
            for split, v in (("train", tr), ("val", va))]


@torch.no_grad()
def mean_loss(model: nn.Module, inputs: torch.Tensor, targets: Batch, loss_fn: LossFn,
              batch_size: int = 256, device: torch.device | str = "cpu", precision: str = "fp32",
              channels_last: bool = False) -> float:
    """The loss over a whole split in eval mode: batch losses weighted by batch size (for the study's losses,
    which are batch means of per-image losses, this is the mean per-image loss). `precision` / `channels_last`:
    the training kernels (early stopping reads the val loss under them; per-image scores come from `predict`)."""
    model.eval()
    device = torch.device(device)
    total, n = 0.0, inputs.shape[0]
    for i in range(0, n, batch_size):
        x, y = inputs[i : i + batch_size].to(device), _take(targets, slice(i, i + batch_size), device)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(x)
        total += float(loss_fn(_as_float(out), y)) * len(x)
    return total / max(n, 1)


def fit(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: Batch,
    loss_fn: LossFn,
    cfg: TrainConfig,
    *,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    desc: str | None = None,
    params: list[nn.Parameter] | None = None,
) -> list[float]:
    """Train `model` on (inputs, targets) for cfg.epochs; return the mean training loss of every epoch.

    `params` restricts the optimised parameters (readouts on a frozen encoder); `checkpoint` makes the run
    resumable: if the file exists, training continues after its last finished epoch.
    """
    return _fit(model, inputs, targets, loss_fn, cfg, None, None, device, checkpoint, desc, params,
                None, None).train_loss


def fit_validated(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn: LossFn,
    cfg: TrainConfig,
    val: tuple[torch.Tensor, Batch],
    *,
    patience: int = 3,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    desc: str | None = None,
    params: list[nn.Parameter] | None = None,
    before_step: StepHook | None = None,
    after_epoch: EpochHook | None = None,
) -> TrainLog:
    """`fit` with early stopping on a validation split: after every epoch the loss on `val` = (inputs, targets)
    is measured; training stops when `patience` epochs have not improved on the best, and the model is left with
    the weights of its best epoch. Returns the TrainLog (curves, best epoch).

    `before_step(model, (x, y), optimizer, step)` is called with every training batch before the optimiser steps
    on it, `after_epoch(model, epoch)` (1-based) after every epoch's validation; neither may change the model."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    return _fit(model, inputs, targets, loss_fn, cfg, val, patience, device, checkpoint, desc, params,
                before_step, after_epoch)


def _fused(params: list[nn.Parameter]) -> bool | None:
    """Adam's fused kernel (one pass over all parameters) where torch has it for these parameters. Measured with
    NHWC inputs laid out once, two processes side by side: a readout's fit 12% faster, a Step I network's the same."""
    return True if params and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) \
        else None


def _fit(model: nn.Module, inputs: torch.Tensor, targets: Batch, loss_fn: LossFn, cfg: TrainConfig,
         val: tuple[torch.Tensor, Batch] | None, patience: int | None, device: torch.device | str,
         checkpoint: Path | None, desc: str | None, params: list[nn.Parameter] | None,
         before_step: StepHook | None, after_epoch: EpochHook | None) -> TrainLog:
    device = torch.device(device)
    model.to(device)
    nhwc = cfg.channels_last and inputs.dim() == 4
    if nhwc:
        model.to(memory_format=torch.channels_last)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {cfg.precision!r}")
    if val is not None and cfg.val_images is not None:  # a fixed sample of val: the splits are random renders
        val = (val[0][: cfg.val_images], _take(val[1], slice(0, cfg.val_images), val[0].device))
    if nhwc:  # laid out once: the batches indexed from it stay NHWC (no per-step copy)
        inputs = inputs.contiguous(memory_format=torch.channels_last)
        if val is not None and val[0].dim() == 4:
            val = (val[0].contiguous(memory_format=torch.channels_last), val[1])
    trainable = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused(trainable))
    n = inputs.shape[0]
    steps = -(-n // cfg.batch_size)
    log = TrainLog(steps_per_epoch=steps, max_epochs=cfg.epochs)
    best_state: dict | None = None
    start = 0
    plateau = cfg.schedule == "plateau"
    if cfg.schedule not in ("cosine", "plateau"):
        raise ValueError(f"schedule must be 'cosine' or 'plateau', got {cfg.schedule!r}")
    if plateau and (val is None or patience is None):
        raise ValueError("the plateau schedule needs a val split and a patience (fit_validated)")
    decays, last_decay, stop = 0, 0, False
    if checkpoint is not None and checkpoint.is_file():
        from taskstudy.engine.store import load_weights

        state = load_weights(checkpoint)
        if state.get("config") == asdict(cfg) and state.get("patience") == patience:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start = state["epoch"]
            log = TrainLog(**state["log"])
            best_state = state.get("best")
            decays, last_decay, stop = state.get("plateau", (0, 0, False))
    for epoch in range(start, cfg.epochs):
        if stop or (not plateau and val is not None and log.best_epoch and epoch - log.best_epoch >= patience):
            break
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        total, count = 0.0, 0
        for j, i in enumerate(progress(range(0, n, cfg.batch_size), desc=desc, leave=False, disable=desc is None)):
            for group in opt.param_groups:
                group["lr"] = (cfg.lr / PLATEAU_FACTOR ** decays if plateau
                               else cosine_lr(cfg.lr, epoch * steps + j, cfg.epochs * steps))
            idx = order[i : i + cfg.batch_size]
            x, y = inputs[idx].to(device), _take(targets, idx, device)
            if nhwc:
                x = x.contiguous(memory_format=torch.channels_last)
            if before_step is not None:
                before_step(model, (x, y), opt, epoch * steps + j)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                out = model(x)
            loss = loss_fn(_as_float(out), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        log.train_loss.append(total / count)
        if val is not None:
            v = mean_loss(model, val[0], val[1], loss_fn, device=device, precision=cfg.precision, channels_last=nhwc)
            log.val_loss.append(v)
            if not log.best_epoch or v < log.best_val:
                log.best_epoch = epoch + 1
                best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
            if plateau:
                decays, last_decay, stop = plateau_step(log.best_epoch, last_decay, epoch + 1, decays, patience)
        if after_epoch is not None:
            after_epoch(model, epoch + 1)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "log": log.as_dict(),
                "epoch": epoch + 1, "config": asdict(cfg), "patience": patience, "best": best_state,
                "plateau": (decays, last_decay, stop),
            })
    if best_state is not None:
        model.load_state_dict(best_state)
    if nhwc:
        model.to(memory_format=torch.contiguous_format)
    return log


@torch.no_grad()
def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256,
            device: torch.device | str = "cpu") -> torch.Tensor:
    """Outputs of `model` in eval mode, batched, on the CPU."""
    model.eval().to(device)
    outs = [model(inputs[i : i + batch_size].to(device)).cpu() for i in range(0, inputs.shape[0], batch_size)]
    return torch.cat(outs)
