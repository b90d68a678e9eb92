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
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from torch import nn

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store, stable_hash
from taskstudy.nn.models import Encoder
from taskstudy.nn.train import TrainConfig, fit, fit_validated, kernels, seed_everything, tail_change
from taskstudy.taskonomy.task_networks import unit_seed
from taskstudy.world import data, objects, scenes

if TYPE_CHECKING:
    from taskstudy.engine.params import Common, StudyParams
    from taskstudy.engine.params import Task2Vec as Task2VecSection

VERSION = "1"
SECTION = "task2vec"
SCENE_TASKS = ("class_scene", "class_object")  # scene classification tasks that may join the family


# ---------------------------------------------------------------------------------------------- the probe


class Probe(nn.Module):
    """Encoder + global average pooling + linear head: (B, 3, H, W) -> (B, K)."""

    def __init__(self, n_classes: int, width: int = 8, depth: int = 1):
        super().__init__()
        self.encoder = Encoder(width, depth)
        self.head = nn.Linear(self.encoder.out_channels, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 4w)
        return self.encoder(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, K)
        return self.head(self.features(x))


def probe_filters(encoder: nn.Module) -> list[tuple[str, int]]:
    """(parameter name, number of filters) of every convolution of the encoder, in module order."""
    return [(f"{name}.weight", m.out_channels) for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]


def n_filters(encoder: nn.Module) -> int:
    """Length of a Task2Vec embedding: the number of convolution filters of the probe's encoder."""
    return sum(n for _, n in probe_filters(encoder))


