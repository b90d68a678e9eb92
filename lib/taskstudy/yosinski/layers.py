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
import torch.nn.functional as F
from torch import nn

from taskstudy import uncertainty
from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.store import Store, stable_hash
from taskstudy.nn.train import TrainConfig, fit_validated, kernels, predict, resolve_device, seed_everything

if TYPE_CHECKING:
    from taskstudy.engine.params import Common

VERSION = "2"  # the store entries' format (the code itself is part of every key: data_key)
SPLIT_KINDS = ("similar", "dissimilar")
BASES = ("baseA", "baseB")
TREATMENTS = ("BnB", "BnB+", "AnB", "AnB+", "random")
FROZEN = {"BnB": True, "BnB+": False, "AnB": True, "AnB+": False, "random": True}
SOURCE = {"BnB": "baseB", "BnB+": "baseB", "AnB": "baseA", "AnB+": "baseA", "random": None}

# Paper conditions (reference CSV) -> (split kind, our treatment name).
PAPER_CONDITIONS: dict[str, tuple[str, str]] = {
    "baseA_baseB_random_halves": ("similar", "baseB"),
    "selffer_BnB": ("similar", "BnB"),
    "selffer_BnB_plus": ("similar", "BnB+"),
    "transfer_AnB": ("similar", "AnB"),
    "transfer_AnB_plus": ("similar", "AnB+"),
    "random_weights_nolearn": ("similar", "random"),
    "natman_base_A": ("dissimilar", "baseA"),
    "natman_base_B": ("dissimilar", "baseB"),
    "natman_transfer_AB": ("dissimilar", "AnB"),
    "natman_transfer_BA": ("dissimilar", "BnA"),
}
PAPER_CSV = "yosinski2014_imagenet_top1.csv"


# ---- the net -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetConfig:
    layers: int = 6  # L: L-3 conv blocks, 2 hidden fully connected layers, the classifier
    width: int = 8  # channels of the first conv block; later blocks 2x, then 4x
    hidden: int = 64  # units of each hidden fully connected layer
    image_size: int = 32  # input images are image_size x image_size
    n_classes: int = 24  # outputs of the classifier (the classes of one half)


