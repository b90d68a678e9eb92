"""Every multi-task network of the task-grouping study trained or read (Standley et al., ICML 2020, Sec. 5): for each
setting (the control and the paper's Tables 2-4 variations) and seed, the units of `multitask` run through the one
runner, their val and test losses and the lookahead affinities gathered into one table per run; and the check that
a longer schedule does not move the networks' losses beyond noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pandas as pd

from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store, stable_hash
from taskstudy.standley import grouping
from taskstudy.standley.multitask import (
    HALF_COST,
    VERSION,
    GroupingConfig,
    Unit,
    grouping_common,
    lookahead_key,
    make_units,
    network_key,
    settings,
    train_unit,
)
from taskstudy.world import data

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams
    from taskstudy.engine.sections import Common


@dataclass
class GroupingRun:
    """One setting and seed: every candidate network's result, in `grouping.candidate_networks` order, and
    `equal` (Table 1's 1/k single-task networks: k -> task -> result)."""

    tasks: list[str]
    networks: list[tuple[str, ...]]  # the tasks of each network
    costs: list[float]  # budget units: 1 full size, HALF_COST half size
    results: list[dict[str, Any]]  # train_unit's result per network
    lookahead: pd.DataFrame | None  # TAG lookahead affinity of the all-tasks network (None: not trained)
    computed: list[str]  # names of the networks trained in this run (the rest came from the store)
    wall_s: float
    config: GroupingConfig | None
    equal: dict[int, dict[str, dict[str, Any]]] | None = None
    seed: int = 0
    setting: str = "control"

    @property
    def names(self) -> list[str]:
        return grouping.network_names(self.networks, self.costs)

    def single_losses(self, which: str = "losses") -> dict[str, float]:
        """Each task's loss (`which`: losses = test, val_losses, early_losses) in its own full-size network."""
        return {net[0]: r[which][net[0]] for net, c, r in zip(self.networks, self.costs, self.results, strict=True)
                if len(net) == 1 and c == 1.0}

    def losses(self, which: str = "losses", relative: bool = False) -> list[dict[str, float]]:
        """The loss table grouping.best_grouping takes: `which` = losses (test: what judges), val_losses (what
        chooses) or early_losses (val after `early_epoch`); with `relative`, each task's loss divided by its
        full-size single-task network's on the same split (so every task weighs the same)."""
        ref = self.single_losses(which) if relative else dict.fromkeys(self.tasks, 1.0)
        return [{t: v / ref[t] for t, v in r[which].items()} for r in self.results]


@dataclass
class GroupingStudy:
    """Every setting's runs, one per seed: `runs[setting][seed]`; the control first."""

    runs: dict[str, list[GroupingRun]]
    computed: int  # networks trained in this execution
    total: int  # networks in all (distinct store entries)
    wall_s: float

    @property
    def control(self) -> list[GroupingRun]:
        return next(iter(self.runs.values()))


def _run(units: list[Unit], results: list[dict[str, Any]], look: pd.DataFrame | None, computed: list[str],
         wall: float, setting: str, seed: int) -> GroupingRun:
    cand = [(u, r) for u, r in zip(units, results, strict=True) if u.share <= 2]
    equal: dict[int, dict[str, dict[str, Any]]] = {}
    for u, r in zip(units, results, strict=True):
        if u.share == 1 and len(u.tasks) == 1:
            equal.setdefault(1, {})[u.tasks[0]] = r
        elif len(u.tasks) == 1:
            equal.setdefault(u.share, {})[u.tasks[0]] = r
    cfg = units[0].cfg
    return GroupingRun(tasks=list(cfg.tasks), networks=[u.tasks for u, _ in cand],
                       costs=[1.0 if u.share == 1 else HALF_COST for u, _ in cand], results=[r for _, r in cand],
                       lookahead=look, computed=computed, wall_s=wall, config=cfg, equal=equal, seed=seed,
                       setting=setting)


def train_all(params: StudyParams, section: str = "task_grouping") -> GroupingStudy:
    """Train (or read from the store) every network of every setting and seed, through one run_units."""
    common = grouping_common(params, section)
    store = Store.for_params(params)
    for split in ("train", "val", "test"):  # rendered once here, read by every worker
        data.scene_split(store, common, split)
    plan = {(name, s): make_units(common, cfg, str(store.root), s)
            for name, cfg in settings(params, section).items() for s in range(cfg.seeds)}

    wall, trained = _train_missing(store, common, [u for units in plan.values() for u in units])
    runs: dict[str, list[GroupingRun]] = {}
    for (name, s), units in plan.items():
        results = [store.load("mtl_network", network_key(u), VERSION) for u in units]
        if any(r is None for r in results):
            raise RuntimeError(f"a network of setting '{name}', seed {s} is missing from the store after training")
        full = next((u for u in units if u.lookahead), None)
        look = None if full is None else _frame(store.load("mtl_lookahead", lookahead_key(full), VERSION)["lookahead"])
        computed = [u.name for u in units if stable_hash(network_key(u)) in trained]
        runs.setdefault(name, []).append(_run(units, results, look, computed, wall, name, s))
    total = len({stable_hash(network_key(u)) for units in plan.values() for u in units})
    return GroupingStudy(runs=runs, computed=len(trained), total=total, wall_s=wall)


def _frame_values(frame: pd.DataFrame) -> dict[str, Any]:
    """A labelled matrix as data only (values, labels, axis names), for an entry that loads without running code."""
    return {"values": frame.to_numpy(), "index": list(frame.index), "columns": list(frame.columns),
            "names": [frame.index.name, frame.columns.name]}


def _frame(stored: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(stored["values"], index=pd.Index(stored["index"], name=stored["names"][0]),
                        columns=pd.Index(stored["columns"], name=stored["names"][1]))


def _train_missing(store: Store, common: Common, units: list[Unit]) -> tuple[float, set[str]]:
    """Train the units whose results the store lacks (each distinct network once), saving each as it finishes;
    returns the wall time and the key hashes of the networks trained."""

    def done(u: Unit) -> bool:
        return store.exists("mtl_network", network_key(u), VERSION) and (
            not u.lookahead or store.exists("mtl_lookahead", lookahead_key(u), VERSION))

    def save(u: Unit, r: dict[str, Any]) -> None:
        look = {k: r.pop(k) for k in ("lookahead", "lookahead_updates") if k in r}
        if "lookahead" in look:
            look["lookahead"] = _frame_values(look["lookahead"])
        store.save("mtl_network", network_key(u), r, VERSION, fmt="pt")
        if look:
            store.save("mtl_lookahead", lookahead_key(u), look, VERSION, fmt="pt")

    distinct: dict[str, Unit] = {}
    for u in units:
        distinct.setdefault(stable_hash(network_key(u)) + ("L" if u.lookahead else ""), u)
    # Largest networks first, so that the last units to finish are small ones (better load balance).
    order = sorted(distinct.values(), key=lambda u: -len(u.tasks) - (u.share == 1))
    start = time.perf_counter()
    ran = run_units(train_unit, order, store=store, kind="mtl_network", key=network_key, version=VERSION, save=save,
                    common=common, done=done, desc="task grouping: networks")
    return time.perf_counter() - start, {stable_hash(network_key(u)) for u in ran}


def schedule_check(params: StudyParams, section: str = "task_grouping") -> pd.DataFrame | None:
    """Is the schedule long enough? The control's first-seed single-task networks and its all-tasks network
    retrained on a `check_epochs`-long schedule (same early stopping, no lookahead), beside the study's: per
    network the best val loss and the epochs run of both. None when check_epochs is 0."""
    longer = params.values(section).get("check_epochs", 0)
    if not longer:
        return None
    common, cfg = grouping_common(params, section), GroupingConfig.from_params(params, section)
    store = Store.for_params(params)
    pick = [u for u in make_units(common, cfg, str(store.root), 0)
            if u.share == 1 and (len(u.tasks) == 1 or u.all_tasks)]
    check = [replace(u, cfg=replace(cfg, epochs=longer, lookahead_every=0)) for u in pick]
    _train_missing(store, common, pick + check)
    rows = []
    for a, b in zip(pick, check, strict=True):
        ra, rb = (store.load("mtl_network", network_key(u), VERSION)["log"] for u in (a, b))
        rows.append({"network": a.name, f"best val ({cfg.epochs} epochs)": min(ra["val_loss"]),
                     f"best val ({longer} epochs)": min(rb["val_loss"]), f"epochs run ({cfg.epochs})": len(
                         ra["val_loss"]), f"epochs run ({longer})": len(rb["val_loss"])})
    return pd.DataFrame(rows).set_index("network")
