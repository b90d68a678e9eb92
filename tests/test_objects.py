"""The object world (taskstudy.world.objects): deterministic rendering, the class hierarchy behind Yosinski's splits,
Task2Vec's family, the pretrain world's disjointness, and that a tiny network learns it above chance."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
import torch.nn.functional as F

from taskstudy.nn.layernet import LayerNet, NetConfig
from taskstudy.nn.train import TrainConfig, fit, predict, seed_everything
from taskstudy.world import objects, scenes


def test_render_is_deterministic_and_labelled() -> None:
    a = objects.render_objects("train", np.arange(24), 0, 24)
    b = objects.render_objects("train", np.arange(12, 24), 0, 24)  # another batch: the same images
    assert a["rgb"].shape == (24, 3, 24, 24)
    assert a["rgb"][12:].tobytes() == b["rgb"].tobytes()
    cl = objects.classes()
    np.testing.assert_array_equal(a["label"], np.arange(24) % objects.num_classes())  # balanced by index
    for i, k in enumerate(a["label"]):
        assert scenes.OBJECT_CLASSES[a["shape"][i]] == cl[k].shape
        assert list(objects.COLOURS[cl[k].supercategory])[a["colour"][i]] == cl[k].colour
        assert scenes.TEXTURES[a["texture"][i]] in objects.PATTERNS[cl[k].supercategory]
    assert (a["mask"].reshape(24, -1).mean(1) > 0.03).all(), "the object should be visible"
    assert (a["mask"][:, 8:16, 8:16].reshape(24, -1).mean(1) > 0.1).all(), "the object should be centred"
    assert objects.render_objects("train", np.arange(4), 1, 24)["rgb"].tobytes() != a["rgb"][:4].tobytes()


def test_hierarchy_and_splits() -> None:
    cl = objects.classes()
    assert len(cl) == 2 * 4 * 6 == objects.num_classes()
    sp = objects.class_splits(0)
    ids = set(range(len(cl)))
    for kind in ("similar", "dissimilar"):
        a, b = set(sp[kind]["A"].tolist()), set(sp[kind]["B"].tolist())
        assert not a & b and a | b == ids and len(a) == len(b), kind
    sup = {kind: {h: {cl[i].supercategory for i in sp[kind][h]} for h in "AB"} for kind in sp}
    # similar halves share the super-categories; dissimilar halves share none, nor a shape or a colour
    assert sup["similar"]["A"] == sup["similar"]["B"] == set(objects.SUPERCATEGORIES)
    assert sup["dissimilar"]["A"] == {"organic"} and sup["dissimilar"]["B"] == {"manufactured"}
    for attr in ("shape", "colour"):
        a = {getattr(cl[i], attr) for i in sp["dissimilar"]["A"]}
        assert not a & {getattr(cl[i], attr) for i in sp["dissimilar"]["B"]}, attr
    assert not np.array_equal(sp["similar"]["A"], objects.class_splits(1)["similar"]["A"])


def test_task_families() -> None:
    fam = objects.task_families()
    names = [f[0] for f in fam]
    assert len(names) == len(set(names)) == 12 + 8 + 4
    for _, used, labels in fam:
        assert len(used) == len(labels) and labels.min() == 0
        assert set(used.tolist()) <= set(range(objects.num_classes()))
    spec = {n: (u, lab) for n, u, lab in fam}
    used, labels = spec["shape|colour=red"]
    assert len(used) == 4 and sorted(labels.tolist()) == [0, 1, 2, 3]
    assert {objects.classes()[i].colour for i in used} == {"red"}


def test_pretrain_world_is_disjoint() -> None:
    """Task2Vec's probe and the ImageNet-like encoder learn from the pretrain world: no class of the study world
    is in it (shape and colour pairs) and no image either."""
    study = {(c.shape, c.colour) for c in objects.classes()}
    pre = {(c.shape, c.colour) for c in objects.classes("pretrain")}
    assert len(pre) == objects.num_classes("pretrain") == 32 and not study & pre
    assert not set(objects.COLOURS["pretrain"]) & {c.colour for c in objects.classes()}

    def hashes(d: dict) -> set[str]:
        return {hashlib.sha1(x.tobytes()).hexdigest() for x in d["rgb"]}

    s = objects.render_objects("train", np.arange(64), 0, 16)
    p = objects.render_objects("train", np.arange(64), 0, 16, world="pretrain")
    assert not hashes(s) & hashes(p)
    assert (p["supercategory"] == -1).all()


def test_tiny_network_learns_above_chance() -> None:
    """At 16 px and 20 images per class a tiny net reaches several times chance on held-out images (measured:
    about 10x): the set is learnable (the old 96-class crop set was at 2x chance at far larger sizes)."""
    n_classes = objects.num_classes()
    tr = objects.render_objects("train", np.arange(20 * n_classes), 0, 16)
    te = objects.render_objects("test", np.arange(4 * n_classes), 0, 16)
    mean, std = tr["rgb"].mean(axis=(0, 2, 3), keepdims=True), tr["rgb"].std(axis=(0, 2, 3), keepdims=True)
    x, xt = (torch.from_numpy((d["rgb"] - mean) / std).float() for d in (tr, te))
    seed_everything(0)
    net = LayerNet(NetConfig(layers=5, width=8, hidden=32, image_size=16, n_classes=n_classes))
    fit(net, x, torch.from_numpy(tr["label"]), F.cross_entropy, TrainConfig(epochs=20, batch_size=32, lr=3e-3))
    acc = float((predict(net, xt).argmax(1).numpy() == te["label"]).mean())
    assert acc > 5 / n_classes, f"top-1 {acc:.3f} against chance {1 / n_classes:.3f}"


def test_learnability_table_rows_and_reuse(tmp_path) -> None:
    from pathlib import Path

    from taskstudy.engine import params
    from taskstudy.world import learnability

    root = Path(__file__).resolve().parents[1]
    P = params.load(root / "params/smoke.yaml", [f"common.results_dir={tmp_path}", "common.workers=0"])
    t = learnability.learnability_table(P, [96, 192])
    assert list(t.task) == ["class", "class", "supercategory", "shape", "colour"]
    assert list(t["training images"]) == [96, 192, 192, 192, 192]
    assert list(t.classes) == [48, 48, 2, 8, 12]
    assert (t["x chance"] == t["top-1"] / t.chance).all() and t["top-1"].between(0, 1).all()
    again = learnability.learnability_table(P, [96, 192])
    assert (again["CPU s"] == t["CPU s"]).all()  # read back from the store, not retrained
