"""Task2Vec embeddings of dense scene tasks (Achille et al. 2019, Sec. 2, carried to pixel-wise outputs).

The paper embeds classification tasks: a linear head on the frozen probe, then the diagonal Fisher information
of the probe's weights under the model's own predictive distribution p(y|x). A dense task (segmentation,
depth, normals, edges, keypoints) gets the same treatment with a dense head: a 1x1 convolution on the probe's
(B, 4w, H/4, W/4) feature map, upsampled bilinearly to (H, W), fitted on frozen features with the task's loss.
Its predictive distribution follows from the loss, as a likelihood: per-pixel categorical for cross-entropy,
Laplace for L1 (scale b = the head's mean absolute residual), Gaussian for L2 (variance = its mean squared
residual). Drawing y from it, the gradient of -log p(y|x) at the output is

    categorical: softmax(f) - onehot(y),    Laplace: -sign(y - f) / b,    Gaussian: -(y - f) / sigma^2,

so a draw is a random output gradient, and the Fisher is estimated exactly as for classes (per-sample squared
gradients, averaged over each filter's weights; taskstudy.task2vec.task2vec). The distances of Sec. 3 then apply
unchanged; the symmetric one is invariant to a task's overall Fisher scale, so the likelihood's scale does not
decide which tasks are near.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskstudy.engine.codehash import computation_hash
from taskstudy.engine.parallel import run_units
from taskstudy.engine.store import Store
from taskstudy.nn.models import PIXEL_KINDS
from taskstudy.nn.train import predict
from taskstudy.task2vec import fisher, task2vec
from taskstudy.world import data
from taskstudy.world import tasks as taskdict

if TYPE_CHECKING:
    from taskstudy.engine.params import StudyParams
    from taskstudy.engine.sections import Common
    from taskstudy.engine.sections import Task2Vec as Task2VecSection

VERSION = "1"


class DenseHead(nn.Module):
    """(B, C_in, h, w) -> (B, C_out, 4h, 4w): a 1x1 convolution, then bilinear upsampling (the dense analogue of
    the paper's linear classification head)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1)
        self.up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.up(self.conv(z))


def fit_dense_head(z: torch.Tensor, y: torch.Tensor, task: str, steps: int = 200, lr: float = 0.05,
                   seed: int = 0) -> DenseHead:
    """A DenseHead on fixed feature maps `z`, full-batch Adam on the task's loss (convex in the head's weights)."""
    t = taskdict.get_task(task)
    if t.kind not in PIXEL_KINDS:
        raise ValueError(f"'{task}' is not a dense task (kind {t.kind}); use task2vec.fisher_embedding")
    torch.manual_seed(seed)
    head = DenseHead(z.shape[1], t.channels)
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(steps):
        loss = t.loss(head(z), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return head.eval()


def output_gradient(task: str, out: torch.Tensor, scale: float, gen: torch.Generator) -> torch.Tensor:
    """One draw of d(-log p(y|x))/d(output) with y ~ p(y|x), the model's predictive distribution (see the module
    docstring); `scale` is the Laplace b (L1) or the Gaussian sigma (L2), unused for cross-entropy."""
    t = taskdict.get_task(task)
    if t.loss_name == "ce":
        prob = F.softmax(out.detach().double(), dim=1)  # (B, C, H, W)
        flat = prob.movedim(1, -1).reshape(-1, prob.shape[1])
        y = fisher.sample_labels(flat, gen)
        onehot = F.one_hot(y, prob.shape[1]).double().reshape(*prob.movedim(1, -1).shape).movedim(-1, 1)
        return (prob - onehot).float()
    if t.loss_name == "l1":
        sign = torch.randint(0, 2, out.shape, generator=gen).float() * 2 - 1
        return sign / scale
    if t.loss_name == "l2":
        return torch.randn(out.shape, generator=gen) / scale
    raise ValueError(f"task {task}: no dense likelihood for loss {t.loss_name!r}")


def likelihood_scale(task: str, pred: torch.Tensor, y: torch.Tensor) -> float:
    """The Laplace b (mean |residual|) or Gaussian sigma (root mean squared residual) of a fitted head; 1 for
    cross-entropy. Floored so that a perfect fit does not divide by zero."""
    loss = taskdict.get_task(task).loss_name
    if loss == "l1":
        return max(float((pred - y).abs().mean()), 1e-6)
    if loss == "l2":
        return max(float(((pred - y) ** 2).mean().sqrt()), 1e-6)
    return 1.0


def dense_fisher_embedding(probe: fisher.Probe, x: torch.Tensor, y: torch.Tensor, task: str, *,
                           head: DenseHead | None = None, mc_samples: int = 1, seed: int = 0,
                           batch_size: int = 64, head_steps: int | None = None) -> np.ndarray:
    """The Task2Vec embedding of a dense task (x, y): one Fisher value per probe filter (float64).

    The probe's encoder is frozen, in eval mode; the head is `head` or one fitted on (x, y) in `head_steps` steps
    (`agreement.head_steps`)."""
    if head is None:
        if head_steps is None:
            raise ValueError("dense_fisher_embedding: give a fitted head or head_steps")
        head = fit_dense_head(predict(probe.encoder, x), y, task, head_steps, seed=seed)
    model = nn.Sequential(probe.encoder, head).eval()
    scale = likelihood_scale(task, predict(model, x), y)
    return fisher.monte_carlo_fisher(model, probe.encoder, x,
                                       lambda out, gen: output_gradient(task, out, scale, gen), nll=_linear_nll,
                                       mc_samples=mc_samples, seed=seed, batch_size=batch_size)


def _linear_nll(out: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A loss whose gradient at the output is `grad`: backpropagating it gives the sampled -log p's gradient."""
    return (out * grad).sum()


def embedding_key(common: Common, cfg: Task2VecSection, task: str, n: int, head_steps: int) -> dict[str, Any]:
    return {"probe": task2vec.probe_key(common, cfg), "task": task, "data": data.split_key(common, "transfer"),
            "n": n, "mc_samples": cfg.mc_samples, "head_steps": head_steps,
            "seed": task2vec.unit_seed(common.seed, "task2vec_dense", task), "code": computation_hash(dense_unit)}


@dataclass(frozen=True)
class DenseUnit:
    """One scene task's dense embedding (picklable for Dask workers)."""

    params: Any  # StudyParams, its task2vec section
    task: str
    n: int
    head_steps: int


def dense_unit(u: DenseUnit) -> dict[str, np.ndarray]:
    """The unit: `u.task`'s dense Fisher embedding on the first `u.n` transfer-split images, with chapter 09's
    stored probe (the client trains it first)."""
    P = u.params
    store, cfg = Store.for_params(P), P.section(task2vec.SECTION)
    probe = task2vec.train_probe(store, P.common, cfg, compute=False)
    split = data.scene_split(store, P.common, "transfer")
    x, y = data.rgb(split)[: u.n], data.target(split, u.task)[: u.n]
    seed = task2vec.unit_seed(P.common.seed, "task2vec_dense", u.task)
    return {"embedding": dense_fisher_embedding(probe, x, y, u.task, mc_samples=cfg.mc_samples, seed=seed,
                                                head_steps=u.head_steps)}


def scene_embeddings(P: StudyParams, tasks: list[str], n: int, head_steps: int) -> dict[str, np.ndarray]:
    """Dense Task2Vec embeddings of scene tasks on the first `n` transfer-split images (`agreement.fisher_images`),
    heads of `head_steps` steps (`agreement.head_steps`), with the probe of chapter 09 (trained here if missing):
    one runner unit and store entry per task."""
    store, cfg = Store.for_params(P), P.section(task2vec.SECTION)
    task2vec.train_probe(store, P.common, cfg)  # the units read it
    data.scene_split(store, P.common, "transfer")  # rendered once, here, before any worker
    keys = {t: embedding_key(P.common, cfg, t, n, head_steps) for t in tasks}
    run_units(dense_unit, [DenseUnit(P.subset(task2vec.SECTION), t, n, head_steps) for t in tasks], store=store,
              kind="task2vec_dense", key=lambda u: keys[u.task], version=VERSION, common=P.common,
              desc="dense task2vec embeddings",
              save=lambda u, r: store.save("task2vec_dense", keys[u.task], r, VERSION, fmt="npz"))
    return {t: store.load("task2vec_dense", keys[t], VERSION)["embedding"] for t in tasks}
