"""Step II's readouts of one target trained side by side (Taskonomy, Zamir et al. 2018, Sec. 3.2: the same readouts).

R readouts of one architecture become one network of grouped convolutions (readout r owns group r of every layer)
and batched linear layers, so one pass of the training loop steps all R. An engineering device, not a change of
method: every readout keeps its own initialisation, parameters, loss, Adam state (Adam acts per element, batch norm
per channel, the summed loss gives each readout its own gradient) and its own early stopping (its val loss, best
epoch and patience; a readout that has stopped keeps the weights of its best epoch while the others go on). What the
readouts of a group share is what the protocol fixes anyway: the batch order (the target's, not the readout's) and
the cosine schedule. One readout trained alone with that order gives the same weights to float tolerance
(tests/test_grouped.py). The small readouts are dominated by per-step overhead, which a group pays once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from taskstudy.nn.models import PixelReadout, VectorDecoder
from taskstudy.nn.train import TrainConfig, TrainLog, _fused, _take, cosine_lr

PerImageLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
State = dict[str, torch.Tensor]


def _shape(m: nn.Module) -> tuple:
    return (type(m), *[tuple(p.shape) for p in m.state_dict().values()])


def groupable(readouts: Sequence[nn.Module]) -> bool:
    """Whether `readouts` can train as one group: all the study's small readout (PixelReadout) or all the vector
    decoder, with identical shapes."""
    return bool(readouts) and isinstance(readouts[0], PixelReadout | VectorDecoder) and \
        all(_shape(r) == _shape(readouts[0]) for r in readouts)


def _cat(mods: Sequence[nn.Module], name: str) -> torch.Tensor:
    t = [m.state_dict()[name] for m in mods]
    return t[0].clone() if t[0].dim() == 0 else torch.cat(t, 0)


class GroupedReadouts(nn.Module):
    """R readouts of one architecture as one module: input (B, R*C, h, w), the readouts' inputs side by side on
    channels; output (B*R, ...), readout r of image b at row b*R + r."""

    def __init__(self, readouts: Sequence[nn.Module]):
        super().__init__()
        if not groupable(readouts):
            raise ValueError("readouts must share one architecture (PixelReadout or VectorDecoder) and shapes")
        self.R, self.pixel = len(readouts), isinstance(readouts[0], PixelReadout)
        R, net = self.R, readouts[0].net
        conv0 = net[0]
        self.convs = nn.ModuleList()
        self.bns = nn.ModuleList()
        #: (attribute path in this module, index in a readout's `net`): every per-channel layer
        self.layers: list[tuple[str, int]] = []
        conv_idx = (0, 3) if self.pixel else (0,)
        for k, i in enumerate(conv_idx):
            c, b = net[i], net[i + 1]
            self.convs.append(nn.Conv2d(R * c.in_channels, R * c.out_channels, c.kernel_size, c.stride, c.padding,
                                        bias=False, groups=R))
            self.bns.append(nn.BatchNorm2d(R * b.num_features, b.eps, b.momentum))
            self.layers += [(f"convs.{k}", i), (f"bns.{k}", i + 1)]
        if self.pixel:
            last = net[6]
            self.head = nn.Conv2d(R * last.in_channels, R * last.out_channels, 1, groups=R)
            self.layers.append(("head", 6))
            self.out, self.upscale = last.out_channels, net[7].upscale_factor
        else:
            l1, l2 = net[5], net[7]
            self.w1 = nn.Parameter(torch.empty(R, *l1.weight.shape))
            self.b1 = nn.Parameter(torch.empty(R, *l1.bias.shape))
            self.w2 = nn.Parameter(torch.empty(R, *l2.weight.shape))
            self.b2 = nn.Parameter(torch.empty(R, *l2.bias.shape))
        self.width = conv0.out_channels
        self.load_readouts(readouts)

    def load_readouts(self, readouts: Sequence[nn.Module]) -> None:
        """Every readout's weights and batch-norm statistics into its group."""
        with torch.no_grad():
            for path, i in self.layers:
                target = self.get_submodule(path)
                for name, t in target.state_dict().items():
                    t.copy_(_cat([r.net[i] for r in readouts], name))
            if not self.pixel:
                for mine, i, attr in ((self.w1, 5, "weight"), (self.b1, 5, "bias"), (self.w2, 7, "weight"),
                                      (self.b2, 7, "bias")):
                    mine.copy_(torch.stack([getattr(r.net[i], attr) for r in readouts]))

    def readout_state(self, r: int) -> State:
        """Readout r's state_dict (the keys of the original readout), detached copies."""
        out: State = {}
        sd = self.state_dict()
        for path, i in self.layers:
            for name, t in self.get_submodule(path).state_dict().items():
                out[f"net.{i}.{name}"] = t.clone() if t.dim() == 0 else t.chunk(self.R, 0)[r].clone()
        if not self.pixel:
            for attr, key in (("w1", "net.5.weight"), ("b1", "net.5.bias"), ("w2", "net.7.weight"),
                              ("b2", "net.7.bias")):
                out[key] = sd[attr][r].clone()
        return out

    def layout(self, y: torch.Tensor) -> torch.Tensor:
        """Labels in the layout of `forward`'s output: pixel labels (N, C, H, W) or (N, H, W) unshuffled to
        (N, C, s*s, H/s, W/s) or (N, s*s, H/s, W/s) (s the readout's upscale); other labels as they are."""
        if not self.pixel:
            return y
        if y.dim() == 3:  # class labels per pixel
            return F.pixel_unshuffle(y[:, None], self.upscale)
        u = F.pixel_unshuffle(y, self.upscale)
        return u.view(u.shape[0], y.shape[1], self.upscale**2, *u.shape[2:])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Rows b*R + r: readout r on image b. Pixel readouts stop before their PixelShuffle, so their output is
        the prediction unshuffled (`layout`): a permutation of each image's pixels, which the per-image means of
        the study's losses do not see, and 2.3x cheaper than shuffling R outputs every step."""
        h = z
        for conv, bn in zip(self.convs, self.bns, strict=True):
            h = F.relu(bn(conv(h)))
        B = h.shape[0]
        if self.pixel:
            o = self.head(h)
            return o.reshape(B * self.R, self.out // self.upscale**2, self.upscale**2, *o.shape[2:])
        h = F.adaptive_avg_pool2d(h, 2).reshape(B, self.R, -1)
        h = F.relu(torch.einsum("brk,rjk->brj", h, self.w1) + self.b1)
        return (torch.einsum("brk,rjk->brj", h, self.w2) + self.b2).reshape(B * self.R, -1)


def _per_readout(loss: PerImageLoss, out: torch.Tensor, y: torch.Tensor, R: int) -> torch.Tensor:
    """(R,) mean per-image loss of each readout on a batch (out rows b*R + r, y rows b)."""
    return loss(out.float(), y.repeat_interleave(R, 0)).view(y.shape[0], R).mean(0)


@torch.no_grad()
def _val_losses(model: GroupedReadouts, x: torch.Tensor, y: torch.Tensor, loss: PerImageLoss, precision: str,
                device: torch.device, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    total = torch.zeros(model.R)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = model(xb)
        total += _per_readout(loss, out, yb, model.R).cpu() * len(xb)
    return total / max(x.shape[0], 1)


def _regroup(model: GroupedReadouts, opt: torch.optim.Optimizer, members: Sequence[nn.Module], keep: list[int],
             cfg: TrainConfig) -> tuple[GroupedReadouts, torch.optim.Optimizer]:
    """A group of the members at positions `keep` of `model` (members[p] the readout at position p), with their
    current weights, statistics and Adam state: the readouts that stopped leave, the others go on as before (each
    grouped tensor is R equal chunks along its first dimension, one per member)."""
    for p in keep:
        members[p].load_state_dict(model.readout_state(p))
    smaller = GroupedReadouts([members[p] for p in keep]).to(next(model.parameters()).device)
    params = list(smaller.parameters())
    new_opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused(params))
    for old, new in zip(model.parameters(), params, strict=True):
        if opt.state.get(old):
            new_opt.state[new] = {k: v.clone() if v.dim() == 0 else torch.cat([v.chunk(model.R, 0)[p] for p in keep])
                                  for k, v in opt.state[old].items()}
    return smaller, new_opt


def fit_readouts(readouts: Sequence[nn.Module], inputs: Sequence[torch.Tensor], targets: torch.Tensor,
                 loss: PerImageLoss, cfg: TrainConfig, val: tuple[Sequence[torch.Tensor], torch.Tensor],
                 patience: int, device: torch.device | str = "cpu") -> list[TrainLog]:
    """Train readouts[r] on inputs[r] (one target's labels `targets` for all), each early-stopped on its own val
    loss (val = (inputs per readout, labels)), as train.fit_validated would train each one alone with batch order
    cfg.seed; each readout is left with the weights of its best epoch. A readout that stops leaves the group (the
    others go on in a smaller one), so the group costs what its readouts would cost one by one, less the overhead.
    Returns one TrainLog per readout."""
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    device = torch.device(device)
    model = GroupedReadouts(readouts).to(device)
    n, yv = targets.shape[0], val[1]
    if cfg.val_images is not None:
        yv = _take(yv, slice(0, cfg.val_images), yv.device)
    xs, xvs = list(inputs), [v[: cfg.val_images] if cfg.val_images is not None else v for v in val[0]]
    targets, yv = model.layout(targets), model.layout(yv)
    # NCHW whatever cfg.channels_last says: grouped readouts step faster in it (43 against 53 ms for six normals
    # readouts, batch 64, one thread)
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=_fused(params))
    steps = -(-n // cfg.batch_size)
    logs = [TrainLog(steps_per_epoch=steps, max_epochs=cfg.epochs) for _ in readouts]
    best: list[State | None] = [None] * len(readouts)
    members = list(range(len(readouts)))  # the readouts in the group, by position
    x, xv = torch.cat(xs, 1), torch.cat(xvs, 1)
    for epoch in range(cfg.epochs):
        model.train()
        order = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        total = torch.zeros(model.R)
        for j, i in enumerate(range(0, n, cfg.batch_size)):
            for group in opt.param_groups:
                group["lr"] = cosine_lr(cfg.lr, epoch * steps + j, cfg.epochs * steps)
            idx = order[i : i + cfg.batch_size]
            xb, yb = x[idx].to(device), targets[idx].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16"):
                out = model(xb)
            per = _per_readout(loss, out, yb, model.R)
            opt.zero_grad(set_to_none=True)
            per.sum().backward()
            opt.step()
            total += per.detach().cpu() * len(idx)
        v = _val_losses(model, xv, yv, loss, cfg.precision, device)
        for p, r in enumerate(members):
            logs[r].train_loss.append(float(total[p]) / n)
            logs[r].val_loss.append(float(v[p]))
            if not logs[r].best_epoch or float(v[p]) < logs[r].best_val:
                logs[r].best_epoch = epoch + 1
                best[r] = model.readout_state(p)
        keep = [p for p, r in enumerate(members) if epoch + 1 - logs[r].best_epoch < patience]
        if not keep:
            break
        if len(keep) < len(members):  # some stopped: the rest train on in a group of their own
            model, opt = _regroup(model, opt, [readouts[r] for r in members], keep, cfg)
            members = [members[p] for p in keep]
            x, xv = torch.cat([xs[r] for r in members], 1), torch.cat([xvs[r] for r in members], 1)
    for r, readout in enumerate(readouts):
        if best[r] is not None:
            readout.load_state_dict(best[r])
    return logs
