"""Heads fitted on fixed features: the linear probe that Task2Vec's probe network gets per task (Achille et al. 2019,
Sec. 3) and that Taskonomy's outside probe reads encoders with (Sec. 5.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def fit_head(feats: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float = 1e-3,
             steps: int = 100) -> nn.Linear:
    """Multinomial logistic regression on fixed features (L-BFGS from zero, L2 on the weights).

    The problem is convex and starts from a class-symmetric point, so relabelling the classes permutes the
    solution's rows and nothing else."""
    mu, sd = feats.mean(0), feats.std(0) + 1e-6
    z = (feats - mu) / sd
    w = torch.zeros(n_classes, feats.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    z64 = z.double()
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z64 @ w.T + b, y) + weight_decay * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    head = nn.Linear(feats.shape[1], n_classes)
    with torch.no_grad():  # fold the standardisation into the layer
        wf = (w / sd.double()).float()
        head.weight.copy_(wf)
        head.bias.copy_((b - (w / sd.double()) @ mu.double()).float())
    return head
