"""The probe network and its Fisher embedding of a task (Achille et al. 2019, Sec. 2): the diagonal Fisher
information of the probe's convolution weights, estimated by Monte-Carlo (labels sampled from the model's own
predictive distribution, Sec. 2.1), averaged over each filter's weights (Sec. 2.2); the domain embedding without
labels (Sec. 3)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from taskstudy.nn.heads import fit_head
from taskstudy.nn.models import Encoder


class Probe(nn.Module):
    """Encoder + global average pooling + linear head: (B, 3, H, W) -> (B, K)."""

    def __init__(self, n_classes: int, width: int = 8, depth: int = 1):
        super().__init__()
        self.encoder = Encoder(width, depth)
        self.head = nn.Linear(self.encoder.out_channels, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, 4w)
        return self.encoder(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, K)
        return self.head(self.features(x))


def probe_filters(encoder: nn.Module) -> list[tuple[str, int]]:
    """(parameter name, number of filters) of every convolution of the encoder, in module order."""
    return [(f"{name}.weight", m.out_channels) for name, m in encoder.named_modules() if isinstance(m, nn.Conv2d)]


def n_filters(encoder: nn.Module) -> int:
    """Length of a Task2Vec embedding: the number of convolution filters of the probe's encoder."""
    return sum(n for _, n in probe_filters(encoder))


@torch.no_grad()
def features(model: Probe, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Pooled encoder features (N, 4w) in eval mode."""
    model.eval()
    return torch.cat([model.features(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def head_error(model: Probe, head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test error of `head` on the pooled features of `model`."""
    with torch.no_grad():
        return float((head(features(model, x)).argmax(1) != y).float().mean())


def fisher_embedding(probe: Probe, x: torch.Tensor, y: torch.Tensor, n_classes: int, *,
                     head: nn.Linear | None = None, mc_samples: int = 1, seed: int = 0, batch_size: int = 64,
                     weight_decay: float = 1e-3, head_steps: int | None = None) -> np.ndarray:
    """The Task2Vec embedding of the task (x, y): one Fisher value per encoder filter (float64).

    The probe's head is replaced by one retrained on (x, y) (or `head`, when given); the encoder is frozen and
    in eval mode (BatchNorm uses its running statistics, so samples do not interact). For every image,
    `mc_samples` labels are drawn from p(y|x); F_w = mean over draws of (d/dw -log p(y_draw|x))^2, then
    averaged over each filter's weights. Labels are drawn by `sample_labels`, so relabelling the classes of
    a task changes its embedding only through the head's optimisation tolerance."""
    if head is None:  # fitted here: `task2vec.head_wd` and `task2vec.head_steps` of the caller's profile
        if head_steps is None:
            raise ValueError("fisher_embedding: give a fitted head or head_steps")
        head = fit_head(features(probe, x), y, n_classes, weight_decay, head_steps)
    model = nn.Sequential(probe.encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    return monte_carlo_fisher(model, probe.encoder, x, lambda out, gen: sample_labels(F.softmax(out, dim=1), gen),
                              mc_samples=mc_samples, seed=seed, batch_size=batch_size)


def domain_embedding(probe: Probe, x: torch.Tensor, *, mc_samples: int = 1, seed: int = 0,
                     batch_size: int = 64) -> np.ndarray:
    """The *domain* embedding of a task's images (Achille et al. 2019, Sec. 5 and Fig. 2, right): the same
    Monte-Carlo Fisher, but with the probe's own pretraining head, so the task's labels play no part; tasks that
    ask different questions about the same images get the same domain embedding."""
    model = nn.Sequential(probe.encoder, nn.AdaptiveAvgPool2d(1), nn.Flatten(), probe.head).eval()
    return monte_carlo_fisher(model, probe.encoder, x, lambda out, gen: sample_labels(F.softmax(out, dim=1), gen),
                              mc_samples=mc_samples, seed=seed, batch_size=batch_size)


def monte_carlo_fisher(model: nn.Module, encoder: nn.Module, x: torch.Tensor,
                       draw: Callable[[torch.Tensor, torch.Generator], torch.Tensor], *,
                       nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       mc_samples: int = 1, seed: int = 0, batch_size: int = 64) -> np.ndarray:
    """Sec. 2.1: the diagonal Fisher of `encoder`'s convolution weights, one value per filter. For every image,
    `mc_samples` draws y = draw(model output, generator) from the model's predictive distribution; the per-sample
    gradient of nll(output, y) (default: cross-entropy) is squared and averaged over draws, images and each
    filter's weights. `model` (eval mode) contains `encoder`."""
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    acc = [torch.zeros(c.out_channels, dtype=torch.float64) for c in convs]
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        with torch.no_grad():
            out = model(xb)
        for _ in range(mc_samples):
            y = draw(out, gen)
            for k, g2 in enumerate(_per_sample_sq_grads(model, convs, xb, y, nll)):
                acc[k] += g2.sum(0)
            count += len(xb)
    return torch.cat([a / count for a in acc]).numpy()


def _per_sample_sq_grads(model: nn.Module, convs: list[nn.Conv2d], x: torch.Tensor, y: torch.Tensor,
                         nll: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
                         ) -> list[torch.Tensor]:
    """For every conv: (B, filters) = the squared per-sample gradient of -log p(y|x) w.r.t. its weights,
    averaged over each filter's weights. `nll(output, y)` is the summed -log p (default: cross-entropy of
    class labels y). One forward/backward: in eval mode the samples do not interact, so the
    gradient at a conv's output is per sample, and the per-sample weight gradient is (grad_out x unfold(in))."""
    inputs: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        out.retain_grad()
        inputs.append(inp[0].detach())
        outputs.append(out)

    handles = [c.register_forward_hook(hook) for c in convs]
    try:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(False)
            for c in convs:
                c.weight.requires_grad_(True)
            out = model(xg)
            loss = F.cross_entropy(out, y, reduction="sum") if nll is None else nll(out, y)
            model.zero_grad(set_to_none=True)
            loss.backward()
    finally:
        for h in handles:
            h.remove()
    out = []
    for c, a, o in zip(convs, inputs, outputs, strict=True):
        assert c.groups == 1 and c.dilation == (1, 1), "grouped or dilated convolutions are not supported"
        cols = F.unfold(a, c.kernel_size, padding=c.padding, stride=c.stride)  # (B, C_in*k*k, L)
        g = o.grad.flatten(2)  # (B, C_out, L)
        w = torch.bmm(g, cols.transpose(1, 2))  # (B, C_out, C_in*k*k): per-sample weight gradients
        out.append((w.double() ** 2).mean(2))
    model.zero_grad(set_to_none=True)
    return out


def sample_labels(prob: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One label per row of `prob` (B, K), drawn from it by inverting its CDF with the classes taken in order of
    decreasing probability: an exact draw, and the same draw (relabelled) when the classes are relabelled."""
    u = torch.rand(prob.shape[0], 1, generator=gen, dtype=torch.float64)
    p, order = prob.double().sort(dim=1, descending=True, stable=True)
    cdf = p.cumsum(1)
    k = torch.searchsorted(cdf, u * cdf[:, -1:]).clamp(max=prob.shape[1] - 1)
    return order.gather(1, k).view(-1)
