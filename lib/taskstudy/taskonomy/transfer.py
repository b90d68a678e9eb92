"""Taskonomy Step II (Zamir et al. 2018, Sec. 3.2): transfers between every source and target.

For every target t and source set S (one source: first order; k sources: order k), a small readout D_{S->t}
(taskstudy.nn.models.make_readout) is trained with t's loss on the frozen representations E_s(I), s in S,
concatenated on channels, on the `transfer` split, early-stopped on the `val` split, and scored per image on
`val` (what Steps III-IV select on) and on `test` (what Gain and Quality evaluate on). The representation of
each frozen encoder on each split is computed once and cached in the store, never per epoch. Higher orders follow
the paper's beam search: for each target the top-b first-order sources (by mean *val* score) and all their
k-combinations, k = 2..max_order.

Queries: a transfer's query I is the target's own input (denoising: the noisy image; every other target: the
clean image), and each source encoder reads it in the form it was trained on (`encoder_view`): colorization's
encoder the grey image; jigsaw's the image as it is (the identity tile order is one of its training inputs);
inpainting's and denoising's either the plain query or the query corrupted as in their training
(`transfers.corrupted_view`).

Baselines from the same protocol: `random` (a readout on a random-weight encoder) and `scratch` (the whole task
network trained from scratch on the transfer split: the reference of Gain); `full` (the task network of Step I,
trained on the full split: the reference of Quality, and the paper's `self` candidate of Steps III-IV) comes from
Step I's scores.

Units: the readouts of one target (one order at a time) in units of at most UNIT_READOUTS, trained side by side
(taskstudy.nn.grouped), and each scratch network, run through parallel.run_units; every readout is its own store
entry keyed by (target, sources, the sources' network keys, readout parameters), so adding a task trains only the
units holding readouts that involve it (a unit trains as a whole, and saves only what the store lacks).
"""

from __future__ import annotations

import itertools
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.nn import grouped
from taskstudy.nn.models import Encoder, make_readout
from taskstudy.nn.train import TrainConfig, fit_validated, kernels, log_rows, predict, resolve_device
from taskstudy.taskonomy.task_networks import VERSION as NET_VERSION
from taskstudy.taskonomy.task_networks import (
    StepResult,
    build_network,
    network_key,
    scores_key,
    study_tasks,
    task_networks,
    unit_seed,
)
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

VERSION = "3"  # 2: val split (early stopping, selection), queries in the target's and the encoder's form;
#   3: readouts of a unit side by side, the batch order the target's
RANDOM = "random"  # a random-weight encoder, the paper's `random` source
SCRATCH = "scratch"  # a task network trained from scratch on the transfer split (Gain's reference)
FULL = "full"  # the Step I task network (Quality's reference; the paper's `self` candidate)
SPLITS = ("transfer", "val", "test")  # readouts train on transfer, stop and are selected on val, judged on test
CORRUPTING = ("inpainting", "denoising")  # sources whose training input corrupts the image (see encoder_view)


def sources_key(sources: tuple[str, ...] | list[str]) -> str:
    """Canonical name of a source set: sorted names joined by '+'."""
    return "+".join(sorted(sources))


def encoder_key(params: StudyParams, source: str) -> dict[str, Any]:
    """What determines a source's frozen encoder: its task network's key, or the seed of the random one."""
    if source == RANDOM:
        cfg = params.section("task_networks")
        return {"random": unit_seed(params.common.seed, "random_encoder"), "width": cfg.width, "depth": cfg.depth}
    return network_key(params.common, params.section("task_networks"), source)


def query_kind(target: str) -> str:
    """The form of a transfer's query image: the target's own input ("noisy" for denoising, else "rgb")."""
    return taskdict.get_task(target).input


def view_name(params: StudyParams, source: str) -> str:
    """How source `source`'s encoder reads a query (see encoder_view): "grey", "corrupted" or "plain"."""
    if source == RANDOM:
        return "plain"
    t = taskdict.get_task(source)
    if t.input == "grey":
        return "grey"
    if source in CORRUPTING and params.section("transfers").corrupted_view == "corrupted":
        return "corrupted"
    return "plain"


