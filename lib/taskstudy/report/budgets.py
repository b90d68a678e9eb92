"""What the performance chapter holds the study to (issues 7, 12, 22, 23 and 37): each chapter's CPU-seconds and
the whole study's wall time against their targets (doubled on a CPU without native bf16), read from the chapters'
run records, and the benchmark suite's numbers the chapter states (render rate, matmul rate, the kernel table).
"""

from __future__ import annotations

import time

import pandas as pd

from taskstudy.report.benchmarks import KERNELS

#: Wall-time targets of single chapters on the default profile (issues 7, 12, 22 and 23), in seconds. Chapters run
#: side by side and share the machine, so a chapter is held to its CPU-seconds: at most its target times the cores.
CHAPTER_TARGETS_S = {"08_layer_transfer": 240.0, "09_task2vec": 240.0, "10_task_grouping": 360.0,
                     "12_robustness": 480.0, "13_estimators": 240.0}


STUDY_TARGET_MIN = 30.0  # the whole default study on a 2-core CPU with native bf16


SLOW_CPU_SCALE = 2.0  # without native bf16 (fp32 kernels, e.g. AVX2 only) every time target is this much longer


def budget_scale(native_bf16: bool) -> float:
    """How much longer the time targets are on a CPU without native bf16 (issue 37: 60 minutes, not 30)."""
    return 1.0 if native_bf16 else SLOW_CPU_SCALE


PEAK_TARGET_MB = 4096.0  # its largest process


def chapter_targets(runs: pd.DataFrame, targets: dict[str, float] | None = None, cores: int = 2,
                    scale: float = 1.0) -> pd.DataFrame:
    """The chapters that have a target: their last recorded run (manifest.run_records) against it, on CPU-seconds
    (kernel and units, whatever ran beside it) against target x `scale` x `cores` (`budget_scale`). Columns:
    chapter, wall_s, cpu_s, target_s, target_cpu_s, pass."""
    targets = {k: v * scale for k, v in (CHAPTER_TARGETS_S if targets is None else targets).items()}
    rows = [{"chapter": r["chapter"], "wall_s": float(r["wall s"]), "cpu_s": float(r["CPU s"]),
             "target_s": targets[r["chapter"]], "target_cpu_s": cores * targets[r["chapter"]],
             "pass": bool(r["CPU s"] <= cores * targets[r["chapter"]])}
            for _, r in runs.iterrows() if r["chapter"] in targets and pd.notna(r["CPU s"])]
    return pd.DataFrame(rows, columns=["chapter", "wall_s", "cpu_s", "target_s", "target_cpu_s", "pass"])


def study_wall_s(runs: pd.DataFrame, current_run: str | None = None, now: float | None = None) -> float:
    """The study's wall time from its chapters' last records: per `taskstudy run` they came from, its start to its
    last chapter's end (chapters side by side count once); the run in progress (`current_run`) up to `now`; a
    record without a run, its wall time."""
    total = 0.0
    for run, g in runs.groupby(runs["run"].fillna(""), sort=False):
        if not run:
            total += float(g["wall s"].sum())
            continue
        end = (now or time.time()) if run == current_run else float(g["end"].max())
        total += end - min(float(run), float(g["start"].min()))
    return total


def study_targets(runs: pd.DataFrame, current_run: str | None = None, cores: int = 2,
                  this_chapter: str = "15_performance", native_bf16: bool | None = None) -> dict:
    """The whole study's targets from the run records: minutes (`study_wall_s`), the largest process, and each
    chapter with a target of its own (`chapter_targets`). `this_chapter`, which reads them while it runs, counts
    through the run in progress (an earlier record of it is left out). Returns minutes, peak_mb, per_chapter and
    checks (name -> met), n_chapters, target_min. The time targets are those of a CPU with or without native bf16
    (`native_bf16`; None: this machine's, `machine.describe`)."""
    if native_bf16 is None:
        from taskstudy.nn.machine import describe

        native_bf16 = bool(describe()["native_bf16"])
    scale = budget_scale(native_bf16)
    target_min = STUDY_TARGET_MIN * scale
    if current_run is not None:
        runs = runs[(runs["chapter"] != this_chapter) | (runs["run"] == current_run)]
    n_chapters = len(runs) + int(current_run is not None and this_chapter not in set(runs["chapter"]))
    minutes = study_wall_s(runs, current_run) / 60
    peak_mb = float(runs["peak memory MB"].max())
    per_chapter = chapter_targets(runs, cores=cores, scale=scale)
    checks = {f"whole study <= {target_min:.0f} min": minutes <= target_min,
              f"largest process <= {PEAK_TARGET_MB:.0f} MB": peak_mb <= PEAK_TARGET_MB}
    checks.update({f"{r.chapter} <= {r.target_cpu_s:.0f} CPU-s": bool(r["pass"]) for _, r in per_chapter.iterrows()})
    return {"minutes": minutes, "peak_mb": peak_mb, "per_chapter": per_chapter, "checks": checks,
            "n_chapters": n_chapters, "target_min": target_min, "native_bf16": native_bf16}


def study_report(study: dict) -> str:
    """study_targets' numbers as sentences: the chapters with a target of their own, the whole study, memory."""
    checks = study["checks"]
    whole, memory = (f"whole study <= {study['target_min']:.0f} min", f"largest process <= {PEAK_TARGET_MB:.0f} MB")
    own = "; ".join(f"{r.chapter} {r.cpu_s:.0f} CPU-s in {r.wall_s:.0f} s of wall (target {r.target_cpu_s:.0f} "
                    f"CPU-s, {'met' if r['pass'] else 'NOT met'})" for _, r in study["per_chapter"].iterrows())
    return (f"Chapters with a target of their own: {own or 'none ran under this profile'}.\n"
            f"All {study['n_chapters']} chapters, from the start of the run that made them to now (chapters side "
            f"by side "
            f"counted once; a run that reads its units from the store is short): {study['minutes']:.1f} minutes "
            f"(target for the default profile on a CPU {'with' if study['native_bf16'] else 'without'} native bf16: "
            f"{study['target_min']:.0f} minutes, {'met' if checks[whole] else 'NOT met'}"
            f"); largest process: {study['peak_mb']:.0f} MB (target: {PEAK_TARGET_MB:.0f} MB, "
            f"{'met' if checks[memory] else 'NOT met'}).")


def render_rate(table: pd.DataFrame, size: int = 32) -> float:
    """The renderer's median scenes/s at `size` px as run_suite measured it."""
    return float(table.loc[table.measure.str.startswith(f"scenes/s at {size} px"), "value"].iloc[0])


def suite_gflops(table: pd.DataFrame) -> float:
    """The machine's matmul rate as run_suite measured it."""
    return float(table.loc[table.measure == "matmul GFLOP/s of this machine", "value"].iloc[0])


def kernel_table(table: pd.DataFrame, resolved: str) -> pd.DataFrame:
    """The four training kernels' measured rates from run_suite's table (one Step I network), relative to fp32
    NCHW, with the one this machine resolved to (`resolved`, e.g. "fp32 channels_last") marked."""
    rows = []
    for name in KERNELS:
        hit = table.loc[table.measure == f"task network images/s, {name} (median)", "value"]
        if len(hit):
            rows.append({"kernels": name, "images/s": float(hit.iloc[0]), "resolved here": name == resolved})
    out = pd.DataFrame(rows, columns=["kernels", "images/s", "resolved here"])
    base = out.loc[out.kernels == "fp32 NCHW", "images/s"]
    out["vs fp32 NCHW"] = out["images/s"] / float(base.iloc[0]) if len(base) else float("nan")
    return out
