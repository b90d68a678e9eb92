"""Taskonomy Sec. 5.1 (ImageNet, MIT Places): is the taxonomy's ranking of sources what an outside dataset would give?
Every dictionary encoder of the main run (and the random one) is frozen, its representation average-pooled to a
small grid and linearly probed on an outside classification set (the object world, taskstudy.world.objects, or a
real CIFAR-100 copy); the encoders ranked by probe accuracy are compared with the taxonomy's ranking of the same
sources for a classification target (Spearman's rho, permutation p-value), the target's own encoder left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.nn.train import predict
from taskstudy.taskonomy import ahp, features, transfer
from taskstudy.uncertainty import permutation_p
from taskstudy.world import cifar, data, objects
from taskstudy.world.scenes import OBJECT_CLASSES

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams

VERSION = "1"  # the outside probes' store format


def outside_key(P: StudyParams) -> dict[str, Any]:
    """What determines the outside classification set."""
    cfg = P.section("robustness")
    key: dict[str, Any] = {"dataset": cfg.outside_dataset, "n_train": cfg.outside_train, "n_test": cfg.outside_test,
                           "image_size": P.common.image_size, "seed": P.common.seed}
    if cfg.outside_dataset == "objects":
        key["label"] = cfg.outside_label
    else:
        key["cifar_root"] = str(cifar.cifar_root(cfg.cifar_root, "robustness.cifar_root"))
    return {**key, "code": computation_hash(outside_data)}


def outside_name(P: StudyParams) -> str:
    """A reader's name for the outside set."""
    cfg = P.section("robustness")
    if cfg.outside_dataset == "cifar100":
        return "CIFAR-100 (100 fine classes)"
    return ("object world (8 shapes)" if cfg.outside_label == "shape"
            else f"object world ({objects.num_classes()} classes)")


def outside_data(P: StudyParams) -> dict[str, torch.Tensor | int]:
    """The outside set as tensors: x_train, y_train, x_test, y_test (images in [0, 1] at common.image_size) and
    n_classes. Object world: `outside_label` is 'shape' (8 classes, the object-classification analogue) or
    'class' (its 48 classes). CIFAR-100: a seeded subset of each official split, fine labels
    (image_sets.raw_images, the layer-transfer chapter's loader)."""
    cfg, size = P.section("robustness"), P.common.image_size
    if cfg.outside_dataset == "objects":
        store = Store.for_params(P)
        tr = data.object_split(store, "train", cfg.outside_train, P.common.seed, size)
        te = data.object_split(store, "test", cfg.outside_test, P.common.seed, size)
        col = "shape" if cfg.outside_label == "shape" else "label"
        n_classes = len(OBJECT_CLASSES) if col == "shape" else objects.num_classes()
        return {"x_train": torch.from_numpy(tr["rgb"]), "y_train": torch.from_numpy(tr[col]),
                "x_test": torch.from_numpy(te["rgb"]), "y_test": torch.from_numpy(te[col]), "n_classes": n_classes}
    from taskstudy.world.image_sets import raw_images

    key = {"dataset": "cifar100", "cifar_root": str(cifar.cifar_root(cfg.cifar_root, "robustness.cifar_root")),
           "n_images": cfg.outside_train,
           "n_val": 0, "n_test": cfg.outside_test, "seed": P.common.seed, "image_size": size}
    xtr, ytr, _, _, xte, yte, n_classes = raw_images(key, str(Store.for_params(P).root))
    return {"x_train": torch.from_numpy(xtr), "y_train": torch.from_numpy(ytr), "x_test": torch.from_numpy(xte),
            "y_test": torch.from_numpy(yte), "n_classes": n_classes}


def pooled_features(encoder: torch.nn.Module, x: torch.Tensor, grid: int) -> torch.Tensor:
    """The frozen representation E_s(I) average-pooled to grid x grid cells and flattened: the probe's input."""
    z = predict(encoder, x)
    return F.adaptive_avg_pool2d(z.float(), grid).flatten(1)


def probe_accuracy(encoder: torch.nn.Module, d: Mapping[str, Any], grid: int, weight_decay: float,
                   steps: int) -> float:
    """Linear probe (multinomial logistic regression, nn.heads.fit_head) on the pooled frozen features; test
    accuracy."""
    from taskstudy.nn.heads import fit_head

    f_train = pooled_features(encoder, d["x_train"], grid)
    head = fit_head(f_train, d["y_train"], int(d["n_classes"]), weight_decay, steps)
    with torch.no_grad():
        pred = head(pooled_features(encoder, d["x_test"], grid)).argmax(1)
    return float((pred == d["y_test"]).float().mean())


def _probe_code() -> str:
    """What a probe's accuracy is computed by (this module's probe and nn.heads.fit_head)."""
    return computation_hash(_probe_unit)


