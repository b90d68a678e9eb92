"""Procedural indoor scenes: the study's embedded dataset (../design/scenes.md).

Taskonomy computed most of its labels from 3D scans of real buildings; here the scans are replaced by a
procedural world whose every label is exact: an axis-aligned room (floor, ceiling, four textured walls) of one
of five room types, 2-6 primitive objects resting on the floor, a pinhole camera and a point light with
ambient light. Rays are cast analytically against the room box and against every object piece (a convex
quadric clipped by up to six planes, or a convex polyhedron), one batch of scenes at a time, in float32 torch.
Shading is Lambertian with cast shadows (shadow rays); principal curvatures are analytic (implicit-surface
formulas for the quadrics, zero on planes).

Determinism: a scene's random parameters come from ``np.random.default_rng([seed, split_code, index])`` only,
and every per-pixel computation is element-wise (+, -, *, /, sqrt, floor, comparisons; no BLAS, no SIMD
transcendental functions), so a sample is bit-identical whatever batch it is rendered in.

The classification set of the side studies (one object per image, a class hierarchy) is rendered by this ray
caster too: taskstudy.world.objects.

This module is the entry point (render a split, with every task's labels); what a scene is and how it is drawn
is in `scene_sampling`, its geometry in `scene_geometry`, the ray caster in `raycast`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from taskstudy.world.raycast import _render_params
from taskstudy.world.scene_sampling import (
    FOV_DEG,
    LAYOUT_FIELDS,
    MAX_OBJECTS,
    N_ROOM,
    OBJECT_CLASSES,
    ROOM_TYPES,
    SEMANTIC_CLASSES,
    TEXTURES,
    SceneParams,
    _sample_scenes,
    split_code,
)

__all__ = [  # what a scene is (scene_sampling) and how it is rendered
    "ROOM_TYPES",
    "OBJECT_CLASSES",
    "SEMANTIC_CLASSES",
    "TEXTURES",
    "LAYOUT_FIELDS",
    "MAX_OBJECTS",
    "N_ROOM",
    "FOV_DEG",
    "SceneParams",
    "render",
    "generate_split",
    "split_code",
]


def _check_size(image_size: int) -> None:
    if not 16 <= int(image_size) <= 256:
        raise ValueError(f"image_size must be within 16..256 px, got {image_size}")


def render(
    split: str, indices: Sequence[int] | np.ndarray, seed: int, image_size: int
) -> dict[str, np.ndarray]:
    """Render scenes ``indices`` of ``split``: per-pixel buffers (leading batch dim) and per-scene arrays.

    Pixel buffers: rgb, albedo, normal (camera frame, facing the camera), point (camera frame), ray (unit view
    rays) (N,3,H,W); distance, depth, shading, shadow (cast shadow: facing the light but occluded), instance
    (0 floor, 1 ceiling, 2-5 walls, 6+k object slot k), semantic (index into SEMANTIC_CLASSES) (N,H,W);
    curvature (N,2,H,W) principal curvatures k1 >= k2 (1/m, positive = convex). Per scene: room_type, camera
    (N,9) = LAYOUT_FIELDS, room_axes (N,3,3) rows = world x,y,z in camera frame, vanishing (N,3,3) rows =
    canonical room axes (right, up, front), obj_class (N,6) (-1 empty), obj_count, room_size, index, seed.
    Camera frame: x right, y down, z forward.
    """
    _check_size(image_size)
    with _threads():
        return _render_params(_sample_scenes(split, np.asarray(indices), seed), image_size)


class _threads:
    """Use at most 2 torch threads inside (the machine budget); restore afterwards."""

    def __enter__(self) -> None:
        self.old = torch.get_num_threads()
        torch.set_num_threads(min(self.old, 2))

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)


LABEL_PREFIX = "label_"
_KEEP = ("rgb", "instance", "semantic", "room_type", "camera", "vanishing", "obj_class", "obj_count", "index")


def generate_split(
    split: str, n: int, seed: int, image_size: int, batch_size: int = 256, progress: bool = True
) -> dict[str, np.ndarray]:
    """All ``n`` samples of a split (indices 0..n-1): the RGB image, instance/semantic maps, per-scene arrays,
    and every task's label under ``label_<task>`` (labels.make_labels). Deterministic, independent of
    batch_size.
    """
    from taskstudy.world import labels as labels_mod

    _check_size(image_size)
    chunks: list[dict[str, np.ndarray]] = []
    starts = range(0, n, batch_size)
    it: Any = starts
    if progress:
        from taskstudy.engine.parallel import progress as bar

        it = bar(starts, desc=f"scenes {split}", unit="batch", leave=False)
    for s in it:
        buf = render(split, np.arange(s, min(n, s + batch_size)), seed, image_size)
        labels = labels_mod.make_labels(buf)
        out = {k: buf[k] for k in _KEEP}
        out.update({LABEL_PREFIX + k: v for k, v in labels.items()})
        chunks.append(out)
    if not chunks:
        raise ValueError("generate_split needs n >= 1")
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
