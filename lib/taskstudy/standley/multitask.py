"""Multi-task networks for every group of tasks (Standley et al., ICML 2020, Sec. 3-5; Fifty et al., NeurIPS 2021).

Standley et al. train one multi-task network (a shared encoder, one decoder per task) for every non-empty subset of
five scene tasks, plus a half-size single-task network per task: 2^N - 1 + N networks (31 + 5), then choose the
set of networks that serves every task at the lowest total loss within an inference budget
(`taskstudy.standley.grouping`).
Each network here is one unit of `parallel.run_units`, trained by the study's one training loop
(`train.fit_validated`: Adam, cosine decay over at most `epochs`, early stopping on the `val` split) on the clean RGB
images of the `train` split with the unweighted sum of its tasks' own losses (`tasks.get_task(t).loss`, as the paper
adds them), and scored on `val` (what every choice is made on) and per image on `test` (what judges the choice).
Every network is trained once per seed (`seeds`), and each of the paper's settings (its Tables 2-4: a smaller
network, less data, beside the control) is the same section with some values overridden (`settings`).

Cost (the "budget unit"): the multiply-accumulates of one full-size encoder's forward pass on one image; decoders
are not counted, as in the paper. Encoder MACs grow with the square of the width, so a network charged 1/k of a
unit has the encoder width whose MACs are closest to 1/k of the full one (`width_for_cost`; half size: about
w / sqrt(2)). Table 1's equal-budget comparison pits a k-task network against k single-task networks of 1/k size.

Early-stopping approximation (Standley Sec. 4): every network's val losses are also recorded after `early_epoch`
epochs. Lookahead affinity (Fifty et al. 2021, Eq. 3): the network of all tasks averages
`lookahead.LookaheadAccumulator` over every `lookahead_every`-th training step, taking its Adam's step.

This module holds the settings, the networks and the units; `training` runs them all and gathers their losses.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.store import Store
from taskstudy.nn.models import Encoder, make_decoder
from taskstudy.nn.train import TrainConfig, fit_validated, kernels, resolve_device
from taskstudy.standley import grouping
from taskstudy.standley.lookahead import LookaheadAccumulator
from taskstudy.taskonomy.task_networks import unit_seed
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams
    from taskstudy.engine.sections import Common

VERSION = "2"
HALF_COST = 0.5  # budget units charged to a half-size network (the paper's convention)
SETTING_FIELDS = ("width", "depth", "decoder_width", "epochs", "patience", "lr", "train_images", "batch_size")
NETWORK_SETS = ("all", "pairs")  # every candidate network, or the single-task and pair networks only


@dataclass(frozen=True)
class GroupingConfig:
    """One setting of the chapter's section `task_grouping`, as plain values (picklable for Dask workers). No
    defaults here: the profile holds them (`from_params`)."""

    tasks: tuple[str, ...]  # the N tasks; every non-empty subset gets a network
    width: int  # full-size encoder width w (stages of w, 2w, 4w channels)
    depth: int  # BasicBlocks per encoder stage
    decoder_width: int  # channels of each task decoder
    epochs: int  # at most (the cosine's length); early stopping on val decides
    patience: int  # epochs without a better val loss before a network stops
    early_epoch: int  # epoch after which the early-stopping approximation records its val losses
    batch_size: int  # images per step
    lr: float  # Adam learning rate (the lookahead takes Adam's step too)
    train_images: int  # first images of the train split used (0 = all)
    lookahead_every: int  # steps between lookahead measurements in the all-tasks network
    seeds: int  # every network is trained with this many seeds
    equal_budget: bool  # Table 1: single-task networks of 1/k size, k = 3..N (1/2 is the half size)
    networks: str = "all"  # "all" candidates, or "pairs": the full-size single-task and pair networks only

    @classmethod
    def from_params(cls, params: StudyParams, section: str = "task_grouping") -> GroupingConfig:
        """The control setting: the section's own values."""
        values = dict(params.values(section))
        values["tasks"] = tuple(values["tasks"])
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


