"""Task2Vec: task embeddings from the Fisher information of a probe network (Achille et al. 2019, Sec. 2-3).

A *probe* (taskstudy.nn.models.Encoder + global pooling + linear head) is trained once on a broad task: the 32
classes of the object world's ``pretrain`` palette (ImageNet's role: no class and no image of the family's tasks
is in it; objects.classes("pretrain")), early-stopped on its own validation split. For each task of the family
(objects.task_families), only the linear head is retrained on the
task's data (the encoder is frozen), then the diagonal Fisher information of the encoder's convolution weights
is estimated as in the paper's Monte-Carlo method (Sec. 2.1): labels are sampled from the model's own
predictive distribution p(y|x), the per-sample gradient of -log p(y|x) is squared, averaged over samples, and
averaged over the weights of each filter (Sec. 2.2). The result has one entry per probe filter whatever the
task's number of classes or samples.

Distances (Sec. 3): the symmetric distance is the cosine distance of the Fisher-normalised embeddings,
d_sym(Fa, Fb) = d_cos(Fa / (Fa + Fb), Fb / (Fa + Fb)); the asymmetric distance of a transfer from source a to
target b is d_asym(a -> b) = d_sym(a, b) - alpha * d_sym(a, t0), with t0 the trivial embedding; it favours
complex (far from trivial) sources. The paper treats alpha as a hyper-parameter; here it is the chapter's
`alpha` (default 0.15). With the Monte-Carlo Fisher there is no variational prior to use as t0, so t0 is the
filter-uniform embedding at the family's mean Fisher level (a task that weighs every filter alike).

Expert selection (Sec. 4, "Model selection"): one expert per task (the same encoder architecture trained from
scratch on that task for a fixed number of steps); for every target, each other expert is scored by the error
of a linear classifier on its frozen features (brute force), and Task2Vec picks the expert whose task has the
smallest asymmetric distance to the target. Units (one embedding per task, one expert per task with its
brute-force row) run through parallel.run_units and are stored, keyed by everything that determines them.

This module holds the family, its data and the stored units; the probe and the Fisher embedding are in `fisher`,
the distances in `distances`, expert selection and the tests of what the distances show in `selection`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store, stable_hash
from taskstudy.nn.heads import fit_head
from taskstudy.nn.train import TrainConfig, fit, fit_validated, kernels, seed_everything, tail_change
from taskstudy.task2vec.fisher import Probe, domain_embedding, features, fisher_embedding, head_error
from taskstudy.taskonomy.task_networks import unit_seed
from taskstudy.world import data, objects, scenes

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams
    from taskstudy.engine.sections import Common
    from taskstudy.engine.sections import Task2Vec as Task2VecSection

VERSION = "1"
SECTION = "task2vec"
SCENE_TASKS = ("class_scene", "class_object")  # scene classification tasks that may join the family


# ------------------------------------------------------------------------------------------ the family


def attribute(task: str) -> str:
    """The attribute a task asks about: 'shape', 'colour', 'supercategory', 'class' or 'scene'."""
    if task in SCENE_TASKS:
        return "scene"
    return task.split("|")[0]


def condition(task: str) -> str | None:
    """The conditioning value of 'shape|colour=c' / 'colour|shape=s', else None."""
    return task.split("=")[1] if "=" in task else None


def family(cfg: Task2VecSection) -> list[str]:
    """The task family's names: the object-world tasks (objects.task_families), then the chosen scene tasks."""
    names = [name for name, _, _ in objects.task_families()]
    bad = [t for t in cfg.scene_tasks if t not in SCENE_TASKS]
    if bad:
        raise ValueError(f"unknown scene task(s) {bad} (one of {SCENE_TASKS})")
    return names + list(cfg.scene_tasks)


def _object_key(common: Common, cfg: Task2VecSection, split: str, world: str = "study") -> dict[str, Any]:
    if world == "pretrain":
        n = cfg.pretrain_images if split == "train" else cfg.pretrain_val
    else:
        n = cfg.images_train if split == "train" else cfg.images_test
    return {"world": world, "split": split, "n": n, "seed": common.seed, "image_size": common.image_size,
            "code": computation_hash(objects.render_objects)}


def task_data_key(common: Common, cfg: Task2VecSection, task: str) -> dict[str, Any]:
    """What determines a task's data (its splits' keys)."""
    if task in SCENE_TASKS:
        return {"task": task, "train": data.split_key(common, "transfer"), "test": data.split_key(common, "test")}
    return {"task": task, "train": _object_key(common, cfg, "train"), "test": _object_key(common, cfg, "test")}


@dataclass(frozen=True)
class TaskData:
    name: str
    x_train: torch.Tensor  # (N, 3, H, W)
    y_train: torch.Tensor  # (N,) int64, 0..n_classes-1
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


