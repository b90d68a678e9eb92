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
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "ROOM_TYPES",
    "OBJECT_CLASSES",
    "SEMANTIC_CLASSES",
    "TEXTURES",
    "LAYOUT_FIELDS",
    "MAX_OBJECTS",
    "render",
    "generate_split",
    "split_code",
]

ROOM_TYPES: list[str] = ["bedroom", "kitchen", "office", "bathroom", "living_room"]
OBJECT_CLASSES: list[str] = ["sphere", "ellipsoid", "capsule", "cylinder", "cone", "box", "pyramid", "prism"]
SEMANTIC_CLASSES: list[str] = ["floor", "wall", "ceiling", *OBJECT_CLASSES]
#: solid textures (object-local 3D coordinates; room surfaces use their 2D plane coordinates)
TEXTURES: list[str] = [
    "plain",
    "checker",
    "checker_fine",
    "bands",
    "stripes",
    "diagonal",
    "rings",
    "dots",
    "grid",
    "noise",
    "halves",
    "speckle",
]
ROOM_TEXTURES: list[int] = [0, 1, 3, 4, 9]  # plain, checker, bands (horizontal), stripes (vertical), noise
LAYOUT_FIELDS: list[str] = [
    "pitch",
    "roll",
    "yaw_residual",
    "height",
    "ceiling_dist",
    "front_dist",
    "right_dist",
    "back_dist",
    "left_dist",
]
MAX_OBJECTS = 6
N_ROOM = 6  # instance ids 0 floor, 1 ceiling, 2 wall x=0, 3 wall x=W, 4 wall z=0, 5 wall z=D; objects 6+slot
N_SURF = N_ROOM + MAX_OBJECTS
FOV_DEG = 60.0
_NU = 256  # uniforms drawn per scene
_SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "extra": 4, "probe": 5}

# ---- room types: surface palettes, texture probabilities, object-class probabilities -------------------
_PALETTE = np.array(
    [  # floor, wall, ceiling base colours per room type
        [[0.55, 0.40, 0.30], [0.80, 0.74, 0.84], [0.92, 0.92, 0.90]],
        [[0.85, 0.84, 0.78], [0.95, 0.88, 0.62], [0.95, 0.95, 0.95]],
        [[0.45, 0.47, 0.52], [0.84, 0.86, 0.90], [0.88, 0.88, 0.92]],
        [[0.72, 0.84, 0.90], [0.66, 0.84, 0.84], [0.95, 0.97, 0.97]],
        [[0.62, 0.46, 0.30], [0.86, 0.72, 0.56], [0.93, 0.90, 0.85]],
    ]
)
# probabilities over ROOM_TEXTURES (plain, checker, bands, stripes, noise) for floor / walls / ceiling
_TEX_P = np.array(
    [
        [[0.3, 0.1, 0.1, 0.2, 0.3], [0.4, 0.05, 0.3, 0.2, 0.05], [0.8, 0.0, 0.0, 0.0, 0.2]],
        [[0.1, 0.6, 0.1, 0.1, 0.1], [0.4, 0.3, 0.1, 0.1, 0.1], [0.8, 0.1, 0.0, 0.0, 0.1]],
        [[0.3, 0.1, 0.1, 0.1, 0.4], [0.6, 0.05, 0.1, 0.1, 0.15], [0.6, 0.3, 0.0, 0.0, 0.1]],
        [[0.1, 0.6, 0.1, 0.1, 0.1], [0.2, 0.5, 0.1, 0.1, 0.1], [0.8, 0.1, 0.0, 0.0, 0.1]],
        [[0.3, 0.1, 0.2, 0.3, 0.1], [0.3, 0.05, 0.2, 0.4, 0.05], [0.8, 0.0, 0.1, 0.0, 0.1]],
    ]
)
_OBJ_P = np.array(
    [  # sphere ellipsoid capsule cylinder cone box pyramid prism
        [0.10, 0.25, 0.20, 0.05, 0.05, 0.25, 0.05, 0.05],
        [0.05, 0.05, 0.05, 0.30, 0.20, 0.20, 0.05, 0.10],
        [0.05, 0.05, 0.05, 0.15, 0.05, 0.35, 0.10, 0.20],
        [0.25, 0.25, 0.15, 0.15, 0.05, 0.05, 0.05, 0.05],
        [0.20, 0.10, 0.10, 0.05, 0.10, 0.10, 0.20, 0.15],
    ]
)
_OBJ_CDF = np.cumsum(_OBJ_P, axis=1)
_TEX_CDF = np.cumsum(_TEX_P, axis=2)


def split_code(split: str) -> int:
    """A fixed, machine-independent integer per split name (never Python's salted ``hash``)."""
    if split in _SPLIT_CODES:
        return _SPLIT_CODES[split]
    return 1000 + zlib.crc32(split.encode("utf-8")) % 1_000_000


# ---- scene parameters -----------------------------------------------------------------------------------
@dataclass
class SceneParams:
    """Everything that determines a batch of scenes (numpy, float64 geometry). Editable for tests."""

    room_type: np.ndarray  # (N,) int
    room: np.ndarray  # (N,3) width (x), height (y), depth (z)
    cam_pos: np.ndarray  # (N,3)
    cam_yaw: np.ndarray  # (N,)
    cam_pitch: np.ndarray  # (N,)
    cam_roll: np.ndarray  # (N,)
    light_pos: np.ndarray  # (N,3)
    light_power: np.ndarray  # (N,)
    ambient: np.ndarray  # (N,)
    surf_tex: np.ndarray  # (N,12) texture id per instance
    surf_scale: np.ndarray  # (N,12) texture period (m)
    surf_col_a: np.ndarray  # (N,12,3)
    surf_col_b: np.ndarray  # (N,12,3)
    obj_class: np.ndarray  # (N,K) int, -1 = empty slot
    obj_pos: np.ndarray  # (N,K,2) x, z of the footprint centre
    obj_yaw: np.ndarray  # (N,K)
    obj_size: np.ndarray  # (N,K,3) class-specific dimensions (see _pieces)
    index: np.ndarray  # (N,)
    seed: int = 0
    split_code: int = 0
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.room_type)