def query_images(params: StudyParams, split: str, query: str) -> torch.Tensor:
    """The query images I of a split in form `query` ("rgb": clean; "noisy": denoising's noisy input)."""
    d = data.scene_split(Store.for_params(params), params.common, split)
    if query == "rgb":
        return data.rgb(d)
    task = next(t for t in taskdict.TASKS.values() if t.input == query)
    return data.network_input(params.common, d, task.name)


def encoder_view(params: StudyParams, source: str, split: str, query: str) -> torch.Tensor:
    """What E_s reads for queries of form `query`: the query in the form s was trained on. colorization: its
    grey image; inpainting (corrupted view): the centre masked; denoising (corrupted view): the clean query with
    the training noise added (a noisy query is left as it is); everything else: the query itself."""
    x = query_images(params, split, query)
    view = view_name(params, source)
    if view == "grey":
        return taskdict.make_input(source, x)
    if view == "corrupted":
        if source == "inpainting":
            return taskdict.make_input(source, x)
        if query == "rgb":
            d = data.scene_split(Store.for_params(params), params.common, split)
            return taskdict.make_input(source, x, index=d["index"], seed=data.split_seed(params.common))
    return x


def features_key(params: StudyParams, source: str, split: str, query: str = "rgb") -> dict[str, Any]:
    return {"encoder": encoder_key(params, source), "split": data.split_key(params.common, split), "query": query,
            "view": view_name(params, source), "code": computation_hash(_source_features)}


def frozen_encoder(params: StudyParams, source: str) -> Encoder:
    """The frozen encoder E_s of a source (its Step I network's, or the seeded random one), in eval mode."""
    cfg = params.section("task_networks")
    if source == RANDOM:
        torch.manual_seed(unit_seed(params.common.seed, "random_encoder"))
        return Encoder(cfg.width, cfg.depth).eval()
    saved = Store.for_params(params).load("task_network", encoder_key(params, source), NET_VERSION)
    if saved is None:
        raise LookupError(f"no task network for source '{source}': run chapter 02_task_networks first")
    net = build_network(source, cfg)
    net.load_state_dict(saved["state"])
    return net.encoder.eval()


def _source_features(unit: tuple[Any, str, tuple[tuple[str, str], ...]]) -> dict[tuple[str, str], torch.Tensor]:
    """E_s(I) of one source for each (split, query) asked (a unit of parallel.run_units), float16."""
    params, source, todo = unit
    encoder, device = frozen_encoder(params, source), resolve_device(params.common.device)
    return {(split, query): predict(encoder, encoder_view(params, source, split, query), device=device).half()
            for split, query in todo}


def cache_features(params: StudyParams, sources: list[str], queries: tuple[str, ...] = ("rgb",)) -> int:
    """E_s(I) of every source on the transfer, val and test splits, for every query form, computed once into the
    store (float16), one unit per source on the cluster's workers. Returns how many were computed now."""
    store = Store.for_params(params)
    wanted = tuple((split, query) for query in queries for split in SPLITS)

    def left(unit: tuple[Any, str, tuple[tuple[str, str], ...]]) -> tuple[Any, str, tuple[tuple[str, str], ...]] | None:
        todo = tuple(w for w in unit[2] if not store.exists("features", features_key(params, unit[1], *w), VERSION))
        return (unit[0], unit[1], todo) if todo else None

    def save(unit: tuple[Any, str, tuple[tuple[str, str], ...]], z: dict[tuple[str, str], torch.Tensor]) -> None:
        for (split, query), zs in z.items():
            store.save("features", features_key(params, unit[1], split, query), {"z": zs}, VERSION, fmt="pt")

    ran = run_units(_source_features, [(params, s, wanted) for s in sources], store=store, kind="features",
                    key=lambda u: {"encoder": encoder_key(params, u[1]), "view": view_name(params, u[1])},
                    version=VERSION, save=save, common=params.common, left=left, desc="Step II: frozen features")
    return sum(len(u[2]) for u in ran)


