"""Every task's label, computed from the renderer's buffers (../design/scenes.md, "The task dictionary"), vectorised
over a batch: the image's own labels (edges, keypoints, unsupervised segments, the jigsaw class) with deterministic
filters (shifted sums: no convolution algorithm choice, bit-stable per sample), the 3D ones from depth, normals,
curvature and the camera, and the scene's classes. `taskstudy.world.tasks` says what each task is; the choices
the spec leaves open are listed there.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from taskstudy.world.scene_sampling import MAX_OBJECTS, N_ROOM, OBJECT_CLASSES

JIGSAW_K = 24


_JIGSAW_STREAM = 0x1195


_N_OBJ = len(OBJECT_CLASSES)


def _make_permutations(k: int = JIGSAW_K, seed: int = 2018) -> np.ndarray:
    """A fixed set of k permutations of 9 tiles with large pairwise Hamming distance (greedy, seeded)."""
    rng = np.random.default_rng(seed)
    cand = np.array([rng.permutation(9) for _ in range(2000)])
    chosen = [np.arange(9)]
    dmin = (cand != chosen[0]).sum(1)
    for _ in range(k - 1):
        j = int(np.argmax(dmin))
        chosen.append(cand[j])
        dmin = np.minimum(dmin, (cand != cand[j]).sum(1))
    return np.stack(chosen)


PERMUTATIONS: np.ndarray = _make_permutations()


def jigsaw_class(index: np.ndarray, seed: int | np.ndarray) -> np.ndarray:
    """The permutation class of each sample: a pure function of (seed, index)."""
    idx = np.asarray(index, np.int64).reshape(-1)
    sd = np.broadcast_to(np.asarray(seed, np.int64), idx.shape)
    return np.array(
        [
            np.random.default_rng([int(s), _JIGSAW_STREAM, int(i)]).integers(JIGSAW_K)
            for s, i in zip(sd, idx, strict=True)
        ],
        np.int64,
    )


def _pad(x: torch.Tensor) -> torch.Tensor:
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


def _sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p = _pad(x)
    gx = (p[..., :-2, 2:] + 2 * p[..., 1:-1, 2:] + p[..., 2:, 2:]) - (
        p[..., :-2, :-2] + 2 * p[..., 1:-1, :-2] + p[..., 2:, :-2]
    )
    gy = (p[..., 2:, :-2] + 2 * p[..., 2:, 1:-1] + p[..., 2:, 2:]) - (
        p[..., :-2, :-2] + 2 * p[..., :-2, 1:-1] + p[..., :-2, 2:]
    )
    return gx / 8, gy / 8


def _box3(x: torch.Tensor) -> torch.Tensor:
    p = _pad(x)
    h, w = x.shape[-2:]
    s = p[..., 0:h, 0:w]
    for i in range(3):
        for j in range(3):
            if i or j:
                s = s + p[..., i : i + h, j : j + w]
    return s / 9


def _neighbour_max(x: torch.Tensor, fn: Any) -> torch.Tensor:
    """max over the 4-neighbours of fn(x, neighbour) (replicate border)."""
    p = _pad(x)
    h, w = x.shape[-2:]
    c = p[..., 1 : h + 1, 1 : w + 1]
    nb = [
        p[..., 0:h, 1 : w + 1],
        p[..., 2 : h + 2, 1 : w + 1],
        p[..., 1 : h + 1, 0:w],
        p[..., 1 : h + 1, 2 : w + 2],
    ]
    out = fn(c, nb[0])
    for q in nb[1:]:
        out = torch.maximum(out, fn(c, q))
    return out


def colour_clusters(rgb: torch.Tensor) -> torch.Tensor:
    """segment_unsup2d's clustering: the 3x3-blurred image on a fixed grid of 4 levels per channel, (N, 1, H, W)
    cluster ids 0..63."""
    q = (_box3(rgb) * 4).floor().clamp(0, 3)
    return q[:, 0:1] * 16 + q[:, 1:2] * 4 + q[:, 2:3]


def label_boundaries(ids: torch.Tensor) -> torch.Tensor:
    """1 where a 4-neighbour has another id, else 0: the boundary map of a segmentation (N, 1, H, W)."""
    return _neighbour_max(ids, lambda c, o: (c != o).float())


def _harris(chans: torch.Tensor, k: float) -> torch.Tensor:
    gx, gy = _sobel(chans)
    ixx, iyy, ixy = _box3(gx * gx).sum(1), _box3(gy * gy).sum(1), _box3(gx * gy).sum(1)
    r = (ixx * iyy - ixy * ixy - 0.04 * (ixx + iyy) ** 2).clamp(min=0)
    return (r / (r + k))[:, None]


def _log32(x: torch.Tensor) -> torch.Tensor:
    """log in float64 then rounded to float32 (bit-stable regardless of vectorisation)."""
    return torch.log(x.double().clamp(min=1e-6)).float()


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    return 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]


def make_labels(buffers: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every task's target (see Task.label_shape) from scenes.render buffers, vectorised over the batch."""
    old = torch.get_num_threads()
    torch.set_num_threads(min(old, 2))
    try:
        return _make_labels(buffers)
    finally:
        torch.set_num_threads(old)


