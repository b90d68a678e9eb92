"""The task dictionary of the study (../design/scenes.md, "The task dictionary").

Taskonomy's 26 tasks had labels computed from 3D scans (depth, normals, curvature, layout, occlusion edges...)
or from the images themselves (edges, keypoints, unsupervised segments, jigsaw, colorization). Here every
label is computed from the procedural renderer's buffers (``taskstudy.world.scenes``), vectorised over a batch.

Choices for the tasks the spec leaves open:

- ``segment_unsup2d``: boundary map of a colour clustering with spatial connectivity: the 3x3-blurred image is
  clustered on a fixed colour grid (4 levels per channel, 64 clusters); a pixel is a boundary (1) when a
  4-neighbour falls in another cluster. Target in {0,1}, L1.
- ``segment_unsup25d``: boundary map of depth+normal clustering: a pixel is a boundary when a 4-neighbour's
  normal differs by more than 30 degrees or its distance by more than 15 %. L1.
- ``edge_occlusion``: max relative depth jump to a 4-neighbour (|d log distance|), soft-thresholded:
  clamp(4 (jump - 0.05), 0, 1). L1.
- ``keypoints2d`` / ``keypoints3d``: Harris corner response (structure tensor over a 3x3 box) of the grey
  image / of (log distance, normal x, y, z), squashed as r / (r + k). L1.
- ``curvature``: the two principal curvatures k1 >= k2 (1/m), squashed as k / (1 + |k|). L1.
- ``reshading``: Lambertian shading with a light at the camera, no albedo: max(0, -n.ray). L1.
- ``room_layout``: (pitch, roll, yaw residual to the nearest room axis, camera height, distance to ceiling
  and to the front/right/back/left walls) (scenes.LAYOUT_FIELDS), radians and metres. L2.
- ``vanishing_point``: the three canonical room axes (right, up, front) in the camera frame, 9 numbers. L2.
- held out: ``object_count`` (visible objects, L2), ``albedo`` (L1), ``shadow`` (cast-shadow mask,
  2-class CE).

Every per-image score is the negative per-image loss (higher is better).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taskstudy.engine.params import ParamsError, StudyParams
from taskstudy.world import scenes
from taskstudy.world.labels import _N_OBJ, JIGSAW_K, PERMUTATIONS, _grey, jigsaw_class

KINDS = ("pixel_regression", "pixel_classification", "regression", "classification", "distribution")
INPUTS = ("rgb", "noisy", "grey", "masked", "jigsaw")
IGNORE_INDEX = -100  # a class-map pixel without a label (real data): left out of losses and scores
NOISE_STD = 0.1
_NOISE_STREAM = 0xD0153


class UnknownTaskError(KeyError, ValueError):
    """An unknown task name (a KeyError and a ValueError), with the nearest valid name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Task:
    """One task: what it predicts, from which input, with which loss and per-image score.

    ``channels``: network output channels (number of classes for the classification kinds).
    Label shapes: pixel_regression (N,C,H,W) float32; pixel_classification (N,H,W) int64;
    regression / distribution (N,C) float32; classification (N,) int64.
    """

    name: str
    group: str
    kind: str
    channels: int
    loss_name: str
    target: str
    input: str = "rgb"
    source_only: bool = False
    held_out: bool = False

    def label_shape(self, n: int, image_size: int) -> tuple[int, ...]:
        """Shape of this task's label array for ``n`` samples."""
        if self.kind == "pixel_regression":
            return (n, self.channels, image_size, image_size)
        if self.kind == "pixel_classification":
            return (n, image_size, image_size)
        if self.kind == "classification":
            return (n,)
        return (n, self.channels)

    def per_image_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of each image (N,). Pixels a real dataset marks invalid (NaN in a regression target, IGNORE_INDEX
        in a class map: taskstudy.world.taskonomy_data) are left out of the image's mean."""
        n = pred.shape[0]
        if self.loss_name in ("l1", "l2"):
            valid = None
            if target.is_floating_point() and torch.isnan(target).any():
                valid = ~torch.isnan(target)
                target = torch.where(valid, target, pred.detach())  # zero error and zero gradient there
            err = (pred - target).abs() if self.loss_name == "l1" else (pred - target) ** 2
            return err.reshape(n, -1).mean(1) if valid is None else _masked_mean(err, valid)
        if self.loss_name == "ce":
            target = target.long()
            ce = F.cross_entropy(pred, target, reduction="none", ignore_index=IGNORE_INDEX)
            if target.dim() > 1 and (target == IGNORE_INDEX).any():
                return _masked_mean(ce, target != IGNORE_INDEX)
            return ce.reshape(n, -1).mean(1)
        if self.loss_name == "kl":
            logq = F.log_softmax(pred, dim=1)
            t = target.clamp(min=0)
            return torch.where(t > 0, t * (torch.log(t.clamp(min=1e-12)) - logq), torch.zeros_like(t)).sum(1)
        raise ValueError(f"task {self.name}: unknown loss {self.loss_name!r}")

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Batch-mean loss (scalar, differentiable)."""
        return self.per_image_loss(pred, target).mean()

    def score(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-image score (N,) for win rates: higher is better (the negative per-image loss)."""
        with torch.no_grad():
            return -self.per_image_loss(pred, target)