class LayerNet(nn.Module):
    """L layers in a ModuleList, so that "the first n layers" is well defined; ``layers[-1]`` is the classifier.

    Conv block i: 3x3 conv (width * 2**min(i, 2) channels), batch norm, ReLU, 2x2 max pool while the map is
    larger than 4x4. Then flatten, two Linear+ReLU layers of `hidden` units, the Linear classifier.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if cfg.layers < 4:
            raise ValueError(f"LayerNet needs layers >= 4 (1 conv, 2 hidden, classifier), got {cfg.layers}")
        self.cfg = cfg
        blocks: list[nn.Module] = []
        c, s = 3, cfg.image_size
        for i in range(cfg.layers - 3):
            co = cfg.width * 2 ** min(i, 2)
            mods: list[nn.Module] = [nn.Conv2d(c, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU()]
            if s > 4:
                mods.append(nn.MaxPool2d(2))
                s //= 2
            blocks.append(nn.Sequential(*mods))  # (B, c, s, s) -> (B, co, s', s')
            c = co
        blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, cfg.hidden), nn.ReLU()))  # (B, hidden)
        blocks.append(nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU()))  # (B, hidden)
        blocks.append(nn.Linear(cfg.hidden, cfg.n_classes))  # (B, n_classes)
        self.layers = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, n_classes)
        for layer in self.layers:
            x = layer(x)
        return x

    def prefix(self, n: int) -> nn.Sequential:
        """The first n layers (shared modules, not copies)."""
        return nn.Sequential(*self.layers[:n])

    def suffix(self, n: int) -> nn.Sequential:
        """Layers n+1..L (shared modules)."""
        return nn.Sequential(*self.layers[n:])


def copy_first_layers(src: LayerNet, dst: LayerNet, n: int, freeze: bool) -> None:
    """Copy the parameters and buffers of the first n layers of `src` into `dst`; freeze them if asked."""
    if not 0 <= n < len(dst.layers):
        raise ValueError(f"n must be in 0..{len(dst.layers) - 1} (the classifier is never copied), got {n}")
    for i in range(n):
        dst.layers[i].load_state_dict(src.layers[i].state_dict())
    freeze_first_layers(dst, n, freeze)


def freeze_first_layers(net: LayerNet, n: int, freeze: bool = True) -> None:
    for i in range(n):
        net.layers[i].requires_grad_(not freeze)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def train_net(net: LayerNet, n_frozen: int, data: Mapping[str, torch.Tensor], cfg: TrainConfig, patience: int,
              device: torch.device | str = "cpu") -> tuple[float, dict]:
    """Train `net` on data["xtr"], data["ytr"] with its first `n_frozen` layers fixed, early-stopped on the
    validation split (xva, yva); (top-1 on the test split, the training log as a dict).

    The frozen prefix runs once in eval mode (its batch-norm statistics stay those it came with); the rest is
    trained on the prefix's features: the same computation as training the whole net with the prefix excluded.
    """
    freeze_first_layers(net, n_frozen, True)
    prefix, suffix = net.prefix(n_frozen), net.suffix(n_frozen)
    xtr, xva, xte = data["xtr"], data["xva"], data["xte"]
    if n_frozen:
        xtr, xva, xte = (predict(prefix, x, device=device) for x in (xtr, xva, xte))
    log = fit_validated(suffix, xtr, data["ytr"], F.cross_entropy, cfg, (xva, data["yva"]), patience=patience,
                        device=device)
    top1 = accuracy(predict(suffix, xte, device=device), data["yte"])
    net.cpu()
    return top1, log.as_dict()


# ---- data --------------------------------------------------------------------------------------------------
def data_key(values: Mapping[str, Any], common: Common) -> dict[str, Any]:
    """Every parameter and the code that determine the A/B image sets and what is trained on them."""
    key: dict[str, Any] = {"dataset": values["dataset"], "n_images": values["n_images"], "n_val": values["n_val"],
                           "n_test": values["n_test"], "image_size": values["image_size"], "seed": common.seed,
                           "code": computation_hash(run_unit)}
    if values["dataset"] == "cifar100":
        key["cifar_root"] = str(_cifar_root(values["cifar_root"]))
    elif values["dataset"] != "objects":
        raise ValueError(f"layer_transfer.dataset must be 'objects' or 'cifar100', got {values['dataset']!r}")
    return key


def _cifar_root(root: str | None) -> Path:
    if not root:
        raise ValueError("layer_transfer.dataset is 'cifar100' but layer_transfer.cifar_root is not set")
    p = Path(root).expanduser()
    if not p.is_absolute():
        from taskstudy.engine.paths import find_root

        p = find_root() / p
    return p.resolve()


def raw_images(key: Mapping[str, Any], store_root: str) -> tuple[Any, ...]:
    """(xtr, ytr, xva, yva, xte, yte, n_classes) of the whole data set (key: data_key's fields), images as
    float32 (N, 3, H, W) in [0, 1]. CIFAR-100's validation images come from its training set (disjoint from the
    training images drawn), its test images from its test set."""
    if key["dataset"] == "objects":
        from taskstudy.world import data, objects

        store = Store(store_root)
        out: list[Any] = []
        for split, n in (("train", key["n_images"]), ("val", key["n_val"]), ("test", key["n_test"])):
            d = data.object_split(store, split, n, key["seed"], key["image_size"])
            out += [d["rgb"], d["label"]]
        return (*out, objects.num_classes())
    from taskstudy.world.realdata import cifar100

    out = []
    for train, sizes in ((True, (key["n_images"], key["n_val"])), (False, (key["n_test"],))):
        ds = cifar100(key["cifar_root"], train=train)
        rng = np.random.default_rng([key["seed"], 808, int(train)])
        perm = rng.permutation(len(ds))
        start = 0
        for n in sizes:
            idx = np.sort(perm[start:start + min(n, len(ds) - start)])
            start += len(idx)
            x = torch.from_numpy(ds.data[idx].transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
            if key["image_size"] != x.shape[-1]:
                x = F.interpolate(x, size=key["image_size"], mode="bilinear", antialias=True, align_corners=False)
            out += [x.numpy(), ds.labels[idx]]
    return (*out, 100)


def class_splits(key: Mapping[str, Any], store_root: str) -> dict[str, dict[str, np.ndarray]]:
    """{"similar": {"A", "B"}, "dissimilar": {"A", "B"}}: class ids of each half."""
    if key["dataset"] == "objects":
        from taskstudy.world import objects

        return objects.class_splits(key["seed"])
    from taskstudy.world.realdata import cifar100, cifar100_split

    ds = cifar100(key["cifar_root"], train=True)
    perm = np.random.default_rng([key["seed"], 4242]).permutation(100)
    nat, man = cifar100_split(ds, "natural"), cifar100_split(ds, "man_made")
    return {"similar": {"A": np.sort(perm[:50]), "B": np.sort(perm[50:])},
            "dissimilar": {"A": np.asarray(nat.fine_ids), "B": np.asarray(man.fine_ids)}}  # as in the paper's logs


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
                    kernels=tuple(sorted(kernels(common).items())), device=getattr(common, "device", "cpu"))

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


def calibration_curves(runs: pd.DataFrame) -> pd.DataFrame:
    """The base nets' training and validation loss per epoch (tidy rows: split_kind, treatment, seed, epoch,
    split, loss, best), for the calibration figure."""
    rows = []
    for r in runs[runs.treatment.isin(BASES)].itertuples():
        for split, losses in (("train", r.train_loss), ("val", r.val_loss)):
            rows += [{"split_kind": r.split_kind, "treatment": r.treatment, "seed": r.seed, "epoch": e,
                      "split": split, "loss": v, "best": e == r.best_epoch} for e, v in enumerate(losses, 1)]
    return pd.DataFrame(rows)


def plot_calibration(runs: pd.DataFrame, max_epochs: int) -> Any:
    """Validation (solid) and training (dotted) loss of every base net against epochs; a ring marks the kept
    epoch. Early stopping is what ends each curve; a curve reaching `max_epochs` hit the ceiling."""
    import matplotlib.pyplot as plt

    curves = calibration_curves(runs)
    fig, axes = plt.subplots(1, len(SPLIT_KINDS), figsize=(11, 3.6), sharey=True, squeeze=False)
    colours = {"baseA": "#c0282d", "baseB": "#1f4e9c"}
    for ax, kind in zip(axes[0], SPLIT_KINDS, strict=True):
        sub = curves[curves.split_kind == kind]
        for (treatment, seed), d in sub.groupby(["treatment", "seed"]):
            c = colours[treatment]
            for split, ls in (("val", "-"), ("train", ":")):
                dd = d[d.split == split]
                ax.plot(dd.epoch, dd.loss, ls=ls, color=c, lw=1.2, alpha=0.8,
                        label=f"{treatment} {split}" if seed == 0 else None)
            best = d[(d.split == "val") & d.best]
            ax.scatter(best.epoch, best.loss, s=30, facecolors="none", edgecolors=c, zorder=3)
        ax.axvline(max_epochs, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{kind} split", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("cross-entropy")
    axes[0, 0].legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


# ---- summaries and findings --------------------------------------------------------------------------------
def summarise(df: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min, max and runs of top-1 per (split_kind, treatment, n)."""
    g = df.groupby(["split_kind", "treatment", "n"], sort=False)["top1"]
    out = g.agg(mean="mean", std="std", min="min", max="max", runs="count").reset_index()
    return out


