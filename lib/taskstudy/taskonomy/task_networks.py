"""Taskonomy Step I (Zamir et al. 2018, Sec. 3.1): one task-specific encoder-decoder per task.

Every task, source-only ones included, gets the same encoder architecture (taskstudy.nn.models.Encoder) and a
decoder for its kind, trained on the `train` split with the task's loss until its loss on the `val` split stops
improving (early stopping; the best epoch's weights are kept). Each network is one unit of
`parallel.run_units`; its weights are a store entry keyed by the task, the train and val splits and the training
parameters, its per-image val and test scores another entry (adding test images re-scores, never retrains). The
sanity baselines of the paper's Fig. 6 come with every network: `avg` (the mean training label as the
prediction) and `rand` (the same network with random weights); the check is a per-image win rate against each.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from taskstudy import uncertainty
from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.nn.models import TaskNetwork
from taskstudy.nn.train import TrainConfig, fit_validated, kernels, log_rows, predict, resolve_device
from taskstudy.taskonomy.tree import PAPER_NAMES, load_paper_affinities
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams
    from taskstudy.engine.sections import Common, TaskNetworks

VERSION = "2"  # 2: early stopping on val, val scores, inputs seeded by the split's render seed


def unit_seed(seed: int, *names: str) -> int:
    """A stable per-unit seed derived from the study seed and the unit's names."""
    return zlib.crc32(":".join([str(seed), *names]).encode()) % 2**31


@dataclass(frozen=True)
class NetworkUnit:
    """Everything one Step I unit needs; picklable for Dask workers."""

    task: str
    common: Any  # sections.Common
    cfg: Any  # sections.TaskNetworks
    root: str  # the results store folder


def network_key(common: Common, cfg: TaskNetworks, task: str) -> dict[str, Any]:
    """Every parameter that determines a task network's weights."""
    return {
        "task": task, "train": data.split_key(common, "train"), "val": data.split_key(common, "val"),
        "width": cfg.width, "depth": cfg.depth, "decoder_width": cfg.decoder_width, "epochs": cfg.epochs,
        "patience": cfg.patience, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": common.seed, "code": _code(),
        **kernels(common),
    }


def _code() -> str:
    """What trains and scores a task network (with everything of the package it calls)."""
    return computation_hash(train_network_unit)


def scores_key(common: Common, cfg: TaskNetworks, task: str) -> dict[str, Any]:
    return {"network": network_key(common, cfg, task), "test": data.split_key(common, "test"),
            "val": data.split_key(common, "val")}


def build_network(task: str, cfg: TaskNetworks) -> TaskNetwork:
    t = taskdict.get_task(task)
    return TaskNetwork(t.kind, t.channels, cfg.width, cfg.depth, cfg.decoder_width)


def average_prediction(task: str, targets: torch.Tensor, n: int) -> torch.Tensor:
    """The paper's `avg` baseline: the mean training label, as an output of the network's form (logits of the
    label frequencies for class and distribution targets)."""
    t = taskdict.get_task(task)
    if t.loss_name == "ce":
        valid = targets >= 0  # real data: IGNORE_INDEX pixels carry no label
        onehot = F.one_hot(targets.long().clamp(min=0), t.channels).float()  # (N, ..., C)
        if valid.all():
            freq = onehot.mean(0).movedim(-1, 0)  # (C, ...)
        else:
            freq = ((onehot * valid[..., None]).sum(0) / valid.sum(0).clamp(min=1)[..., None]).movedim(-1, 0)
        out = torch.log(freq + 1e-6)
    elif t.loss_name == "kl":
        out = torch.log(targets.float().mean(0) + 1e-6)
    else:
        out = targets.float().nanmean(0).nan_to_num(0.0)  # real data: NaN marks pixels without geometry
    return out.unsqueeze(0).expand(n, *out.shape).contiguous()


def train_network_unit(u: NetworkUnit) -> dict[str, Any]:
    """Train (or load) one task network and score it and its baselines on the test split."""
    store = Store(u.root)
    t = taskdict.get_task(u.task)
    seed = unit_seed(u.common.seed, "task_network", u.task)
    device = resolve_device(u.common.device)
    test, val = data.scene_split(store, u.common, "test"), data.scene_split(store, u.common, "val")
    x_test, y_test = data.network_input(u.common, test, u.task), data.target(test, u.task)
    x_val, y_val = data.network_input(u.common, val, u.task), data.target(val, u.task)
    train = data.scene_split(store, u.common, "train")
    y_train = data.target(train, u.task)

    key = network_key(u.common, u.cfg, u.task)
    saved = store.load("task_network", key, VERSION)
    torch.manual_seed(seed)
    net = build_network(u.task, u.cfg)
    rand_scores = t.score(predict(net, x_test, device=device), y_test).numpy()
    out: dict[str, Any] = {"task": u.task}
    if saved is None:
        x_train = data.network_input(u.common, train, u.task)
        cfg = TrainConfig(u.cfg.epochs, u.cfg.batch_size, u.cfg.lr, seed=seed, **kernels(u.common))
        ckpt = Path(u.root) / "checkpoints" / f"{store.key('task_network', key, VERSION)}.pt"
        start = time.perf_counter()
        log = fit_validated(net, x_train, y_train, t.loss, cfg, (x_val, y_val), patience=u.cfg.patience,
                            device=device, checkpoint=ckpt)
        wall = time.perf_counter() - start
        saved = {"state": {k: v.cpu() for k, v in net.state_dict().items()}, "history": log.train_loss,
                 "log": log.as_dict(), "wall_s": wall, "images_per_s": len(x_train) * log.epochs_run / wall,
                 "n_params": sum(p.numel() for p in net.parameters())}
        out["network"] = saved
        out["checkpoint"] = str(ckpt)
    else:
        net.load_state_dict(saved["state"])
    pred = predict(net, x_test, device=device)
    out["scores"] = {
        "network": t.score(pred, y_test).numpy(),
        "avg": t.score(average_prediction(u.task, y_train, len(y_test)), y_test).numpy(),
        "rand": rand_scores,
    }
    out["val_scores"] = {"network": t.score(predict(net, x_val, device=device), y_val).numpy()}
    out["predictions"] = pred[: 8].numpy()
    return out