def grouping_common(params: StudyParams, section: str = "task_grouping") -> Any:
    """The profile's `common` with the section's `image_size` (None: the study's own): the scenes the chapter's
    networks train and are scored on, rendered at that size (their labels exact at it, as at any size)."""
    size = params.values(section).get("image_size")
    return params.common if size is None else params.common.model_copy(update={"image_size": size})


def settings(params: StudyParams, section: str = "task_grouping") -> dict[str, GroupingConfig]:
    """The paper's settings (its Tables 2-4): "control" (the section's values) first, then each entry of the
    section's `settings` (name -> overrides of SETTING_FIELDS), trained on `setting_networks` and without the
    equal-budget networks."""
    control = GroupingConfig.from_params(params, section)
    values = params.values(section)
    out = {"control": control}
    for name, overrides in (values.get("settings") or {}).items():
        bad = sorted(set(overrides) - set(SETTING_FIELDS))
        if bad:
            raise ValueError(f"{section}.settings['{name}']: cannot override {bad}; a setting changes only "
                             f"{', '.join(SETTING_FIELDS)}")
        typed = {k: type(getattr(control, k))(v) for k, v in overrides.items()}  # YAML numbers as the field's type
        out[name] = replace(control, **typed, networks=values.get("setting_networks", "pairs"), equal_budget=False)
    for name, cfg in out.items():
        if cfg.networks not in NETWORK_SETS:
            raise ValueError(f"setting '{name}': networks must be one of {NETWORK_SETS}, got {cfg.networks!r}")
    return out


# --------------------------------------------------------------------------------------------------- networks
class MultiTaskNetwork(nn.Module):
    """One shared `models.Encoder` and one decoder per task (`models.make_decoder` for the task's kind)."""

    def __init__(self, tasks: Sequence[str], width: int = 8, depth: int = 1, decoder_width: int = 16):
        super().__init__()
        self.tasks = list(tasks)
        self.encoder = Encoder(width, depth)
        self.decoders = nn.ModuleDict({
            t: make_decoder(taskdict.get_task(t).kind, self.encoder.out_channels, taskdict.get_task(t).channels,
                            decoder_width)
            for t in self.tasks
        })

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # (B, 3, H, W) -> {task: output}
        z = self.encoder(x)  # (B, 4w, H/4, W/4)
        return {t: dec(z) for t, dec in self.decoders.items()}


