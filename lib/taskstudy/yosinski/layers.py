"""How transferable are features? Layer transfer after Yosinski et al. 2014 (Sec. 4, Fig. 2 and 3).

A classification net of L layers (``LayerNet.layers``, a list: L-3 conv blocks, two hidden fully connected
layers, the classifier last) is trained as *baseA* and *baseB* on two disjoint halves A and B of the classes.
For every n in 1..L-1 a net for task B gets its first n layers from a base net, the rest re-initialised:

* ``BnB``  first n layers from baseB, frozen (the paper's *selffer*); ``BnB+`` the same, fine-tuned;
* ``AnB``  first n layers from baseA, frozen (the *transfer* net); ``AnB+`` the same, fine-tuned;
* ``random`` first n layers random and frozen (the paper's random-filter control, Sec. 4.3).

Two class splits: ``similar`` (a random half of the classes, the paper's random A/B split) and ``dissimilar``
(the paper's man-made / natural split, Sec. 4.2; on the object world organic vs manufactured classes,
objects.class_splits). Every net trains until its loss on a validation split of its half stops improving (early
stopping, train.fit_validated); top-1 is measured on the test split. Every (split kind, treatment, n, seed)
training run is one unit for ``parallel.run_units``; results go to the store keyed by every parameter and the
code that determine them, so reruns reuse finished units and killed runs resume. A frozen prefix is evaluated
once (its features cached for the run), which is the same computation as training the whole net with the
prefix's parameters excluded, at a fraction of the cost.

The net is taskstudy.nn.layernet, the image sets taskstudy.world.image_sets; the findings read from the runs are in
`findings`, the figures in taskstudy.report.layer_transfer.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from taskstudy import uncertainty
from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.store import Store, stable_hash
from taskstudy.nn.layernet import LayerNet, NetConfig, copy_first_layers, train_net
from taskstudy.nn.train import TrainConfig, kernels, resolve_device, seed_everything
from taskstudy.world import cifar
from taskstudy.world.image_sets import class_splits, raw_images

if TYPE_CHECKING:
    from taskstudy.engine.sections import Common

VERSION = "2"  # the store entries' format (the code itself is part of every key: data_key)
SPLIT_KINDS = ("similar", "dissimilar")
BASES = ("baseA", "baseB")
TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+", "random")
FROZEN = {"BnB": True, "BnB+": False, "AnB": True, "AnB+": False, "random": True}
SOURCE = {"BnB": "baseB", "BnB+": "baseB", "AnB": "baseA", "AnB+": "baseA", "random": None}


# ---- data --------------------------------------------------------------------------------------------------
def data_key(values: Mapping[str, Any], common: Common) -> dict[str, Any]:
    """Every parameter and the code that determine the A/B image sets and what is trained on them."""
    key: dict[str, Any] = {"dataset": values["dataset"], "n_images": values["n_images"], "n_val": values["n_val"],
                           "n_test": values["n_test"], "image_size": values["image_size"], "seed": common.seed,
                           "code": computation_hash(run_unit)}
    if values["dataset"] == "cifar100":
        key["cifar_root"] = str(cifar.cifar_root(values["cifar_root"], "layer_transfer.cifar_root"))
    elif values["dataset"] != "objects":
        raise ValueError(f"layer_transfer.dataset must be 'objects' or 'cifar100', got {values['dataset']!r}")
    return key


@lru_cache(maxsize=2)
def _halves(key_items: tuple, store_root: str) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    key = dict(key_items)
    xtr, ytr, xva, yva, xte, yte, n_classes = raw_images(key, store_root)
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for kind, halves in class_splits(key, store_root).items():
        out[kind] = {}
        for part, classes in halves.items():
            remap = np.full(n_classes, -1, np.int64)
            remap[classes] = np.arange(len(classes))
            d: dict[str, torch.Tensor] = {"n_classes": torch.tensor(len(classes))}
            for s, x, y in (("tr", xtr, ytr), ("va", xva, yva), ("te", xte, yte)):
                m = remap[y] >= 0
                d["x" + s] = torch.from_numpy(((x[m] - mean) / std).astype(np.float32))  # (N, 3, H, W)
                d["y" + s] = torch.from_numpy(remap[y[m]])
            out[kind][part] = d
    return out


def halves(key: Mapping[str, Any], store_root: str | Path) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Normalised tensors of every half: [split kind]["A"|"B"] -> xtr, ytr, xva, yva, xte, yte, n_classes."""
    return _halves(tuple(sorted(key.items())), str(store_root))


