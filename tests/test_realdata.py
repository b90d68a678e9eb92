"""Tests for taskstudy.world.realdata on small fixtures written in the real on-disk formats.

Taskonomy: per-building domain folders of ``point_<p>_view_<v>_domain_<d>.png`` (8-bit RGB/L and
16-bit greyscale PNGs). CIFAR-100: ``cifar-100-python/{train,test,meta}`` pickles written the way the
official (Python 2) archive is, i.e. with byte-string keys that torchvision reads with
``encoding="latin1"``.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from taskstudy.world.cifar import CIFAR100_MAN_MADE, cifar100, cifar100_split
from taskstudy.world.realdata import DEPTH_MAX_M, RealDataError, TaskonomyFolder

H = W = 8


# --------------------------------------------------------------------------------------------------
# Taskonomy fixtures
# --------------------------------------------------------------------------------------------------


def _save16(arr: np.ndarray, path: Path) -> None:
    Image.fromarray(arr.astype(np.uint16)).save(path)
    with Image.open(path) as im:  # make sure PIL really wrote a 16-bit PNG
        assert im.mode.startswith("I")


def _rng(p: int, v: int) -> np.random.Generator:
    return np.random.default_rng(100 * p + v)


def _depth(p: int, v: int) -> np.ndarray:
    d = _rng(p, v).integers(256, 8000, size=(H, W)).astype(np.uint16)
    d[0, 0] = 65535  # invalid pixel
    return d


def _normal_vec(p: int, v: int) -> np.ndarray:
    n = _rng(p, v).normal(size=(H, W, 3))
    return n / np.linalg.norm(n, axis=-1, keepdims=True)


def _write_building(root: Path, building: str, ids: list[tuple[int, int]], skip: dict | None = None) -> None:
    skip = skip or {}
    folders = {
        "rgb": "rgb",
        "depth_zbuffer": "depth_zbuffer",
        "normal": "normal",
        "edge_texture": "edge_texture",
        "principal_curvature": "principal_curvature",
        "segment_semantic": "segmentsemantic",
        "reshading": "reshading",
    }
    for folder in folders:
        (root / building / folder).mkdir(parents=True, exist_ok=True)
    for p, v in ids:
        stem = f"point_{p}_view_{v}_domain_"
        g = _rng(p, v)

        def path(folder: str, key: tuple[int, int] = (p, v), stem: str = stem) -> Path | None:
            if key in skip.get(folder, ()):
                return None
            return root / building / folder / f"{stem}{folders[folder]}.png"

        if q := path("rgb"):
            Image.fromarray(g.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(q)
        if q := path("depth_zbuffer"):
            _save16(_depth(p, v), q)
        if q := path("normal"):
            Image.fromarray(np.round((_normal_vec(p, v) + 1) * 127.5).astype(np.uint8)).save(q)
        if q := path("edge_texture"):
            _save16(g.integers(0, 65536, (H, W)), q)
        if q := path("principal_curvature"):
            Image.fromarray(g.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(q)
        if q := path("segment_semantic"):
            Image.fromarray(g.integers(0, 18, (H, W), dtype=np.uint8), mode="L").save(q)
        if q := path("reshading"):
            Image.fromarray(g.integers(0, 256, (H, W), dtype=np.uint8), mode="L").save(q)


IDS = [(0, 0), (0, 1), (3, 2)]
ALL_TASKS = ["depth_zbuffer", "normals", "edge2d", "curvature", "segment_semantic", "reshading"]


@pytest.fixture
def taskonomy_root(tmp_path: Path) -> Path:
    root = tmp_path / "taskonomy"
    _write_building(root, "allensville", IDS)
    _write_building(root, "beechwood", IDS[:2])
    return root


def test_taskonomy_decodes_written_values(taskonomy_root: Path) -> None:
    ds = TaskonomyFolder(taskonomy_root, ALL_TASKS)
    assert len(ds) == 5
    assert ds.samples[0] == ("allensville", 0, 0)
    s = ds[2]  # allensville point 3 view 2
    p, v = 3, 2
    g = _rng(p, v)
    rgb = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert s["rgb"].dtype == torch.float32 and s["rgb"].shape == (3, H, W)
    assert torch.equal(s["rgb"], torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32) / 255))
    # depth: uint16 in 1/512 m, decoded to log metres; 65535 -> invalid in mask_valid
    d = _depth(p, v)
    assert s["depth_zbuffer"].shape == (1, H, W) and s["depth_zbuffer"].dtype == torch.float32
    back = np.exp(s["depth_zbuffer"][0].double().numpy()) * 512
    np.testing.assert_allclose(back[1:], d[1:], rtol=1e-5)
    assert s["mask_valid"][0, 0, 0].item() is False and bool(s["mask_valid"][0, 1:].all())
    assert s["depth_zbuffer"][0, 0, 0].item() == pytest.approx(np.log(DEPTH_MAX_M), rel=1e-6)
    # normals within 1/127 of the written unit vectors
    n = s["normals"].numpy().transpose(1, 2, 0)
    assert np.abs(n - _normal_vec(p, v)).max() <= 1 / 127
    # 16-bit edge magnitude / 65535
    edge = g.integers(0, 65536, (H, W))
    np.testing.assert_allclose(s["edge2d"][0].numpy(), edge / 65535, atol=1e-6)
    curv = g.integers(0, 256, (H, W, 3), dtype=np.uint8)
    assert s["curvature"].shape == (2, H, W)
    expect_curv = (curv[..., :2].transpose(2, 0, 1) - 127.0) / 127
    np.testing.assert_allclose(s["curvature"].numpy(), expect_curv, atol=1e-6)
    sem = g.integers(0, 18, (H, W), dtype=np.uint8)
    assert s["segment_semantic"].dtype == torch.int64
    assert torch.equal(s["segment_semantic"], torch.from_numpy(sem).long())
    shade = g.integers(0, 256, (H, W), dtype=np.uint8)
    np.testing.assert_allclose(s["reshading"][0].numpy(), shade / 255, atol=1e-6)
    assert s["index"] == 2


def test_taskonomy_buildings_and_resize(taskonomy_root: Path) -> None:
    ds = TaskonomyFolder(
        taskonomy_root,
        ["depth_zbuffer", "segment_semantic", "normals"],
        buildings=["beechwood"],
        image_size=4,
    )
    assert len(ds) == 2 and {b for b, _, _ in ds.samples} == {"beechwood"}
    s = ds[1]
    assert s["rgb"].shape == (3, 4, 4) and s["depth_zbuffer"].shape == (1, 4, 4)
    assert s["segment_semantic"].shape == (4, 4) and s["segment_semantic"].dtype == torch.int64
    assert s["mask_valid"].shape == (1, 4, 4) and s["mask_valid"].dtype == torch.bool
    assert torch.allclose(s["normals"].norm(dim=0), torch.ones(4, 4), atol=1e-4)
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    assert batch["rgb"].shape == (2, 3, 4, 4)


def test_taskonomy_omnitools_layout(tmp_path: Path) -> None:
    root = tmp_path / "omni"
    _write_building(root / "staging", "hanson", IDS[:1])
    for folder in ("rgb", "depth_zbuffer"):
        dst = root / folder / "taskonomy" / "hanson"
        dst.mkdir(parents=True)
        for f in (root / "staging" / "hanson" / folder).iterdir():
            f.rename(dst / f.name)
    ds = TaskonomyFolder(root, ["depth_zbuffer"])
    assert ds.buildings == ["hanson"] and len(ds) == 1


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(RealDataError, match=str(tmp_path / "nope")):
        TaskonomyFolder(tmp_path / "nope", ["normals"])


def test_missing_task_folder_names_building_and_task(taskonomy_root: Path) -> None:
    with pytest.raises(RealDataError) as err:
        TaskonomyFolder(taskonomy_root, ["keypoints3d"])
    msg = str(err.value)
    assert "allensville" in msg and "keypoints3d" in msg and str(taskonomy_root) in msg


def test_unknown_task(taskonomy_root: Path) -> None:
    with pytest.raises(RealDataError, match="jigsaw"):
        TaskonomyFolder(taskonomy_root, ["jigsaw"])


def test_corrupt_png_names_file(taskonomy_root: Path) -> None:
    bad = taskonomy_root / "allensville" / "normal" / "point_0_view_1_domain_normal.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = TaskonomyFolder(taskonomy_root, ["normals"])
    ds[0]
    with pytest.raises(RealDataError, match=str(bad)):
        ds[1]


def test_truncated_16bit_png_names_file(taskonomy_root: Path) -> None:
    bad = taskonomy_root / "allensville" / "depth_zbuffer" / "point_0_view_0_domain_depth_zbuffer.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(RealDataError, match=str(bad)):
        TaskonomyFolder(taskonomy_root, ["depth_zbuffer"])[0]


def test_mismatched_ids(tmp_path: Path) -> None:
    root = tmp_path / "t"
    _write_building(root, "cosmos", IDS, skip={"depth_zbuffer": [(3, 2)]})
    with pytest.raises(RealDataError) as err:
        TaskonomyFolder(root, ["depth_zbuffer", "normals"])
    msg = str(err.value)
    assert str(root / "cosmos" / "rgb") in msg and str(root / "cosmos" / "depth_zbuffer") in msg
    assert "3 images" in msg and "2 images" in msg and "point_3_view_2" in msg
    ds = TaskonomyFolder(root, ["depth_zbuffer", "normals"], on_mismatch="intersect")
    assert [s[1:] for s in ds.samples] == [(0, 0), (0, 1)]


# --------------------------------------------------------------------------------------------------
# CIFAR-100 fixtures
# --------------------------------------------------------------------------------------------------

COARSE = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
]  # the real coarse_label_names, in the real order


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python 2 byte strings (SHORT_BINSTRING/BINSTRING), as in the archive."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_str
    dispatch[bytes] = _save_py2_str  # Python 2 had one byte-string type (numpy's array buffer too)


def _dump_py2(obj: dict, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def _write_cifar(root: Path, per_class: int = 1, n_fine: int = 100) -> Path:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    fine_names = [f"{COARSE[i // 5]}_{i % 5}" for i in range(n_fine)]
    for split, seed in (("train", 0), ("test", 1)):
        fine = np.repeat(np.arange(n_fine), per_class)
        rng = np.random.default_rng(seed)
        data = rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8)
        _dump_py2(
            {
                "filenames": [f"img_{i}.png" for i in range(len(fine))],
                "batch_label": f"{split}ing batch 1 of 1",
                "fine_labels": fine.tolist(),
                "coarse_labels": (fine // 5).tolist(),
                "data": data,
            },
            base / split,
        )
    _dump_py2({"fine_label_names": fine_names, "coarse_label_names": COARSE}, base / "meta")
    return base


def test_fixture_pickles_have_python2_byte_keys(tmp_path: Path) -> None:
    base = _write_cifar(tmp_path)
    with open(base / "train", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert {b"data", b"fine_labels", b"coarse_labels", b"filenames"} <= set(raw)
    assert raw[b"data"].dtype == np.uint8 and raw[b"data"].shape == (100, 3072)


def test_cifar100_sample_dict(tmp_path: Path) -> None:
    base = _write_cifar(tmp_path)
    ds = cifar100(tmp_path, train=True)
    assert len(ds) == 100 and ds.coarse_classes == COARSE and len(ds.classes) == 100
    with open(base / "train", "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    s = ds[7]
    assert s["rgb"].shape == (3, 32, 32) and s["rgb"].dtype == torch.float32
    expect = torch.from_numpy(raw["data"][7].reshape(3, 32, 32).astype(np.float32) / 255)
    assert torch.equal(s["rgb"], expect)
    assert s["label"].item() == 7 and s["coarse"].item() == 1 and s["index"] == 7
    assert len(cifar100(tmp_path, train=False)) == 100


def test_cifar100_natural_man_made_split(tmp_path: Path) -> None:
    _write_cifar(tmp_path, per_class=2)
    ds = cifar100(tmp_path, train=True)
    nat, man = cifar100_split(ds, "natural"), cifar100_split(ds, "man_made")
    assert set(nat.fine_ids).isdisjoint(man.fine_ids)
    assert sorted(nat.fine_ids + man.fine_ids) == list(range(100))
    assert len(man.fine_ids) == 30 and len(nat.fine_ids) == 70
    assert all(ds.coarse_classes[f // 5] in CIFAR100_MAN_MADE for f in man.fine_ids)
    assert len(nat) == 140 and len(man) == 60
    labels = {int(man[i]["label"]) for i in range(len(man))}
    assert labels == set(range(30))
    s = man[0]
    assert man.classes[int(s["label"])] == ds.classes[man.fine_ids[int(s["label"])]]
    assert ds.coarse_classes[int(s["coarse"])] in CIFAR100_MAN_MADE
    assert len(cifar100(tmp_path, train=False, split="natural")) == 140
    with pytest.raises(ValueError):
        cifar100_split(ds, "artificial")  # type: ignore[arg-type]


def test_cifar100_missing_root_and_files(tmp_path: Path) -> None:
    with pytest.raises(RealDataError, match=str(tmp_path / "none" / "cifar-100-python")):
        cifar100(tmp_path / "none", train=True)
    base = _write_cifar(tmp_path / "a")
    (base / "meta").unlink()
    with pytest.raises(RealDataError, match=str(base / "meta")):
        cifar100(tmp_path / "a", train=True)
    base = _write_cifar(tmp_path / "b")
    (base / "test").unlink()
    with pytest.raises(RealDataError, match=str(base / "test")):
        cifar100(tmp_path / "b", train=False)


def test_cifar100_corrupt_file(tmp_path: Path) -> None:
    base = _write_cifar(tmp_path)
    (base / "train").write_bytes(b"not a pickle")
    with pytest.raises(RealDataError, match=str(base / "train")):
        cifar100(tmp_path, train=True)


class _Runs:
    """Unpickling an instance of this calls os.getpid: a stand-in for a file that runs code when loaded."""

    def __reduce__(self):
        import os

        return (os.getpid, ())


def test_cifar100_files_cannot_run_code(tmp_path: Path) -> None:
    """issue 39, step 5: a CIFAR file is read by a restricted unpickler; one that would call a function fails with
    an error naming the file, before anything runs. A copy that is not the official archive says so."""
    base = _write_cifar(tmp_path)
    ds = cifar100(tmp_path, train=True)
    assert not ds.official  # the fixture is not the official archive (md5), and loads all the same
    with open(base / "train", "wb") as f:
        pickle.dump({"data": _Runs()}, f, protocol=2)
    with pytest.raises(RealDataError, match="refused to load posix.getpid|refused to load os.getpid"):
        cifar100(tmp_path, train=True)


def test_one_cifar_root_for_every_chapter(tmp_path: Path, monkeypatch) -> None:
    from taskstudy.world import cifar

    with pytest.raises(ValueError, match="robustness.cifar_root is not set"):
        cifar.cifar_root(None, "robustness.cifar_root")
    assert cifar.cifar_root(str(tmp_path), "x") == tmp_path.resolve()
    monkeypatch.setattr(cifar, "find_root", lambda: tmp_path)
    assert cifar.cifar_root("data/c", "x") == (tmp_path / "data/c").resolve()
