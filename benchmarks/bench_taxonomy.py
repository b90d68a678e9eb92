"""Benchmark: the taxonomy BIP (Taskonomy Sec. 3.4, Eq. 1-2) against brute-force enumeration.

Instances are synthetic but shaped like the study's: tasks lie in a few latent clusters; a source's first-order
quality for a target falls with latent distance; higher orders are the paper's beam search (Sec. 3.2): all
combinations of the target's top-`beam` first-order sources, each a little better than its best member; qualities
are normalised per target to sum 1 as AHP affinities are. The BIP is timed at every budget 1..N (the worst budget
is reported); brute force is run only while 2^N subsets stay small.

    python benchmarks/bench_taxonomy.py [--tasks 5 10 15 20 25] [--orders 1 2 3] [--beam 5]
"""

from __future__ import annotations

import argparse

import pandas as pd

from taskstudy.report.benchmarks import bench_taxonomy


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[5, 10, 15, 20, 25])
    ap.add_argument("--orders", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--beam", type=int, default=5, help="beam width for higher orders; 0 = every combination")
    ap.add_argument("--solver", default="cbc", choices=["cbc", "highs"])
    ap.add_argument("--brute-max-tasks", type=int, default=12)
    args = ap.parse_args(argv)
    rows = bench_taxonomy(tuple(args.tasks), tuple(args.orders), args.beam or None, args.solver,
                          args.brute_max_tasks)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