def _objects(store: Store, common: Common, cfg: Task2VecSection, split: str, world: str = "study") -> dict[str,
             np.ndarray]:
    k = _object_key(common, cfg, split, world)
    return data.object_split(store, split, k["n"], k["seed"], k["image_size"], world)


def task_data(store: Store, common: Common, cfg: Task2VecSection, task: str) -> TaskData:
    """A family task's train and test tensors: object-world images relabelled by objects.task_families, or a
    scene classification task (class_object as its argmax) on the transfer (train) and test splits."""
    if task in SCENE_TASKS:
        tr, te = (data.scene_split(store, common, s) for s in ("transfer", "test"))

        def lab(d: dict[str, np.ndarray]) -> torch.Tensor:
            y = data.target(d, task)
            return y.argmax(1) if y.ndim == 2 else y

        n = len(scenes.OBJECT_CLASSES) if task == "class_object" else len(scenes.ROOM_TYPES)
        return TaskData(task, data.rgb(tr), lab(tr), data.rgb(te), lab(te), n)
    out = []
    for split in ("train", "test"):
        d = _objects(store, common, cfg, split)
        keep, y = object_labels(task, d["label"])
        out += [torch.from_numpy(np.asarray(d["rgb"][keep])), y]
    return TaskData(task, *out, task_classes(task))


