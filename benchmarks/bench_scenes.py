"""Throughput of the scene renderer with every task label (scenes.render + tasks.make_labels).

Run ``python benchmarks/bench_scenes.py``; other scripts call ``bench_render`` to collect the figures.
Target (../design/scenes.md): at least 1,000 fully labelled 32x32 scenes per second on 2 CPU cores.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    print(f"{'size':>5} {'scenes':>7} {'min/s':>9} {'median/s':>9} {'max/s':>9}")
    for row in bench_render(tuple(a.sizes), a.n, a.repeats, threads=a.threads):
        print(
            f"{row['image_size']:>5} {row['scenes']:>7} "
            f"{row['min']:>9.0f} {row['median']:>9.0f} {row['max']:>9.0f}"
        )
        if row["image_size"] == 32:
            ok = "meets" if row["median"] >= TARGET_32PX else "MISSES"
            print(f"      32 px median {row['median']:.0f}/s {ok} the target of {TARGET_32PX:.0f}/s")


if __name__ == "__main__":
    main()