def readout_key(params: StudyParams, target: str, sources: tuple[str, ...]) -> dict[str, Any]:
    """Every parameter that determines one readout's per-image val and test scores."""
    cfg = params.section("transfers")
    return {
        "target": target, "sources": sources_key(sources),
        "encoders": {s: encoder_key(params, s) for s in sorted(sources)},
        "views": {s: view_name(params, s) for s in sorted(sources)}, "query": query_kind(target),
        **{split: data.split_key(params.common, split) for split in SPLITS},
        "readout_width": cfg.readout_width, "epochs": cfg.epochs, "patience": cfg.patience,
        "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": params.common.seed, "code": _readout_code(),
        **kernels(params.common),
        **({"readout": cfg.readout, "decoder_width": params.section("task_networks").decoder_width}
           if cfg.readout != "shuffle" else {}),
    }


def _readout_code() -> str:
    """What trains and scores a target's readouts and its scratch network."""
    return computation_hash(target_unit)


def scratch_key(params: StudyParams, target: str) -> dict[str, Any]:
    cfg, net = params.section("transfers"), params.section("task_networks")
    return {"target": target, **{split: data.split_key(params.common, split) for split in SPLITS},
            "epochs": cfg.scratch_epochs, "patience": cfg.patience, "width": net.width, "depth": net.depth,
            "decoder_width": net.decoder_width, "batch_size": net.batch_size, "lr": net.lr,
            "seed": params.common.seed, "code": _readout_code(), **kernels(params.common)}


@dataclass(frozen=True)
class TargetUnit:
    """Readouts of one target still missing from the store, or its scratch network (picklable for Dask workers)."""

    params: Any  # StudyParams
    target: str
    source_sets: tuple[tuple[str, ...], ...]
    scratch: bool  # also train the from-scratch network (Gain's reference)
    part: int = 0  # which chunk of the target's readouts (its lock's name)


#: Readouts per unit of Step II: small units keep both workers busy to the end of a phase (a unit of a whole
#: target's 22 readouts took 25-60 s, and the last one left a worker idle that long).
UNIT_READOUTS = 6


@lru_cache(maxsize=96)
def _features(root: str, key_items: str, split: str) -> torch.Tensor:
    import json

    z = Store(root).load("features", json.loads(key_items), VERSION)
    if z is None:
        raise LookupError(f"features missing from the store ({split}); call cache_features first")
    return z["z"].float()


def load_features(params: StudyParams, sources: tuple[str, ...], split: str, query: str = "rgb") -> torch.Tensor:
    """Concatenated cached representations of `sources` on a split for queries of form `query`:
    (N, k * 4w, H/4, W/4)."""
    import json

    root = str(Store.for_params(params).root)
    parts = [_features(root, json.dumps(features_key(params, s, split, query), sort_keys=True), split)
             for s in sorted(sources)]
    return torch.cat(parts, 1) if len(parts) > 1 else parts[0]


def _labels(params: StudyParams, target: str) -> dict[str, torch.Tensor]:
    store = Store.for_params(params)
    return {split: data.target(data.scene_split(store, params.common, split), target) for split in SPLITS}


def build_readout(params: StudyParams, target: str, in_channels: int) -> torch.nn.Module:
    """The profile's D_{S->t} for `target` on `in_channels` of frozen features (transfers.readout, readout_width;
    the neck + decoder readout uses the task networks' decoder_width)."""
    cfg, t = params.section("transfers"), taskdict.get_task(target)
    return make_readout(t.kind, in_channels, t.channels, cfg.readout_width, cfg.readout,
                        params.section("task_networks").decoder_width)