@dataclass
class StepResult:
    """What a step computed: results per unit, which units were computed now (the rest came from the store)."""

    results: dict[str, Any]
    computed: list[str]
    wall_s: float


def task_networks(params: StudyParams, tasks: list[str] | None = None) -> StepResult:
    """Step I for every task (default: every dictionary task of `common.tasks`): missing networks are trained
    through parallel.run_units, the rest read from the store."""
    common, cfg = params.common, params.section("task_networks")
    store = Store.for_params(params)
    names = tasks or study_tasks(common)
    for split in ("train", "val", "test"):  # rendered once here, read by every worker
        data.scene_split(store, common, split)
    units = [NetworkUnit(n, common, cfg, str(store.root)) for n in names]

    def done(u: NetworkUnit) -> bool:
        return (store.exists("task_network", network_key(common, cfg, u.task), VERSION)
                and store.exists("network_scores", scores_key(common, cfg, u.task), VERSION))

    def save(u: NetworkUnit, r: dict[str, Any]) -> None:
        if "network" in r:
            store.save("task_network", network_key(common, cfg, u.task), r["network"], VERSION, fmt="pt")
            Path(r["checkpoint"]).unlink(missing_ok=True)
        store.save("network_scores", scores_key(common, cfg, u.task),
                   {"scores": r["scores"], "val_scores": r["val_scores"], "predictions": r["predictions"]}, VERSION,
                   fmt="pt")

    start = time.perf_counter()
    computed = run_units(train_network_unit, units, store=store, kind="task_network",
                         key=lambda u: network_key(common, cfg, u.task), version=VERSION, save=save, common=common,
                         done=done, desc="Step I: task networks")
    results = {
        n: {"network": store.load("task_network", network_key(common, cfg, n), VERSION),
            **store.load("network_scores", scores_key(common, cfg, n), VERSION)}
        for n in names
    }
    return StepResult(results, [u.task for u in computed], time.perf_counter() - start)


def study_tasks(common: Common) -> list[str]:
    """The dictionary tasks of this profile (common.tasks, default all), source-only tasks included; on Taskonomy
    data (`common.dataset: taskonomy`) those the folder serves, the others named in one line."""
    wanted = list(common.tasks) if common.tasks else taskdict.dictionary_tasks()
    if common.dataset == "taskonomy":
        from taskstudy.world import taskonomy_data

        return taskonomy_data.tasks_served(common, wanted)
    return wanted