#: finding -> (what the paper states, the sign its difference has when the finding holds)
FINDINGS: dict[str, tuple[str, int]] = {
    "coadaptation": ("BnB falls below baseB in the middle layers: co-adapted layers split apart (Sec. 4.1)", -1),
    "anb_falls": ("AnB falls below baseB at the top layers: their features are specific to A (Sec. 4.1)", -1),
    "dissimilar_worse": ("AnB's fall is larger between dissimilar halves (Sec. 4.2)", +1),
    "anbplus_boost": ("AnB+ is above baseB: transfer plus fine-tuning generalises better (Sec. 4.1)", +1),
    "random_worse": ("random filters fall below transferred ones from n = 2 on (Sec. 4.3)", -1),
}
#: finding -> how its difference is computed (for the chapter's table)
STATISTICS: dict[str, str] = {
    "coadaptation": "mean over the middle n (3..L-3; 2..L-2 for L < 6) of BnB - baseB, random split",
    "anb_falls": "mean over the top two n of AnB - baseB, random split",
    "dissimilar_worse": "relative fall of AnB (top two n, / baseB): dissimilar minus random split",
    "anbplus_boost": "mean over n of AnB+ - baseB, random split",
    "random_worse": "mean over n >= 2 of random - AnB, random split",
}


def _seed_stats(df: pd.DataFrame) -> dict[str, float]:
    """The five findings' differences on one seed's runs (or on the paper's means)."""
    m = df.groupby(["split_kind", "treatment", "n"])["top1"].mean()

    def curve(kind: str, treatment: str) -> pd.Series:
        try:
            return m.loc[(kind, treatment)].sort_index()
        except KeyError:
            return pd.Series(dtype=float)

    base = {k: float(curve(k, "baseB").mean()) for k in SPLIT_KINDS}
    anb = {k: curve(k, "AnB") for k in SPLIT_KINDS}
    L = int(max(anb["similar"].index.max(), curve("similar", "BnB").index.max())) + 1
    top = [n for n in (L - 2, L - 1)]

    def fall(k: str) -> float:
        return float((base[k] - anb[k].reindex(top)).mean() / base[k]) if base[k] > 0 else float("nan")

    bnb, plus, rnd = curve("similar", "BnB"), curve("similar", "AnB+"), curve("similar", "random")
    lo = 3 if L >= 6 else 2  # the paper's middle layers of 8: n = 3..5
    middle = [n for n in bnb.index if lo <= n <= L - lo]
    late = [n for n in rnd.index if n >= 2 and n in anb["similar"].index]
    return {
        "coadaptation": float((bnb.reindex(middle) - base["similar"]).mean()),
        "anb_falls": float((anb["similar"].reindex(top) - base["similar"]).mean()),
        "dissimilar_worse": fall("dissimilar") - fall("similar"),
        "anbplus_boost": float((plus - base["similar"]).mean()),
        "random_worse": float((rnd.reindex(late) - anb["similar"].reindex(late)).mean()) if late else float("nan"),
    }


