"""Taskonomy folders as the study's data (issue 21): the fixture writer, splits by building, decoding to the study's
labels, invalid pixels out of the losses, and the clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from taskstudy.engine import params as P
from taskstudy.engine import sections as S
from taskstudy.engine.store import Store
from taskstudy.taskonomy.task_networks import average_prediction, study_tasks
from taskstudy.world import data, labels, scenes, taskonomy_data, taskonomy_fixture
from taskstudy.world import tasks as taskdict
from taskstudy.world.realdata import RealDataError

BUILDINGS, PER_BUILDING, SIZE = 6, 6, 16
TASKS = ["autoencoding", "denoising", "jigsaw", "edge2d", "depth_zbuffer", "normals", "segment_unsup2d",
         "segment_semantic", "room_layout", "class_scene"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return taskonomy_fixture.write_fixture(tmp_path_factory.mktemp("taskonomy") / "root", BUILDINGS, PER_BUILDING,
                                           SIZE, seed=0)


def _common(folder: Path, **kw) -> S.Common:
    values = {"dataset": "taskonomy", "taskonomy_root": str(folder), "image_size": SIZE, "n_train": 12,
              "n_transfer": 6, "n_val": 6, "n_test": 6, "tasks": TASKS, **kw}
    return S.Common.model_validate(values)


def test_fixture_has_the_release_layout(folder: Path) -> None:
    b = folder / "building00"
    assert (b / "rgb" / "point_0_view_0_domain_rgb.png").is_file()
    assert (b / "segment_semantic" / "point_1_view_2_domain_segmentsemantic.png").is_file()
    assert (b / "normal" / "point_0_view_1_domain_normal.png").is_file()
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [f"building{i:02d}" for i in range(BUILDINGS)]
    assert (folder / taskonomy_data.FIXTURE_MARK).is_file()  # pages of a run on it say so


def test_splits_are_whole_buildings(folder: Path, tmp_path: Path) -> None:
    common, store = _common(folder), Store(tmp_path)
    seen: dict[str, str] = {}
    for split in data.SPLITS:
        d = data.scene_split(store, common, split)
        assert len(d["rgb"]) == min(data.split_size(common, split), PER_BUILDING * len(set(d["building"])))
        for b in set(d["building"].tolist()):
            assert seen.setdefault(b, split) == split, f"building {b} in {seen[b]} and {split}"
    assert set(seen.values()) == set(data.SPLITS)
    again = taskonomy_data.building_splits(dict.fromkeys(seen, PER_BUILDING), {"train": 12, "transfer": 6,
                                                                                "val": 6, "test": 6}, seed=0)
    assert {b: s for s, bs in again.items() for b in bs} == seen  # deterministic in the seed


def test_labels_decode_to_the_rendered_ones(folder: Path, tmp_path: Path) -> None:
    common = _common(folder)
    d = data.scene_split(Store(tmp_path), common, "train")
    rendered = scenes.generate_split("taskonomy_fixture", BUILDINGS * PER_BUILDING, 0, SIZE, progress=False)
    src = np.array([int(b[-2:]) * PER_BUILDING + 3 * p + v for b, p, v in zip(d["building"], d["point"], d["view"],
                                                                                strict=True)])
    holes = src % 4 == 0
    np.testing.assert_allclose(d["rgb"], rendered["rgb"][src], atol=0.5 / 255 + 1e-6)
    for task, atol in (("edge2d", 1e-4), ("normals", 1 / 127.5), ("depth_zbuffer", 5e-3)):
        got, want = data.target(d, task).numpy(), rendered["label_" + task][src]
        ok = ~np.isnan(got)
        np.testing.assert_allclose(got[ok], want[ok], atol=atol)
    np.testing.assert_array_equal(data.target(d, "segment_unsup2d"), rendered["label_segment_unsup2d"][src])
    sem = data.target(d, "segment_semantic").numpy()
    np.testing.assert_array_equal(sem[~holes], rendered["label_segment_semantic"][src][~holes])
    # the holes: NaN in the geometric labels, no class in the semantic map, nothing elsewhere
    assert holes.any() and np.isnan(data.target(d, "depth_zbuffer").numpy()[holes]).any()
    assert (sem[holes] == taskdict.IGNORE_INDEX).any() and (sem[~holes] >= 0).all()
    assert not np.isnan(data.target(d, "edge2d").numpy()).any()
    np.testing.assert_array_equal(data.target(d, "autoencoding"), d["rgb"])
    np.testing.assert_array_equal(data.target(d, "jigsaw"), labels.jigsaw_class(d["index"], common.seed))


def test_tasks_the_folder_lacks_are_named(folder: Path, capsys: pytest.CaptureFixture) -> None:
    taskonomy_data._SAID.clear()
    kept = study_tasks(_common(folder))
    assert "room_layout" not in kept and "class_scene" not in kept and "normals" in kept and "jigsaw" in kept
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "room_layout" in line and "class_scene" in line and "left out" in line
    assert study_tasks(_common(folder)) == kept and capsys.readouterr().out == ""  # said once


def test_invalid_pixels_leave_losses_and_scores() -> None:
    t = taskdict.get_task("depth_zbuffer")
    pred = torch.zeros(2, 1, 4, 4, requires_grad=True)
    target = torch.ones(2, 1, 4, 4)
    target[0, 0, :2] = float("nan")  # half of image 0 has no geometry
    target[0, 0, 2:] = 3.0
    loss = t.per_image_loss(pred, target)
    assert torch.allclose(loss, torch.tensor([3.0, 1.0]))
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad[0, 0, :2] == 0).all()
    s = taskdict.get_task("segment_semantic")
    logits = torch.zeros(1, s.channels, 2, 2)
    logits[0, 1] = 5.0
    labels = torch.tensor([[[1, taskdict.IGNORE_INDEX], [1, taskdict.IGNORE_INDEX]]])
    ce = s.per_image_loss(logits, labels)
    assert torch.allclose(ce, s.per_image_loss(logits[..., :1], labels[..., :1]))
    avg = average_prediction("depth_zbuffer", target, 1)
    assert torch.isfinite(avg).all() and float(avg[0, 0, 0, 0]) == 1.0  # the mean of the valid training labels
    freq = average_prediction("segment_semantic", labels, 1).exp()
    assert float(freq[0, 1, 0, 1]) == pytest.approx(1e-6, abs=1e-6)  # an unlabelled pixel counts for no class


def test_bad_taskonomy_settings_say_what_to_do(folder: Path, tmp_path: Path) -> None:
    with pytest.raises(P.ParamsError, match="taskonomy_root"):
        P.validate({"common": {"dataset": "taskonomy"}}, tmp_path / "x.yaml")
    with pytest.raises(RealDataError, match="Taskonomy root not found"):
        data.scene_split(Store(tmp_path), _common(tmp_path / "nowhere"), "train")
    with pytest.raises(RealDataError, match="at least 4 buildings"):
        taskonomy_data.building_splits({"a": 3, "b": 3}, {"train": 1, "transfer": 1, "val": 1, "test": 1}, 0)
    few = taskonomy_fixture.write_fixture(tmp_path / "wide", 4, 3, SIZE, seed=1)
    d = data.scene_split(Store(tmp_path), _common(few, tasks=["segment_semantic", "normals"]), "test")
    assert len(d["rgb"]) == 3  # one building of 3 images: fewer than asked, said, not an error


@pytest.mark.slow
def test_chapters_02_to_07_and_12_run_on_a_taskonomy_folder_and_their_pages_say_so(built_study, tmp_path: Path) -> None:
    import json
    import shutil

    from conftest import taskstudy

    study = tmp_path / "study"
    shutil.copytree(built_study, study, symlinks=True)
    root = taskonomy_fixture.write_fixture(tmp_path / "tiny", buildings=8, per_building=24, image_size=16, seed=3)
    on_folder = ["--params", "params/smoke.yaml", "-p", "common.dataset=taskonomy",
                 "-p", f"common.taskonomy_root={root}"]
    out = taskstudy("run", "task_networks", "transfers", "affinity", "taxonomy", "novel_tasks", "task_tree",
                    "robustness", *on_folder,
                    "--quiet", cwd=study).stdout
    assert "06_novel_tasks: needs the rendered scenes" in out  # skipped, said, not failed
    taskstudy("book", cwd=study)
    for name in ("02_task_networks", "03_transfers", "04_affinity", "05_taxonomy", "07_task_tree", "12_robustness"):
        record = json.loads((study / f"book/_runs/{name}.json").read_text())
        assert "common.dataset=taskonomy" in record["overrides"]
        page = (study / f"book/_build/html/book/chapters/{name}.html").read_text()
        assert "Taskonomy-format folder" in page and "numbers are a fixture" in page, name
    page02 = (study / "book/_build/html/book/chapters/02_task_networks.html").read_text()
    assert "left out" in page02 and "room_layout" in page02  # the smoke tasks the release cannot serve
    stored = len(list((study / "results/smoke/taskonomy").glob("*.npz")))  # the splits of each dictionary and seed
    assert stored and stored % len(data.SPLITS) == 0


def test_semantic_labels_beyond_the_study_classes_are_an_error(tmp_path: Path) -> None:
    from PIL import Image

    root = taskonomy_fixture.write_fixture(tmp_path / "t", 4, 3, SIZE, seed=2)
    for png in root.glob("*/segment_semantic/*.png"):
        Image.fromarray(np.full((SIZE, SIZE), 17, np.uint8)).save(png)  # the release's ids go up to 17
    with pytest.raises(RealDataError, match="segment_semantic: the folder's labels go up to 17.*common.tasks"):
        data.scene_split(Store(tmp_path), _common(root, tasks=["segment_semantic", "normals"]), "train")