def fit_readouts(params: StudyParams, target: str, zs: dict[str, dict[str, torch.Tensor]]
                 ) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Step II's readout protocol for several source sets of one target, on given frozen features zs[name][split]
    (transfer, val, test): each D_{S->t} seeded by its `name`, trained on transfer and early-stopped on val; all
    with the target's batch order. Readouts of one architecture and input width train side by side as one group
    (taskstudy.nn.grouped: the same readouts, 1.8x faster); each returns its per-image test scores and training facts
    (val scores, TrainLog, its share of the group's seconds)."""
    cfg, t = params.section("transfers"), taskdict.get_task(target)
    y = _labels(params, target)
    device = resolve_device(params.common.device)
    tc = TrainConfig(cfg.epochs, cfg.batch_size, cfg.lr, seed=unit_seed(params.common.seed, "readout order", target),
                     **kernels(params.common))
    models, groups = {}, defaultdict(list)
    for name, z in zs.items():
        torch.manual_seed(unit_seed(params.common.seed, "readout", target, name))
        models[name] = build_readout(params, target, z["transfer"].shape[1])
        groups[z["transfer"].shape[1]].append(name)
    out = {}
    for names in groups.values():
        rs = [models[n] for n in names]
        start = time.perf_counter()
        if grouped.groupable(rs):
            logs = grouped.fit_readouts(rs, [zs[n]["transfer"] for n in names], y["transfer"], t.per_image_loss,
                                        tc, ([zs[n]["val"] for n in names], y["val"]), cfg.patience, device)
        else:
            logs = [fit_validated(models[n], zs[n]["transfer"], y["transfer"], t.loss, tc, (zs[n]["val"], y["val"]),
                                  patience=cfg.patience, device=device) for n in names]
        wall = (time.perf_counter() - start) / len(names)  # each readout's share of its group's time
        for n, log in zip(names, logs, strict=True):
            scores = t.score(predict(models[n], zs[n]["test"], device=device), y["test"]).numpy()
            val_scores = t.score(predict(models[n], zs[n]["val"], device=device), y["val"]).numpy()
            out[n] = (scores, {"val_scores": val_scores, "history": log.train_loss, "log": log.as_dict(),
                               "wall_s": wall, "images_per_s": len(zs[n]["transfer"]) * log.epochs_run / wall,
                               "group": len(names)})
    return out


def fit_readout(params: StudyParams, target: str, z: dict[str, torch.Tensor], name: str) -> tuple[np.ndarray,
                dict[str, Any]]:
    """One readout D_{S->t} by the protocol of `fit_readouts` (seeded by `name`, the target's batch order)."""
    return fit_readouts(params, target, {name: z})[name]


def train_readouts(params: StudyParams, target: str, source_sets: Sequence[tuple[str, ...]]
                   ) -> dict[tuple[str, ...], tuple[np.ndarray, dict[str, Any]]]:
    """The readouts D_{S->t} of `source_sets` on the cached frozen features (fit_readouts, side by side)."""
    zs = {sources_key(s): {split: load_features(params, s, split, query_kind(target)) for split in SPLITS}
          for s in source_sets}
    res = fit_readouts(params, target, zs)
    return {s: res[sources_key(s)] for s in source_sets}


def train_readout(params: StudyParams, target: str, sources: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """One readout D_{S->t} on the cached frozen features of `sources` (fit_readout)."""
    return train_readouts(params, target, [sources])[sources]


def train_scratch(params: StudyParams, target: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The target's whole network trained from scratch on the transfer split, early-stopped on val (the
    reference of Gain)."""
    store, t = Store.for_params(params), taskdict.get_task(target)
    net_cfg, cfg = params.section("task_networks"), params.section("transfers")
    d = {split: data.scene_split(store, params.common, split) for split in SPLITS}
    x = {split: data.network_input(params.common, d[split], target) for split in SPLITS}
    y = {split: data.target(d[split], target) for split in SPLITS}
    seed = unit_seed(params.common.seed, "scratch", target)
    torch.manual_seed(seed)
    net = build_network(target, net_cfg)
    device = resolve_device(params.common.device)
    start = time.perf_counter()
    log = fit_validated(net, x["transfer"], y["transfer"], t.loss,
                        TrainConfig(cfg.scratch_epochs, net_cfg.batch_size, net_cfg.lr, seed=seed,
                                    **kernels(params.common)),
                        (x["val"], y["val"]), patience=cfg.patience, device=device)
    wall = time.perf_counter() - start
    scores = t.score(predict(net, x["test"], device=device), y["test"]).numpy()
    val_scores = t.score(predict(net, x["val"], device=device), y["val"]).numpy()
    return scores, {"val_scores": val_scores, "log": log.as_dict(), "wall_s": wall}


def target_unit(u: TargetUnit) -> dict[str, Any]:
    """Train the missing readouts (and scratch network) of one target; the client stores the results."""
    out: dict[str, Any] = {"readouts": train_readouts(u.params, u.target, u.source_sets) if u.source_sets else {}}
    if u.scratch:
        out["scratch"] = train_scratch(u.params, u.target)
    return out


def first_order_sets(sources: list[str], random: bool = True) -> list[tuple[str, ...]]:
    """Step II's first-order source sets: every dictionary task, and the random-weight encoder (a baseline)."""
    return [(s,) for s in [*sources, *([RANDOM] if random else [])]]


def beam_sets(first_order: pd.DataFrame, target: str, beam: int, max_order: int) -> list[tuple[str, ...]]:
    """The paper's beam search: all k-combinations (2 <= k <= max_order) of the target's top-b first-order
    sources, ranked by mean per-image score of the table given (the val split's: selection), the `random`
    baseline excluded."""
    if first_order.attrs.get("split") == "test":
        raise ValueError("the beam search selects sources: give it the val split's scores, not the test split's")
    rows = first_order[(first_order.target == target) & (first_order.order == 1)
                       & ~first_order.sources.isin([RANDOM, SCRATCH, FULL])]
    ranked = rows.groupby("sources")["score"].mean().sort_values(ascending=False, kind="stable")
    top = sorted(ranked.index[:beam])
    return [c for k in range(2, max_order + 1) for c in itertools.combinations(top, k)]


def _run_units(params: StudyParams, plan: dict[str, list[tuple[str, ...]]], scratch: set[str], phase: str) -> list[str]:
    """Train the readouts in `plan` (target -> source sets) and the scratch networks of `scratch` that are not in
    the store yet: each scratch network one unit (first, as the longest), each target's readouts in units of at
    most UNIT_READOUTS, each unit claimed by a lock per (target, phase, part) against concurrent runs."""
    store = Store.for_params(params)
    small = params.subset("task_networks", "transfers")

    def left(u: TargetUnit) -> TargetUnit | None:
        """The unit again if anything of it is missing: all its readouts, since they train as one group (the
        same group as in an uninterrupted run, so the same bytes); only the missing ones are saved."""
        missing = any(not store.exists("readout", readout_key(params, u.target, s), VERSION) for s in u.source_sets)
        need_scratch = u.scratch and not store.exists("scratch", scratch_key(params, u.target), VERSION)
        return TargetUnit(small, u.target, u.source_sets if missing else (), need_scratch, u.part) \
            if missing or need_scratch else None

    units = [TargetUnit(small, t, (), True, -1) for t in plan if t in scratch]
    for t, sets in plan.items():
        units += [TargetUnit(small, t, tuple(sets[i:i + UNIT_READOUTS]), False, i // UNIT_READOUTS)
                  for i in range(0, len(sets), UNIT_READOUTS)]

    saved: list[str] = []

    def save(u: TargetUnit, r: dict[str, Any]) -> None:
        for sources, (scores, info) in r["readouts"].items():
            key = readout_key(params, u.target, sources)
            if not store.exists("readout", key, VERSION):
                store.save("readout", key, {"scores": scores, **info}, VERSION, fmt="pt")
                saved.append(f"{u.target}<-{sources_key(sources)}")
        if "scratch" in r:
            scores, info = r["scratch"]
            store.save("scratch", scratch_key(params, u.target), {"scores": scores, **info}, VERSION, fmt="pt")

    done = run_units(target_unit, units, store=store, kind="transfer_unit",
                     key=lambda u: {"target": u.target, "phase": phase, "part": u.part}, version=VERSION, save=save,
                     common=params.common, left=left, desc=f"Step II: {phase} readouts")
    return saved + [f"{u.target}<-{SCRATCH}" for u in done if u.scratch]


def score_tables(params: StudyParams, plan: dict[str, list[tuple[str, ...]]], with_baselines: bool = True,
                 splits: Sequence[str] = ("val", "test")) -> dict[str, pd.DataFrame]:
    """`score_table` for several splits, reading every stored result once."""
    bad = [s for s in splits if s not in ("val", "test")]
    if bad:
        raise ValueError(f"scores exist for the val and test splits, not {bad[0]!r}")
    fields = {split: "scores" if split == "test" else "val_scores" for split in splits}
    store = Store.for_params(params)
    names: list[tuple[str, str, int]] = []
    results: list[dict[str, Any]] = []
    for target, sets in plan.items():
        for s in sets:
            names.append((target, sources_key(s), len(s)))
            results.append(store.load("readout", readout_key(params, target, s), VERSION))
        if with_baselines:
            names.append((target, SCRATCH, 0))
            results.append(store.load("scratch", scratch_key(params, target), VERSION))
            full = store.load("network_scores",
                              scores_key(params.common, params.section("task_networks"), target), NET_VERSION)
            names.append((target, FULL, 0))
            results.append({f: full[f]["network"] for f in fields.values()})
    tables = {}
    for split, f in fields.items():
        arrays = [np.asarray(r[f], np.float64) for r in results]
        sizes = [len(a) for a in arrays]
        table = pd.DataFrame({
            "target": np.repeat([n[0] for n in names], sizes), "sources": np.repeat([n[1] for n in names], sizes),
            "order": np.repeat([n[2] for n in names], sizes).astype(np.int64),
            "image": np.concatenate([np.arange(k) for k in sizes]) if sizes else np.array([], np.int64),
            "score": np.concatenate(arrays) if arrays else np.array([], np.float64)})
        table.attrs["split"] = split
        tables[split] = table
    return tables


def score_table(params: StudyParams, plan: dict[str, list[tuple[str, ...]]], with_baselines: bool = True,
                split: str = "test") -> pd.DataFrame:
    """Per-image scores (target, sources, order, image, score) on `split` ("val": selection, "test":
    evaluation) of every readout in `plan`, plus the `scratch` and `full` baselines of each target. The split is
    recorded in the table's attrs["split"]."""
    return score_tables(params, plan, with_baselines, (split,))[split]


def training_logs(params: StudyParams, plan: dict[str, list[tuple[str, ...]]],
                  with_scratch: bool = True) -> pd.DataFrame:
    """Training and validation loss against steps of every readout in `plan` (and scratch network): tidy
    (target, sources, kind, epoch, step, split, loss, best)."""
    store = Store.for_params(params)
    rows = []

    def add(target: str, name: str, kind: str, log: dict[str, Any]) -> None:
        rows.extend({"target": target, "sources": name, "kind": kind, **row} for row in log_rows(log))

    for target, sets in plan.items():
        for s in sets:
            r = store.load("readout", readout_key(params, target, s), VERSION)
            add(target, sources_key(s), "readout", r["log"])
        if with_scratch:
            r = store.load("scratch", scratch_key(params, target), VERSION)
            if r is not None:
                add(target, SCRATCH, "scratch", r["log"])
    return pd.DataFrame(rows)


def view_comparison(params: StudyParams, target: str = "normals") -> pd.DataFrame:
    """Both views of the corrupting sources' encoders on one target (issue 17, queries): for inpainting and
    denoising, the first-order readout on the plain query and on the query corrupted as in the encoder's training
    (`transfers.corrupted_view`), each trained and stopped like every readout; per source, both mean val losses and
    the test win rate of the corrupted view over the plain one (ties half) with its 95% bootstrap interval.
    attrs["computed"]: readouts trained now."""
    from taskstudy.taskonomy import evaluate

    sources = [s for s in CORRUPTING if s in study_tasks(params.common)]
    if not sources:
        return pd.DataFrame()
    other = "corrupted" if params.section("transfers").corrupted_view == "plain" else "plain"
    runs = {params.section("transfers").corrupted_view: params,
            other: params.with_overrides(f"transfers.corrupted_view={other}")}
    plan = {target: [(s,) for s in sources]}
    tables, computed = {}, 0
    for view, Q in runs.items():
        task_networks(Q, sources)
        cache_features(Q, sources, (query_kind(target),))
        computed += len(_run_units(Q, plan, set(), f"view {view}"))
        tables[view] = {split: score_table(Q, plan, with_baselines=False, split=split) for split in ("val", "test")}
    test = pd.concat([tables[v]["test"].assign(sources=tables[v]["test"].sources + "@" + v) for v in runs])
    ci = evaluate.win_rate_intervals(test, [(target, f"{s}@corrupted", f"{s}@plain") for s in sources],
                                     seed=params.common.seed).set_index("sources")
    rows = []
    for s in sources:
        val = {v: float(-tables[v]["val"].loc[tables[v]["val"].sources == s, "score"].mean()) for v in runs}
        r = ci.loc[f"{s}@corrupted"]
        rows.append({"source": s, "target": target, "val loss, plain": val["plain"],
                     "val loss, corrupted": val["corrupted"], "corrupted beats plain (test)": r["rate"],
                     "lo": r["lo"], "hi": r["hi"]})
    out = pd.DataFrame(rows).set_index("source")
    out.attrs["computed"] = computed  # readouts trained now (the rest were in the store)
    return out


#: Readouts measured against the default in chapter 03's capacity check: name -> params overrides.
CAPACITY_VARIANTS = {"width 8": ["transfers.readout_width=8"], "width 32": ["transfers.readout_width=32"],
                     "neck + decoder": ["transfers.readout=decoder"]}


def capacity_comparison(params: StudyParams, targets: Sequence[str] = ("normals", "depth_zbuffer", "edge2d"),
                        sources: Sequence[str] = ("autoencoding",)) -> pd.DataFrame:
    """Readout capacity chosen on val loss (issue 17): on a sample of first-order pairs (targets x sources of the
    dictionary), the profile's readout beside CAPACITY_VARIANTS (narrower, wider, and the paper's neck + full task
    decoder), each trained and early-stopped like every readout. One row per pair and readout: mean val loss, that
    loss relative to the best readout of the pair, parameters, training epochs and seconds, and whether it is the
    profile's readout (a variant equal to it is not trained twice). attrs["computed"]: readouts trained now."""

    tasks = study_tasks(params.common)
    plan = {t: [(s,) for s in sources if s in tasks] for t in targets if t in tasks}
    plan = {t: v for t, v in plan.items() if v}
    if not plan:
        return pd.DataFrame()
    cfg = params.section("transfers")
    name = "neck + decoder" if cfg.readout == "decoder" else f"width {cfg.readout_width}"
    t0, s0 = next((t, v[0]) for t, v in plan.items())
    runs = {name: params}
    for n, ov in CAPACITY_VARIANTS.items():
        Q = params.with_overrides(*ov)
        if readout_key(Q, t0, s0) != readout_key(params, t0, s0):  # a variant that is the profile's own: skipped
            runs[n] = Q
    store = Store.for_params(params)
    used = sorted({s for v in plan.values() for (s,) in v})
    task_networks(params, used)  # the variants change only the readout: one set of encoders and features
    cache_features(params, used, tuple(sorted({query_kind(t) for t in plan})))
    rows, computed = [], 0
    for variant, Q in runs.items():
        computed += len(_run_units(Q, plan, set(), f"readout {variant}"))
        for t, sets in plan.items():
            for src in sets:
                saved = store.load("readout", readout_key(Q, t, src), VERSION)
                log = saved["log"]
                rows.append({"target": t, "source": sources_key(src), "readout": variant, "profile's": Q is params,
                             "val loss": float(-np.mean(saved["val_scores"])), "epochs": len(log["val_loss"]),
                             "train s": saved["wall_s"], "parameters": readout_parameters(Q, t, src)})
    out = pd.DataFrame(rows)
    out["vs best"] = out["val loss"] / out.groupby(["target", "source"])["val loss"].transform("min")
    out.attrs["computed"] = computed  # readouts trained now (the rest were in the store)
    return out


def capacity_summary(table: pd.DataFrame) -> pd.DataFrame:
    """capacity_comparison per readout, best first: pairs, median and worst val loss relative to each pair's best,
    parameters (median), epochs run (median), training seconds summed over the sample, and whether it is the
    profile's readout."""
    if table.empty:
        return pd.DataFrame()
    out = table.groupby("readout").agg(**{
        "pairs": ("vs best", "size"), "median vs best": ("vs best", "median"), "worst vs best": ("vs best", "max"),
        "parameters": ("parameters", "median"), "epochs": ("epochs", "median"), "train s": ("train s", "sum"),
        "profile's": ("profile's", "first")})
    return out.sort_values(["median vs best", "train s"])


def readout_parameters(params: StudyParams, target: str, sources: tuple[str, ...]) -> int:
    """Trainable parameters of the readout the profile builds for `sources` -> `target`."""
    net_cfg = params.section("task_networks")
    net = build_readout(params, target, len(sources) * Encoder(net_cfg.width, net_cfg.depth).out_channels)
    return sum(p.numel() for p in net.parameters())


def calibration_summary(logs: pd.DataFrame, ceilings: dict[str, int]) -> pd.DataFrame:
    """Per kind of network (readout, scratch) in a training_logs table: how many, how many stopped early, the kept
    epoch (median, 90th percentile, max) against the epoch ceiling, how many ran to the ceiling, and of those how
    many kept their last epoch (still improving when the schedule ended; the others ran out their patience's
    last epochs at the ceiling after their best epoch)."""
    runs = logs.groupby(["kind", "target", "sources"]).agg(ran=("epoch", "max"))
    kept = logs[logs.best & (logs.split == "val")].set_index(["kind", "target", "sources"])["epoch"]
    runs["kept"] = kept
    rows = []
    for kind, g in runs.groupby(level="kind"):
        cap = ceilings[kind]
        rows.append({"kind": kind, "networks": len(g), "epoch ceiling": cap,
                     "stopped early": int((g.ran < cap).sum()), "kept epoch (median)": float(g.kept.median()),
                     "kept epoch (90%)": float(g.kept.quantile(0.9)), "kept epoch (max)": int(g.kept.max()),
                     "reached the ceiling": int((g.ran >= cap).sum()),
                     "best at the ceiling": int(((g.ran >= cap) & (g.kept >= g.ran)).sum())})
    return pd.DataFrame(rows).set_index("kind")


def transfers(params: StudyParams, targets: list[str] | None = None, baselines: bool = True) -> StepResult:
    """Step II: every first-order readout, then the beam search's higher orders (chosen on val), for every target.
    Returns the per-image score tables, results['scores'] on test (evaluation) and results['val_scores'] on val
    (selection: AHP, BIP), the plan, and the list of units computed now (the rest were cached). With
    `baselines=False` neither the from-scratch networks nor the random-encoder readouts are trained and the tables
    have no `scratch`/`full`/`random` rows (what a study of the affinities alone needs: AHP leaves them out)."""
    start = time.perf_counter()
    store = Store.for_params(params)
    cfg = params.section("transfers")
    sources = study_tasks(params.common)
    targets = targets or [t for t in sources if not taskdict.get_task(t).source_only]
    task_networks(params, sources)  # Step I first (read from the store when there), so this chapter runs alone
    cache_features(params, [*sources, *([RANDOM] if baselines else [])],
                   tuple(sorted({query_kind(t) for t in targets})))

    first = {t: first_order_sets(sources, random=baselines) for t in targets}
    computed = _run_units(params, first, set(targets) if baselines else set(), "first-order")
    first_val = score_table(params, first, with_baselines=False, split="val")
    higher = {t: beam_sets(first_val, t, cfg.beam, cfg.max_order) for t in targets}
    computed += _run_units(params, higher, set(), "higher-order")
    plan = {t: first[t] + higher[t] for t in targets}
    tables = score_tables(params, plan, with_baselines=baselines)
    key = {"plan": {t: [sources_key(s) for s in v] for t, v in plan.items()},
           "readouts": [readout_key(params, t, s) for t, v in plan.items() for s in v]}
    store.save("transfer_scores", key if baselines else {**key, "baselines": False}, tables["test"], VERSION,
               fmt="parquet")
    return StepResult({"scores": tables["test"], "val_scores": tables["val"], "plan": plan}, computed,
                      time.perf_counter() - start)


def loss_matrix(scores: pd.DataFrame, order: int = 1) -> pd.DataFrame:
    """Mean test loss (the negative mean score) of each readout: targets x sources of one order."""
    sub = scores[scores.order == order]
    return -sub.pivot_table(index="target", columns="sources", values="score", aggfunc="mean")