@torch.no_grad()
def features(model: Probe, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Pooled encoder features (N, 4w) in eval mode."""
    model.eval()
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def fit_head(feats: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-3,
             steps: int = 100) -> nn.Linear:
    """Multinomial logistic regression on fixed features (L-BFGS from zero, L2 on the weights).

    The problem is convex and starts from a class-symmetric point, so relabelling the classes permutes the
    solution's rows and nothing else."""
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    w = torch.zeros(n_classes, feats.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    z64 = z.double()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z64 @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(feats.shape[1], n_classes)
    with torch.no_grad():  # fold the standardisation into the layer
        wf = (w / sd.double()).float()
        head.weight.copy_(wf)
        head.bias.copy_((b - (w / sd.double()) @ mu.double()).float())
    return head


def head_error(model: Probe, head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test error of `head` on the pooled features of `model`."""
    with torch.no_grad():
        return float((head(features(model, x)).argmax(1) != y).float().mean())


def fisher_embedding(probe: Probe, x: torch.Tensor, y: torch.Tensor, n_classes: int, *,
                     head: nn.Linear | None = None, mc_samples: int = 1, seed: int = 0, batch_size: int = 64,
                     weight_decay: float = 1e-3, head_steps: int = 100) -> np.ndarray:
    """The Task2Vec embedding of the task (x, y): one Fisher value per encoder filter (float64).

    The probe's head is replaced by one retrained on (x, y) (or `head`, when given); the encoder is frozen and
    in eval mode (BatchNorm uses its running statistics, so samples do not interact). For every image,
    `mc_samples` labels are drawn from p(y|x); F_w = mean over draws of (d/dw -log p(y_draw|x))^2, then
    averaged over each filter's weights. Labels are drawn by `sample_labels`, so relabelling the classes of
    a task changes its embedding only through the head's optimisation tolerance."""
    if head is None:
        head = fit_head(features(probe, x), y, n_classes, weight_decay, head_steps)
    model = nn.Sequential(probe.encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    return monte_carlo_fisher(model, probe.encoder, x, lambda out, gen: sample_labels(F.softmax(out, dim=1), gen),
                              mc_samples=mc_samples, seed=seed, batch_size=batch_size)


def domain_embedding(probe: Probe, x: torch.Tensor, *, mc_samples: int = 1, seed: int = 0,
                     batch_size: int = 64) -> np.ndarray:
    """The *domain* embedding of a task's images (Achille et al. 2019, Sec. 5 and Fig. 2, right): the same
    Monte-Carlo Fisher, but with the probe's own pretraining head, so the task's labels play no part; tasks that
    ask different questions about the same images get the same domain embedding."""
    model = nn.Sequential(probe.encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten(), probe.head).eval()
    return monte_carlo_fisher(model, probe.encoder, x, lambda out, gen: sample_labels(F.softmax(out, dim=1), gen),
                              mc_samples=mc_samples, seed=seed, batch_size=batch_size)


def monte_carlo_fisher(model: nn.Module, encoder: nn.Module, x: torch.Tensor,
                       draw: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *,
                       nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       mc_samples: int = 1, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """Sec. 2.1: the diagonal Fisher of `encoder`'s convolution weights, one value per filter. For every image,
    `mc_samples` draws y = draw(model output, generator) from the model's predictive distribution; the per-sample
    gradient of nll(output, y) (default: cross-entropy) is squared and averaged over draws, images and each
    filter's weights. `model` (eval mode) contains `encoder`."""
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    acc = [torch.zeros(c.out_channels, dtype=torch.float64) for c in convs]
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        with torch.no_grad():
            out = model(xb)
        for _ in range(mc_samples):
            y = draw(out, gen)
            for k, g2 in enumerate(_per_sample_sq_grads(model, convs, xb, y, nll)):
                acc[k] += g2.sum(0)
            count += len(xb)
    return torch.cat([a / count for a in acc]).numpy()


def _per_sample_sq_grads(model: nn.Module, convs: list[nn.Conv2d], x: torch.Tensor, y: torch.Tensor,
                         nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                         ) -> list[torch.Tensor]:
    """For every conv: (B, filters) = the squared per-sample gradient of -log p(y|x) w.r.t. its weights,
    averaged over each filter's weights. `nll(output, y)` is the summed -log p (default: cross-entropy of
    class labels y). One forward/backward: in eval mode the samples do not interact, so the
    gradient at a conv's output is per sample, and the per-sample weight gradient is (grad_out x unfold(in))."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        inputs.append(inp[0].detach())
        outputs.append(out)

    handles = [c.register_forward_hook(hook) for c in convs]
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(False)
            for c in convs:
                c.weight.requires_grad_(True)
            out = model(xg)
            loss = F.cross_entropy(out, y, reduction="sum") if nll is None else nll(out, y)
            model.zero_grad(set_to_none=True)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    out = []
    for c, a, o in zip(convs, inputs, outputs, strict=True):
        assert c.groups == 1 and c.dilation == (1, 1), "grouped or dilated convolutions are not supported"
        cols = F.unfold(a, c.kernel_size, padding=c.padding, stride=c.stride)  # (B, C_in*k*k, L)
        g = o.grad.flatten(2)  # (B, C_out, L)
        w = torch.bmm(g, cols.transpose(1, 2))  # (B, C_out, C_in*k*k): per-sample weight gradients
        out.append((w.double() ** 2).mean(2))
    model.zero_grad(set_to_none=True)
    return out



def sample_labels(prob: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per row of `prob` (B, K), drawn from it by inverting its CDF with the classes taken in order of
    decreasing probability: an exact draw, and the same draw (relabelled) when the classes are relabelled."""
    u = torch.rand(prob.shape[0], 1, generator=gen, dtype=torch.float64)
    p, order = prob.double().sort(dim=1, descending=True, stable=True)
    cdf = p.cumsum(1)
    k = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=prob.shape[1] - 1)
    return order.gather(1, k).view(-1)


# ------------------------------------------------------------------------------------------- distances


def _norm(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = a + b
    s = np.where(s > 0, s, 1.0)
    return a / s, b / s


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    d = np.linalg.norm(u) * np.linalg.norm(v)
    return float(1.0 - (u @ v) / d) if d > 0 else 1.0


def symmetric_distance(a: np.ndarray, b: np.ndarray) -> float:
    """d_sym(a, b) = d_cos(a / (a + b), b / (a + b)) (Achille et al. 2019, Eq. 4)."""
    return max(0.0, _cos(*_norm(np.asarray(a, float), np.asarray(b, float))))


def trivial_embedding(matrix: np.ndarray) -> np.ndarray:
    """t0: the filter-uniform embedding at the family's mean Fisher level."""
    return np.full(matrix.shape[1], float(np.mean(matrix)))


def asymmetric_distance(source: np.ndarray, target: np.ndarray, trivial: np.ndarray, alpha: float = 0.15) -> float:
    """d_asym(source -> target) = d_sym(source, target) - alpha * d_sym(source, t0) (Achille et al. 2019, Eq. 5):
    how well an expert trained on `source` should serve `target`; complex sources are brought closer."""
    return symmetric_distance(source, target) - alpha * symmetric_distance(source, trivial)


def distance_matrix(matrix: np.ndarray, kind: str = "sym", alpha: float = 0.15) -> np.ndarray:
    """Pairwise distances between the rows (tasks) of `matrix`; for kind="asym", entry [a, b] is
    d_asym(a -> b) (row = source, column = target)."""
    n = len(matrix)
    sym = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            sym[i, j] = sym[j, i] = symmetric_distance(matrix[i], matrix[j])
    if kind == "sym":
        return sym
    if kind != "asym":
        raise ValueError(f"unknown distance kind '{kind}' (sym or asym)")
    t0 = trivial_embedding(matrix)
    comp = np.array([symmetric_distance(m, t0) for m in matrix])
    return sym - alpha * comp[:, None]


def cluster_order(dist: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage hierarchical clustering of a symmetric distance matrix."""
    if len(dist) < 3:
        return np.arange(len(dist))
    return leaves_list(linkage(squareform(dist, checks=False), method="average", optimal_ordering=True))


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


# ----------------------------------------------------------------------------------- selection, findings


def expert_selection(names: Sequence[str], matrix: np.ndarray, errors: pd.DataFrame, alpha: float = 0.15,
                     n_test: Sequence[int] | None = None) -> pd.DataFrame:
    """For each target: the expert Task2Vec picks (smallest d_asym(expert task -> target), the target's own
    expert excluded), its error, the brute-force best expert and its error, and their ratio. Errors are floored
    at half a test image (0.5 / n_test) so that a best error of zero gives a finite ratio. Also the pick of the
    symmetric distance and the expected ratio of a uniformly random pick."""
    names = list(names)
    asym, sym = distance_matrix(matrix, "asym", alpha), distance_matrix(matrix, "sym")
    m2v = model2vec_picks(names, matrix, errors)
    rows = []
    for j, t in enumerate(names):
        floor = 0.5 / n_test[j] if n_test is not None else 1e-3
        cand = [i for i in range(len(names)) if i != j]
        err = np.array([max(float(errors.loc[names[i], t]), floor) for i in cand])
        pick = cand.index(min(cand, key=lambda i: asym[i, j]))
        pick_sym = cand.index(min(cand, key=lambda i: sym[i, j]))
        best = int(np.argmin(err))
        rows.append({"task": t, "chosen expert": names[cand[pick]], "chosen error": err[pick],
                     "best expert": names[cand[best]], "best error": err[best], "ratio": err[pick] / err[best],
                     "symmetric pick": names[cand[pick_sym]], "symmetric ratio": err[pick_sym] / err[best],
                     "model2vec pick": m2v[t], "model2vec ratio": err[cand.index(names.index(m2v[t]))] / err[best],
                     "random ratio": float(err.mean() / err[best])})
    return pd.DataFrame(rows)


def _sym_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """d_sym between every row of a (E, K) and of b (T, K): (E, T), differentiable (Eq. 4)."""
    s = a[:, None, :] + b[None, :, :]
    u, v = a[:, None, :] / s, b[None, :, :] / s
    return 1 - (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))


def model2vec_picks(names: Sequence[str], matrix: np.ndarray, errors: pd.DataFrame, steps: int = 300,
                    weight: float = 1e-2, seed: int = 0) -> dict[str, str]:
    """Model2Vec (Achille et al. 2019, Sec. 3, "Model2Vec"): an embedding per expert, m_i = F_i + b_i (F_i its
    task's embedding, scaled to mean 1; clamped positive), with b_i and a scale gamma learned so that
    softmax_i(-gamma * d_sym(m_i, F_t)) predicts which expert is best for target t (a k-way cross-entropy over
    the experts, L2 weight `weight` on b). Leave-one-target-out: the pick for t uses biases learned on the other
    targets only, so no target's own errors choose its expert. Returns target -> picked expert (never its own)."""
    names = list(names)
    n = len(names)
    f = torch.tensor(np.asarray(matrix, float))
    f = f / f.mean()
    err = torch.tensor(errors.loc[names, names].to_numpy(float))  # [expert, target]
    eye = torch.eye(n, dtype=torch.bool)
    best = err.masked_fill(eye, float("inf")).argmin(0)  # best other expert per target
    picks: dict[str, str] = {}
    for t in range(n):
        train = torch.tensor([j for j in range(n) if j != t])
        torch.manual_seed(seed)
        b = torch.zeros_like(f, requires_grad=True)
        log_gamma = torch.tensor(math.log(10.0), dtype=f.dtype, requires_grad=True)  # distances ~0.1: spread logits
        opt = torch.optim.Adam([b, log_gamma], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            logits = -log_gamma.exp() * _sym_torch((f + b).clamp(min=1e-6), f[train])  # (experts, train targets)
            logits = logits.masked_fill(eye[:, train], float("-inf"))
            loss = F.cross_entropy(logits.T, best[train]) + weight * (b * b).sum()
            loss.backward()
            opt.step()
        with torch.no_grad():
            d = _sym_torch((f + b).clamp(min=1e-6), f[t : t + 1])[:, 0]
            d[t] = float("inf")
            picks[names[t]] = names[int(d.argmin())]
    return picks


def domain_test(names: Sequence[str], task_matrix: np.ndarray, domain_matrix: np.ndarray) -> dict[str, float]:
    """What the labels add (Sec. 5): mean d_sym between the family's tasks that share every image (the whole-world
    tasks: supercategory, shape, colour, class) under the task and under the domain embedding, and the attribute
    test's gap (same vs different attribute) under each."""
    idx = [i for i, t in enumerate(names) if attribute(t) in ("supercategory", "shape", "colour", "class")
           and condition(t) is None]
    iu = np.triu_indices(len(idx), 1)
    dt, dd = distance_matrix(task_matrix, "sym"), distance_matrix(domain_matrix, "sym")
    at, ad = attribute_test(names, dt), attribute_test(names, dd)
    return {"same_images_task": float(dt[np.ix_(idx, idx)][iu].mean()),
            "same_images_domain": float(dd[np.ix_(idx, idx)][iu].mean()),
            "attribute_gap_task": at["different"] - at["same"], "attribute_p_task": at["p"],
            "attribute_gap_domain": ad["different"] - ad["same"], "attribute_p_domain": ad["p"]}


def attribute_test(names: Sequence[str], dist: np.ndarray, n_perm: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean d_sym between tasks asking the same attribute (shape or colour) vs different ones, over the
    shape/colour tasks; p-value of the gap by permuting the attribute labels (one-sided: same < different)."""
    idx = [i for i, t in enumerate(names) if attribute(t) in ("shape", "colour")]
    lab = np.array([attribute(names[i]) for i in idx])
    d = dist[np.ix_(idx, idx)]
    iu = np.triu_indices(len(idx), 1)

    def gap(lb: np.ndarray) -> tuple[float, float]:
        same = (lb[:, None] == lb[None, :])[iu]
        return float(d[iu][same].mean()), float(d[iu][~same].mean())

    s, o = gap(lab)
    rng = np.random.default_rng(seed)
    null = np.array([np.subtract(*gap(rng.permutation(lab))) for _ in range(n_perm)])
    p = float((np.sum(null <= s - o) + 1) / (n_perm + 1))
    dd = d + np.diag(np.full(len(idx), np.inf))
    nn_same = float(np.mean(lab[np.argmin(dd, axis=1)] == lab))
    chance = float(np.mean([(np.sum(lab == lab[i]) - 1) / (len(lab) - 1) for i in range(len(lab))]))
    return {"same": s, "different": o, "p": p, "nn_same": nn_same, "nn_chance": chance, "n_tasks": len(idx)}


def condition_test(names: Sequence[str], dist: np.ndarray) -> dict[str, float]:
    """Among the 'colour|shape=s' tasks: mean d_sym between two tasks whose shapes are of one super-category (the
    same six colours to tell apart) vs of different ones (objects.SUPERCATEGORIES)."""
    idx = [i for i, t in enumerate(names) if attribute(t) == "colour" and condition(t)]
    group = np.array([next(k for k, v in objects.SUPERCATEGORIES.items() if condition(names[i]) in v) for i in idx])
    iu = np.triu_indices(len(idx), 1)
    same = (group[:, None] == group[None, :])[iu]
    d = dist[np.ix_(idx, idx)][iu]
    return {"same": float(d[same].mean()), "different": float(d[~same].mean())}
