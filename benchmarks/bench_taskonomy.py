"""What a profile on Taskonomy folders costs, from per-image costs measured on this machine.

    .venv/bin/python benchmarks/bench_taskonomy.py [--params params/taskonomy.yaml] [-p common.device=cuda]

Measures (1) reading: the release's 512 px PNGs of every task the profile reads, decoded and resized to its
image size (a folder written by taskonomy_fixture, its files enlarged to 512 px), and (2) training: one Step I
network step and one readout step per image at the profile's image size and kernels. Then multiplies by the
profile's counts at their ceilings (every network to its last epoch; early stopping only shortens it): the numbers
for the profile's header comment.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from taskstudy.engine.params import load
from taskstudy.nn import models
from taskstudy.nn.train import TrainConfig, fit, kernels
from taskstudy.taskonomy.task_networks import build_network
from taskstudy.world import taskonomy_data, taskonomy_fixture
from taskstudy.world import tasks as taskdict
from taskstudy.world.realdata import TaskonomyFolder


def read_cost(tasks: list[str], image_size: int, n: int = 12) -> float:
    """Seconds per image to read and decode `tasks` from 512 px PNGs and resize them to `image_size`."""
    with tempfile.TemporaryDirectory() as tmp:
        root = taskonomy_fixture.write_fixture(Path(tmp) / "t", buildings=4, per_building=n // 4, image_size=256)
        for png in root.rglob("*.png"):  # the renderer stops at 256 px; the release's files are 512 px
            with Image.open(png) as im:
                big = im.resize((512, 512), Image.NEAREST)
            big.save(png)
        ds = TaskonomyFolder(root, [t for t in tasks if t in taskonomy_data.FROM_FOLDERS], image_size=image_size)
        start = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        return (time.perf_counter() - start) / len(ds)


def train_cost(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, loss, common, batches: int = 6) -> float:
    """Seconds per training image (one epoch of `batches` batches after one warm-up epoch)."""
    cfg = TrainConfig(1, 64, 1e-3, seed=0, **kernels(common))
    fit(net, x[:64], y[:64], loss, cfg)  # warm-up
    start = time.perf_counter()
    fit(net, x[: 64 * batches], y[: 64 * batches], loss, cfg)
    return (time.perf_counter() - start) / (64 * batches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/taskonomy.yaml")
    ap.add_argument("-p", dest="overrides", action="append", default=[])
    a = ap.parse_args()
    P = load(a.params, a.overrides)
    c, tn, tr = P.common, P.section("task_networks"), P.section("transfers")
    tasks = list(c.tasks or taskdict.dictionary_tasks())
    targets = [t for t in tasks if not taskdict.get_task(t).source_only]
    s = c.image_size
    read = read_cost(tasks, s)
    t = "normals"
    x = torch.rand(64 * 6, 3, s, s)
    y = torch.rand(64 * 6, 3, s, s) * 2 - 1
    step1 = train_cost(build_network(t, tn), x, y, taskdict.get_task(t).loss, c)
    z = torch.rand(64 * 6, 4 * tn.width, s // 4, s // 4)
    readout = models.make_readout("pixel_regression", 4 * tn.width, 3, tr.readout_width, tr.readout, tn.decoder_width)
    step2 = train_cost(readout, z, y, taskdict.get_task(t).loss, c)
    n_images = c.n_train + c.n_transfer + c.n_val + c.n_test
    k = min(tr.beam, len(tasks))
    readouts = len(targets) * (len(tasks) + 1) + len(targets) * sum(math.comb(k, o) for o in range(2, tr.max_order + 1))
    hours = {
        "read the splits once": n_images * read,
        "Step I (ceiling)": len(tasks) * c.n_train * tn.epochs * step1,
        "scratch networks (ceiling)": len(targets) * c.n_transfer * tr.scratch_epochs * step1,
        f"Step II: {readouts} readouts (ceiling)": readouts * c.n_transfer * tr.epochs * step2,
    }
    print(f"profile {P.profile}: {len(tasks)} tasks, {s} px, {n_images} images; on {c.device}, torch threads "
          f"{torch.get_num_threads()}")
    print(f"measured per image: read {1e3 * read:.1f} ms (all tasks, 512 px -> {s} px), Step I step "
          f"{1e3 * step1:.2f} ms, readout step {1e3 * step2:.3f} ms")
    for what, sec in hours.items():
        print(f"  {what}: {sec / 3600:.2f} h")
    print(f"  total at the ceilings: {sum(hours.values()) / 3600:.1f} h")


if __name__ == "__main__":
    main()
