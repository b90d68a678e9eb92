"""Measurements of what the study costs, shared by the chapters and the scripts in benchmarks/.

Each function measures one thing on this machine and returns plain rows (dicts) with min/median/max over repeats.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pandas as pd
import torch

from taskstudy.nn.machine import matmul_gflops
from taskstudy.taskonomy.taxonomy import brute_force_taxonomy, solve_taxonomy
from taskstudy.world import labels, scenes, tasks

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
        # at most batch_size scenes of 64 x 64 pixels at once: every buffer and label of a 128-pixel batch of 256
        # scenes held 4.6 GB; the rate per scene does not depend on the batch at these sizes
        batch = max(8, min(batch_size, batch_size * 64 * 64 // (size * size)))
        scenes.render("train", np.arange(min(64, m)), 0, size)  # warm-up
        rates = []
        for r in range(repeats):
            t0 = time.perf_counter()
            for s in range(0, m, batch):
                buf = scenes.render("train", np.arange(s, min(m, s + batch)) + r * m, 0, size)
                labels.make_labels(buf)
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


def render_rows(P, sizes: tuple[int, ...] | None = None, n: int | None = None,
                repeats: int | None = None) -> list[dict]:
    """bench_render with the `performance` section's settings (chapter 15's, which runs with nothing beside it)
    unless given, measured once per version of the renderer's code and kept in the store."""
    from taskstudy.engine.codehash import computation_hash
    from taskstudy.engine.store import Store

    cfg = P.values("performance")
    sizes, n = tuple(sizes or cfg["bench_sizes"]), n or cfg["bench_scenes"]
    repeats = repeats or cfg["bench_repeats"]
    key = {"sizes": list(sizes), "n": n, "repeats": repeats, "batch_size": min(256, n), "threads": 2,
           "code": computation_hash(bench_render)}
    return Store.for_params(P).get_or_compute("bench_render", key,
                                              lambda: bench_render(sizes, n, repeats, batch_size=min(256, n)))


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


BENCH_EPOCHS = 8  # readout epochs in the speed benchmarks: a fixed cost, whatever the profile's ceiling


def _short_readouts(params):
    """The params with BENCH_EPOCHS readout epochs and no early stopping (speed benchmarks, not science)."""
    from dataclasses import replace

    tr = params.section("transfers").model_copy(update={"epochs": BENCH_EPOCHS, "patience": BENCH_EPOCHS})
    return replace(params, sections={**params.sections, "transfers": tr})


def bench_transfer(params, sources: list[str], targets: list[str], threads: int = 2) -> dict:
    """Step II as built (each frozen encoder run once per split, readouts on cached features) against the naive
    way (one readout at a time, the frozen encoder recomputed every batch of every epoch, one process), on the
    same readouts, epochs and data. Needs the task networks of `sources` in the store. Returns times, the ratio,
    readouts per minute and the largest difference of mean test score between the two ways."""
    from taskstudy.engine.store import Store
    from taskstudy.nn.train import TrainConfig, fit, predict
    from taskstudy.taskonomy import features, transfer
    from taskstudy.taskonomy.task_networks import unit_seed
    from taskstudy.world import data

    torch.set_num_threads(threads)
    cfg, store = params.section("transfers"), Store.for_params(params)
    tr, te = (data.scene_split(store, params.common, s) for s in ("transfer", "test"))
    x_tr, x_te = data.rgb(tr), data.rgb(te)
    encoders = {s: features.frozen_encoder(params, s) for s in sources}

    def readout_scores(source: str, target: str, z_train, z_test, model_of) -> float:
        t = tasks.get_task(target)
        seed = unit_seed(params.common.seed, "readout", target, source)
        torch.manual_seed(seed)
        readout = transfer.build_readout(transfer.protocol(params), target, encoders[source].out_channels)
        model = model_of(readout)
        fit(model, z_train, data.target(tr, target), t.loss,
            TrainConfig(BENCH_EPOCHS, cfg.batch_size, cfg.lr, seed=seed), params=list(readout.parameters()))
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
    return {"readouts": n, "epochs": BENCH_EPOCHS, "built_s": t_built, "naive_s": t_naive,
            "speedup": t_naive / t_built, "readouts_per_min_built": 60 * n / t_built,
            "max_score_diff": max(abs(built[k] - naive[k]) for k in built)}