def _probe_key(P: StudyParams, source: str) -> dict[str, Any]:
    cfg = P.section("robustness")
    return {"encoder": features.encoder_key(P, source), "outside": outside_key(P), "grid": cfg.probe_grid,
            "weight_decay": cfg.probe_wd, "steps": cfg.probe_steps, "code": _probe_code()}


def _probe_unit(unit: tuple[Any, str]) -> float:
    """One encoder's outside probe accuracy (a unit of parallel.run_units: the outside set is read from the store)."""
    P, source = unit
    cfg = P.section("robustness")
    return probe_accuracy(features.frozen_encoder(P, source), outside_data(P), cfg.probe_grid, cfg.probe_wd,
                          cfg.probe_steps)


def outside_ranking(P: StudyParams, sources: Sequence[str]) -> pd.DataFrame:
    """Sec. 5.1: probe accuracy on the outside set of every source's frozen Step I encoder (and the random
    encoder), one store entry per encoder, the missing ones fitted on the cluster's workers. Columns: source,
    accuracy, rank (1 = best), computed (now or read)."""
    store = Store.for_params(P)
    names = [*sources, transfer.RANDOM]
    if not all(store.exists("outside_probe", _probe_key(P, s), VERSION) for s in names):
        outside_data(P)  # rendered (or read) once here, so the workers read it from the store
    ran = run_units(_probe_unit, [(P, s) for s in names], store=store, kind="outside_probe",
                    key=lambda u: _probe_key(P, u[1]), version=VERSION, common=P.common, desc="outside probes",
                    save=lambda u, acc: store.save("outside_probe", _probe_key(P, u[1]), {"accuracy": acc}, VERSION,
                                                   fmt="json"))
    found, here = {s: store.load("outside_probe", _probe_key(P, s), VERSION) for s in names}, {u[1] for u in ran}
    out = pd.DataFrame([{"source": s, "accuracy": float(found[s]["accuracy"]), "computed": s in here}
                        for s in names])
    out["rank"] = out["accuracy"].rank(ascending=False, method="average")
    return out


def outside_finding(ranking: pd.DataFrame, name: str) -> str:
    """Sec. 5.1's outside probes in a sentence (`outside_ranking`'s table, the outside set's `name`): the task
    encoders' accuracy range, the random encoder's accuracy and how many task encoders beat it, how many probes
    were fitted in this run."""
    acc = ranking.set_index("source")["accuracy"]
    rnd, tasks_acc = float(acc[transfer.RANDOM]), acc.drop(transfer.RANDOM)
    fitted = int(ranking["computed"].sum())
    return (f"Outside set: {name}. Probe accuracy from {tasks_acc.min():.2f} ({tasks_acc.idxmin()}) to "
            f"{tasks_acc.max():.2f} ({tasks_acc.idxmax()}); the random encoder {rnd:.2f}, beaten by "
            f"{int((tasks_acc > rnd).sum())} of {len(tasks_acc)} task encoders. {fitted} probes fitted now, "
            f"{len(ranking) - fitted} read from the store.")


def ranking_agreement(accuracy: pd.Series, affinity_row: pd.Series, n_perm: int, seed: int) -> dict[str, float]:
    """Spearman's rho between the outside ranking (probe accuracy per source) and the taxonomy's ranking of the
    same sources for one target (its affinity row, named by the row's name), with a two-sided permutation p-value.
    The target's own encoder and the baselines are left out, as in every rank agreement (`tree.rank_agreement`)."""
    skip = {affinity_row.name, *ahp.BASELINES}
    shared = [s for s in accuracy.index if s in affinity_row.index and s not in skip and pd.notna(affinity_row[s])]
    x, y = accuracy[shared].to_numpy(float), affinity_row[shared].to_numpy(float)
    rho = float(stats.spearmanr(x, y).statistic)
    return {"rho": rho, "p": permutation_p(x, y, "spearman", n_perm, seed), "n": len(shared)}


def outside_beside(agree: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Sec. 5.1 beside the study: per outside target, the paper's claim (a significant positive Spearman's rho
    between the affinities and the outside set's accuracies; ImageNet for objects, MIT Places for scenes) and the
    study's rho, p and number of sources (`outside_agreement` rows), with the verdict: "reproduced" for a positive
    rho at p <= 0.05, else which way it fails."""
    claim, outside = "significant positive Spearman's rho", {"class_object": "ImageNet", "class_scene": "MIT Places"}
    rows = []
    for t in targets:
        r = agree.loc[t]
        sign = "positive" if r["rho"] > 0 else "negative"
        verdict = ("reproduced" if r["rho"] > 0 and r["p"] <= 0.05 else
                   f"not reproduced: significantly {sign}" if r["p"] <= 0.05 else
                   f"not reproduced: {sign} but not significant at 0.05")
        rows.append({"target": t, "paper (Sec. 5.1)": claim, "outside set (paper)": outside.get(t, "-"),
                     "study rho": round(float(r["rho"]), 2), "study p": round(float(r["p"]), 3),
                     "sources": int(r["n"]), "verdict": verdict})
    return pd.DataFrame(rows).set_index("target")
