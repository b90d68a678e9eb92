"""Measurements of what the study costs, shared by the chapters and the scripts in benchmarks/.

Each function measures one thing on this machine and returns plain rows (dicts) with min/median/max over repeats.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from taskstudy import scenes, tasks

TARGET_32PX = 1000.0


def bench_render(
    sizes: tuple[int, ...] = (32, 64, 128),
    n: int = 1024,
    repeats: int = 3,
    batch_size: int = 256,
    threads: int = 2,
) -> list[dict]:
    """Fully labelled scenes per second at each size: min/median/max over ``repeats`` runs of ``n`` scenes.

    Note: with 2 threads on a machine whose other core is busy, OpenMP barriers make torch far slower than
    with 1 thread; benchmark an idle machine.
    """
    torch.set_num_threads(threads)
    rows = []
    for size in sizes:
        m = max(batch_size, n * 32 * 32 // (size * size))  # fewer scenes at large sizes
        m = min(m, n)
        scenes.render("train", np.arange(min(64, m)), 0, size)  # warm-up
        rates = []
        for r in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, m, batch_size):
                buf = scenes.render("train", np.arange(s, min(m, s + batch_size)) + r * m, 0, size)
                tasks.make_labels(buf)
            rates.append(m / (time.perf_counter() - t0))
        rows.append(
            {
                "image_size": size,
                "scenes": m,
                "repeats": repeats,
                "threads": torch.get_num_threads(),
                "min": float(np.min(rates)),
                "median": float(np.median(rates)),
                "max": float(np.max(rates)),
            }
        )
    return rows


class _FrozenEncoderReadout(torch.nn.Module):
    """The naive Step II: the frozen encoder runs on every batch of every epoch (eval mode, no gradient)."""

    def __init__(self, encoder: torch.nn.Module, readout: torch.nn.Module):
        super().__init__()
        self.encoder, self.readout = encoder.eval(), readout

    def train(self, mode: bool = True) -> _FrozenEncoderReadout:
        self.readout.train(mode)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.encoder(x)
        return self.readout(z)


def bench_transfer(params, sources: list[str], targets: list[str], threads: int = 2) -> dict:
    """Step II as built (each frozen encoder run once per split, readouts on cached features) against the naive
    way (one readout at a time, the frozen encoder recomputed every batch of every epoch, one process), on the
    same readouts, epochs and data. Needs the task networks of `sources` in the store. Returns times, the ratio,
    readouts per minute and the largest difference of mean test score between the two ways."""
    from taskstudy import data, transfer
    from taskstudy.models import make_readout
    from taskstudy.store import Store
    from taskstudy.task_networks import unit_seed
    from taskstudy.train import TrainConfig, fit, predict

    torch.set_num_threads(threads)
    cfg, store = params.section("transfers"), Store.for_params(params)
    tr, te = (data.scene_split(store, params.common, s) for s in ("transfer", "test"))
    x_tr, x_te = data.rgb(tr), data.rgb(te)
    encoders = {s: transfer._encoder(params, s) for s in sources}

    def readout_scores(source: str, target: str, z_train, z_test, model_of) -> float:
        t = tasks.get_task(target)
        seed = unit_seed(params.common.seed, "readout", target, source)
        torch.manual_seed(seed)
        readout = make_readout(t.kind, encoders[source].out_channels, t.channels, cfg.readout_width)
        model = model_of(readout)
        fit(model, z_train, data.target(tr, target), t.loss,
            TrainConfig(cfg.epochs, cfg.batch_size, cfg.lr, seed=seed), params=list(readout.parameters()))
        return float(t.score(predict(model, z_test), data.target(te, target)).mean())

    start = time.perf_counter()
    built = {}
    for source in sources:
        z_tr, z_te = (predict(encoders[source], x).half().float() for x in (x_tr, x_te))
        for target in targets:
            built[source, target] = readout_scores(source, target, z_tr, z_te, lambda r: r)
    t_built = time.perf_counter() - start

    start = time.perf_counter()
    naive = {}
    for source in sources:
        for target in targets:
            naive[source, target] = readout_scores(
                source, target, x_tr, x_te, lambda r, e=encoders[source]: _FrozenEncoderReadout(e, r))
    t_naive = time.perf_counter() - start
    n = len(built)
    return {"readouts": n, "epochs": cfg.epochs, "built_s": t_built, "naive_s": t_naive,
            "speedup": t_naive / t_built, "readouts_per_min_built": 60 * n / t_built,
            "max_score_diff": max(abs(built[k] - naive[k]) for k in built)}


def matmul_gflops(n: int = 1024, repeats: int = 5, threads: int = 2) -> float:
    """The machine's float32 matmul rate (GFLOP/s, best of `repeats`): the physical limit training is held to."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def bench_training(params, task: str = "normals", n_images: int = 512, repeats: int = 3, threads: int = 2) -> dict:
    """Training throughput of one Step I task network (images/s, min/median/max) and its FLOP rate as a
    fraction of the machine's matmul rate (FLOPs of a forward+backward pass counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from taskstudy import data, task_networks
    from taskstudy.store import Store
    from taskstudy.train import TrainConfig, fit

    torch.set_num_threads(threads)
    cfg, t = params.section("task_networks"), tasks.get_task(task)
    split = data.scene_split(Store.for_params(params), params.common, "train")
    x, y = data.task_input(split, task, params.common.seed)[:n_images], data.target(split, task)[:n_images]
    net = task_networks.build_network(task, cfg)
    with FlopCounterMode(display=False) as counter:
        t.loss(net(x[: cfg.batch_size]), y[: cfg.batch_size]).backward()
    flops_per_image = counter.get_total_flops() / cfg.batch_size
    rates = []
    for r in range(repeats):
        t0 = time.perf_counter()
        fit(net, x, y, t.loss, TrainConfig(1, cfg.batch_size, cfg.lr, seed=r))
        rates.append(len(x) / (time.perf_counter() - t0))
    peak = matmul_gflops(threads=threads)
    med = float(np.median(rates))
    return {"task": task, "min": float(np.min(rates)), "median": med, "max": float(np.max(rates)),
            "gflop_per_image": flops_per_image / 1e9, "achieved_gflops": med * flops_per_image / 1e9,
            "matmul_gflops": peak, "fraction_of_matmul": med * flops_per_image / 1e9 / peak}


def _readout_unit(unit: tuple) -> float:
    from taskstudy import transfer

    params, target, source = unit
    return float(transfer.train_readout(params, target, (source,))[0].mean())


def bench_scaleout(params, sources: list[str], targets: list[str], workers: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    """Step II readouts (sources x targets, features cached) run in-process and on Dask LocalClusters of 1 and 2
    single-threaded workers: wall time, speed-up over in-process, and whether the scores agree."""
    from taskstudy import transfer
    from taskstudy.parallel import close_clients, map_units

    transfer.cache_features(params, sources)
    small = params.subset("task_networks", "transfers")
    units = [(small, t, s) for s in sources for t in targets]
    rows, base = [], None
    for w in workers:
        map_units(_readout_unit, units[:1], workers=w)  # warm caches (and start the cluster) outside the timing
        t0 = time.perf_counter()
        scores = map_units(_readout_unit, units, workers=w)
        wall = time.perf_counter() - t0
        base = base or wall
        rows.append({"workers": w, "readouts": len(units), "wall_s": wall, "speedup": base / wall,
                     "scores": scores})
        close_clients()
    ref = rows[0]["scores"]
    for r in rows:
        r["max_score_diff"] = float(max(abs(a - b) for a, b in zip(r.pop("scores"), ref, strict=True)))
    return rows
