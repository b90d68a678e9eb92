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
import itertools
import time

import numpy as np
import pandas as pd

from taskstudy.taxonomy import brute_force_taxonomy, solve_taxonomy

TARGET_S = 1.0


def synthetic_transfers(n_tasks: int, max_order: int, beam: int | None = 5, seed: int = 0) -> pd.DataFrame:
    """Candidate transfers (target, sources tuple, quality) for n_tasks tasks; `beam=None` enumerates every source
    combination up to max_order instead of the beam."""
    rng = np.random.default_rng(seed)
    tasks = [f"task{i:02d}" for i in range(n_tasks)]
    centres = rng.normal(size=(4, 3)) * 2.0
    z = centres[rng.integers(0, 4, n_tasks)] + rng.normal(size=(n_tasks, 3)) * 0.7
    d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
    first = np.exp(-d2 / 4.0) * rng.uniform(0.7, 1.0, (n_tasks, n_tasks))  # [target, source]
    rows = []
    for t in range(n_tasks):
        ranked = np.argsort(-first[t])
        pool = ranked if beam is None else ranked[:beam]
        cands = {(s,): first[t, s] for s in range(n_tasks)}
        for k in range(2, max_order + 1):
            for combo in itertools.combinations(sorted(pool), k):
                q = np.sort(first[t, list(combo)])[::-1]
                cands[combo] = q[0] + 0.3 * q[1:].sum() * rng.uniform(0.2, 1.0)
        total = sum(cands.values())
        rows += [(tasks[t], tuple(tasks[s] for s in c), q / total) for c, q in cands.items()]
    return pd.DataFrame(rows, columns=["target", "sources", "quality"])


def bench_taxonomy(n_tasks: tuple[int, ...] = (5, 10, 15, 20, 25), orders: tuple[int, ...] = (1, 2, 3),
                   beam: int | None = 5, solver: str = "cbc", brute_max_tasks: int = 12, seed: int = 0,
                   budgets: tuple[int, ...] | None = None) -> list[dict]:
    """One row per (n_tasks, order): candidate count, the slowest BIP solve over budgets 1..N (bip_s), the
    summed brute-force time over those budgets (None beyond brute_max_tasks), whether both agree, the 1 s target
    and pass (bip_s <= target). `budgets` (default 1..N) restricts the budgets timed."""
    out = []
    for n in n_tasks:
        for order in orders:
            tr = synthetic_transfers(n, order, beam, seed)
            bip_s, brute_s, agree = 0.0, 0.0 if n <= brute_max_tasks else None, True
            for budget in budgets or range(1, n + 1):
                t0 = time.perf_counter()
                tax = solve_taxonomy(tr, budget, max_order=order, solver=solver)
                bip_s = max(bip_s, time.perf_counter() - t0)
                if brute_s is not None:
                    t0 = time.perf_counter()
                    ref = brute_force_taxonomy(tr, budget, max_order=order)
                    brute_s += time.perf_counter() - t0
                    agree &= abs(ref.objective - tax.objective) < 1e-6
            out.append({"n_tasks": n, "order": order, "candidates": len(tr), "solver": solver,
                        "bip_s": round(bip_s, 4), "brute_s": None if brute_s is None else round(brute_s, 3),
                        "agree": agree if brute_s is not None else None, "target_s": TARGET_S,
                        "pass": bip_s <= TARGET_S})
    return out


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