# ---- units -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    store_root: str  # the results store the worker reads data and base nets from
    data: tuple  # sorted items of data_key()
    layers: int  # L
    width: int  # first conv block's channels
    hidden: int  # hidden fully connected units
    epochs: int  # at most this many passes over the target half
    patience: int  # epochs without a better validation loss before training stops
    batch_size: int  # images per step
    lr: float  # Adam learning rate
    split_kind: str  # "similar" | "dissimilar"
    treatment: str  # "baseA", "baseB" or one of TREATMENTS
    n: int  # layers copied (0 for the bases)
    seed: int  # repeat index (0..seeds-1)
    kernels: tuple = ()  # sorted items of train.kernels(common): precision and memory layout of the training
    device: str = "cpu"  # torch device of the run (not part of the key)

    def key(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("store_root")
        d.pop("device")
        d["data"] = dict(self.data)
        return d

    def base(self, which: str) -> Unit:
        return Unit(**{**asdict(self), "treatment": which, "n": 0})


def _torch_seed(unit: Unit) -> int:
    return int(stable_hash([dict(unit.data)["seed"], unit.split_kind, unit.treatment, unit.n, unit.seed], 8), 16)


def make_net(unit: Unit, n_classes: int) -> LayerNet:
    image_size = dict(unit.data)["image_size"]
    return LayerNet(NetConfig(unit.layers, unit.width, unit.hidden, image_size, n_classes))


def run_unit(unit: Unit) -> dict[str, Any]:
    """One training run. Bases return their state dict with the top-1; transfers read their base from the store."""
    t0 = time.process_time()
    sets = halves(dict(unit.data), unit.store_root)[unit.split_kind]
    target = sets["A"] if unit.treatment == "baseA" else sets["B"]
    seed = _torch_seed(unit)
    cfg = TrainConfig(epochs=unit.epochs, batch_size=unit.batch_size, lr=unit.lr, seed=seed, **dict(unit.kernels))
    seed_everything(seed)
    net = make_net(unit, int(target["n_classes"]))
    source = SOURCE.get(unit.treatment)
    if source is not None:
        base_unit = unit.base(source)
        state = Store(unit.store_root).load("layer_bases", base_unit.key(), VERSION)
        if state is None:
            raise RuntimeError(f"base net {source} ({unit.split_kind}, seed {unit.seed}) missing from the store")
        base = make_net(base_unit, int(sets[source[-1]]["n_classes"]))
        base.load_state_dict(state)
        copy_first_layers(base, net, unit.n, freeze=FROZEN[unit.treatment])
    n_frozen = unit.n if FROZEN.get(unit.treatment, False) else 0
    top1, log = train_net(net, n_frozen, target, cfg, unit.patience, resolve_device(unit.device))
    out: dict[str, Any] = {"top1": top1, "cpu_s": time.process_time() - t0, "epochs_run": len(log["val_loss"]),
                           "best_epoch": log["best_epoch"], "train_loss": log["train_loss"],
                           "val_loss": log["val_loss"]}
    if unit.treatment in BASES:
        out["state"] = {k: v.detach().clone() for k, v in net.state_dict().items()}
    return out


def make_units(values: Mapping[str, Any], common: Common, store_root: str | Path) -> tuple[list[Unit], list[Unit]]:
    """(base units, transfer units) of the whole experiment."""
    dkey = tuple(sorted(data_key(values, common).items()))
    shared = {k: values[k] for k in ("layers", "width", "hidden", "epochs", "patience", "batch_size", "lr")}
    L = int(values["layers"])

    def u(kind: str, treatment: str, n: int, seed: int) -> Unit:
        return Unit(str(store_root), dkey, **shared, split_kind=kind, treatment=treatment, n=n, seed=seed,
                    kernels=tuple(sorted(kernels(common).items())), device=common.device)

    seeds = range(int(values["seeds"]))
    tuned = set(fine_tuned_n(values))
    bases = [u(k, b, 0, s) for k in SPLIT_KINDS for s in seeds for b in BASES]
    transfers = [u(k, t, n, s) for k in SPLIT_KINDS for s in seeds for n in range(1, L) for t in TREATMENTS
                 if FROZEN[t] or n in tuned]
    return bases, transfers


def fine_tuned_n(values: Mapping[str, Any]) -> list[int]:
    """The n at which the fine-tuned treatments (BnB+, AnB+) run: `fine_tuned_n`, or every n when empty."""
    L = int(values["layers"])
    chosen = list(values.get("fine_tuned_n") or range(1, L))
    bad = [n for n in chosen if not 1 <= n < L]
    if bad:
        raise ValueError(f"layer_transfer.fine_tuned_n must lie in 1..{L - 1} (layers - 1), got {bad}")
    return sorted(set(chosen))


def unit_counts(values: Mapping[str, Any]) -> dict[str, int]:
    L, seeds, tuned = int(values["layers"]), int(values["seeds"]), len(fine_tuned_n(values))
    per = {"bases": 2 * seeds, "transfers": (2 * (L - 1) + 2 * tuned) * seeds, "random": (L - 1) * seeds}
    out = {k: len(SPLIT_KINDS) * v for k, v in per.items()}
    out["total"] = sum(out.values())
    return out


_RESULT_FIELDS = ("top1", "cpu_s", "epochs_run", "best_epoch", "train_loss", "val_loss")


def run_layer_transfer(values: Mapping[str, Any], common: Common, store: Store, bases_only: bool = False
                       ) -> pd.DataFrame:
    """Run (or read from the store) every unit (with bases_only, the base nets only); rows: split_kind,
    treatment, n, seed, top1, cpu_s (the unit's CPU seconds when it was computed: its cost, independent of other
    load on the machine), epochs_run, best_epoch, and the per-epoch train_loss / val_loss lists (the calibration
    curves)."""
    halves(data_key(values, common), store.root)  # render / load the data once, before any worker needs it
    bases, transfers = make_units(values, common, store.root)
    if bases_only:
        transfers = []
    results: dict[Unit, dict[str, Any]] = {}

    def done(unit: Unit) -> bool:
        r = store.load("layer_units", unit.key(), VERSION)
        if r is not None and (unit.treatment not in BASES or store.exists("layer_bases", unit.key(), VERSION)):
            results[unit] = {k: r[k] for k in _RESULT_FIELDS}
            return True
        return False

    def on_result(unit: Unit, r: dict[str, Any]) -> None:
        if "state" in r:
            store.save("layer_bases", unit.key(), r["state"], VERSION, fmt="pt")
        results[unit] = {k: r[k] for k in _RESULT_FIELDS}
        store.save("layer_units", unit.key(), results[unit], VERSION, fmt="json")

    from taskstudy.engine.parallel import run_units

    for phase, desc in ((bases, "base nets"), (transfers, "transfer nets")):  # transfers read their bases
        run_units(run_unit, phase, store=store, kind="layer_units", key=Unit.key, version=VERSION, save=on_result,
                  common=common, done=done, desc=desc)
    rows = [{"split_kind": u.split_kind, "treatment": u.treatment, "n": u.n, "seed": u.seed, **results[u]}
            for u in bases + transfers]
    return pd.DataFrame(rows)


def schedule_check(values: Mapping[str, Any], common: Common, store: Store, runs: pd.DataFrame, epochs: int
                   ) -> pd.DataFrame:
    """Is the schedule long enough? The base nets of the first seed retrained with an `epochs`-long schedule
    (same early stopping), beside the study's: per base, the best validation loss and the test top-1 of both."""
    longer = run_layer_transfer({**values, "epochs": epochs, "seeds": 1}, common, store, bases_only=True)
    ours = runs[runs.treatment.isin(BASES) & (runs.seed == 0)]
    rows = []
    for label, df, length in (("study", ours, values["epochs"]), ("longer", longer, epochs)):
        for r in df.itertuples():
            rows.append({"split": r.split_kind, "net": r.treatment, "schedule": f"{label} ({length} epochs)",
                         "epochs run": r.epochs_run, "best val loss": r.val_loss[r.best_epoch - 1], "top-1": r.top1})
    return pd.DataFrame(rows).pivot_table(index=["split", "net"], columns="schedule",
                                          values=["best val loss", "top-1", "epochs run"])


def schedule_verdict(check: pd.DataFrame, runs: pd.DataFrame) -> dict[str, Any]:
    """Read a schedule_check on the paired differences: per base net (the same seed, split and data under both
    schedules) the gain in best validation loss of the longer schedule (> 0: it found lower losses), its mean with
    the Student-t 95% interval over the nets (gain_lo, gain_hi); converged when that interval holds 0 or lies
    below it (no gain beyond noise). `spread`: the seed-to-seed standard deviation of the bases' best validation
    loss under the study's schedule, for scale."""
    val = check["best val loss"]
    study = [c for c in val.columns if c.startswith("study")][0]
    longer = [c for c in val.columns if c.startswith("longer")][0]
    gain, lo, hi = uncertainty.seed_interval((val[study] - val[longer]).to_numpy(float))
    bases = runs[runs.treatment.isin(BASES)]
    best = bases.apply(lambda r: r.val_loss[r.best_epoch - 1], axis=1)
    spread = float(best.groupby([bases.split_kind, bases.treatment]).std().mean())
    return {"gain": gain, "gain_lo": lo, "gain_hi": hi, "spread": spread, "converged": bool(lo <= 0)}