@lru_cache(maxsize=64)
def encoder_macs(width: int, depth: int, image_size: int) -> int:
    """Multiply-accumulates of one encoder forward pass on one image (convolutions only). Builds a throw-away
    encoder without touching torch's global random state (a caller's seeded initialisation stays the same whether
    or not this was cached in its process)."""
    with torch.random.fork_rng():
        enc = Encoder(width, depth)
    total = [0]

    def hook(m: nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in enc.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        enc.eval()(torch.zeros(1, 3, image_size, image_size))
    for h in handles:
        h.remove()
    return total[0]


def width_for_cost(width: int, depth: int, image_size: int, fraction: float) -> int:
    """The encoder width whose MACs are closest to `fraction` of those of width `width`."""
    full = encoder_macs(width, depth, image_size)
    return min(range(1, width + 1), key=lambda w: abs(encoder_macs(w, depth, image_size) / full - fraction))


def half_width(width: int, depth: int, image_size: int) -> int:
    """The encoder width whose MACs are closest to half those of width `width`."""
    return width_for_cost(width, depth, image_size, 0.5)


# --------------------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One network to train: its tasks, encoder share and seed, and everything that determines it; picklable."""

    tasks: tuple[str, ...]
    share: int  # the encoder costs 1/share of a full one: 1 full size, 2 half size, k: Table 1's 1/k networks
    common: Any  # sections.Common
    cfg: GroupingConfig
    root: str  # the results store folder
    seed: int = 0  # the replicate, 0 .. cfg.seeds - 1

    @property
    def size(self) -> str:
        return {1: "full", 2: "half"}.get(self.share, f"1/{self.share}")

    @property
    def name(self) -> str:
        return "+".join(self.tasks) + ("" if self.share == 1 else f" ({self.size})")

    @property
    def all_tasks(self) -> bool:
        return self.share == 1 and set(self.tasks) == set(self.cfg.tasks)

    @property
    def lookahead(self) -> bool:
        """Does this network measure the lookahead affinity (the all-tasks network, unless lookahead_every = 0)?"""
        return self.all_tasks and self.cfg.lookahead_every > 0


def unit_width(u: Unit) -> int:
    if u.share == 1:
        return u.cfg.width
    return width_for_cost(u.cfg.width, u.cfg.depth, u.common.image_size, 1 / u.share)


def unit_train_seed(u: Unit) -> int:
    """The seed of a network's initialisation and data order: the study seed, the replicate and the tasks."""
    return unit_seed(u.common.seed, "multitask", str(u.seed), *u.tasks)


def _n_used(common: Common, cfg: GroupingConfig) -> int:
    return common.n_train if cfg.train_images <= 0 else min(cfg.train_images, common.n_train)


def train_key(common: Common, cfg: GroupingConfig) -> dict[str, Any]:
    return {**data.split_key(common, "train"), "used": _n_used(common, cfg)}


def network_key(u: Unit) -> dict[str, Any]:
    """Every parameter that determines a network's result (weights, val and test losses), the training code
    included; a network of the same width in two settings or at two charged shares is one entry."""
    c = u.cfg
    return {
        "tasks": list(u.tasks), "width": unit_width(u), "depth": c.depth, "decoder_width": c.decoder_width,
        "epochs": c.epochs, "patience": c.patience, "early_epoch": c.early_epoch, "batch_size": c.batch_size,
        "lr": c.lr, "seed": unit_train_seed(u), "train": train_key(u.common, c),
        "val": data.split_key(u.common, "val"), "test": data.split_key(u.common, "test"), **kernels(u.common),
        "code": computation_hash(train_unit),
    }


def lookahead_key(u: Unit) -> dict[str, Any]:
    # "step": the optimizer's update; "stored": the matrix as plain values and labels (store.load_weights reads it)
    return {"network": network_key(u), "every": u.cfg.lookahead_every, "step": "adam", "stored": "values"}


def make_units(common: Common, cfg: GroupingConfig, root: str, seed: int = 0) -> list[Unit]:
    """One seed's networks: the 2^N - 1 full-size networks (by size, then task order) and N half-size single-task
    networks, in the order of `grouping.candidate_networks` (with `networks="pairs"` only those of one or two
    tasks); then, with `equal_budget`, the single-task networks of 1/k size for k = 3..N."""
    nets, costs = grouping.candidate_networks(cfg.tasks, 1.0, HALF_COST)
    units = [Unit(tuple(n), 1 if c == 1.0 else 2, common, cfg, root, seed) for n, c in zip(nets, costs, strict=True)
             if cfg.networks == "all" or (len(n) <= 2 and c == 1.0)]
    if cfg.equal_budget:
        units += [Unit((t,), k, common, cfg, root, seed) for k in range(3, len(cfg.tasks) + 1) for t in cfg.tasks]
    return units


def _evaluate(net: MultiTaskNetwork, x: torch.Tensor, ys: dict[str, torch.Tensor], device: torch.device,
              batch: int = 256) -> dict[str, np.ndarray]:
    """Per-image scores (negative per-image losses) of every task of the network, in eval mode."""
    net.eval()
    out: dict[str, list[torch.Tensor]] = {t: [] for t in net.tasks}
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            pred = net(x[i : i + batch].to(device))
            for t in net.tasks:
                out[t].append(taskdict.get_task(t).score(pred[t].cpu(), ys[t][i : i + batch]))
    return {t: torch.cat(v).numpy().astype(np.float32) for t, v in out.items()}


def _mean_losses(scores: dict[str, np.ndarray]) -> dict[str, float]:
    return {t: float(-s.mean()) for t, s in scores.items()}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread for the duration: these networks are too small to gain from intra-op threads, and on a
    busy machine the threads' spin-waits cost far more than they give (units run in parallel instead)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_unit(u: Unit) -> dict[str, Any]:
    """Train one network (sum of its tasks' losses, early stopping on val) and score it on val and test, with torch
    on one thread (see `_one_thread`).

    Returns losses (mean test loss per task), val_losses (mean val loss per task: what choices are made on),
    early_losses (val losses after `early_epoch` epochs), scores (per-image test scores per task), log (the
    TrainLog: train and val loss per epoch), wall_s, cpu_s, n_params, encoder MACs, and for the network of all tasks
    the lookahead matrix (`lookahead`, a DataFrame: rows the task stepped on, columns the task measured).
    """
    with _one_thread():
        return _train_unit(u)


def _train_unit(u: Unit) -> dict[str, Any]:
    store, c = Store(u.root), u.cfg
    seed = unit_train_seed(u)
    splits = {s: data.scene_split(store, u.common, s) for s in ("train", "val", "test")}
    n = _n_used(u.common, c)
    x = {s: data.rgb(d) for s, d in splits.items()}
    y = {s: {t: data.target(d, t) for t in u.tasks} for s, d in splits.items()}
    x["train"], y["train"] = x["train"][:n], {t: v[:n] for t, v in y["train"].items()}
    loss_of = {t: taskdict.get_task(t).loss for t in u.tasks}

    def loss_fn(out: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(loss_of[t](out[t], target[t]) for t in u.tasks)  # the paper's unweighted sum

    def losses_fn(model: nn.Module, batch: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pred = model(batch[0])
        return {t: loss_of[t](pred[t], batch[1][t]) for t in u.tasks}

    width = unit_width(u)  # before seeding: nothing may draw between the seed and the initialisation
    device = resolve_device(u.common.device)
    torch.manual_seed(seed)
    net = MultiTaskNetwork(u.tasks, width, c.depth, c.decoder_width)
    look = LookaheadAccumulator(losses_fn, c.lr, ["encoder"], list(u.tasks)) if u.lookahead else None
    early: dict[str, float] = {}

    def before_step(model: nn.Module, batch: Any, opt: torch.optim.Optimizer, step: int) -> None:
        if look is not None and step % c.lookahead_every == 0:
            look.update(model, batch, opt)  # Adam's step on a copy: the network and the optimizer are untouched

    def after_epoch(model: nn.Module, epoch: int) -> None:
        if epoch == c.early_epoch:
            early.update(_mean_losses(_evaluate(model, x["val"], y["val"], device)))

    cfg = TrainConfig(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, seed=seed, **kernels(u.common))
    start, cpu = time.perf_counter(), time.process_time()
    log = fit_validated(net, x["train"], y["train"], loss_fn, cfg, (x["val"], y["val"]), patience=c.patience,
                        device=device, before_step=before_step, after_epoch=after_epoch)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    val_losses = _mean_losses(_evaluate(net, x["val"], y["val"], device))
    scores = _evaluate(net, x["test"], y["test"], device)
    out: dict[str, Any] = {
        "tasks": list(u.tasks), "width": width, "losses": _mean_losses(scores), "val_losses": val_losses,
        "early_losses": early or dict(val_losses), "scores": scores, "log": log.as_dict(), "wall_s": wall,
        "cpu_s": cpu, "n_params": sum(p.numel() for p in net.parameters()),
        "encoder_macs": encoder_macs(width, c.depth, u.common.image_size),
    }
    if look is not None:
        out["lookahead"] = look.frame()
        out["lookahead_updates"] = look.count
    return out
