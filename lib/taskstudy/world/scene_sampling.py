"""What a procedural scene is and how one is drawn (../design/scenes.md): the room types with their palettes,
textures and object-class probabilities, the camera and light, and `SceneParams`, a batch of scenes' parameters
drawn from ``np.random.default_rng([seed, split_code, index])`` only (one generator per scene), so a scene is the
same whatever batch it is drawn in.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

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
