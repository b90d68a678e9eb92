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