def baseline_table(step: StepResult, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """The paper's Fig. 6 check: per task, the network's per-image win rate on the test split against `avg` and
    against `rand` with 95% bootstrap intervals over the test images (a network passes when it beats both on more
    than half of the images, the interval's lower end included), beside the mean test losses (lower is better)."""
    rows = []
    for task, r in step.results.items():
        s = r["scores"]
        loss = {k: float(-np.mean(v)) for k, v in s.items()}
        row = {"task": task, "group": taskdict.get_task(task).group, "loss": taskdict.get_task(task).loss_name,
               "network": loss["network"], "avg": loss["avg"], "rand": loss["rand"]}
        lows = []
        for b in ("avg", "rand"):
            w = uncertainty.wins(s["network"], s[b])
            lo, hi = uncertainty.mean_interval(w, n_boot, seed) if n_boot else (np.nan, np.nan)
            row |= {f"win rate vs {b}": float(w.mean()), f"vs {b} lo": lo, f"vs {b} hi": hi}
            lows.append(float(w.mean()) if not n_boot else lo)
        row["beats avg and rand"] = min(row["win rate vs avg"], row["win rate vs rand"]) > 0.5
        row["beats both beyond noise"] = min(lows) > 0.5
        rows.append(row)
    return pd.DataFrame(rows)


def curve_table(step: StepResult) -> pd.DataFrame:
    """Training and validation loss against steps of every network (tidy: task, epoch, step, split, loss), and
    the kept epoch in column `best`."""
    rows = [{"task": t, **row} for t, r in step.results.items() if r["network"].get("log") is not None
            for row in log_rows(r["network"]["log"])]
    return pd.DataFrame(rows)


def paper_baselines(step: StepResult) -> pd.DataFrame:
    """The paper's Fig. 6 check beside the study's, per task both have. The paper's per-task win rates against
    `rand` and `avg` are not in the sources; the closest published numbers (reference/taskonomy) are the win rate
    of a readout trained on a random-weight encoder against the task network (wins_vs_task, source `random`),
    next to the study's win rate of `rand` (the untrained network) against its task network (ties count half)."""
    paper = load_paper_affinities("wins_vs_task")
    beats = baseline_table(step).set_index("task")["beats avg and rand"]
    rows = []
    for task, r in step.results.items():
        name = PAPER_NAMES.get(task)
        if name is None or name not in paper.index:
            continue
        s = r["scores"]
        rows.append({"task": task, "paper task": name,
                     "paper: random-encoder readout wins vs network": float(paper.at[name, "random"]),
                     "study: rand wins vs network": float(uncertainty.wins(s["rand"], s["network"]).mean()),
                     "study: beats avg and rand": bool(beats[task])})
    return pd.DataFrame(rows)


def paper_baselines_summary(beside: pd.DataFrame, table: pd.DataFrame) -> dict[str, Any]:
    """The numbers of the Fig. 6 comparison (`paper_baselines` beside `baseline_table`): how often rand beats the
    network in the paper's published readouts and in the study (median, maximum and its task), how many networks
    beat both baselines, which do not and to which baseline each loses; `verdict` "reproduced" when every shared
    network beats both."""
    pc, sc = "paper: random-encoder readout wins vs network", "study: rand wins vs network"
    failing = beside.loc[~beside["study: beats avg and rand"], "task"].tolist()
    t = table.set_index("task")
    lost = [f"{x} (loses to {' and '.join(b for b in ('avg', 'rand') if t.at[x, f'win rate vs {b}'] <= 0.5)})"
            for x in failing]
    return {"paper_median": float(beside[pc].median()), "paper_max": float(beside[pc].max()),
            "paper_max_task": str(beside.loc[beside[pc].idxmax(), "paper task"]),
            "study_median": float(beside[sc].median()), "study_max": float(beside[sc].max()),
            "study_max_task": str(beside.loc[beside[sc].idxmax(), "task"]), "n": len(beside),
            "beat": len(beside) - len(failing), "failing": ", ".join(lost) or "none",
            "verdict": "not reproduced" if failing else "reproduced"}


def ceiling_verdict(lo: float, hi: float) -> str:
    """The convergence check's verdict from the interval of the relative change of val loss at the longer schedule."""
    if hi < 0:
        return "still improving: the longer schedule is lower beyond noise"
    if lo > 0:
        return "the longer schedule is worse beyond noise"
    return "converged: within noise"


def ceiling_check(params: StudyParams, n_boot: int = 1000) -> pd.DataFrame:
    """Is Step I trained to convergence (issue 17)? The networks of `task_networks.check_tasks` retrained, all else
    equal, on a cosine schedule `check_epochs` long with the patience scaled by the same factor; per task the mean
    val loss per image at the profile's ceiling and at the check's, the relative change with its 95% paired
    bootstrap interval over the val images, the epochs each kept, and `ceiling_verdict`. Empty when off."""
    from math import ceil


    cfg = params.section("task_networks")
    tasks = [t for t in cfg.check_tasks if t in study_tasks(params.common)]
    if not cfg.check_epochs or not tasks:
        return pd.DataFrame()
    patience = ceil(cfg.patience * cfg.check_epochs / cfg.epochs)
    longer = params.with_overrides(f"task_networks.epochs={cfg.check_epochs}", f"task_networks.patience={patience}")
    base, check = task_networks(params, tasks), task_networks(longer, tasks)
    rows = []
    for t in tasks:
        a = -np.asarray(base.results[t]["val_scores"]["network"], dtype=float)
        b = -np.asarray(check.results[t]["val_scores"]["network"], dtype=float)
        idx = uncertainty.bootstrap_indices(len(a), n_boot, unit_seed(params.common.seed, "ceiling_check", t))
        lo, hi = uncertainty.interval((b[idx].mean(1) - a[idx].mean(1)) / a[idx].mean(1))
        rows.append({"task": t, f"val loss, {cfg.epochs} epochs": a.mean(),
                     f"val loss, {cfg.check_epochs} epochs": b.mean(), "change": b.mean() / a.mean() - 1,
                     "lo": lo, "hi": hi, "kept epoch": base.results[t]["network"]["log"]["best_epoch"],
                     "kept epoch, longer": check.results[t]["network"]["log"]["best_epoch"],
                     "verdict": ceiling_verdict(lo, hi)})
    out = pd.DataFrame(rows).set_index("task")
    out.attrs.update(patience=patience, computed=len(check.computed))
    return out
