"""Multi-task networks for every group of tasks (Standley et al., ICML 2020, Sec. 3-5; Fifty et al., NeurIPS 2021).

Standley et al. train one multi-task network (a shared encoder, one decoder per task) for every non-empty subset of
five scene tasks, plus a half-size single-task network per task: 2^N - 1 + N networks (31 + 5), then choose the
set of networks that serves every task at the lowest total loss within an inference budget (`taskstudy.grouping`).
Each network here is one unit of `parallel.map_units`, trained on the clean RGB images of the `train` split with
the sum of its tasks' own losses (`tasks.get_task(t).loss`) and scored per image on the `test` split.

Cost (the "budget unit"): the multiply-accumulates of one full-size encoder's forward pass on one image; decoders
are not counted, as in the paper. Encoder MACs grow with the square of the width, so a half-size network's encoder
has width round(w / sqrt(2)) (the width whose MACs are closest to half; `half_width`), not w / 2, which would cost
about a quarter. The grouping charges it the nominal 0.5 units; `cost_table` reports the measured ratio.

Early-stopping approximation (Standley Sec. 4): every network's test losses are also recorded after
`early_epoch` epochs, and the grouping chosen on those losses is evaluated on the final ones. Lookahead affinity
(Fifty et al. 2021, Eq. 3): the network of all tasks averages `lookahead.LookaheadAccumulator` over every
`lookahead_every`-th training step, stored with its result.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from taskstudy import data, grouping
from taskstudy import tasks as taskdict
from taskstudy.lookahead import LookaheadAccumulator
from taskstudy.models import Encoder, make_decoder
from taskstudy.parallel import map_units
from taskstudy.reference import beside, standley_best_grouping
from taskstudy.store import Store
from taskstudy.task_networks import unit_seed
from taskstudy.train import resolve_device

VERSION = "1"
SIZES = ("full", "half")
HALF_COST = 0.5  # budget units charged to a half-size network (the paper's convention)


@dataclass(frozen=True)
class GroupingConfig:
    """The chapter's section `task_grouping`, as plain values (picklable for Dask workers)."""

    tasks: tuple[str, ...]  # the N tasks; every non-empty subset gets a network
    width: int = 8  # full-size encoder width w (stages of w, 2w, 4w channels)
    depth: int = 1  # BasicBlocks per encoder stage
    decoder_width: int = 16  # channels of each task decoder
    epochs: int = 3  # passes over the training images
    early_epoch: int = 1  # epoch after which the early-stopping losses are recorded
    batch_size: int = 64  # images per step
    lr: float = 3e-3  # Adam learning rate (also the lookahead's SGD step)
    train_images: int = 1000  # first images of the train split used (0 = all)
    lookahead_every: int = 5  # steps between lookahead measurements in the all-tasks network

    @classmethod
    def from_params(cls, params: Any, section: str = "task_grouping") -> GroupingConfig:
        values = dict(params.values(section))
        values["tasks"] = tuple(values["tasks"])
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


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
    """Multiply-accumulates of one encoder forward pass on one image (convolutions only)."""
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


def half_width(width: int, depth: int, image_size: int) -> int:
    """The encoder width whose MACs are closest to half those of width `width`."""
    full = encoder_macs(width, depth, image_size)
    return min(range(1, width + 1), key=lambda w: abs(encoder_macs(w, depth, image_size) / full - 0.5))


# --------------------------------------------------------------------------------------------------- units
@dataclass(frozen=True)
class Unit:
    """One network to train: its tasks and size, and everything that determines it; picklable."""

    tasks: tuple[str, ...]
    size: str  # "full" or "half"
    common: Any  # params.Common
    cfg: GroupingConfig
    root: str  # the results store folder

    @property
    def name(self) -> str:
        return "+".join(self.tasks) + ("" if self.size == "full" else " (half)")

    @property
    def all_tasks(self) -> bool:
        return self.size == "full" and set(self.tasks) == set(self.cfg.tasks)


def unit_width(u: Unit) -> int:
    if u.size == "full":
        return u.cfg.width
    return half_width(u.cfg.width, u.cfg.depth, u.common.image_size)


def train_key(common: Any, cfg: GroupingConfig) -> dict[str, Any]:
    return {**data.split_key(common, "train"), "used": _n_used(common, cfg)}