def selffer_gain(df: pd.DataFrame) -> dict[str, float]:
    """BnB+ - baseB on the random split (mean over the fine-tuned n; per seed, then mean and 95% seed band): what a
    second round of training from a base's own layers adds. The paper finds about zero (BnB+ recovers baseB,
    Sec. 4.1); a clearly positive value says the selffer nets gain from the retraining itself, which hides a
    co-adaptation dip."""
    gains = []
    for _, d in df[df.split_kind == "similar"].groupby("seed"):
        base = d[d.treatment == "baseB"].top1.mean()
        gains.append(float(d[d.treatment == "BnB+"].top1.mean() - base))
    mean, lo, hi = uncertainty.seed_interval(gains)
    return {"gain": mean, "lo": lo, "hi": hi}


def findings(df: pd.DataFrame, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Yosinski et al.'s findings measured on the runs: per finding the difference it is about, computed per seed
    (each seed's treatments against that seed's base nets), its mean and 95% seed band (uncertainty.seed_interval)
    and the verdict against the band (uncertainty.sign_verdict); with `paper`, the same difference on the paper's
    means beside it."""
    per_seed = pd.DataFrame([_seed_stats(d) for _, d in df.groupby("seed")]) if "seed" in df else \
        pd.DataFrame([_seed_stats(df)])
    ref = _seed_stats(paper) if paper is not None else {}
    rows = []
    for f, (claim, sign) in FINDINGS.items():
        mean, lo, hi = uncertainty.seed_interval(per_seed[f])
        rows.append({"finding": f, "claim": claim, "statistic": STATISTICS[f], "paper": ref.get(f, np.nan),
                     "study": mean, "lo": lo, "hi": hi, "seeds": int(per_seed[f].notna().sum()),
                     "verdict": uncertainty.sign_verdict(lo, hi, sign)})
    return pd.DataFrame(rows).set_index("finding")


def paper_beside(f: pd.DataFrame, setting: str) -> pd.DataFrame:
    """The paper's claims (reference/claims.csv) beside the study's findings (`findings`) and `setting` (the
    study's setup in words), each with its verdict against the seed band."""
    from taskstudy.reference import beside

    study: dict[str, tuple[str, bool | None]] = {"setting": (setting, None)}
    study |= {k: (f"{r.study:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] ({r.seeds} seeds)", None) for k, r in f.iterrows()}
    table = beside("08_layer_transfer", "paper (Yosinski et al. 2014)", study)
    table["verdict"] = [("setting" if k == "setting" else f.loc[k, "verdict"]) for k in table["finding"]]
    return table.drop(columns="agrees")


def base_levels(df: pd.DataFrame, splits: Mapping[str, Mapping[str, np.ndarray]]) -> pd.DataFrame:
    """Each base net's top-1 (mean and seed band) against chance, per split: the yardstick every treatment is
    read against (issue 18's target: >= 40% and >= 10x chance)."""
    rows = []
    for (kind, treatment), d in df[df.treatment.isin(BASES)].groupby(["split_kind", "treatment"]):
        mean, lo, hi = uncertainty.seed_interval(d.top1)
        chance = 1 / len(splits[kind][treatment[-1]])
        rows.append({"split": kind, "net": treatment, "classes": len(splits[kind][treatment[-1]]), "top-1": mean,
                     "seed band lo": lo, "seed band hi": hi, "chance": chance, "x chance": mean / chance,
                     "epochs (median)": float(d.epochs_run.median()) if "epochs_run" in d else np.nan})
    return pd.DataFrame(rows)


# ---- the paper's numbers -----------------------------------------------------------------------------------
def reference_dir() -> Path:
    """The papers' published numbers (taskstudy.engine.paths.reference_dir)."""
    from taskstudy.engine.paths import reference_dir as _ref

    return _ref()


def load_paper_curves(path: str | Path | None = None) -> pd.DataFrame:
    """Yosinski et al.'s ImageNet top-1 per condition and n (reference CSV) as rows of split_kind, treatment,
    n, top1, runs, condition."""
    p = Path(path) if path is not None else reference_dir()
    if p.is_dir():
        p = p / PAPER_CSV
    if not p.is_file():
        raise FileNotFoundError(
            f"the paper's reference numbers are missing: {p} (set TASKSTUDY_REFERENCE to the folder holding "
            f"{PAPER_CSV})")
    raw = pd.read_csv(p)
    need = {"condition", "n_layers_copied", "mean_top1", "runs"}
    if not need <= set(raw.columns):
        raise ValueError(f"{p}: expected columns {sorted(need)}, got {list(raw.columns)}")
    raw = raw[raw.condition.isin(PAPER_CONDITIONS)]
    kinds = raw.condition.map(lambda c: PAPER_CONDITIONS[c][0])
    treat = raw.condition.map(lambda c: PAPER_CONDITIONS[c][1])
    out = pd.DataFrame({"split_kind": kinds, "treatment": treat, "n": raw.n_layers_copied.astype(int),
                        "top1": raw.mean_top1.astype(float), "runs": raw.runs.astype(int),
                        "condition": raw.condition})
    base = out[(out.condition == "baseA_baseB_random_halves")].assign(treatment="baseA")
    return pd.concat([out, base], ignore_index=True)


# ---- the figure --------------------------------------------------------------------------------------------
STYLE: dict[str, dict[str, Any]] = {
    "baseB": {"color": "black", "marker": "o", "mfc": "white"},
    "BnB": {"color": "#1f4e9c", "marker": "o"},
    "BnB+": {"color": "#7fb0e6", "marker": "o"},
    "AnB": {"color": "#c0282d", "marker": "D"},
    "AnB+": {"color": "#f28e8e", "marker": "D"},
    "random": {"color": "#2e8b3e", "marker": "v"},
}


def _panel(ax: Any, df: pd.DataFrame, kind: str, title: str, spread: bool) -> None:
    sub = df[df.split_kind == kind]
    for t, st in STYLE.items():
        d = sub[sub.treatment == t]
        if d.empty:
            continue
        mean = d.groupby("n")["top1"].mean()
        ax.plot(mean.index, mean.to_numpy(), label=t, color=st["color"], marker=st["marker"],
                mfc=st.get("mfc", st["color"]), ms=6, lw=1.5, zorder=3)
        if spread and "seed" in d and d.seed.nunique() > 1:
            lo, hi = d.groupby("n")["top1"].min(), d.groupby("n")["top1"].max()
            ax.fill_between(lo.index, lo.to_numpy(), hi.to_numpy(), color=st["color"], alpha=0.15, lw=0)
            ax.scatter(d.n, d.top1, color=st["color"], s=8, alpha=0.6, zorder=2)
    base = sub[sub.treatment == "baseB"]["top1"]
    if len(base):
        ax.axhline(float(base.mean()), color="black", lw=0.8, ls=":", zorder=1)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("layers n copied from the base net")
    ax.set_ylabel("top-1 accuracy on task B")
    ax.grid(alpha=0.3)


def plot_transfer(ours: pd.DataFrame, paper: pd.DataFrame, dataset: str = "object world") -> Any:
    """The paper's Fig. 2/3 as ours beside theirs: rows = similar / dissimilar split, columns = ours / paper.
    Ours: mean over seeds (line), every seed (dots), min-max band."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8), squeeze=False)
    names = {"similar": ("random split", "random A/B halves"),
             "dissimilar": ("dissimilar split", "natural -> man-made (A -> B)")}
    for r, kind in enumerate(SPLIT_KINDS):
        _panel(axes[r, 0], ours, kind, f"ours ({dataset}): {names[kind][0]}", spread=True)
        _panel(axes[r, 1], paper, kind, f"Yosinski et al. 2014 (ImageNet): {names[kind][1]}", spread=False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return fig