def _rngs_uniforms(seed: int, code: int, indices: np.ndarray, stream: int) -> np.ndarray:
    """(N, _NU) uniforms, one independent generator per sample."""
    out = np.empty((len(indices), _NU))
    for i, idx in enumerate(indices):
        out[i] = np.random.default_rng([int(seed), code, int(idx), stream]).random(_NU)
    return out


def _colour(base: np.ndarray, u3: np.ndarray, u_flag: np.ndarray, u_rand: np.ndarray) -> np.ndarray:
    """Palette colour jittered, replaced by a random colour with probability 0.25."""
    col = np.clip(base + (u3 - 0.5) * 0.35, 0.05, 1.0)
    rnd = 0.1 + 0.85 * u_rand
    return np.where((u_flag < 0.25)[..., None], rnd, col)


def _footprint(cls: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Radius of a disc holding an object's footprint."""
    sx, sz = size[..., 0], size[..., 2]
    r = np.where(np.isin(cls, [0, 2, 3, 4]), sx, np.sqrt(sx**2 + sz**2))
    r = np.where(cls == 1, np.maximum(sx, sz), r)
    r = np.where(cls == 6, sx * math.sqrt(2.0), r)
    return r


def _object_sizes(cls: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Class-specific dimensions from 4 uniforms: see ``_pieces`` for their meaning."""
    s = 0.2 + 0.3 * u[..., 0]
    a, b, c = u[..., 1], u[..., 2], u[..., 3]
    size = np.stack([s, s, s], -1)
    table = {
        0: (s, s, s),  # sphere radius
        1: (s * (0.6 + 0.8 * a), s * (0.6 + 1.0 * b), s * (0.6 + 0.8 * c)),  # semi-axes
        2: (0.6 * s, 1.2 * s + s * (0.8 + 1.2 * b), 0.6 * s),  # radius, total height
        3: (0.8 * s, s * (1.0 + 2.0 * b), 0.8 * s),  # radius, height
        4: (s, s * (1.2 + 1.8 * b), s),  # base radius, height
        5: (s * (0.6 + 0.8 * a), s * (0.8 + 1.6 * b), s * (0.6 + 0.8 * c)),  # half width, height, half depth
        6: (s, s * (1.0 + 1.5 * b), s),  # half base, height
        7: (s, s * (0.7 + 1.1 * b), s * (0.8 + 0.8 * c)),  # half width, height, half length
    }
    for k, (x, y, z) in table.items():
        m = cls == k
        size[m] = np.stack([x, y, z], -1)[m]
    return size


def _surfaces(rt: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, ...]:
    """Room-surface textures/colours (instances 0..5) from uniforms u (N, 6, 10)."""
    n = len(rt)
    kind_pal = np.array([0, 2, 1, 1, 1, 1])  # floor, ceiling, walls -> palette / texture row
    tex = np.zeros((n, N_ROOM), np.int64)
    for j in range(N_ROOM):
        cdf = _TEX_CDF[rt, kind_pal[j]]
        tex[:, j] = np.array(ROOM_TEXTURES)[np.minimum((cdf < u[:, j, 0:1]).sum(-1), len(ROOM_TEXTURES) - 1)]
    base = _PALETTE[rt][:, kind_pal]  # (N,6,3)
    col_a = _colour(base, u[..., 1:4], u[..., 4], u[..., 5:8])
    col_b = col_a * (0.45 + 0.3 * u[..., 8:9])
    scale = 0.3 + 0.7 * u[..., 9]
    return tex, scale, col_a, col_b


def _sample_scenes(split: str, indices: np.ndarray, seed: int) -> SceneParams:
    """Random scene parameters; sample i depends only on (seed, split, indices[i])."""
    code = split_code(split)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    u = _rngs_uniforms(seed, code, idx, 0)
    n = len(idx)
    rt = np.minimum((u[:, 0] * len(ROOM_TYPES)).astype(np.int64), len(ROOM_TYPES) - 1)
    room = np.stack([4 + 4 * u[:, 1], 2.5 + u[:, 2], 4 + 4 * u[:, 3]], -1)
    cx = 0.8 + (room[:, 0] - 1.6) * u[:, 4]
    cz = 0.8 + (room[:, 2] - 1.6) * u[:, 5]
    ch = 1.0 + 0.8 * u[:, 6]
    cam_pos = np.stack([cx, ch, cz], -1)
    to_centre = np.array(
        [math.atan2(a, b) for a, b in zip(room[:, 0] / 2 - cx, room[:, 2] / 2 - cz, strict=True)]
    )
    yaw = to_centre + (u[:, 7] - 0.5) * math.radians(120)
    pitch = -math.radians(30) * u[:, 8]
    roll = (u[:, 9] - 0.5) * math.radians(10)
    light = np.stack(
        [
            room[:, 0] * (0.2 + 0.6 * u[:, 10]),
            room[:, 1] - 0.1 - 0.2 * u[:, 11],
            room[:, 2] * (0.2 + 0.6 * u[:, 12]),
        ],
        -1,
    )
    power = 1.2 + 0.6 * u[:, 13]
    ambient = 0.15 + 0.2 * u[:, 14]

    us = u[:, 16:76].reshape(n, N_ROOM, 10)
    tex_r, scale_r, col_a_r, col_b_r = _surfaces(rt, us)

    # objects: 2-6, class from the room type's probabilities
    n_obj = 2 + np.minimum((u[:, 80] * 5).astype(np.int64), 4)
    uo = u[:, 81 : 81 + MAX_OBJECTS * 12].reshape(n, MAX_OBJECTS, 12)
    up = u[:, 160 : 160 + MAX_OBJECTS * 16].reshape(n, MAX_OBJECTS, 8, 2)
    cls = np.minimum((_OBJ_CDF[rt][:, None, :] < uo[..., 0:1]).sum(-1), len(OBJECT_CLASSES) - 1)
    size = _object_sizes(cls, uo[..., 1:5])
    oyaw = uo[..., 5] * 2 * math.pi
    otex = np.minimum((uo[..., 6] * len(TEXTURES)).astype(np.int64), len(TEXTURES) - 1)
    oscale = size[..., 0] * (0.35 + 0.3 * uo[..., 7])
    ocol_a = 0.1 + 0.85 * uo[..., 8:11]
    ocol_b = ocol_a * (0.3 + 0.3 * uo[..., 11:12])
    cls = np.where(np.arange(MAX_OBJECTS)[None] < n_obj[:, None], cls, -1)
    # placement: first valid of 8 candidates in the camera's view cone (no trig: forward/right vectors)
    fx = np.array([math.sin(a) for a in yaw])
    fz = np.array([math.cos(a) for a in yaw])
    rad = _footprint(cls, size)
    pos = np.zeros((n, MAX_OBJECTS, 2))
    for k in range(MAX_OBJECTS):
        a = 1.2 + 3.3 * up[:, k, :, 0]
        b = (up[:, k, :, 1] - 0.5) * 1.1 * a
        px = cx[:, None] + fx[:, None] * a - fz[:, None] * b
        pz = cz[:, None] + fz[:, None] * a + fx[:, None] * b
        r = rad[:, k : k + 1]
        ok = (
            (px > r + 0.05)
            & (px < room[:, 0:1] - r - 0.05)
            & (pz > r + 0.05)
            & (pz < room[:, 2:3] - r - 0.05)
        )
        ok &= (px - cx[:, None]) ** 2 + (pz - cz[:, None]) ** 2 > (r + 0.45) ** 2
        for j in range(k):
            live = cls[:, j : j + 1] >= 0
            sep = (px - pos[:, j, 0:1]) ** 2 + (pz - pos[:, j, 1:2]) ** 2 > (
                r + rad[:, j : j + 1] + 0.08
            ) ** 2
            ok &= sep | ~live
        first = np.argmax(ok, axis=1)
        found = ok[np.arange(n), first] & (cls[:, k] >= 0)
        pos[:, k, 0] = np.where(found, px[np.arange(n), first], 0.0)
        pos[:, k, 1] = np.where(found, pz[np.arange(n), first], 0.0)
        cls[:, k] = np.where(found, cls[:, k], -1)

    return SceneParams(
        room_type=rt,
        room=room,
        cam_pos=cam_pos,
        cam_yaw=yaw,
        cam_pitch=pitch,
        cam_roll=roll,
        light_pos=light,
        light_power=power,
        ambient=ambient,
        surf_tex=np.concatenate([tex_r, otex], 1),
        surf_scale=np.concatenate([scale_r, oscale], 1),
        surf_col_a=np.concatenate([col_a_r, ocol_a], 1),
        surf_col_b=np.concatenate([col_b_r, ocol_b], 1),
        obj_class=cls,
        obj_pos=pos,
        obj_yaw=oyaw,
        obj_size=size,
        index=idx,
        seed=int(seed),
        split_code=code,
    )


# ---- geometry: object pieces ------------------------------------------------------------------------------
_BIG = 1.0e3


def _pieces(p: SceneParams) -> dict[str, Any]:
    """Decompose objects into convex pieces: quadric pieces (quadric + 2 y-planes) and polyhedra (6 planes).

    Sizes: sphere r; ellipsoid semi-axes; capsule (r, total height); cylinder (r, h); cone (r, h);
    box (half x, height, half z); pyramid (half base, height); prism (half width, height, half length).
    A piece is given in a frame centred at ``centre`` and yawed like its object; planes are (nx, ny, nz, d)
    meaning n.p <= d, and the quadric is sum(A p^2) + b.p + c <= 0. Groups: 0 unclipped quadrics (spheres,
    ellipsoids, capsule ends), 1 quadrics clipped by 2 planes (cylinders, cones, capsule bodies), 2 polyhedra.
    """
    rows: list[tuple] = []  # (scene, slot, group, cy, A(3), b(3), c, planes(6x4))
    n_idx, k_idx = np.nonzero(p.obj_class >= 0)
    big = [(0, 1, 0, _BIG), (0, -1, 0, _BIG)]
    for n, k in zip(n_idx.tolist(), k_idx.tolist(), strict=True):
        c = int(p.obj_class[n, k])
        sx, sy, sz = (float(v) for v in p.obj_size[n, k])
        if c == 0:
            rows.append((n, k, 0, sx, (1, 1, 1), (0, 0, 0), -sx * sx, big))
        elif c == 1:
            rows.append((n, k, 0, sy, (1 / sx**2, 1 / sy**2, 1 / sz**2), (0, 0, 0), -1.0, big))
        elif c == 2:
            r, ln = sx, sy - 2 * sx
            rows.append((n, k, 0, 0.0, (1, 0, 1), (0, 0, 0), -r * r, [(0, 1, 0, r + ln), (0, -1, 0, -r)]))
            rows.append((n, k, 0, r, (1, 1, 1), (0, 0, 0), -r * r, big))
            rows.append((n, k, 0, r + ln, (1, 1, 1), (0, 0, 0), -r * r, big))
            rows[-3] = rows[-3][:2] + (1,) + rows[-3][3:]
        elif c == 3:
            rows.append((n, k, 1, 0.0, (1, 0, 1), (0, 0, 0), -sx * sx, [(0, 1, 0, sy), (0, -1, 0, 0)]))
        elif c == 4:
            q = (sx / sy) ** 2
            rows.append(
                (n, k, 1, 0.0, (1, -q, 1), (0, 2 * q * sy, 0), -q * sy * sy, [(0, 1, 0, sy), (0, -1, 0, 0)])
            )
        elif c == 5:
            pl = [(1, 0, 0, sx), (-1, 0, 0, sx), (0, 0, 1, sz), (0, 0, -1, sz), (0, 1, 0, sy), (0, -1, 0, 0)]
            rows.append((n, k, 2, 0.0, None, None, None, pl))
        elif c == 6:
            a, h = sx, sy
            ln = math.hypot(a, h)
            e, f, d = h / ln, a / ln, h * a / ln
            pl = [(e, f, 0, d), (-e, f, 0, d), (0, f, e, d), (0, f, -e, d), (0, -1, 0, 0), (0, -1, 0, 0)]
            rows.append((n, k, 2, 0.0, None, None, None, pl))
        else:
            a, h = sx, sy
            ln = math.hypot(a, h)
            e, f, d = h / ln, a / ln, h * a / ln
            pl = [(e, f, 0, d), (-e, f, 0, d), (0, 0, 1, sz), (0, 0, -1, sz), (0, -1, 0, 0), (0, -1, 0, 0)]
            rows.append((n, k, 2, 0.0, None, None, None, pl))
    rows.sort(key=lambda r: (r[2], r[0]))  # group, then scene
    m = len(rows)
    scene = np.array([r[0] for r in rows], np.int64)
    slot = np.array([r[1] for r in rows], np.int64)
    group = np.array([r[2] for r in rows], np.int64)
    planes = np.zeros((m, 6, 4))
    quad = np.zeros((m, 7))
    quad[:, 6] = -1.0
    cy = np.array([r[3] for r in rows], float)
    for i, r in enumerate(rows):
        pl = np.array(r[7], float)
        planes[i, : len(pl)] = pl
        if r[2] <= 1:
            quad[i] = [*r[4], *r[5], r[6]]
    # rank of each piece within its scene (for the per-scene depth buffer)
    order = np.lexsort((np.arange(m), scene))
    rank = np.zeros(m, np.int64)
    if m:
        s_sorted = scene[order]
        starts = np.r_[0, np.nonzero(np.diff(s_sorted))[0] + 1]
        counts = np.diff(np.r_[starts, m])
        rank[order] = np.arange(m) - np.repeat(starts, counts)
    cos = np.array([math.cos(a) for a in p.obj_yaw[scene, slot]]) if m else np.zeros(0)
    sin = np.array([math.sin(a) for a in p.obj_yaw[scene, slot]]) if m else np.zeros(0)
    centre = (
        np.stack([p.obj_pos[scene, slot, 0], cy, p.obj_pos[scene, slot, 1]], -1) if m else np.zeros((0, 3))
    )
    return {
        "scene": scene,
        "slot": slot,
        "group": group,
        "rank": rank,
        "planes": planes,
        "quad": quad,
        "centre": centre,
        "cos": cos,
        "sin": sin,
        "bounds": np.searchsorted(group, [0, 1, 2, 3]).tolist(),  # piece ranges of groups 0, 1, 2
    }


def _camera_matrix(p: SceneParams) -> np.ndarray:
    """(N,3,3) camera-to-world rotation: columns right, down, forward (camera x right, y down, z forward)."""
    out = np.zeros((len(p), 3, 3))
    for i in range(len(p)):
        cy, sy = math.cos(p.cam_yaw[i]), math.sin(p.cam_yaw[i])
        cp, sp = math.cos(p.cam_pitch[i]), math.sin(p.cam_pitch[i])
        cr, sr = math.cos(p.cam_roll[i]), math.sin(p.cam_roll[i])
        f = np.array([sy * cp, sp, cy * cp])
        r0 = np.array([-cy, 0.0, sy])
        d0 = np.array([sp * sy, -cp, sp * cy])
        out[i, :, 0] = cr * r0 + sr * d0
        out[i, :, 1] = -sr * r0 + cr * d0
        out[i, :, 2] = f
    return out


def _layout(p: SceneParams, rot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Room layout vector (N,9) (see LAYOUT_FIELDS) and canonical vanishing directions (N,3,3).

    The room axis nearest to the camera heading is "front" (k = round(yaw / 90deg)); vanishing rows are the
    camera-frame directions of the room's right-hand horizontal axis, up, and front axis.
    """
    n = len(p)
    lay = np.zeros((n, 9))
    van = np.zeros((n, 3, 3))
    for i in range(n):
        yaw = float(p.cam_yaw[i])
        k = round(yaw / (math.pi / 2))
        psi = yaw - k * math.pi / 2
        w, h, d = p.room[i]
        cx, ch, cz = p.cam_pos[i]
        walls = [d - cz, w - cx, cz, cx]
        lay[i] = [
            p.cam_pitch[i],
            p.cam_roll[i],
            psi,
            ch,
            h - ch,
            walls[k % 4],
            walls[(k - 1) % 4],
            walls[(k + 2) % 4],
            walls[(k + 1) % 4],
        ]
        hk = k * math.pi / 2
        fwd = np.array([math.sin(hk), 0.0, math.cos(hk)])
        right = np.array([-math.cos(hk), 0.0, math.sin(hk)])
        up = np.array([0.0, 1.0, 0.0])
        for j, v in enumerate((right, up, fwd)):
            van[i, j] = rot[i].T @ v
    return lay, van


# ---- torch ray casting ------------------------------------------------------------------------------------
def _t(a: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def _intersect(
    o: tuple[torch.Tensor, ...],
    d: tuple[torch.Tensor, ...],
    quad: torch.Tensor | None,
    planes: torch.Tensor,
    need_face: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Ray vs convex piece in the piece frame. o, d: xyz tensors broadcastable to (M,P).

    Returns entry t, exit t (entry = +inf when the ray misses) and the entry face (-1 quadric, else plane).
    """
    ox, oy, oz = o
    dx, dy, dz = d
    shape = torch.broadcast_shapes(ox.shape, dx.shape)
    p_in = torch.full(shape, -math.inf)
    p_out = torch.full(shape, math.inf)
    face = torch.full(shape, 0, dtype=torch.int8)
    for j in range(planes.shape[1]):
        nx, ny, nz, off = (planes[:, j, c : c + 1] for c in range(4))
        nd = nx * dx + ny * dy + nz * dz
        no = nx * ox + ny * oy + nz * oz
        t = (off - no) / nd  # nd == 0: t = +-inf, treated as an exit plane (inside or never inside)
        enter = nd < 0
        if need_face:
            better = enter & (t > p_in)
            p_in = torch.where(better, t, p_in)
            face = torch.where(better, torch.tensor(j, dtype=torch.int8), face)
        else:
            p_in = torch.maximum(p_in, torch.where(enter, t, -math.inf))
        p_out = torch.minimum(p_out, torch.where(enter, math.inf, t))
    if quad is None:
        lo, hi = p_in, p_out
    else:
        ax, ay, az, bx, by, bz, c = (quad[:, i : i + 1] for i in range(7))
        a = ax * dx * dx + ay * dy * dy + az * dz * dz
        b = 2.0 * (ax * ox * dx + ay * oy * dy + az * oz * dz) + bx * dx + by * dy + bz * dz
        cc = ax * ox * ox + ay * oy * oy + az * oz * oz + bx * ox + by * oy + bz * oz + c
        a = torch.where(a.abs() < 1e-9, torch.full_like(a, 1e-9), a)
        disc = b * b - 4.0 * a * cc
        sq = torch.sqrt(disc.clamp(min=0.0))
        r0 = (-b - sq) / (2.0 * a)
        r1 = (-b + sq) / (2.0 * a)
        t0 = torch.minimum(r0, r1)
        t1 = torch.maximum(r0, r1)
        hit_disc = disc >= 0
        pos = a > 0
        # a > 0: inside = [t0, t1]; a < 0 (cone nappes): (-inf, t0] or [t1, inf); disc < 0 & a < 0: all
        lo1 = torch.where(pos, torch.maximum(t0, p_in), p_in)
        hi1 = torch.where(
            pos, torch.minimum(t1, p_out), torch.where(hit_disc, torch.minimum(t0, p_out), p_out)
        )
        lo2 = torch.maximum(t1, p_in)
        ok1 = (lo1 < hi1) & (hit_disc | ~pos)
        use2 = ~ok1 & ~pos & hit_disc
        lo = torch.where(use2, lo2, torch.where(ok1, lo1, torch.full_like(lo1, math.inf)))
        hi = torch.where(use2, p_out, hi1)
        if need_face:
            f1 = torch.where(pos & (t0 >= p_in), torch.tensor(-1, dtype=torch.int8), face)
            f2 = torch.where(t1 >= p_in, torch.tensor(-1, dtype=torch.int8), face)
            face = torch.where(use2, f2, f1)
    valid = (lo < hi) & (lo > 1e-4)
    lo = torch.where(valid, lo, math.inf)
    return lo, hi, face if need_face else None


def _to_local(pc: dict[str, torch.Tensor], sl: slice, vx, vy, vz, point: bool):  # noqa: ANN001, ANN202
    """World vectors/points (broadcastable to (M,P)) to piece frames of pieces ``sl``."""
    cos, sin = pc["cos"][sl, None], pc["sin"][sl, None]
    if point:
        vx = vx - pc["centre"][sl, 0:1]
        vy = vy - pc["centre"][sl, 1:2]
        vz = vz - pc["centre"][sl, 2:3]
    return cos * vx - sin * vz, vy, sin * vx + cos * vz


def _cast(
    pc: dict[str, torch.Tensor],
    n_scenes: int,
    o: tuple[torch.Tensor, ...],
    d: tuple[torch.Tensor, ...],
    kmax: int,
    limit: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | torch.Tensor:
    """Cast one ray per pixel (N,P) against every scene's pieces.

    Returns (nearest t, winning piece index, its face) or, with ``limit`` (shadow rays), an occlusion mask.
    """
    m = pc["scene"].shape[0]
    npix = d[0].shape[1]
    if m == 0:
        if limit is not None:
            return torch.zeros((n_scenes, npix), dtype=torch.bool)
        inf = torch.full((n_scenes, npix), math.inf)
        return (
            inf,
            torch.zeros((n_scenes, npix), dtype=torch.long),
            torch.zeros((n_scenes, npix), dtype=torch.int8),
        )
    bnd = pc["bounds"]
    los, faces = [], []
    for g, n_planes in ((0, 0), (1, 2), (2, 6)):
        sl = slice(bnd[g], bnd[g + 1])
        if sl.stop - sl.start == 0:
            continue
        sc = pc["scene"][sl]
        dw = [c[sc] for c in d]
        ow = [c[sc] for c in o]
        ol = _to_local(pc, sl, *ow, point=True)
        dl = _to_local(pc, sl, *dw, point=False)
        quad = pc["quad"][sl] if g < 2 else None
        lo, _, face = _intersect(ol, dl, quad, pc["planes"][sl, :n_planes], need_face=limit is None)
        los.append(lo)
        faces.append(face)
    lo = torch.cat(los)
    if limit is not None:
        hit = (lo < limit[pc["scene"]]).to(torch.float32)
        occ = torch.zeros((n_scenes, npix))
        occ.index_add_(0, pc["scene"], hit)
        return occ > 0
    face = torch.cat(faces)
    tb = torch.full((n_scenes, kmax, npix), math.inf)
    tb[pc["scene"], pc["rank"]] = lo
    fb = torch.zeros((n_scenes, kmax, npix), dtype=torch.int8)
    fb[pc["scene"], pc["rank"]] = face
    tmin, rk = tb.min(dim=1)
    ptab = torch.zeros((n_scenes, kmax), dtype=torch.long)
    ptab[pc["scene"], pc["rank"]] = torch.arange(m)
    pid = ptab.gather(1, rk)
    fwin = fb.gather(1, rk[:, None]).squeeze(1)
    return tmin, pid, fwin


def _hash01(ix: torch.Tensor, iy: torch.Tensor, iz: torch.Tensor) -> torch.Tensor:
    """Deterministic integer hash of lattice cells to [0,1]."""
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791)
    h = h & 0xFFFFFFFF
    h = ((h ^ (h >> 13)) * 1274126177) & 0xFFFFFFFF
    h = h ^ (h >> 16)
    return (h & 1023).to(torch.float32) / 1023.0


def _pattern(qx: torch.Tensor, qy: torch.Tensor, qz: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
    """Texture pattern value in [0,1] for coordinates already divided by the texture period."""

    def par(v: torch.Tensor) -> torch.Tensor:
        return torch.remainder(torch.floor(v), 2.0)

    fx, fy, fz = torch.floor(qx), torch.floor(qy), torch.floor(qz)
    rx, ry, rz = qx - fx - 0.5, qy - fy - 0.5, qz - fz - 0.5
    pats = [
        torch.zeros_like(qx),
        torch.remainder(fx + fy + fz, 2.0),
        par(2 * qx) + par(2 * qy) + par(2 * qz),
        par(1.5 * qy),
        par(1.5 * qx + 1.5 * qz),
        par(qx + qy + qz),
        par(1.5 * torch.sqrt(qx * qx + qy * qy + qz * qz)),
        (rx * rx + ry * ry + rz * rz < 0.09).to(torch.float32),
        ((rx.abs() > 0.38) | (ry.abs() > 0.38) | (rz.abs() > 0.38)).to(torch.float32),
        _hash01(fx.to(torch.int64), fy.to(torch.int64), fz.to(torch.int64)),
        (qx > 0).to(torch.float32),
        _hash01(
            torch.floor(4 * qx).to(torch.int64),
            torch.floor(4 * qy).to(torch.int64),
            torch.floor(4 * qz).to(torch.int64),
        ),
    ]
    pats[2] = torch.remainder(pats[2], 2.0)
    stack = torch.stack(pats)
    return stack.gather(0, tex[None].long()).squeeze(0)


def _render_params(p: SceneParams, image_size: int) -> dict[str, np.ndarray]:
    """Render a batch of scenes given their parameters (all per-pixel buffers + per-scene arrays)."""
    n, hw = len(p), int(image_size)
    npix = hw * hw
    rot = _camera_matrix(p)
    rot_t = _t(rot)
    pcs = _pieces(p)
    pc: dict[str, Any] = {
        "scene": torch.from_numpy(pcs["scene"]),
        "rank": torch.from_numpy(pcs["rank"]),
        "planes": _t(pcs["planes"]),
        "quad": _t(pcs["quad"]),
        "centre": _t(pcs["centre"]),
        "cos": _t(pcs["cos"]),
        "sin": _t(pcs["sin"]),
        "bounds": pcs["bounds"],
    }
    kmax = int(pcs["rank"].max()) + 1 if len(pcs["rank"]) else 1

    # camera rays
    f = (hw / 2) / math.tan(math.radians(FOV_DEG) / 2)
    coords = (torch.arange(hw, dtype=torch.float32) + 0.5 - hw / 2) / f
    cxr = coords[None, :].expand(hw, hw).reshape(1, npix)
    cyr = coords[:, None].expand(hw, hw).reshape(1, npix)
    inv = 1.0 / torch.sqrt(cxr * cxr + cyr * cyr + 1.0)
    ux, uy, uz = cxr * inv, cyr * inv, inv  # camera-frame unit rays (1,P)
    r = [[rot_t[:, i, j : j + 1] for j in range(3)] for i in range(3)]
    dx = r[0][0] * ux + r[0][1] * uy + r[0][2] * uz
    dy = r[1][0] * ux + r[1][1] * uy + r[1][2] * uz
    dz = r[2][0] * ux + r[2][1] * uy + r[2][2] * uz
    cam = _t(p.cam_pos)
    ox, oy, oz = cam[:, 0:1], cam[:, 1:2], cam[:, 2:3]
    room = _t(p.room)

    # room box (camera inside): exit distance per axis
    def axis_t(o_: torch.Tensor, d_: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        d_ = torch.where(d_.abs() < 1e-9, torch.full_like(d_, 1e-9), d_)
        return torch.where(d_ > 0, (hi - o_) / d_, (0.0 - o_) / d_)

    tx, ty, tz = axis_t(ox, dx, room[:, 0:1]), axis_t(oy, dy, room[:, 1:2]), axis_t(oz, dz, room[:, 2:3])
    t_room = torch.minimum(torch.minimum(tx, ty), tz)
    inst_room = torch.where(
        (ty <= tx) & (ty <= tz),
        torch.where(dy < 0, 0, 1),
        torch.where(tx <= tz, torch.where(dx < 0, 2, 3), torch.where(dz < 0, 4, 5)),
    )
    tobj, pid, face = _cast(pc, n, (cam[:, 0:1], cam[:, 1:2], cam[:, 2:3]), (dx, dy, dz), kmax)
    is_obj = tobj < t_room
    t = torch.where(is_obj, tobj, t_room)
    px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz

    # normals (world), curvature, texture coordinates
    zero = torch.zeros((n, npix))
    rnx = torch.where(inst_room == 2, 1.0, torch.where(inst_room == 3, -1.0, 0.0))
    rny = torch.where(inst_room == 0, 1.0, torch.where(inst_room == 1, -1.0, 0.0))
    rnz = torch.where(inst_room == 4, 1.0, torch.where(inst_room == 5, -1.0, 0.0))
    nx, ny, nz = rnx, rny, rnz
    k1, k2 = zero, zero.clone()
    floor_like = inst_room <= 1
    xwall = (inst_room == 2) | (inst_room == 3)
    qx = torch.where(xwall, pz, px)
    qy = torch.where(floor_like, pz, py)
    qz = zero
    slot = torch.zeros((n, npix), dtype=torch.long)
    sel = is_obj.reshape(-1).nonzero().squeeze(1)
    if sel.numel():
        q_pid = pid.reshape(-1)[sel]
        q_face = face.reshape(-1)[sel].long()
        sx_, sy_, sz_ = px.reshape(-1)[sel], py.reshape(-1)[sel], pz.reshape(-1)[sel]
        cos, sin = pc["cos"][q_pid], pc["sin"][q_pid]
        cen = pc["centre"][q_pid]
        vx, vy, vz = sx_ - cen[:, 0], sy_ - cen[:, 1], sz_ - cen[:, 2]
        lx, ly, lz = cos * vx - sin * vz, vy, sin * vx + cos * vz
        qd = pc["quad"][q_pid]
        ax, ay, az, bx, by, bz = (qd[:, i] for i in range(6))
        gx, gy, gz = 2 * ax * lx + bx, 2 * ay * ly + by, 2 * az * lz + bz
        pl = pc["planes"][q_pid, q_face.clamp(min=0)]
        on_q = q_face < 0
        g2 = gx * gx + gy * gy + gz * gz
        gn = torch.sqrt(g2).clamp(min=1e-12)
        hx, hy, hz = 2 * ax, 2 * ay, 2 * az
        ghg = hx * gx * gx + hy * gy * gy + hz * gz * gz
        s_mean = (g2 * (hx + hy + hz) - ghg) / (g2 * gn)  # k1 + k2
        k_gauss = (hy * hz * gx * gx + hx * hz * gy * gy + hx * hy * gz * gz) / (g2 * g2)
        half = 0.5 * s_mean
        root = torch.sqrt((half * half - k_gauss).clamp(min=0.0))
        q1 = torch.where(on_q, half + root, 0.0)
        q2 = torch.where(on_q, half - root, 0.0)
        lnx = torch.where(on_q, gx / gn, pl[:, 0])
        lny = torch.where(on_q, gy / gn, pl[:, 1])
        lnz = torch.where(on_q, gz / gn, pl[:, 2])
        wnx, wnz = cos * lnx + sin * lnz, -sin * lnx + cos * lnz
        nx, ny, nz = nx.reshape(-1).clone(), ny.reshape(-1).clone(), nz.reshape(-1).clone()
        nx[sel], ny[sel], nz[sel] = wnx, lny, wnz
        k1, k2 = k1.reshape(-1).clone(), k2.reshape(-1).clone()
        k1[sel], k2[sel] = q1, q2
        # texture coordinates: object frame (footprint centre, object yaw)
        oslot = _t(pcs["slot"], torch.long)[q_pid]
        scn = sel // npix
        opos = _t(p.obj_pos)[scn, oslot]
        ox_, oz_ = sx_ - opos[:, 0], sz_ - opos[:, 1]
        qx, qy, qz = qx.reshape(-1).clone(), qy.reshape(-1).clone(), qz.reshape(-1).clone()
        qx[sel], qy[sel], qz[sel] = cos * ox_ - sin * oz_, sy_, sin * ox_ + cos * oz_
        slot = slot.reshape(-1)
        slot[sel] = oslot
        nx, ny, nz, k1, k2, qx, qy, qz, slot = (
            v.reshape(n, npix) for v in (nx, ny, nz, k1, k2, qx, qy, qz, slot)
        )
    instance = torch.where(is_obj, N_ROOM + slot, inst_room)

    # camera-frame normal, made to face the camera
    cnx = r[0][0] * nx + r[1][0] * ny + r[2][0] * nz
    cny = r[0][1] * nx + r[1][1] * ny + r[2][1] * nz
    cnz = r[0][2] * nx + r[1][2] * ny + r[2][2] * nz
    inv_n = 1.0 / torch.sqrt(cnx * cnx + cny * cny + cnz * cnz)
    facing = cnx * ux + cny * uy + cnz * uz
    sgn = torch.where(facing > 0, -1.0, 1.0) * inv_n
    cnx, cny, cnz = cnx * sgn, cny * sgn, cnz * sgn
    sgn_w = torch.where(facing > 0, -1.0, 1.0)
    nx, ny, nz = nx * sgn_w, ny * sgn_w, nz * sgn_w

    # albedo from textures
    flat_inst = (torch.arange(n)[:, None] * N_SURF + instance).reshape(-1)
    tex = _t(p.surf_tex, torch.long).reshape(-1)[flat_inst].reshape(n, npix)
    scale = _t(p.surf_scale).reshape(-1)[flat_inst].reshape(n, npix)
    pat = _pattern(qx / scale, qy / scale, qz / scale, tex)
    ca = _t(p.surf_col_a).reshape(-1, 3)[flat_inst].reshape(n, npix, 3)
    cb = _t(p.surf_col_b).reshape(-1, 3)[flat_inst].reshape(n, npix, 3)
    albedo = ca + (cb - ca) * pat[..., None]  # (N,P,3)

    # lighting: point light + ambient, shadow rays
    light = _t(p.light_pos)
    lx_, ly_, lz_ = light[:, 0:1] - px, light[:, 1:2] - py, light[:, 2:3] - pz
    ldist = torch.sqrt(lx_ * lx_ + ly_ * ly_ + lz_ * lz_)
    lx_, ly_, lz_ = lx_ / ldist, ly_ / ldist, lz_ / ldist
    ndl = nx * lx_ + ny * ly_ + nz * lz_
    eps = 2e-3
    occ = _cast(pc, n, (px + eps * nx, py + eps * ny, pz + eps * nz), (lx_, ly_, lz_), kmax, limit=ldist)
    lit = ndl > 0
    shadow = lit & occ
    direct = torch.where(lit & ~occ, ndl, 0.0) * _t(p.light_power)[:, None] / (1.0 + 0.08 * ldist * ldist)
    shading = _t(p.ambient)[:, None] + direct
    rgb = (albedo * shading[..., None]).clamp(0.0, 1.0)

    lay, van = _layout(p, rot)
    dist = t
    depth = t * uz

    def img(x: torch.Tensor) -> np.ndarray:
        return x.reshape(n, hw, hw).numpy()

    def img3(x: torch.Tensor) -> np.ndarray:  # (N,P,3) -> (N,3,H,W)
        return x.reshape(n, hw, hw, 3).permute(0, 3, 1, 2).contiguous().numpy()

    sem = torch.where(
        is_obj,
        3 + _t(p.obj_class, torch.long).reshape(-1)[(torch.arange(n)[:, None] * MAX_OBJECTS + slot)],
        torch.where(inst_room == 0, 0, torch.where(inst_room == 1, 2, 1)),
    )
    return {
        "rgb": img3(rgb),
        "distance": img(dist),
        "depth": img(depth),
        "normal": np.stack([img(cnx), img(cny), img(cnz)], 1),
        "point": np.stack([img(dist * ux), img(dist * uy), img(depth)], 1),
        "instance": img(instance).astype(np.int64),
        "semantic": img(sem).astype(np.int64),
        "albedo": img3(albedo),
        "shading": img(shading),
        "shadow": img(shadow).astype(np.uint8),
        "curvature": np.stack([img(k1), img(k2)], 1),
        "ray": np.stack([img(ux.expand(n, npix)), img(uy.expand(n, npix)), img(uz.expand(n, npix))], 1),
        "room_type": p.room_type.astype(np.int64),
        "camera": lay.astype(np.float32),
        "room_axes": np.transpose(rot, (0, 2, 1)).astype(np.float32),
        "vanishing": van.astype(np.float32),
        "obj_class": p.obj_class.astype(np.int64),
        "obj_count": (p.obj_class >= 0).sum(1).astype(np.int64),
        "room_size": p.room.astype(np.float32),
        "index": p.index.astype(np.int64),
        "seed": np.full(n, p.seed, np.int64),
    }


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
    and every task's label under ``label_<task>`` (tasks.make_labels). Deterministic, independent of
    batch_size.
    """
    from taskstudy.world import tasks as tasks_mod

    _check_size(image_size)
    chunks: list[dict[str, np.ndarray]] = []
    starts = range(0, n, batch_size)
    it: Any = starts
    if progress:
        from taskstudy.engine.parallel import progress as bar

        it = bar(starts, desc=f"scenes {split}", unit="batch", leave=False)
    for s in it:
        buf = render(split, np.arange(s, min(n, s + batch_size)), seed, image_size)
        labels = tasks_mod.make_labels(buf)
        out = {k: buf[k] for k in _KEEP}
        out.update({LABEL_PREFIX + k: v for k, v in labels.items()})
        chunks.append(out)
    if not chunks:
        raise ValueError("generate_split needs n >= 1")
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