def network_key(u: Unit) -> dict[str, Any]:
    """Every parameter that determines a network's result (weights and test losses)."""
    c = u.cfg
    return {
        "tasks": list(u.tasks), "size": u.size, "width": unit_width(u), "depth": c.depth,
        "decoder_width": c.decoder_width, "epochs": c.epochs, "early_epoch": c.early_epoch,
        "batch_size": c.batch_size, "lr": c.lr, "seed": u.common.seed, "train": train_key(u.common, c),
        "test": data.split_key(u.common, "test"),
    }


def lookahead_key(u: Unit) -> dict[str, Any]:
    return {"network": network_key(u), "every": u.cfg.lookahead_every, "step": "adam"}  # the optimizer's update


def _n_used(common: Any, cfg: GroupingConfig) -> int:
    return common.n_train if cfg.train_images <= 0 else min(cfg.train_images, common.n_train)


def make_units(common: Any, cfg: GroupingConfig, root: str) -> list[Unit]:
    """The 2^N - 1 full-size networks (by size, then task order) and N half-size single-task networks, in the
    order of `grouping.candidate_networks`."""
    nets, costs = grouping.candidate_networks(cfg.tasks, 1.0, HALF_COST)
    return [Unit(tuple(n), "full" if c == 1.0 else "half", common, cfg, root) for n, c in zip(nets, costs, strict=True)]


def _evaluate(net: MultiTaskNetwork, x: torch.Tensor, ys: dict[str, torch.Tensor], device: torch.device,
              batch: int = 256) -> dict[str, np.ndarray]:
    """Per-image test scores (negative per-image losses) of every task of the network."""
    net.eval()
    out: dict[str, list[torch.Tensor]] = {t: [] for t in net.tasks}
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            pred = net(x[i : i + batch].to(device))
            for t in net.tasks:
                out[t].append(taskdict.get_task(t).score(pred[t].cpu(), ys[t][i : i + batch]))
    return {t: torch.cat(v).numpy().astype(np.float32) for t, v in out.items()}


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
    """Train one network on the train split (sum of its tasks' losses) and score it on the test split, with torch
    on one thread (see `_one_thread`).

    Returns losses (mean test loss per task), early_losses (after `early_epoch` epochs), scores (per-image test
    scores per task), history (mean training loss per epoch), wall_s, n_params, encoder MACs, and for the network of
    all tasks the lookahead matrix (`lookahead`, a DataFrame: rows the task stepped on, columns the task measured).
    """
    with _one_thread():
        return _train_unit(u)


