"""Training kernels resolved on the machine (train.resolve_kernels) and the guard against oneDNN's strided 1x1
convolution defect (models.StridedPointwise; uxlfoundation/oneDNN#6035, seen with torch 2.14.1 on AVX2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from taskstudy.engine.sections import Common
from taskstudy.nn import models, train

ROOT = Path(__file__).resolve().parents[1]
PROBE_WIDTHS = (2, 4, 8)  # tests/kernel_probe.py's default widths


def test_strided_pointwise_is_the_strided_convolution():
    torch.manual_seed(0)
    conv = models.StridedPointwise(4, 8, 2)
    x = torch.randn(3, 4, 9, 9, requires_grad=True)
    ref = F.conv2d(x, conv.weight, stride=2)
    got = conv(x)
    assert got.shape == ref.shape == (3, 8, 5, 5)
    assert torch.allclose(got, ref, atol=1e-6)
    (gx,) = torch.autograd.grad(got.square().sum(), x)
    (rx,) = torch.autograd.grad(ref.square().sum(), x)
    assert torch.allclose(gx, rx, atol=1e-5)


def test_encoder_shortcuts_avoid_the_strided_1x1_kernel():
    enc = models.Encoder(4)
    strided = [m for m in enc.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1)
               and m.stride != (1, 1)]
    assert strided and all(isinstance(m, models.StridedPointwise) for m in strided)


def _probe(precision: str, channels_last: str, isa: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa  # oneDNN's AVX2 kernels, where the defect was seen, on any x86 CPU
    try:
        return subprocess.run([sys.executable, str(ROOT / "tests" / "kernel_probe.py"), precision, channels_last],
                              capture_output=True, text=True, env=env, timeout=300)
    except subprocess.TimeoutExpired as e:  # the defect's other form: both threads spinning
        pytest.fail(f"the network kinds hung in {precision}/{channels_last} (ISA {isa or 'native'}): {e}")


@pytest.mark.slow
@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="no oneDNN in this torch build")
@pytest.mark.parametrize("isa", [None, "AVX2"], ids=["native ISA", "AVX2 ISA"])
def test_every_network_kind_trains_clean_with_matching_gradients(isa):
    """Each network kind at widths 2, 4, 8 trains a few steps in the kernels resolved for this machine (held to
    oneDNN's AVX2 kernels: fp32 channels_last, where the defect was seen) under MALLOC_CHECK_=3 in a subprocess
    (heap corruption aborts it), and its weight gradients match NCHW fp32's (the defect's silent form: 100x off at
    width 2, 12% at width 4, before StridedPointwise)."""
    proc = _probe("auto", "auto", isa)
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    bad = [r for r in rows if not r["ok"]]
    assert proc.returncode == 0 and not bad, f"rc {proc.returncode}: {bad}\n{proc.stderr[-3000:]}"
    assert {r["width"] for r in rows} == set(PROBE_WIDTHS) and len(rows) >= 3 * 12
    if isa == "AVX2" and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert {(r["precision"], r["channels_last"]) for r in rows} == {("fp32", True)}


def test_probe_covers_the_narrowest_widths_of_every_profile():
    def widths(node: object, key: str = "") -> list[int]:
        if isinstance(node, dict):
            return [w for k, v in node.items() for w in widths(v, k)]
        return [node] if isinstance(node, int) and key.endswith("width") else []

    found = [w for f in (ROOT / "params").glob("*.yaml") for w in widths(yaml.safe_load(f.read_text()))]
    assert found and min(found) >= min(PROBE_WIDTHS)


@pytest.fixture
def cpu(monkeypatch):
    """Patch the CPU's capabilities: cpu(bf16=..., amx=..., isa=...)."""
    def set_(bf16: bool = False, amx: bool = False, isa: str | None = None, capability: str = "AVX2") -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    return set_


def test_auto_is_fp32_without_native_bf16(cpu):
    cpu(bf16=False, amx=False, capability="AVX2")
    assert train.resolve_kernels("auto", "auto") == {"precision": "fp32", "channels_last": True}


def test_auto_is_bf16_with_native_bf16(cpu):
    cpu(bf16=True, capability="AVX512")
    assert train.resolve_kernels("auto", "auto")["precision"] == "bf16"
    cpu(amx=True, capability="AVX512")
    assert train.resolve_kernels("auto", "auto")["precision"] == "bf16"


def test_auto_follows_onednn_held_below_bf16(cpu):
    cpu(bf16=True, isa="AVX2")
    assert train.resolve_kernels("auto")["precision"] == "fp32"
    cpu(bf16=True, isa="avx512_core_bf16")
    assert train.resolve_kernels("auto")["precision"] == "bf16"


def test_channels_last_auto_only_on_vector_cpus(cpu):
    cpu(capability="DEFAULT")
    assert train.resolve_kernels("fp32", "auto")["channels_last"] is False


def test_explicit_kernels_are_kept(cpu):
    cpu(bf16=False)
    assert train.resolve_kernels("bf16", False) == {"precision": "bf16", "channels_last": False}
    cpu(bf16=True, capability="AVX512")
    assert train.resolve_kernels("fp32", True) == {"precision": "fp32", "channels_last": True}
    with pytest.raises(ValueError, match="precision"):
        train.resolve_kernels("fp16")


def test_cache_keys_carry_resolved_kernels_never_auto(cpu):
    cpu(bf16=False)
    k = train.kernels(Common())
    assert Common().precision == "auto" and Common().channels_last == "auto"
    assert k["precision"] == "fp32" and k["channels_last"] is True
    cpu(bf16=True, capability="AVX512")
    assert train.kernels(Common())["precision"] == "bf16"
    assert train.kernels(Common(precision="fp32"))["precision"] == "fp32"


def test_machine_record_names_the_cpu_and_the_resolved_kernels():
    from taskstudy.nn import machine

    m = machine.describe(Common(precision="fp32", channels_last=False))
    assert m["cpu"] and m["cores"] >= 1 and m["matmul_gflops"] > 0
    assert (m["precision"], m["channels_last"]) == ("fp32", False)
    assert m["capability"] == torch.backends.cpu.get_cpu_capability()
    line = machine.summary(m)
    assert m["cpu"] in line and "fp32 NCHW" in line and "GFLOP/s" in line
