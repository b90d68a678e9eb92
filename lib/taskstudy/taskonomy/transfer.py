"""Taskonomy Step II's readouts (Zamir et al. 2018, Sec. 3.2): the protocol of one transfer, its units and tables.

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

Which readouts Step II trains (every first-order one, or an adaptive strategy's) is `taskonomy.step2`'s choice.
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
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.nn import grouped
from taskstudy.nn.models import make_readout
from taskstudy.nn.train import TrainConfig, fit_validated, kernels, predict, resolve_device
from taskstudy.taskonomy.features import (
    RANDOM,
    SPLITS,
    VERSION,
    encoder_key,
    feature_keys,
    load_keyed,
    query_kind,
    view_name,
)
from taskstudy.taskonomy.task_networks import VERSION as NET_VERSION
from taskstudy.taskonomy.task_networks import (
    build_network,
    scores_key,
    unit_seed,
)
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams
    from taskstudy.engine.sections import Common, TaskNetworks, Transfers

SCRATCH = "scratch"  # a task network trained from scratch on the transfer split (Gain's reference)
FULL = "full"  # the Step I task network (Quality's reference; the paper's `self` candidate)


def sources_key(sources: tuple[str, ...] | list[str]) -> str:
    """Canonical name of a source set: sorted names joined by '+'."""
    return "+".join(sorted(sources))


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
        **({"schedule": cfg.schedule} if cfg.schedule != "cosine" else {}),
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
class Protocol:
    """What Step II's readout protocol uses of a profile, derived once from its params and handed down to every
    readout (issue 39, item 4): where the store is, `common` (seed, device, the splits), the readouts' section,
    the task networks' (the scratch network; the neck + decoder readout's width) and the training kernels resolved
    on this machine (`kernels`: the same fields every key of the profile carries)."""

    root: str
    common: Common
    cfg: Transfers
    net: TaskNetworks
    train: dict[str, Any]


def protocol(params: StudyParams) -> Protocol:
    """The profile's readout protocol (`Protocol`), derived once."""
    return Protocol(str(Store.for_params(params).root), params.common, params.section("transfers"),
                    params.section("task_networks"), kernels(params.common))


@dataclass(frozen=True)
class TargetUnit:
    """Readouts of one target still missing from the store, or its scratch network (picklable for Dask workers):
    the protocol and each source set's feature keys per split come derived from the client."""

    proto: Protocol
    target: str
    source_sets: tuple[tuple[str, ...], ...]
    scratch: bool  # also train the from-scratch network (Gain's reference)
    part: int = 0  # which chunk of the target's readouts (its lock's name)
    features: tuple[tuple[tuple[str, ...], ...], ...] = ()  # per source set, per split (SPLITS): feature_keys


#: Readouts per unit of Step II: small units keep both workers busy to the end of a phase (a unit of a whole
#: target's 22 readouts took 25-60 s, and the last one left a worker idle that long).
UNIT_READOUTS = 6


def _labels(p: Protocol, target: str) -> dict[str, torch.Tensor]:
    store = Store(p.root)
    return {split: data.target(data.scene_split(store, p.common, split), target) for split in SPLITS}


def build_readout(p: Protocol, target: str, in_channels: int) -> torch.nn.Module:
    """The profile's D_{S->t} for `target` on `in_channels` of frozen features (transfers.readout, readout_width;
    the neck + decoder readout uses the task networks' decoder_width)."""
    t = taskdict.get_task(target)
    return make_readout(t.kind, in_channels, t.channels, p.cfg.readout_width, p.cfg.readout, p.net.decoder_width)


def fit_readouts(p: Protocol, target: str, zs: dict[str, dict[str, torch.Tensor]]
                 ) -> dict[str, tuple[np.ndarray, dict[str, Any]]]:
    """Step II's readout protocol for several source sets of one target, on given frozen features zs[name][split]
    (transfer, val, test): each D_{S->t} seeded by its `name`, trained on transfer and early-stopped on val; all
    with the target's batch order. Readouts of one architecture and input width train side by side as one group
    (taskstudy.nn.grouped: the same readouts, 1.8x faster); each returns its per-image test scores and training facts
    (val scores, TrainLog, its share of the group's seconds)."""
    cfg, t = p.cfg, taskdict.get_task(target)
    y = _labels(p, target)
    device = resolve_device(p.common.device)
    tc = TrainConfig(cfg.epochs, cfg.batch_size, cfg.lr, seed=unit_seed(p.common.seed, "readout order", target),
                     schedule=cfg.schedule, **p.train)
    models, groups = {}, defaultdict(list)
    for name, z in zs.items():
        torch.manual_seed(unit_seed(p.common.seed, "readout", target, name))
        models[name] = build_readout(p, target, z["transfer"].shape[1])
        groups[z["transfer"].shape[1]].append(name)
    out = {}
    for names in groups.values():
        rs = [models[n] for n in names]
        start = time.perf_counter()
        if grouped.groupable(rs) and tc.schedule == "cosine":  # a group shares one rate: the cosine's
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


def fit_readout(p: Protocol, target: str, z: dict[str, torch.Tensor], name: str) -> tuple[np.ndarray,
                dict[str, Any]]:
    """One readout D_{S->t} by the protocol of `fit_readouts` (seeded by `name`, the target's batch order)."""
    return fit_readouts(p, target, {name: z})[name]