def _train_unit(u: Unit) -> dict[str, Any]:
    store, c = Store(u.root), u.cfg
    seed = unit_seed(u.common.seed, "multitask", u.size, *u.tasks)
    train = data.scene_split(store, u.common, "train")
    test = data.scene_split(store, u.common, "test")
    n = _n_used(u.common, c)
    x_train = data.rgb(train)[:n]
    y_train = {t: data.target(train, t)[:n] for t in u.tasks}
    x_test, y_test = data.rgb(test), {t: data.target(test, t) for t in u.tasks}
    loss_of = {t: taskdict.get_task(t).loss for t in u.tasks}

    torch.manual_seed(seed)
    width = unit_width(u)
    device = resolve_device(u.common.device)
    net = MultiTaskNetwork(u.tasks, width, c.depth, c.decoder_width).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=c.lr)

    def losses_fn(model: nn.Module, batch: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        pred = model(batch[0])
        return {t: loss_of[t](pred[t], batch[1][t]) for t in u.tasks}

    look = LookaheadAccumulator(losses_fn, c.lr, ["encoder"], list(u.tasks)) if u.all_tasks else None
    history: list[float] = []
    early: dict[str, float] | None = None
    step = 0
    start, cpu = time.perf_counter(), time.process_time()
    for epoch in range(c.epochs):
        net.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total = 0.0
        for i in range(0, n, c.batch_size):
            idx = order[i : i + c.batch_size]
            batch = (x_train[idx].to(device), {t: y[idx].to(device) for t, y in y_train.items()})
            if look is not None and step % c.lookahead_every == 0:
                look.update(net, batch, opt)  # Adam's step, on a copy: the network, its BatchNorm statistics
                # and the optimizer's state are untouched
            loss = sum(losses_fn(net, batch).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            step += 1
        history.append(total / n)
        if epoch + 1 == c.early_epoch and c.early_epoch < c.epochs:
            early = {t: float(-s.mean()) for t, s in _evaluate(net, x_test, y_test, device).items()}
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    scores = _evaluate(net, x_test, y_test, device)
    losses = {t: float(-s.mean()) for t, s in scores.items()}
    out: dict[str, Any] = {
        "tasks": list(u.tasks), "size": u.size, "width": width, "losses": losses,
        "early_losses": early if early is not None else dict(losses), "scores": scores, "history": history,
        "wall_s": wall, "cpu_s": cpu, "n_params": sum(p.numel() for p in net.parameters()),
        "encoder_macs": encoder_macs(width, c.depth, u.common.image_size),
    }
    if look is not None:
        out["lookahead"] = look.frame()
        out["lookahead_updates"] = look.count
    return out


# --------------------------------------------------------------------------------------------------- the run
@dataclass
class GroupingRun:
    """Every candidate network's result, in `grouping.candidate_networks` order."""

    tasks: list[str]
    networks: list[tuple[str, ...]]  # the tasks of each network
    costs: list[float]  # budget units: 1 full size, HALF_COST half size
    results: list[dict[str, Any]]  # train_unit's result per network
    lookahead: pd.DataFrame  # TAG lookahead affinity of the all-tasks network
    computed: list[str]  # names of the networks trained in this run (the rest came from the store)
    wall_s: float
    config: GroupingConfig

    @property
    def names(self) -> list[str]:
        return grouping.network_names(self.networks, self.costs)

    def single_losses(self, which: str = "losses") -> dict[str, float]:
        """Each task's loss in its own full-size single-task network."""
        return {net[0]: r[which][net[0]] for net, c, r in zip(self.networks, self.costs, self.results, strict=True)
                if len(net) == 1 and c == 1.0}

    def losses(self, which: str = "losses", relative: bool = False) -> list[dict[str, float]]:
        """The loss table grouping.best_grouping takes: final test losses, or `early_losses`; with `relative`,
        each task's loss divided by its full-size single-task network's (so every task weighs the same)."""
        ref = self.single_losses(which) if relative else dict.fromkeys(self.tasks, 1.0)
        return [{t: v / ref[t] for t, v in r[which].items()} for r in self.results]


def train_all(params: Any, section: str = "task_grouping") -> GroupingRun:
    """Train (or read from the store) every candidate network of the section's tasks, through map_units."""
    common, cfg = params.common, GroupingConfig.from_params(params, section)
    store = Store.for_params(params)
    for split in ("train", "test"):  # rendered once here, read by every worker
        data.scene_split(store, common, split)
    units = make_units(common, cfg, str(store.root))

    def done(u: Unit) -> bool:
        return store.exists("mtl_network", network_key(u), VERSION) and (
            not u.all_tasks or store.exists("mtl_lookahead", lookahead_key(u), VERSION))

    def save(u: Unit, r: dict[str, Any]) -> None:
        look = {k: r.pop(k) for k in ("lookahead", "lookahead_updates") if k in r}
        store.save("mtl_network", network_key(u), r, VERSION, fmt="pt")
        if look:
            store.save("mtl_lookahead", lookahead_key(u), look, VERSION, fmt="pt")

    missing = [u for u in units if not done(u)]
    # Largest networks first, so that the last units to finish are small ones (better load balance).
    missing.sort(key=lambda u: (-len(u.tasks) - (u.size == "full"), units.index(u)))
    start = time.perf_counter()
    map_units(train_unit, missing, workers=common.workers, address=common.cluster.address, on_result=save,
              desc="task grouping: networks")
    results = [store.load("mtl_network", network_key(u), VERSION) for u in units]
    if any(r is None for r in results):
        raise RuntimeError("a network's result is missing from the store after training")
    full = next(u for u in units if u.all_tasks)
    look = store.load("mtl_lookahead", lookahead_key(full), VERSION)
    return GroupingRun(
        tasks=list(cfg.tasks), networks=[u.tasks for u in units],
        costs=[1.0 if u.size == "full" else HALF_COST for u in units], results=results,
        lookahead=look["lookahead"], computed=[u.name for u in missing], wall_s=time.perf_counter() - start,
        config=cfg,
    )


# --------------------------------------------------------------------------------------------------- tables
def pairwise(run: GroupingRun) -> pd.DataFrame:
    """The paper's Tables 2-4: relative change of a task's loss when trained with another (positive = helps)."""
    single, pair = {}, {}
    for net, cost, r in zip(run.networks, run.costs, run.results, strict=True):
        if len(net) == 1 and cost == 1.0:
            single[net[0]] = r["losses"][net[0]]
        elif len(net) == 2:
            pair[net] = r["losses"]
    return grouping.pairwise_table(single, pair)


def budget_table(run: GroupingRun, budgets: Sequence[float] | None = None, relative: bool = False) -> pd.DataFrame:
    """Per budget: the best grouping, all-in-one and all-separate at equal budget, and the groupings chosen by
    the higher-order (pairwise) and early-stopping approximations, each scored on the final losses (relative to
    each task's single-task network with `relative`)."""
    losses = run.losses(relative=relative)
    budgets = list(budgets) if budgets is not None else grouping.default_budgets(len(run.tasks))
    est = grouping.estimate_higher_order(losses, run.networks)
    table = grouping.grouping_table(losses, run.costs, run.names, budgets, predicted=est)
    early = run.losses("early_losses", relative=relative)
    names, vals = [], []
    for b in budgets:
        try:
            chosen = grouping.best_grouping(early, run.costs, b, run.tasks)
            names.append(" | ".join(run.names[i] for i in chosen))
            vals.append(grouping.total_loss(losses, chosen, run.tasks))
        except grouping.GroupingError:
            names.append(None)
            vals.append(np.nan)
    table["early"], table["early_loss"] = names, vals
    return table


def task_losses(run: GroupingRun, chosen: Sequence[int]) -> dict[str, float]:
    """Each task's loss under a grouping: the lowest among the chosen networks serving it."""
    return {t: min(run.results[i]["losses"][t] for i in chosen if t in run.results[i]["losses"]) for t in run.tasks}


def cost_table(run: GroupingRun) -> pd.DataFrame:
    """Per network: tasks, size, width, charged cost, measured encoder cost (MACs / full-size MACs), parameters,
    training wall and CPU time (CPU time is what an idle machine would take per core)."""
    full = next(r["encoder_macs"] for r in run.results if r["size"] == "full")
    return pd.DataFrame([{
        "network": name, "tasks": len(net), "size": r["size"], "encoder width": r["width"], "cost (units)": cost,
        "measured encoder cost": r["encoder_macs"] / full, "parameters": r["n_params"], "train s": r["wall_s"],
        "train CPU s": r.get("cpu_s", np.nan),
    } for name, net, cost, r in zip(run.names, run.networks, run.costs, run.results, strict=True)])


def compare(table: pd.DataFrame, tol: float = 1e-9) -> pd.DataFrame:
    """Per budget: does the best grouping strictly beat all-in-one and all-separate (NaN where that baseline does
    not fit the budget), by how much (% of the baseline's total loss), and how much worse (% of the best) the
    groupings of the higher-order and early-stopping approximations are."""
    out = pd.DataFrame({"budget": table["budget"], "best": table["best"]})
    for base in ("all_in_one", "all_separate"):
        ref = table[f"{base}_loss"]
        out[f"beats {base.replace('_', '-')}"] = (table["best_loss"] < ref * (1 - tol)).where(ref.notna())
        out[f"gain vs {base.replace('_', '-')} %"] = 100 * (ref - table["best_loss"]) / ref
    for approx in ("predicted", "early"):
        out[f"{approx} excess %"] = 100 * (table[f"{approx}_loss"] - table["best_loss"]) / table["best_loss"]
    return out


def budget_figure(table: pd.DataFrame, title: str, ax: Any = None) -> Any:
    """Total test loss against budget: best grouping, the two baselines and the two approximations."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8.5, 4))
    styles = {"best_loss": ("best grouping", "-", "o"), "all_in_one_loss": ("all-in-one", "--", "s"),
              "all_separate_loss": ("all-separate", "--", "^"),
              "predicted_loss": ("predicted from pairs (higher-order approx.)", ":", "x"),
              "early_loss": ("chosen after early stopping", ":", "+")}
    for col, (label, ls, marker) in styles.items():
        ax.plot(table["budget"], table[col], ls=ls, marker=marker, label=label)
    ax.set_xlabel("inference budget (full-size encoders)")
    ax.set_ylabel("total test loss (sum over tasks)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.figure.tight_layout()
    return ax


def serving_networks(run: GroupingRun, chosen: Sequence[int]) -> dict[str, int]:
    """Task -> the chosen network that serves it (the one with its lowest loss, as grouping.total_loss counts)."""
    return {t: min((i for i in chosen if t in run.results[i]["losses"]), key=lambda i: run.results[i]["losses"][t])
            for t in run.tasks}


def _served_groups(serving: dict[str, int | str], size: dict[int | str, str]) -> str:
    nets: dict[int | str, list[str]] = {}
    for t, i in serving.items():
        nets.setdefault(i, []).append(t)
    return " | ".join("+".join(ts) + (" (x0.5)" if size[i] == "half" else "") for i, ts in nets.items())


def paper_beside(run: GroupingRun, table: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Standley et al.'s findings (reference/claims.csv, reference/standley2020_best_grouping.csv) beside the
    study's numbers: the best grouping at the paper's budget (tasks grouped by the network that serves them),
    normals alone, the best grouping against all-in-one and all-separate, all-in-one against full-size
    single-task networks (the claims' rows that describe the paper's setting are left out). `table`:
    budget_table(run); `pairs`: pairwise(run). agrees None: not tested here."""
    ref = standley_best_grouping()
    budget = float(ref["budget"].iloc[0])
    row = table.loc[(table["budget"] - budget).abs().idxmin()]
    chosen = grouping.best_grouping(run.losses(), run.costs, float(row["budget"]), run.tasks)
    serving = serving_networks(run, chosen)
    p_serves = ref[ref["serves"]].set_index("task")
    common = [t for t in run.tasks if t in p_serves.index]
    p_size, s_size = dict(zip(ref["network"], ref["size"], strict=False)), {i: run.results[i]["size"] for i in chosen}
    pairs_t = [(a, b) for k, a in enumerate(common) for b in common[k + 1:]]
    same = sum((p_serves.at[a, "network"] == p_serves.at[b, "network"]) == (serving[a] == serving[b])
               for a, b in pairs_t)
    sizes = sum(p_size[p_serves.at[t, "network"]] == s_size[serving[t]] for t in common)
    study: dict[str, tuple[str, bool | None]] = {
        "best_grouping": (f"at {row['budget']:g} units: {_served_groups({t: serving[t] for t in common}, s_size)}; "
                          f"{same} of {len(pairs_t)} task pairs together or apart as in the paper "
                          f"({_served_groups(p_serves.loc[common, 'network'].to_dict(), p_size)}), {sizes} of "
                          f"{len(common)} tasks on a network of the paper's size",
                          bool(same == len(pairs_t) and sizes == len(common))),
    }
    if "normals" in pairs.index:
        own = pairs.loc["normals"].drop("normals").dropna()
        given = pairs["normals"].drop("normals").dropna()
        study["normals_alone"] = (f"the best partner changes normals' loss by {100 * own.max():+.1f}% (pairwise); "
                                  f"normals change their partners' losses by {100 * given.mean():+.1f}% on average",
                                  bool(own.max() <= 0 and given.mean() > 0))
    else:
        study["normals_alone"] = ("not measured (normals are not among the tasks)", None)
    beats = row["best_loss"] < row["all_in_one_loss"] and row["best_loss"] < row["all_separate_loss"]
    study["beats_baselines"] = (f"at {row['budget']:g} units total loss {row['best_loss']:.4f} against "
                                f"{row['all_in_one_loss']:.4f} (all-in-one) and {row['all_separate_loss']:.4f} "
                                f"(all-separate)", bool(beats))
    everything = next(i for i, net in enumerate(run.networks) if len(net) == len(run.tasks))
    single = run.single_losses()
    worse = sum(run.results[everything]["losses"][t] > single[t] for t in run.tasks)
    aio, sep = sum(run.results[everything]["losses"].values()), sum(single.values())
    study["mtl_vs_single"] = (f"all-in-one total loss {aio:.4f} against {sep:.4f} for {len(single)} full-size "
                              f"single-task networks; worse for {worse} of {len(run.tasks)} tasks", bool(aio > sep))
    study["equal_budget"] = ("not measured (only full- and half-size networks are trained)", None)
    return beside("10_task_grouping", "paper (Standley et al. 2020)", study)
