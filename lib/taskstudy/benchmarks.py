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