def _make_labels(b: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    rgb = torch.from_numpy(b["rgb"])
    n = rgb.shape[0]
    dist = torch.from_numpy(b["distance"])[:, None]
    depth = torch.from_numpy(b["depth"])[:, None]
    normal = torch.from_numpy(b["normal"])
    ray = torch.from_numpy(b["ray"])
    sem = torch.from_numpy(b["semantic"])
    inst = torch.from_numpy(b["instance"])
    out: dict[str, np.ndarray] = {}
    out["autoencoding"] = b["rgb"]
    out["denoising"] = b["rgb"]
    out["colorization"] = b["rgb"]
    out["inpainting"] = b["rgb"]
    grey = _grey(rgb)
    gx, gy = _sobel(grey)
    out["edge2d"] = torch.sqrt(gx * gx + gy * gy).clamp(max=1.0).numpy()
    out["keypoints2d"] = _harris(grey, 1e-3).numpy()
    out["segment_unsup2d"] = label_boundaries(colour_clusters(rgb)).numpy()
    out["jigsaw"] = jigsaw_class(b["index"], b["seed"])

    logd = _log32(dist)
    out["depth_euclidean"] = logd.numpy()
    out["depth_zbuffer"] = _log32(depth).numpy()
    out["normals"] = b["normal"]
    resh = -(normal[:, 0] * ray[:, 0] + normal[:, 1] * ray[:, 1] + normal[:, 2] * ray[:, 2])
    out["reshading"] = resh.clamp(0, 1)[:, None].numpy()
    k = torch.from_numpy(b["curvature"])
    out["curvature"] = (k / (1 + k.abs())).numpy()
    jump = _neighbour_max(logd, lambda c, o: (c - o).abs())
    out["edge_occlusion"] = (4 * (jump - 0.05)).clamp(0, 1).numpy()
    out["keypoints3d"] = _harris(torch.cat([logd, normal], 1), 1e-3).numpy()
    geo = torch.cat([normal, dist], 1)

    def geo_edge(c: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        dot = c[:, 0] * o[:, 0] + c[:, 1] * o[:, 1] + c[:, 2] * o[:, 2]
        rel = (c[:, 3] - o[:, 3]).abs() / c[:, 3]
        return ((dot < math.cos(math.radians(30))) | (rel > 0.15)).float()[:, None]

    out["segment_unsup25d"] = _neighbour_max(geo, geo_edge).numpy()
    out["room_layout"] = b["camera"].astype(np.float32)
    out["vanishing_point"] = b["vanishing"].reshape(n, 9).astype(np.float32)
    out["segment_semantic"] = b["semantic"].astype(np.int64)
    area = torch.stack([(sem == 3 + c).reshape(n, -1).sum(1) for c in range(_N_OBJ)], 1).double()
    tot = area.sum(1, keepdim=True)
    dist_obj = torch.where(tot > 0, area / tot.clamp(min=1), torch.full_like(area, 1.0 / _N_OBJ))
    out["class_object"] = dist_obj.float().numpy()
    out["class_scene"] = b["room_type"].astype(np.int64)
    vis = torch.stack(
        [(inst == N_ROOM + s).reshape(n, -1).any(1) for s in range(MAX_OBJECTS)], 1
    )
    out["object_count"] = vis.sum(1, keepdim=True).float().numpy()
    out["albedo"] = b["albedo"]
    out["shadow"] = b["shadow"].astype(np.int64)
    return out
