"""The object world: a rendered classification set with a class hierarchy (issue 18; ../design/scenes.md).

One object, centred, in a room of the scene world, rendered by the scenes' own ray caster. A class is a
(shape, colour) pair inside one of two *super-categories that differ in kind*, the analogue of ImageNet's
natural vs man-made split that Yosinski et al. (2014, Sec. 4.2) use:

* ``organic``: rounded shapes (sphere, ellipsoid, capsule, cylinder) in six natural colours (leaf, olive, bark,
  sand, rust, stone), with irregular surface patterns (noise, speckle, rings);
* ``manufactured``: vertexed shapes (cone, box, pyramid, prism) in six saturated colours, with regular patterns
  (checker, stripes, grid).

So the study world has 2 x 4 shapes x 6 colours = 48 classes; sub-classes of one super-category share its
shapes, palette and patterns (the "related sub-classes" of a random split), the two super-categories share
none of them (the dissimilar split). The surface pattern is a nuisance drawn per image from the
super-category's three, kept as a label (``texture``) but not part of the class.

The ``pretrain`` world plays ImageNet's role for Task2Vec's probe network (Achille et al. 2019, Sec. 3) and for
the ImageNet-like baseline of the novel-task table: every one of the 8 shapes in four colours no study class
uses (32 classes), rendered from its own split name, so neither a class nor an image of the study world is in it.

Task families over the study world (Task2Vec, Sec. 5): tasks about different attributes (shape, colour,
super-category, the class) and many related tasks within one attribute (which shape, given a colour; which
colour, given a shape), as iNaturalist's taxonomy gives the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cache

import numpy as np

from taskstudy.world import raycast, scene_sampling, scenes

__all__ = [
    "SUPERCATEGORIES",
    "COLOURS",
    "PATTERNS",
    "WORLDS",
    "ObjectClass",
    "classes",
    "num_classes",
    "render_objects",
    "class_splits",
    "task_families",
]

#: super-category -> its shapes (names in scenes.OBJECT_CLASSES)
SUPERCATEGORIES: dict[str, list[str]] = {
    "organic": ["sphere", "ellipsoid", "capsule", "cylinder"],
    "manufactured": ["cone", "box", "pyramid", "prism"],
}
#: palette -> colour name -> linear RGB albedo (jittered by +-0.04 per image)
COLOURS: dict[str, dict[str, tuple[float, float, float]]] = {
    "organic": {"leaf": (0.20, 0.60, 0.15), "olive": (0.50, 0.50, 0.08), "bark": (0.40, 0.22, 0.10),
                "sand": (0.92, 0.82, 0.55), "rust": (0.80, 0.35, 0.08), "stone": (0.45, 0.55, 0.70)},
    "manufactured": {"red": (0.90, 0.08, 0.10), "blue": (0.10, 0.22, 0.90), "yellow": (0.95, 0.90, 0.08),
                     "magenta": (0.85, 0.12, 0.75), "cyan": (0.08, 0.80, 0.85), "white": (0.95, 0.95, 0.95)},
    "pretrain": {"grey": (0.50, 0.50, 0.50), "purple": (0.45, 0.20, 0.65), "teal": (0.10, 0.45, 0.45),
                 "pink": (0.98, 0.62, 0.72)},
}
#: palette -> surface patterns (names in scenes.TEXTURES) drawn per image
PATTERNS: dict[str, list[str]] = {
    "organic": ["noise", "speckle", "rings"],
    "manufactured": ["checker", "stripes", "grid"],
    "pretrain": ["noise", "speckle", "rings", "checker", "stripes", "grid"],
}
WORLDS = ("study", "pretrain")
_JITTER = 0.04


@dataclass(frozen=True)
class ObjectClass:
    id: int  # index in classes(world)
    name: str  # "<colour> <shape>"
    supercategory: str  # "organic" | "manufactured" | "pretrain"
    shape: str  # a name in scenes.OBJECT_CLASSES
    colour: str  # a name in COLOURS[palette]


@cache
def classes(world: str = "study") -> tuple[ObjectClass, ...]:
    """The classes of a world, in id order: study = super-category, shape, colour; pretrain = shape, colour."""
    if world == "study":
        combos = [(sup, shape, col) for sup, shapes in SUPERCATEGORIES.items() for shape in shapes
                  for col in COLOURS[sup]]
    elif world == "pretrain":
        combos = [("pretrain", shape, col) for shape in scenes.OBJECT_CLASSES for col in COLOURS["pretrain"]]
    else:
        raise ValueError(f"unknown object world {world!r} (one of {WORLDS})")
    return tuple(ObjectClass(i, f"{c} {s}", sup, s, c) for i, (sup, s, c) in enumerate(combos))


def num_classes(world: str = "study") -> int:
    return len(classes(world))


def _split_name(world: str, split: str) -> str:
    """The render split of a world: the pretrain world draws from its own streams ("pretrain/train", ...)."""
    return split if world == "study" else f"{world}/{split}"


def _sample(world: str, split: str, indices: np.ndarray, seed: int) -> scenes.SceneParams:
    """One centred object per image; class = index % num_classes (balanced); background = a scene room."""
    cl = classes(world)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    name = _split_name(world, split)
    code = scenes.split_code(name)
    base = scene_sampling._sample_scenes(name, idx, seed + 7_777_777)  # background rooms from an unrelated stream
    u = scene_sampling._rngs_uniforms(seed, code, idx, 1)
    n = len(idx)
    label = idx % len(cl)
    shape = np.array([scenes.OBJECT_CLASSES.index(cl[k].shape) for k in label], np.int64)
    palette = np.array([cl[k].supercategory for k in label])
    rgb = np.array([COLOURS[cl[k].supercategory][cl[k].colour] for k in label]).reshape(n, 3)
    pattern = np.array([scenes.TEXTURES.index(PATTERNS[p][min(int(len(PATTERNS[p]) * v), len(PATTERNS[p]) - 1)])
                        for p, v in zip(palette, u[:, 16], strict=True)], np.int64)
    obj = np.full((n, scenes.MAX_OBJECTS), -1, np.int64)
    obj[:, 0] = shape
    size = np.zeros((n, scenes.MAX_OBJECTS, 3))
    size[:, 0] = scene_sampling._object_sizes(shape, u[:, 0:4])
    size[:, 0] *= (0.35 / (0.2 + 0.3 * u[:, 0]))[:, None]  # normalise the base size to 0.35 m
    pos = np.zeros((n, scenes.MAX_OBJECTS, 2))
    room = base.room
    pos[:, 0, 0], pos[:, 0, 1] = room[:, 0] / 2, room[:, 2] / 2
    heading = 2 * math.pi * u[:, 4]
    s0 = size[:, 0]
    height = np.where(shape == 0, 2 * s0[:, 0], np.where(shape == 1, 2 * s0[:, 1], s0[:, 1]))
    extent = np.maximum(height, 2 * scene_sampling._footprint(shape, s0))
    dist = (0.9 + 0.4 * u[:, 5]) * extent / math.tan(math.radians(scenes.FOV_DEG) / 2) + 0.3
    sh, ch = np.sin(heading), np.cos(heading)
    cam_h = 0.5 + 0.9 * u[:, 6]
    cam = np.stack([pos[:, 0, 0] - sh * dist, cam_h, pos[:, 0, 1] - ch * dist], -1)
    pitch = np.arctan2(0.5 * height - cam_h, dist) + (u[:, 7] - 0.5) * 0.1
    yaw = heading + (u[:, 8] - 0.5) * 0.1
    oyaw = np.zeros((n, scenes.MAX_OBJECTS))
    oyaw[:, 0] = 2 * math.pi * u[:, 9]
    k = scenes.N_ROOM
    tex, scale = base.surf_tex.copy(), base.surf_scale.copy()
    tex[:, k] = pattern
    scale[:, k] = 0.35 * (0.4 + 0.2 * u[:, 10])
    col_a, col_b = base.surf_col_a.copy(), base.surf_col_b.copy()
    col_a[:, k] = np.clip(rgb + _JITTER * (2 * u[:, 11:14] - 1), 0.02, 1.0)
    col_b[:, k] = col_a[:, k] * (0.45 + 0.15 * u[:, 14:15])
    sup = np.array([list(SUPERCATEGORIES).index(cl[k_].supercategory) if cl[k_].supercategory in SUPERCATEGORIES
                    else -1 for k_ in label], np.int64)
    colour = np.array([list(COLOURS[cl[k_].supercategory]).index(cl[k_].colour) for k_ in label], np.int64)
    return replace(base, cam_pos=cam, cam_yaw=yaw, cam_pitch=pitch, cam_roll=(u[:, 15] - 0.5) * 0.1,
                   obj_class=obj, obj_pos=pos, obj_yaw=oyaw, obj_size=size, surf_tex=tex, surf_scale=scale,
                   surf_col_a=col_a, surf_col_b=col_b, seed=int(seed),
                   extra={"label": label, "shape": shape, "colour": colour, "texture": pattern,
                          "supercategory": sup})


def render_objects(split: str, indices: Sequence[int] | np.ndarray, seed: int, image_size: int,
                   world: str = "study") -> dict[str, np.ndarray]:
    """Images ``indices`` of a world's split: rgb (N,3,H,W) in [0,1], label (class id, balanced by index), shape
    (scenes.OBJECT_CLASSES id), colour (index in its palette), texture (scenes.TEXTURES id), supercategory
    (index in SUPERCATEGORIES; -1 in the pretrain world), mask (the object's pixels), index. Deterministic."""
    scenes._check_size(image_size)
    with scenes._threads():
        p = _sample(world, split, np.asarray(indices), seed)
        buf = raycast._render_params(p, image_size)
    out = {k: v.astype(np.int64) for k, v in p.extra.items()}
    return {"rgb": buf["rgb"], **out, "mask": (buf["instance"] == scenes.N_ROOM).astype(np.uint8),
            "index": p.index.astype(np.int64)}


def class_splits(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Yosinski et al.'s two A/B splits of the study world's classes (Sec. 4.1, 4.2).

    ``similar``: a seeded random half of the classes (A) and the rest (B), so both halves hold sub-classes of both
    super-categories. ``dissimilar``: A = every organic class, B = every manufactured class (no shape, colour or
    pattern in common)."""
    cl = classes("study")
    ids = np.arange(len(cl))
    perm = np.random.default_rng([int(seed), 4242]).permutation(ids)
    organic = np.array([c.supercategory == "organic" for c in cl])
    return {"similar": {"A": np.sort(perm[: len(cl) // 2]), "B": np.sort(perm[len(cl) // 2:])},
            "dissimilar": {"A": ids[organic], "B": ids[~organic]}}


@cache
def task_families() -> tuple[tuple[str, np.ndarray, np.ndarray], ...]:
    """Task2Vec's task family over the study world: (name, classes used, new label per used class).

    Within one attribute, many related tasks: "shape|colour=c" (which of the 4 shapes, given colour c; 12 tasks)
    and "colour|shape=s" (which of the 6 colours, given shape s; 8 tasks). Across attributes: "supercategory"
    (2-way), "shape" (8-way), "colour" (12-way) and "class" (all 48)."""
    cl = classes("study")
    ids = np.arange(len(cl))
    out: list[tuple[str, np.ndarray, np.ndarray]] = []
    for sup, shapes in SUPERCATEGORIES.items():
        for col in COLOURS[sup]:
            used = np.array([c.id for c in cl if c.colour == col])
            out.append((f"shape|colour={col}", used, np.array([shapes.index(cl[i].shape) for i in used])))
    for sup, shapes in SUPERCATEGORIES.items():
        for shape in shapes:
            used = np.array([c.id for c in cl if c.shape == shape])
            out.append((f"colour|shape={shape}", used, np.array([list(COLOURS[sup]).index(cl[i].colour)
                                                                 for i in used])))
    shapes_all = [s for ss in SUPERCATEGORIES.values() for s in ss]
    colours_all = [c for sup in SUPERCATEGORIES for c in COLOURS[sup]]
    out.append(("supercategory", ids, np.array([list(SUPERCATEGORIES).index(c.supercategory) for c in cl])))
    out.append(("shape", ids, np.array([shapes_all.index(c.shape) for c in cl])))
    out.append(("colour", ids, np.array([colours_all.index(c.colour) for c in cl])))
    out.append(("class", ids, ids.copy()))
    return tuple(out)