def bench_grouped(params, targets: list[str], n_readouts: int = 6, threads: int = 1) -> list[dict]:
    """Step II's readouts of one target one by one (train.fit_validated) against side by side (grouped), for each
    target: n_readouts readouts on random frozen features of the profile's shape (the transfer split's size and
    labels), BENCH_EPOCHS epochs without early stopping, the profile's kernels, one thread (a worker's)."""
    from taskstudy.engine.store import Store
    from taskstudy.nn import grouped
    from taskstudy.nn.train import TrainConfig, fit_validated, kernels
    from taskstudy.taskonomy import transfer
    from taskstudy.world import data

    torch.set_num_threads(threads)
    store, cfg = Store.for_params(params), params.section("transfers")
    split = {s: data.scene_split(store, params.common, s) for s in ("transfer", "val")}
    c, h = 4 * params.section("task_networks").width, params.common.image_size // 4
    tc = TrainConfig(BENCH_EPOCHS, cfg.batch_size, cfg.lr, seed=0, **kernels(params.common))
    g = torch.Generator().manual_seed(0)
    rows = []
    for target in targets:
        t = tasks.get_task(target)
        y = {s: data.target(d, target) for s, d in split.items()}
        z = {s: [torch.randn(len(y[s]), c, h, h, generator=g) for _ in range(n_readouts)] for s in split}

        def readouts(target: str = target) -> list[torch.nn.Module]:
            torch.manual_seed(0)
            return [transfer.build_readout(transfer.protocol(params), target, c) for _ in range(n_readouts)]

        rs, start = readouts(), time.perf_counter()
        for r, m in enumerate(rs):
            fit_validated(m, z["transfer"][r], y["transfer"], t.loss, tc, (z["val"][r], y["val"]),
                          patience=BENCH_EPOCHS)
        alone = time.perf_counter() - start
        rs, start = readouts(), time.perf_counter()
        grouped.fit_readouts(rs, z["transfer"], y["transfer"], t.per_image_loss, tc, (z["val"], y["val"]),
                             patience=BENCH_EPOCHS)
        together = time.perf_counter() - start
        rows.append({"target": target, "readouts": n_readouts, "alone_s": alone, "together_s": together,
                     "speedup": alone / together})
    return rows


KERNELS = {"fp32 NCHW": ("fp32", False), "fp32 channels_last": ("fp32", True), "bf16 NCHW": ("bf16", False),
           "bf16 channels_last": ("bf16", True)}


def bench_training(params, task: str = "normals", n_images: int = 512, repeats: int = 3, threads: int = 2) -> dict:
    """Training throughput of one Step I task network (images/s, min/median/max) with the profile's kernels
    (common.precision, common.channels_last) and with each of KERNELS, and its FLOP rate as a fraction of the
    machine's matmul rate (FLOPs of a forward+backward pass counted by torch)."""
    from torch.utils.flop_counter import FlopCounterMode

    from taskstudy.engine.store import Store
    from taskstudy.nn.train import TrainConfig, fit, kernels
    from taskstudy.taskonomy import task_networks
    from taskstudy.world import data

    torch.set_num_threads(threads)
    cfg, t = params.section("task_networks"), tasks.get_task(task)
    split = data.scene_split(Store.for_params(params), params.common, "train")
    x, y = data.network_input(params.common, split, task)[:n_images], data.target(split, task)[:n_images]
    net = task_networks.build_network(task, cfg)
    with FlopCounterMode(display=False) as counter:
        t.loss(net(x[: cfg.batch_size]), y[: cfg.batch_size]).backward()
    flops_per_image = counter.get_total_flops() / cfg.batch_size

    def rates(precision: str, channels_last: bool) -> list[float]:
        out = []
        for r in range(repeats):
            t0 = time.perf_counter()
            fit(net, x, y, t.loss, TrainConfig(1, cfg.batch_size, cfg.lr, seed=r, precision=precision,
                                               channels_last=channels_last))
            out.append(len(x) / (time.perf_counter() - t0))
        return out

    chosen = kernels(params.common)
    by_kernel = {name: float(np.median(rates(*k))) for name, k in KERNELS.items()}
    mine = rates(chosen["precision"], chosen["channels_last"])
    peak = matmul_gflops(threads=threads)
    med = float(np.median(mine))
    return {"task": task, "min": float(np.min(mine)), "median": med, "max": float(np.max(mine)),
            "kernels": by_kernel, "chosen": f"{chosen['precision']} " + (
                "channels_last" if chosen["channels_last"] else "NCHW"),
            "speedup_vs_fp32": med / by_kernel["fp32 NCHW"],
            "gflop_per_image": flops_per_image / 1e9, "achieved_gflops": med * flops_per_image / 1e9,
            "matmul_gflops": peak, "fraction_of_matmul": med * flops_per_image / 1e9 / peak}


def _readout_unit(unit: tuple) -> float:
    from taskstudy.taskonomy import transfer

    params, target, source = unit
    return float(transfer.train_readout(params, target, (source,))[0].mean())


