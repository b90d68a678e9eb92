"""The plain classification net of L layers (Yosinski et al. 2014, Sec. 3, scaled down): conv blocks, two hidden
fully connected layers and the classifier, held in a list so that "the first n layers" is well defined. The
layer-transfer chapter copies and freezes its prefixes (taskstudy.yosinski.layers); chapter 01 trains it from
scratch to measure how learnable the object world is (taskstudy.world.learnability).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from taskstudy.nn.train import TrainConfig, fit_validated, predict


@dataclass(frozen=True)
class NetConfig:
    """One LayerNet's shape (the `layer_transfer` section's values: no defaults here)."""

    layers: int  # L: L-3 conv blocks, 2 hidden fully connected layers, the classifier
    width: int  # channels of the first conv block; later blocks 2x, then 4x
    hidden: int  # units of each hidden fully connected layer
    image_size: int  # input images are image_size x image_size
    n_classes: int  # outputs of the classifier (the classes of one half)


class LayerNet(nn.Module):
    """L layers in a ModuleList, so that "the first n layers" is well defined; ``layers[-1]`` is the classifier.

    Conv block i: 3x3 conv (width * 2**min(i, 2) channels), batch norm, ReLU, 2x2 max pool while the map is
    larger than 4x4. Then flatten, two Linear+ReLU layers of `hidden` units, the Linear classifier.
    """

    def __init__(self, cfg: NetConfig):
        super().__init__()
        if cfg.layers < 4:
            raise ValueError(f"LayerNet needs layers >= 4 (1 conv, 2 hidden, classifier), got {cfg.layers}")
        self.cfg = cfg
        blocks: list[nn.Module] = []
        c, s = 3, cfg.image_size
        for i in range(cfg.layers - 3):
            co = cfg.width * 2 ** min(i, 2)
            mods: list[nn.Module] = [nn.Conv2d(c, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU()]
            if s > 4:
                mods.append(nn.MaxPool2d(2))
                s //= 2
            blocks.append(nn.Sequential(*mods))  # (B, c, s, s) -> (B, co, s', s')
            c = co
        blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(c * s * s, cfg.hidden), nn.ReLU()))  # (B, hidden)
        blocks.append(nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.ReLU()))  # (B, hidden)
        blocks.append(nn.Linear(cfg.hidden, cfg.n_classes))  # (B, n_classes)
        self.layers = nn.ModuleList(blocks)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, n_classes)
        for layer in self.layers:
            x = layer(x)
        return x

    def prefix(self, n: int) -> nn.Sequential:
        """The first n layers (shared modules, not copies)."""
        return nn.Sequential(*self.layers[:n])

    def suffix(self, n: int) -> nn.Sequential:
        """Layers n+1..L (shared modules)."""
        return nn.Sequential(*self.layers[n:])


def copy_first_layers(src: LayerNet, dst: LayerNet, n: int, freeze: bool) -> None:
    """Copy the parameters and buffers of the first n layers of `src` into `dst`; freeze them if asked."""
    if not 0 <= n < len(dst.layers):
        raise ValueError(f"n must be in 0..{len(dst.layers) - 1} (the classifier is never copied), got {n}")
    for i in range(n):
        dst.layers[i].load_state_dict(src.layers[i].state_dict())
    freeze_first_layers(dst, n, freeze)


def freeze_first_layers(net: LayerNet, n: int, freeze: bool = True) -> None:
    for i in range(n):
        net.layers[i].requires_grad_(not freeze)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(1) == labels).double().mean())


def train_net(net: LayerNet, n_frozen: int, data: Mapping[str, torch.Tensor], cfg: TrainConfig, patience: int,
              device: torch.device | str = "cpu") -> tuple[float, dict]:
    """Train `net` on data["xtr"], data["ytr"] with its first `n_frozen` layers fixed, early-stopped on the
    validation split (xva, yva); (top-1 on the test split, the training log as a dict).

    The frozen prefix runs once in eval mode (its batch-norm statistics stay those it came with); the rest is
    trained on the prefix's features: the same computation as training the whole net with the prefix excluded.
    """
    freeze_first_layers(net, n_frozen, True)
    prefix, suffix = net.prefix(n_frozen), net.suffix(n_frozen)
    xtr, xva, xte = data["xtr"], data["xva"], data["xte"]
    if n_frozen:
        xtr, xva, xte = (predict(prefix, x, device=device) for x in (xtr, xva, xte))
    log = fit_validated(suffix, xtr, data["ytr"], F.cross_entropy, cfg, (xva, data["yva"]), patience=patience,
                        device=device)
    top1 = accuracy(predict(suffix, xte, device=device), data["yte"])
    net.cpu()
    return top1, log.as_dict()
