"""The machine a run is on, and what it resolved: every timing of the study is stated beside it.

The CPUs the study runs on differ in model and instruction set from one run to the next (a laptop, CI, a cloud
box), and so do its fastest training kernels (`train.resolve_kernels`). Each chapter's run record and the
performance chapter carry `describe()`: the CPU model, torch's CPU capability, whether bf16 is native, the float32
matmul rate (the physical limit training is held to) and the kernels resolved from them.
"""

from __future__ import annotations

import os
import platform
import time
from functools import lru_cache
from typing import Any

import torch

from taskstudy.engine.sections import Common


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what platform reports)."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):  # noqa: SIM115
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(n: int = 1024, repeats: int = 5, threads: int = 2) -> float:
    """The machine's float32 matmul rate (GFLOP/s, best of `repeats`): the physical limit training is held to."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b
            best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
        return best
    finally:
        torch.set_num_threads(before)


@lru_cache(maxsize=8)
def _describe(precision: str, channels_last: bool | str, device: str) -> tuple[tuple[str, Any], ...]:
    from taskstudy.nn.train import native_bf16, resolve_kernels

    k = resolve_kernels(precision, channels_last, device)
    return tuple({
        "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": native_bf16(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "matmul_gflops": round(matmul_gflops(threads=min(2, os.cpu_count() or 1)), 1),
        "precision": k["precision"], "channels_last": k["channels_last"],
    }.items())


def describe(common: Common | None = None) -> dict[str, Any]:
    """This machine and the kernels `common` (a profile's common section; None: its defaults) resolves to on it:
    cpu, cores, torch, capability, native_bf16, onednn_max_isa, matmul_gflops (2 threads), precision,
    channels_last. Measured once per process."""
    c = common if common is not None else Common()
    return dict(_describe(c.precision, c.channels_last, c.device))


def summary(m: dict[str, Any]) -> str:
    """`describe()` in one line, for beside a timing."""
    isa = f", oneDNN held to {m['onednn_max_isa']}" if m.get("onednn_max_isa") else ""
    return (f"{m['cpu']} ({m['cores']} cores, {m['capability']}{isa}, bf16 "
            f"{'native' if m['native_bf16'] else 'not native'}, matmul {m['matmul_gflops']:.0f} GFLOP/s); kernels "
            f"{m['precision']} {'channels_last' if m['channels_last'] else 'NCHW'}")