def bench_scaleout(params, sources: list[str], targets: list[str], workers: tuple[int, ...] = (0, 1, 2)) -> list[dict]:
    """Step II readouts (sources x targets, features cached) run in-process and on Dask LocalClusters of 1 and 2
    single-threaded workers: wall time, speed-up over in-process, and whether the scores agree."""
    from taskstudy.engine.parallel import close_clients, map_units
    from taskstudy.taskonomy import features

    features.cache_features(params, sources)
    small = _short_readouts(params.subset("task_networks", "transfers"))
    units = [(small, t, s) for s in sources for t in targets]
    rows, base = [], None
    for w in workers:
        # warm every worker's feature cache (and start the cluster) outside the timing: one unit per source and
        # worker, so that no worker reads features from the store inside the timed part
        map_units(_readout_unit, [(small, targets[0], s) for s in sources for _ in range(max(w, 1))], workers=w)
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


TARGET_BIP_S = 1.0


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
                        "agree": agree if brute_s is not None else None, "target_s": TARGET_BIP_S,
                        "pass": bip_s <= TARGET_BIP_S})
    return out


SOURCES = ["normals", "autoencoding", "segment_semantic"]
TARGETS = ["depth_zbuffer", "edge2d", "class_scene"]


def row(bench: str, measure: str, value: float, target: str = "", ok: bool | None = None, **extra) -> dict:
    return {"benchmark": bench, "measure": measure, "value": float(value), "target": target,
            "pass": "" if ok is None else ("pass" if ok else "FAIL"), **extra}


def run_suite(P, quick: bool = False) -> pd.DataFrame:
    """Every benchmark with its target and pass/fail, against the naive baselines measured in the same run;
    the table is stored (entry `benchmarks`) and written to results/<profile>/csv."""
    from taskstudy.engine.store import Store
    from taskstudy.taskonomy import task_networks

    rows = []
    for r in render_rows(P, (32,), 256, 1) if quick else render_rows(P):
        ok = r["median"] >= TARGET_32PX if r["image_size"] == 32 else None
        rows.append(row("renderer", f"scenes/s at {r['image_size']} px (median; min {r['min']:.0f}, "
                        f"max {r['max']:.0f})", r["median"], ">= 1000 at 32 px" if ok is not None else "", ok))
    task_networks.task_networks(P, tasks=sorted(set(SOURCES + TARGETS)))
    tr = bench_transfer(P, SOURCES[:2] if quick else SOURCES, TARGETS[:2] if quick else TARGETS)
    rows.append(row("Step II", "as built vs naive (speed-up)", tr["speedup"], ">= 3x", tr["speedup"] >= 3))
    rows.append(row("Step II", "readouts per minute, as built", tr["readouts_per_min_built"]))
    rows.append(row("Step II", "largest |mean score| difference, built vs naive", tr["max_score_diff"]))
    for r in bench_grouped(P, TARGETS[-1:] if quick else [TARGETS[0], TARGETS[-1]]):
        rows.append(row("Step II", f"{r['readouts']} readouts of {r['target']} side by side vs one by one (speed-up)",
                        r["speedup"], wall_s=r["together_s"]))
    tn = bench_training(P, repeats=1 if quick else 2)
    rows.append(row("training", f"task network images/s, {tn['chosen']} (median; min {tn['min']:.0f}, max "
                    f"{tn['max']:.0f})", tn["median"]))
    for name, rate in tn["kernels"].items():
        rows.append(row("training", f"task network images/s, {name} (median)", rate))
    rows.append(row("training", f"speed-up of {tn['chosen']} over fp32 NCHW", tn["speedup_vs_fp32"]))
    fastest = max(tn["kernels"].values())
    rows.append(row("training", f"{tn['chosen']} (resolved on this machine) against the fastest of the four",
                    tn["median"] / fastest, ">= 0.85", tn["median"] >= 0.85 * fastest))
    rows.append(row("training", "matmul GFLOP/s of this machine", tn["matmul_gflops"]))
    rows.append(row("training", "fraction of matmul FLOP/s reached", tn["fraction_of_matmul"]))
    for r in bench_taxonomy((5, 10) if quick else (5, 10, 15, 20, 25), (1, 2, 3),
                            budgets=(1, 3) if quick else None):
        rows.append(row("BIP", f"{r['n_tasks']} tasks, order {r['order']}: worst solve s", r["bip_s"], "<= 1 s",
                        r["bip_s"] <= 1.0, brute_s=r.get("brute_s")))
    for r in bench_scaleout(P, SOURCES[:2], TARGETS[:2] if quick else TARGETS, workers=(0, 2)):
        rows.append(row("Dask", f"Step II on {r['workers']} workers (0 = in-process): speed-up", r["speedup"],
                        wall_s=r["wall_s"], max_score_diff=r["max_score_diff"]))
    table = pd.DataFrame(rows)
    store = Store.for_params(P)
    store.save("benchmarks", {"profile": P.profile, "quick": quick}, table, fmt="parquet")
    table.to_csv(store.root / "benchmarks.csv", index=False)
    return table