def _masked_mean(err: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image mean of `err` over its valid entries (an image with none: 0)."""
    n = err.shape[0]
    v = valid.reshape(n, -1).to(err.dtype)
    return (err.reshape(n, -1) * v).sum(1) / v.sum(1).clamp(min=1)


def _t(name: str, group: str, kind: str, channels: int, loss: str, target: str, **kw: Any) -> Task:
    return Task(name=name, group=group, kind=kind, channels=channels, loss_name=loss, target=target, **kw)


_N_SEM = len(scenes.SEMANTIC_CLASSES)
_ALL = [
    _t("autoencoding", "2D", "pixel_regression", 3, "l1", "the RGB image"),
    _t(
        "denoising",
        "2D",
        "pixel_regression",
        3,
        "l1",
        "the RGB image, from a noise-corrupted input",
        input="noisy",
    ),
    _t("edge2d", "2D", "pixel_regression", 1, "l1", "Sobel edge magnitude of the grey image"),
    _t("keypoints2d", "2D", "pixel_regression", 1, "l1", "Harris corner response of the grey image"),
    _t("segment_unsup2d", "2D", "pixel_regression", 1, "l1", "boundaries of a colour+position clustering"),
    _t(
        "colorization",
        "2D",
        "pixel_regression",
        3,
        "l1",
        "the RGB image from the grey image",
        input="grey",
        source_only=True,
    ),
    _t(
        "inpainting",
        "2D",
        "pixel_regression",
        3,
        "l1",
        "the RGB image from an image with its centre masked",
        input="masked",
        source_only=True,
    ),
    _t(
        "jigsaw",
        "2D",
        "classification",
        JIGSAW_K,
        "ce",
        "permutation class of the shuffled 3x3 tiles",
        input="jigsaw",
        source_only=True,
    ),
    _t("depth_euclidean", "3D", "pixel_regression", 1, "l1", "log euclidean distance (m)"),
    _t("depth_zbuffer", "3D", "pixel_regression", 1, "l1", "log z-buffer depth (m)"),
    _t("normals", "3D", "pixel_regression", 3, "l1", "camera-frame surface normal"),
    _t("reshading", "3D", "pixel_regression", 1, "l1", "shading under a light at the camera, no albedo"),
    _t("curvature", "3D", "pixel_regression", 2, "l1", "principal curvatures k/(1+|k|)"),
    _t("edge_occlusion", "3D", "pixel_regression", 1, "l1", "depth-discontinuity magnitude"),
    _t("keypoints3d", "3D", "pixel_regression", 1, "l1", "Harris response of depth and normals"),
    _t("segment_unsup25d", "3D", "pixel_regression", 1, "l1", "boundaries of a depth+normal clustering"),
    _t(
        "room_layout",
        "geometry",
        "regression",
        9,
        "l2",
        "camera pitch/roll/yaw residual, height, room extents",
    ),
    _t("vanishing_point", "geometry", "regression", 9, "l2", "the three room axes in the camera frame"),
    _t("segment_semantic", "semantic", "pixel_classification", _N_SEM, "ce", "per-pixel semantic class"),
    _t("class_object", "semantic", "distribution", _N_OBJ, "kl", "object classes by visible area"),
    _t("class_scene", "semantic", "classification", len(scenes.ROOM_TYPES), "ce", "room type"),
    _t("object_count", "held_out", "regression", 1, "l2", "number of visible objects", held_out=True),
    _t("albedo", "held_out", "pixel_regression", 3, "l1", "surface albedo (intrinsic colour)", held_out=True),
    _t("shadow", "held_out", "pixel_classification", 2, "ce", "cast-shadow mask", held_out=True),
]
TASKS: dict[str, Task] = {t.name: t for t in _ALL}


def get_task(name: str) -> Task:
    """The task called ``name``; an UnknownTaskError (KeyError and ValueError) names the nearest valid one."""
    if name in TASKS:
        return TASKS[name]
    near = difflib.get_close_matches(str(name), list(TASKS), n=1, cutoff=0.0)
    hint = f"; did you mean '{near[0]}'?" if near else ""
    raise UnknownTaskError(f"unknown task '{name}'{hint} (valid: {', '.join(TASKS)})")


def check_profile(P: StudyParams) -> None:
    """Every task a profile names (common.tasks, chapter 12's base and each of its variations) is a task of this
    dictionary: a typo fails naming the key and the nearest task before any kernel starts (`taskstudy run`)."""
    named = {"common.tasks": P.common.tasks or []}
    if "robustness" in P.sections:
        base = P.section("robustness")
        named["robustness.tasks"] = list(base.tasks)
        for name, extra in base.variations.items():
            named[f"robustness.variations.{name}"] = P.with_overrides(*extra).common.tasks or []
    for where, names in named.items():
        for t in names:
            try:
                get_task(t)
            except UnknownTaskError as e:
                raise ParamsError(f"{P.file}: '{where}': {e.args[0]}") from None


def dictionary_tasks() -> list[str]:
    """The task dictionary: every task not held out (targets and source-only tasks)."""
    return [t.name for t in _ALL if not t.held_out]


def target_tasks() -> list[str]:
    """Dictionary tasks that are also transfer targets (not source-only)."""
    return [t.name for t in _ALL if not t.held_out and not t.source_only]


def source_only_tasks() -> list[str]:
    return [t.name for t in _ALL if t.source_only]


def held_out_tasks() -> list[str]:
    """Targets the taxonomy never sees (the novel-task chapter)."""
    return [t.name for t in _ALL if t.held_out]


# ---- input transforms -------------------------------------------------------------------------------------
def _noise(index: np.ndarray, seed: int | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    idx = np.asarray(index, np.int64).reshape(-1)
    sd = np.broadcast_to(np.asarray(seed, np.int64), idx.shape)
    return np.stack(
        [
            np.random.default_rng([int(s), _NOISE_STREAM, int(i)]).standard_normal(shape, np.float32)
            for s, i in zip(sd, idx, strict=True)
        ]
    )


def shuffle_tiles(rgb: torch.Tensor, perm_class: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Shuffle the 3x3 tiles of each image (tile side = H // 3; a remainder border is left in place):
    output tile position j shows input tile PERMUTATIONS[class][j]."""
    n, _, h, w = rgb.shape
    th, tw = h // 3, w // 3
    core = (
        rgb[:, :, : 3 * th, : 3 * tw]
        .reshape(n, -1, 3, th, 3, tw)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(n, 9, -1, th, tw)
    )
    perm = torch.as_tensor(PERMUTATIONS[np.asarray(perm_class, np.int64)], dtype=torch.long)
    shuf = core.gather(1, perm[:, :, None, None, None].expand_as(core))
    shuf = shuf.reshape(n, 3, 3, -1, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, -1, 3 * th, 3 * tw)
    out = rgb.clone()
    out[:, :, : 3 * th, : 3 * tw] = shuf
    return out


def make_input(
    task: str | Task,
    rgb: np.ndarray | torch.Tensor,
    index: np.ndarray | None = None,
    seed: int | np.ndarray = 0,
) -> torch.Tensor:
    """The network input of ``task`` for clean images ``rgb`` (N,3,H,W) in [0,1], as float32 torch.

    rgb: unchanged; noisy: + N(0, 0.1^2) clamped; grey: luminance replicated to 3 channels; masked: the
    central
    H/2 x W/2 square set to 0.5; jigsaw: tiles shuffled by the sample's permutation class. The random ones
    (noisy, jigsaw) need the samples' ``index`` (and the split ``seed``) and are deterministic per sample.
    """
    t = get_task(task) if isinstance(task, str) else task
    x = torch.as_tensor(rgb, dtype=torch.float32)
    if t.input == "rgb":
        return x
    if t.input == "grey":
        return _grey(x).expand(-1, 3, -1, -1).contiguous()
    if t.input == "masked":
        out = x.clone()
        h, w = x.shape[-2:]
        out[..., h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = 0.5
        return out
    if index is None:
        raise ValueError(f"task {t.name}: input transform {t.input!r} needs the samples' index")
    if t.input == "noisy":
        return (x + NOISE_STD * torch.from_numpy(_noise(index, seed, tuple(x.shape[1:])))).clamp(0, 1)
    if t.input == "jigsaw":
        return shuffle_tiles(x, jigsaw_class(index, seed))
    raise ValueError(f"task {t.name}: unknown input transform {t.input!r}")


def dictionary_table() -> Any:
    """The task dictionary as a table: group, kind, output channels, input, target, loss, role."""
    import pandas as pd

    rows = []
    for t in TASKS.values():
        role = "held out (novel)" if t.held_out else "source only" if t.source_only else "source and target"
        rows.append({"task": t.name, "group": t.group, "kind": t.kind, "channels": t.channels, "input": t.input,
                     "target": t.target, "loss": t.loss_name, "role": role})
    return pd.DataFrame(rows)
