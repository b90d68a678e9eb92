"""Every network kind the study builds, at the narrowest widths its profiles use, trained a few steps and its weight
gradients on one batch compared with NCHW float32's: the guard against oneDNN's strided 1x1 defect
(uxlfoundation/oneDNN#6035; see models.StridedPointwise). Run in a subprocess by tests/test_kernels.py, so that a
heap corruption (MALLOC_CHECK_=3), an abort or a hang fails one test instead of killing the suite.

    python tests/kernel_probe.py PRECISION CHANNELS_LAST [WIDTH ...]   (PRECISION, CHANNELS_LAST: a value or auto)

Prints one JSON line per (kind, width): the largest relative gradient error over the parameters, and the kernels
used; exits 0 when every kind trained and its gradients matched.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable

import torch
from torch import nn

from taskstudy.nn import layernet, models
from taskstudy.nn.grouped import GroupedReadouts
from taskstudy.nn.train import TrainConfig, fit, resolve_kernels
from taskstudy.standley import multitask
from taskstudy.task2vec import fisher, task2vec_dense

#: tolerances on `_error` (the defect's silent form was 615x off)
TOLERANCE = {"fp32": 1e-3, "bf16": 0.5}  # against NCHW in the same precision (bf16: up to 0.23 seen)
TOLERANCE_FP32_REF = {"fp32": 1e-3, "bf16": 1.0}  # against NCHW fp32
IMAGE = 16


def kinds(w: int) -> dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]]:
    """name -> (builder, input shape of one image): every kind of network the study trains, at width `w`."""
    enc = models.Encoder(w).out_channels
    out: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
        f"step1 {k}": (lambda k=k: models.TaskNetwork(k, 3, width=w, decoder_width=w), (3, IMAGE, IMAGE))
        for k in models.KINDS}
    out["multitask"] = (lambda: multitask.MultiTaskNetwork(["normals", "segment_semantic", "class_scene"], width=w,
                                                          decoder_width=w), (3, IMAGE, IMAGE))
    out["task2vec probe"] = (lambda: fisher.Probe(10, width=w), (3, IMAGE, IMAGE))
    out["layer net"] = (lambda: layernet.LayerNet(layernet.NetConfig(4, w, 8, IMAGE, 5)), (3, IMAGE, IMAGE))
    for arch in models.READOUTS:
        out[f"readout {arch}"] = (lambda arch=arch: models.make_readout("pixel_regression", enc, 3, w, arch, w),
                                  (enc, IMAGE // 4, IMAGE // 4))
    out["grouped readouts"] = (lambda: GroupedReadouts([models.PixelReadout(enc, 3, w) for _ in range(3)]),
                               (3 * enc, IMAGE // 4, IMAGE // 4))
    out["dense head"] = (lambda: task2vec_dense.DenseHead(enc, 5), (enc, IMAGE // 4, IMAGE // 4))
    return out


def _loss(out: torch.Tensor | dict[str, torch.Tensor], _y: object = None) -> torch.Tensor:
    outs = out.values() if isinstance(out, dict) else [out]
    return sum((o.float() - 1).pow(2).mean() for o in outs)


def _grads(net: nn.Module, x: torch.Tensor, precision: str, channels_last: bool) -> dict[str, torch.Tensor]:
    net = copy.deepcopy(net).train()
    if channels_last and x.dim() == 4:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        _loss(net(x)).backward()
    return {n: p.grad.detach().float().contiguous() for n, p in net.named_parameters() if p.grad is not None}


def _error(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """max over parameters of ||g - g_ref|| / max(||g_ref||, 1% of the whole gradient's norm): a near-zero gradient
    (a conv bias before batch norm) has no relative error to speak of."""
    floor = 1e-2 * float(torch.cat([g.flatten() for g in ref.values()]).norm())
    return max(float((got[n] - g).norm()) / max(float(g.norm()), floor) for n, g in ref.items())


def check(name: str, build: Callable[[], nn.Module], shape: tuple[int, ...], precision: str,
          channels_last: bool) -> dict:
    """Train `build()` 3 steps in the given kernels, then compare one batch's weight gradients with NCHW fp32's
    and, under bf16, with NCHW bf16's (bf16 alone moves these narrow networks' gradients by up to ~60% against
    fp32 and by up to ~25% against NCHW bf16: a bf16 bound catches gross errors only, fp32 is the fine check)."""
    torch.manual_seed(0)
    net, x = build(), torch.randn(48, *shape)
    fit(net, x, torch.zeros(len(x)), _loss, TrainConfig(1, 16, 1e-3, precision=precision,
                                                        channels_last=channels_last))
    got = _grads(net, x[:16], precision, channels_last)
    err = _error(got, _grads(net, x[:16], "fp32", False))
    layout = err if precision == "fp32" else _error(got, _grads(net, x[:16], precision, False))
    return {"kind": name, "error": err, "layout error": layout,
            "ok": layout <= TOLERANCE[precision] and err <= TOLERANCE_FP32_REF[precision]}


def main(argv: list[str]) -> int:
    precision, nhwc = argv[0], argv[1]
    k = resolve_kernels(precision, nhwc if nhwc == "auto" else nhwc.lower() in ("1", "true", "yes"))
    ok = True
    for w in [int(a) for a in argv[2:]] or [2, 4, 8]:
        for name, (build, shape) in kinds(w).items():
            r = {**check(name, build, shape, k["precision"], k["channels_last"]), "width": w, **k}
            print(json.dumps(r), flush=True)
            ok &= r["ok"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
