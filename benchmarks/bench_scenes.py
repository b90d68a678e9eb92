"""Throughput of the scene renderer with every task label (scenes.render + labels.make_labels).

Run ``python benchmarks/bench_scenes.py``; other scripts call ``bench_render`` to collect the figures.
Target (../design/scenes.md): at least 1,000 fully labelled 32x32 scenes per second on 2 CPU cores.
"""

from __future__ import annotations

import argparse

from taskstudy.report.benchmarks import TARGET_32PX, bench_render


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