def unit_features(params: StudyParams, target: str, source_sets: Sequence[tuple[str, ...]]
                  ) -> tuple[tuple[tuple[str, ...], ...], ...]:
    """Per source set, per split (SPLITS), the keys of its cached features in `target`'s query form."""
    return tuple(tuple(feature_keys(params, s, split, query_kind(target)) for split in SPLITS) for s in source_sets)


def _train_readouts(p: Protocol, target: str, source_sets: Sequence[tuple[str, ...]],
                    features: Sequence[Sequence[tuple[str, ...]]]
                    ) -> dict[tuple[str, ...], tuple[np.ndarray, dict[str, Any]]]:
    zs = {sources_key(s): {split: load_keyed(p.root, keys, split) for split, keys in zip(SPLITS, fk, strict=True)}
          for s, fk in zip(source_sets, features, strict=True)}
    res = fit_readouts(p, target, zs)
    return {s: res[sources_key(s)] for s in source_sets}


def train_readouts(params: StudyParams, target: str, source_sets: Sequence[tuple[str, ...]]
                   ) -> dict[tuple[str, ...], tuple[np.ndarray, dict[str, Any]]]:
    """The readouts D_{S->t} of `source_sets` on the cached frozen features (fit_readouts, side by side)."""
    return _train_readouts(protocol(params), target, source_sets, unit_features(params, target, source_sets))


def train_readout(params: StudyParams, target: str, sources: tuple[str, ...]) -> tuple[np.ndarray, dict[str, Any]]:
    """One readout D_{S->t} on the cached frozen features of `sources` (fit_readout)."""
    return train_readouts(params, target, [sources])[sources]


def train_scratch(p: Protocol, target: str) -> tuple[np.ndarray, dict[str, Any]]:
    """The target's whole network trained from scratch on the transfer split, early-stopped on val (the
    reference of Gain)."""
    store, t, net_cfg, cfg = Store(p.root), taskdict.get_task(target), p.net, p.cfg
    d = {split: data.scene_split(store, p.common, split) for split in SPLITS}
    x = {split: data.network_input(p.common, d[split], target) for split in SPLITS}
    y = {split: data.target(d[split], target) for split in SPLITS}
    seed = unit_seed(p.common.seed, "scratch", target)
    torch.manual_seed(seed)
    net = build_network(target, net_cfg)
    device = resolve_device(p.common.device)
    start = time.perf_counter()
    log = fit_validated(net, x["transfer"], y["transfer"], t.loss,
                        TrainConfig(cfg.scratch_epochs, net_cfg.batch_size, net_cfg.lr, seed=seed, **p.train),
                        (x["val"], y["val"]), patience=cfg.patience, device=device)
    wall = time.perf_counter() - start
    scores = t.score(predict(net, x["test"], device=device), y["test"]).numpy()
    val_scores = t.score(predict(net, x["val"], device=device), y["val"]).numpy()
    return scores, {"val_scores": val_scores, "log": log.as_dict(), "wall_s": wall}


def target_unit(u: TargetUnit) -> dict[str, Any]:
    """Train the missing readouts (and scratch network) of one target; the client stores the results."""
    out: dict[str, Any] = {"readouts": _train_readouts(u.proto, u.target, u.source_sets, u.features)
                           if u.source_sets else {}}
    if u.scratch:
        out["scratch"] = train_scratch(u.proto, u.target)
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


def run_readouts(params: StudyParams, plan: dict[str, list[tuple[str, ...]]], scratch: set[str], phase: str
                 ) -> list[str]:
    """Train the readouts in `plan` (target -> source sets) and the scratch networks of `scratch` that are not in
    the store yet: each scratch network one unit (first, as the longest), each target's readouts in units of at
    most UNIT_READOUTS, each unit claimed by a lock per (target, phase, part) against concurrent runs."""
    store, proto = Store.for_params(params), protocol(params)

    def unit(target: str, sets: tuple[tuple[str, ...], ...], scratch: bool, part: int) -> TargetUnit:
        return TargetUnit(proto, target, sets, scratch, part, unit_features(params, target, sets))

    def left(u: TargetUnit) -> TargetUnit | None:
        """The unit again if anything of it is missing: all its readouts, since they train as one group (the
        same group as in an uninterrupted run, so the same bytes); only the missing ones are saved."""
        missing = any(not store.exists("readout", readout_key(params, u.target, s), VERSION) for s in u.source_sets)
        need_scratch = u.scratch and not store.exists("scratch", scratch_key(params, u.target), VERSION)
        if not (missing or need_scratch):
            return None
        return replace(u, scratch=need_scratch) if missing else replace(u, source_sets=(), features=(),
                                                                          scratch=need_scratch)

    units = [unit(t, (), True, -1) for t in plan if t in scratch]
    for t, sets in plan.items():
        units += [unit(t, tuple(sets[i:i + UNIT_READOUTS]), False, i // UNIT_READOUTS)
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


def loss_matrix(scores: pd.DataFrame, order: int = 1) -> pd.DataFrame:
    """Mean test loss (the negative mean score) of each readout: targets x sources of one order."""
    sub = scores[scores.order == order]
    return -sub.pivot_table(index="target", columns="sources", values="score", aggfunc="mean")
