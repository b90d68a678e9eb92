"""Networks of Taskonomy Step I and II (Zamir et al. 2018, Sec. 3.1-3.2).

One encoder architecture for every task: a small ResNet built from torchvision's BasicBlock, no global pooling,
so the representation is a spatial map (the paper's 16x16x8 code; here (B, 4w, H/4, W/4)). Decoders depend on the
task kind: pixel-wise outputs are upsampled back to (H, W); low-dimensional, classification and distribution
outputs come from a small head on the pooled map. A readout D_{s->t} (Step II) is a decoder on the frozen
representation of one or several sources (concatenated on channels for higher orders).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

PIXEL_KINDS = ("pixel_regression", "pixel_classification")
KINDS = (*PIXEL_KINDS, "regression", "classification", "distribution")


class StridedPointwise(nn.Conv2d):
    """A strided 1x1 convolution (a ResNet stage's downsampling shortcut) computed as its stride-1 form on the
    subsampled input: the same function, the same parameters.

    Why not `nn.Conv2d(cin, cout, 1, stride)`: oneDNN (torch 2.14.1) runs its weight gradient in channels_last
    through a "reduce to unit stride" workspace that it overruns when the input has fewer channels than the
    kernel's block (8 on AVX2, 16 on AVX-512; uxlfoundation/oneDNN#6035): heap corruption, a hang or wrong
    gradients, whatever the precision. Subsampling first leaves oneDNN a stride-1 1x1 convolution, which has no
    such workspace. benchmarks/repro_onednn_1x1.py reproduces the defect; tests/test_kernels.py guards the fix."""

    def __init__(self, cin: int, cout: int, stride: int, bias: bool = False):
        super().__init__(cin, cout, 1, stride, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh, sw = self.stride
        return F.conv2d(x[:, :, ::sh, ::sw], self.weight, self.bias)


def _stage(cin: int, cout: int, blocks: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(StridedPointwise(cin, cout, stride), nn.BatchNorm2d(cout))
    layers = [BasicBlock(cin, cout, stride, down)]
    layers += [BasicBlock(cout, cout) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """ResNet-style encoder: stem + 3 stages (w, 2w, 4w channels; strides 1, 2, 2); no pooling at the end."""

    def __init__(self, width: int = 16, depth: int = 1, in_channels: int = 3):
        super().__init__()
        self.width, self.depth = width, depth
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.stages = nn.Sequential(
            _stage(width, width, depth, 1),
            _stage(width, 2 * width, depth, 2),
            _stage(2 * width, 4 * width, depth, 2),
        )

    @property
    def out_channels(self) -> int:
        return 4 * self.width

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 4w, H/4, W/4)
        return self.stages(self.stem(x))


class PixelDecoder(nn.Module):
    """(B, C_in, H/4, W/4) -> (B, C_out, H, W): two x2 upsamplings, each conv-BN-ReLU."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(width, out_channels, 3, 1, 1),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VectorDecoder(nn.Module):
    """(B, C_in, h, w) -> (B, C_out): a conv, pooling to 2x2, and two linear layers (low-dim, class, distribution)."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * width, 2 * width), nn.ReLU(inplace=True),
            nn.Linear(2 * width, out_channels),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def make_decoder(kind: str, in_channels: int, out_channels: int, width: int = 32) -> nn.Module:
    """The decoder for a task kind (see taskstudy.world.tasks)."""
    if kind in PIXEL_KINDS:
        return PixelDecoder(in_channels, out_channels, width)
    if kind in KINDS:
        return VectorDecoder(in_channels, out_channels, width)
    raise ValueError(f"unknown task kind '{kind}' (one of {KINDS})")


class PixelReadout(nn.Module):
    """A small Step II readout for pixel tasks: two 3x3 convs on the (B, C_in, H/4, W/4) representation, then a
    1x1 conv to 16 C_out channels rearranged to (B, C_out, H, W) (PixelShuffle x4): cheap, and all its capacity
    reads the frozen representation rather than re-learning an image decoder."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 16):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, 16 * out_channels, 1),
            nn.PixelShuffle(4),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


READOUTS = ("shuffle", "decoder")  # the study's small readout; the paper's neck + full task decoder


def make_readout(kind: str, in_channels: int, out_channels: int, width: int = 16, arch: str = "shuffle",
                 decoder_width: int = 32) -> nn.Module:
    """D_{s->t} of Step II on frozen representations (concatenated for higher orders). `shuffle`: the study's small
    readout (PixelReadout for pixel tasks, the task's decoder at `width` otherwise). `decoder`: the paper's transfer
    function (Sec. 3.2): a neck of two conv-BN-ReLU at `width`, then the task's full Step I decoder at
    `decoder_width`."""
    if arch == "decoder":
        neck = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        return nn.Sequential(neck, make_decoder(kind, width, out_channels, decoder_width))
    if arch != "shuffle":
        raise ValueError(f"unknown readout '{arch}' (one of {READOUTS})")
    if kind in PIXEL_KINDS:
        return PixelReadout(in_channels, out_channels, width)
    return make_decoder(kind, in_channels, out_channels, width)


class TaskNetwork(nn.Module):
    """Step I: encoder + decoder for one task."""

    def __init__(self, kind: str, out_channels: int, width: int = 16, depth: int = 1,
                 decoder_width: int = 32, in_channels: int = 3):
        super().__init__()
        self.encoder = Encoder(width, depth, in_channels)
        self.decoder = make_decoder(kind, self.encoder.out_channels, out_channels, decoder_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