def object_labels(task: str, label: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """(mask of the images a family task uses, their new labels) from the object world's class ids."""
    spec = {name: (cl, new) for name, cl, new in objects.task_families()}
    if task not in spec:
        raise KeyError(f"unknown object-world task '{task}'")
    classes, new = spec[task]
    remap = np.full(objects.num_classes(), -1)
    remap[classes] = new
    keep = np.isin(label, classes)
    return keep, torch.from_numpy(remap[label[keep]]).long()


def task_classes(task: str) -> int:
    """Number of classes of an object-world family task."""
    return int(max(new.max() for name, _, new in objects.task_families() if name == task)) + 1


# --------------------------------------------------------------------------------------- stored units


def probe_key(common: Common, cfg: Task2VecSection) -> dict[str, Any]:
    return {"data": _object_key(common, cfg, "train", "pretrain"), "val": _object_key(common, cfg, "val", "pretrain"),
            "width": cfg.probe_width, "depth": cfg.probe_depth, "epochs": cfg.probe_epochs,
            "patience": cfg.probe_patience, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "seed": unit_seed(common.seed, "task2vec_probe"), "code": computation_hash(train_probe),
            **kernels(common)}


_PROBES: dict[tuple[str, str], Probe] = {}  # probes loaded in this process, by (store root, key hash)


def pretrain_tensors(store: Store, common: Common, cfg: Task2VecSection, split: str) -> tuple[torch.Tensor,
                     torch.Tensor]:
    """(images, class ids) of the pretrain world's split ("train" or "val") the probe learns from."""
    d = _objects(store, common, cfg, split, "pretrain")
    return torch.from_numpy(np.asarray(d["rgb"])), torch.from_numpy(d["label"]).long()


def train_probe(store: Store, common: Common, cfg: Task2VecSection, compute: bool = True) -> Probe:
    """The probe, trained on the pretrain world's classes and early-stopped on its validation split (cached in
    the store and per process); with compute=False a missing probe is an error (workers only read it)."""
    key = probe_key(common, cfg)
    cache = (str(store.root), stable_hash(key))
    if cache in _PROBES:  # each caller its own copy: the Fisher hooks on a module would see every thread's passes
        return copy.deepcopy(_PROBES[cache])
    n_classes = objects.num_classes("pretrain")

    def train() -> dict[str, Any]:
        seed_everything(key["seed"])
        model = Probe(n_classes, cfg.probe_width, cfg.probe_depth)
        x, y = pretrain_tensors(store, common, cfg, "train")
        tc = TrainConfig(cfg.probe_epochs, cfg.batch_size, cfg.lr, seed=key["seed"], **kernels(common))
        log = fit_validated(model, x, y, F.cross_entropy, tc, pretrain_tensors(store, common, cfg, "val"),
                            patience=cfg.probe_patience)
        return {"state": model.state_dict(), "log": log.as_dict()}

    if compute:
        saved = store.get_or_compute("task2vec_probe", key, train, VERSION)
    else:
        saved = store.load("task2vec_probe", key, VERSION)
    if saved is None:
        raise LookupError("no stored Task2Vec probe: train_probe must run first")
    model = Probe(n_classes, cfg.probe_width, cfg.probe_depth)
    model.load_state_dict(saved["state"])
    model.log = saved["log"]  # type: ignore[assignment]  # the training log, for the chapter's calibration
    _PROBES[cache] = model.eval()
    return copy.deepcopy(model)


def probe_accuracy(store: Store, common: Common, cfg: Task2VecSection) -> dict[str, float]:
    """The probe's top-1 on the pretrain world's test split against chance (what it learnt of its own task)."""
    probe = train_probe(store, common, cfg)
    x, y = pretrain_tensors(store, common, cfg, "test")
    with torch.no_grad():
        acc = float((probe(x).argmax(1) == y).float().mean())
    log = probe.log  # type: ignore[attr-defined]
    return {"top-1": acc, "chance": 1 / objects.num_classes("pretrain"), "classes": objects.num_classes("pretrain"),
            "epochs": len(log["val_loss"]), "best epoch": log["best_epoch"], "ceiling": cfg.probe_epochs,
            "tail change": tail_change(log)}


def embedding_key(common: Common, cfg: Task2VecSection, task: str) -> dict[str, Any]:
    return {"probe": probe_key(common, cfg), "data": task_data_key(common, cfg, task),
            "mc_samples": cfg.mc_samples, "fisher_samples": cfg.fisher_samples, "head_wd": cfg.head_wd,
            "head_steps": cfg.head_steps, "seed": unit_seed(common.seed, "task2vec_fisher", task),
            "code": computation_hash(embed_unit)}


def expert_key(common: Common, cfg: Task2VecSection, task: str) -> dict[str, Any]:
    return {"data": task_data_key(common, cfg, task), "width": cfg.expert_width, "depth": cfg.probe_depth,
            "steps": cfg.expert_steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
            "seed": unit_seed(common.seed, "task2vec_expert", task), **kernels(common),
            "code": computation_hash(expert_unit)}


def errors_key(common: Common, cfg: Task2VecSection, expert: str, targets: Sequence[str]) -> dict[str, Any]:
    return {"expert": expert_key(common, cfg, expert), "head_wd": cfg.head_wd, "head_steps": cfg.head_steps,
            "targets": [task_data_key(common, cfg, t) for t in targets]}


@dataclass(frozen=True)
class Unit:
    """One task's unit (its embedding, or its expert and brute-force row); picklable for Dask workers."""

    params: Any  # StudyParams subset with the task2vec section
    task: str
    targets: tuple[str, ...] = ()  # for expert units: the tasks its features are scored on


def _subsample(td: TaskData, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n <= 0 or len(td.x_train) <= n:
        return td.x_train, td.y_train
    idx = torch.randperm(len(td.x_train), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return td.x_train[idx], td.y_train[idx]


def embed_unit(u: Unit) -> dict[str, np.ndarray]:
    """One task's Fisher embedding and the probe's (retrained head's) test error on it."""
    P, cfg = u.params, u.params.section(SECTION)
    store = Store.for_params(P)
    probe = train_probe(store, P.common, cfg, compute=False)
    td = task_data(store, P.common, cfg, u.task)
    key = embedding_key(P.common, cfg, u.task)
    torch.manual_seed(key["seed"])
    head = fit_head(features(probe, td.x_train), td.y_train, td.n_classes, cfg.head_wd, cfg.head_steps)
    x, y = _subsample(td, cfg.fisher_samples, key["seed"])
    emb = fisher_embedding(probe, x, y, td.n_classes, head=head, mc_samples=cfg.mc_samples, seed=key["seed"])
    dseed = unit_seed(P.common.seed, "task2vec_domain")  # one seed for every task: same images, same embedding
    dom = domain_embedding(probe, _subsample(td, cfg.fisher_samples, dseed)[0], mc_samples=cfg.mc_samples, seed=dseed)
    err = head_error(probe, head, td.x_test, td.y_test)
    return {"embedding": emb, "domain": dom, "error": np.array(err), "n_train": np.array(len(td.x_train)),
            "n_test": np.array(len(td.x_test)), "n_classes": np.array(td.n_classes)}


def _train_expert(store: Store, common: Common, cfg: Task2VecSection, task: str) -> Probe:
    key = expert_key(common, cfg, task)
    td = task_data(store, common, cfg, task)
    seed_everything(key["seed"])
    model = Probe(td.n_classes, cfg.expert_width, cfg.probe_depth)
    epochs = max(1, math.ceil(cfg.expert_steps * cfg.batch_size / len(td.x_train)))
    fit(model, td.x_train, td.y_train, F.cross_entropy,
        TrainConfig(epochs, cfg.batch_size, cfg.lr, seed=key["seed"], **kernels(common)))
    return model.eval()


def expert_unit(u: Unit) -> dict[str, Any]:
    """Train (or load) the expert of `u.task`; score a linear head on its frozen features for every target."""
    P, cfg = u.params, u.params.section(SECTION)
    store = Store.for_params(P)
    saved = store.load("task2vec_expert", expert_key(P.common, cfg, u.task), VERSION)
    if saved is None:
        model = _train_expert(store, P.common, cfg, u.task)
        state = model.state_dict()
    else:
        state = saved["state"]
        model = Probe(len(state["head.bias"]), cfg.expert_width, cfg.probe_depth)
        model.load_state_dict(state)
        model.eval()
    errs = _brute_force(model, store, P.common, cfg, u.targets)
    return {"state": state, "errors": np.array(errs), "new": saved is None}


def _brute_force(model: Probe, store: Store, common: Common, cfg: Task2VecSection,
                 targets: Sequence[str]) -> list[float]:
    """Test error of a linear head on `model`'s frozen features for every target (object-world features once)."""
    images = {split: _objects(store, common, cfg, split) for split in ("train", "test")}
    feats: dict[str, torch.Tensor] = {}
    errs = []
    for t in targets:
        if t in SCENE_TASKS:
            td = task_data(store, common, cfg, t)
            head = fit_head(features(model, td.x_train), td.y_train, td.n_classes, cfg.head_wd, cfg.head_steps)
            errs.append(head_error(model, head, td.x_test, td.y_test))
            continue
        f, y = {}, {}
        for split, d in images.items():
            if split not in feats:
                feats[split] = features(model, torch.from_numpy(np.asarray(d["rgb"])))
            keep, y[split] = object_labels(t, d["label"])
            f[split] = feats[split][torch.from_numpy(keep)]
        head = fit_head(f["train"], y["train"], task_classes(t), cfg.head_wd, cfg.head_steps)
        with torch.no_grad():
            errs.append(float((head(f["test"]).argmax(1) != y["test"]).float().mean()))
    return errs


def _prepare(P: StudyParams) -> tuple[Store, Any, list[str]]:
    store, cfg = Store.for_params(P), P.section(SECTION)
    names = family(cfg)
    for split in ("train", "test"):  # render the shared data once, in this process, before any worker
        _objects(store, P.common, cfg, split)
        _objects(store, P.common, cfg, split if split == "train" else "val", "pretrain")
    if cfg.scene_tasks:
        for split in ("transfer", "test"):
            data.scene_split(store, P.common, split)
    return store, cfg, names


def embeddings(P: StudyParams) -> dict[str, dict[str, np.ndarray]]:
    """Every family task's stored embedding entry (computing the missing ones as units)."""
    store, cfg, names = _prepare(P)
    train_probe(store, P.common, cfg)
    keys = {t: embedding_key(P.common, cfg, t) for t in names}
    run_units(embed_unit, [Unit(P.subset(SECTION), t) for t in names], store=store, kind="task2vec_embedding",
              key=lambda u: keys[u.task], version=VERSION, common=P.common, desc="task2vec embeddings",
              save=lambda u, r: store.save("task2vec_embedding", keys[u.task], r, VERSION, fmt="npz"))
    return {t: store.load("task2vec_embedding", keys[t], VERSION) for t in names}


def embed_family(P: StudyParams, kind: str = "embedding") -> tuple[list[str], np.ndarray]:
    """(task names, embedding matrix (tasks, filters)) of the family: the task embeddings, or with
    kind="domain" the domain embeddings (labels ignored)."""
    emb = embeddings(P)
    names = list(emb)
    return names, np.stack([emb[t][kind] for t in names])


def task_table(P: StudyParams) -> pd.DataFrame:
    """One row per task: attribute asked, condition, classes, samples, embedding L1 norm, probe test error."""
    emb = embeddings(P)
    return pd.DataFrame([{
        "task": t, "attribute": attribute(t), "condition": condition(t), "classes": int(e["n_classes"]),
        "train images": int(e["n_train"]), "test images": int(e["n_test"]),
        "norm": float(np.abs(e["embedding"]).sum()), "probe error": float(e["error"]),
    } for t, e in emb.items()])


def expert_errors(P: StudyParams) -> pd.DataFrame:
    """Brute force: test error of a linear head on each expert's frozen features (rows = experts = source
    tasks, columns = target tasks)."""
    store, cfg, names = _prepare(P)

    def save(u: Unit, r: dict[str, Any]) -> None:
        if r["new"]:
            store.save("task2vec_expert", expert_key(P.common, cfg, u.task), {"state": r["state"]}, VERSION)
        store.save("task2vec_expert_errors", errors_key(P.common, cfg, u.task, names),
                   {"errors": r["errors"]}, VERSION, fmt="npz")

    run_units(expert_unit, [Unit(P.subset(SECTION), t, tuple(names)) for t in names], store=store,
              kind="task2vec_expert_errors", key=lambda u: errors_key(P.common, cfg, u.task, names), version=VERSION,
              save=save, common=P.common, desc="task2vec experts")
    rows = {t: store.load("task2vec_expert_errors", errors_key(P.common, cfg, t, names), VERSION)["errors"]
            for t in names}
    return pd.DataFrame(np.stack([rows[t] for t in names]), index=names, columns=names)
