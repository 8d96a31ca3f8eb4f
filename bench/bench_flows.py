"""Flow models: (1) one Glow step of flow (ActNorm, 1x1 convolution, channel coupling) on 3x32x32 squeezed to
12x16x16, batch 64, forward + log-det and forward + backward: fastgen's layers (each on its fused op) against the
same step written in eager PyTorch, and that step under torch.compile, with the conditioner alone for scale;
(2) MAF against IAF on 16-D data, batch 4,096, five layers: sampling and the density
of given points (each is one pass in one direction and D passes in the other). Ops (CPU) / kernels (GPU) per call.

    python -m bench flows [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import torch
from torch import nn

from fastgen.flows import IAF, MAF, ActNorm, ChannelCoupling, InvConv1x1LU, Squeeze

from .common import (
    backward_from,
    count_per_call,
    environment,
    markdown_table,
    ratio_rows,
    time_interleaved_us,
    write_report,
)


class _EagerCoupling(nn.Module):
    """ChannelCoupling's rule written as usual: sigmoid scale, exp, affine, cat, per-sample sum."""

    def __init__(self, layer: ChannelCoupling):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        kept = self.layer.kept
        h, t = self.layer.conditioner(x[:, :kept]).chunk(2, dim=1)
        s = nn.functional.logsigmoid(h + 2.0)
        return torch.cat([x[:, :kept], x[:, kept:] * torch.exp(s) + t], dim=1), s.flatten(1).sum(1)


class _EagerActNorm(nn.Module):
    """ActNorm as usual: x exp(s) + b broadcast per channel, log-det H W sum s."""

    def __init__(self, layer: ActNorm):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        s, b = self.layer.log_scale.view(1, -1, 1, 1), self.layer.bias.view(1, -1, 1, 1)
        return x * s.exp() + b, (x.shape[2] * x.shape[3] * self.layer.log_scale.sum()).expand(x.shape[0])


class _EagerInvConv(nn.Module):
    """The 1x1 convolution as usual: conv2d with the weight assembled from its LU factors."""

    def __init__(self, layer: InvConv1x1LU):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        z = nn.functional.conv2d(x, self.layer.weight()[:, :, None, None])
        return z, (x.shape[2] * x.shape[3] * self.layer.log_s.sum()).expand(x.shape[0])


def _step(layers, x):
    total = 0
    for layer in layers:
        x, log_det = layer(x)
        total = total + log_det
    return x, total


def glow_rows(device: str, batch: int = 64, hidden: int = 512) -> list[dict]:
    torch.manual_seed(0)
    x = Squeeze()(torch.randn(batch, 3, 32, 32, device=device))[0]
    actnorm, conv, coupling = ActNorm(12).to(device), InvConv1x1LU(12).to(device), ChannelCoupling(12, hidden=hidden)
    coupling = coupling.to(device)
    actnorm(x)  # its data-dependent initialization, outside the timing
    for p in coupling.conditioner[-1].parameters():  # a trained-looking (non-zero) last layer
        nn.init.normal_(p, std=0.01)
    actnorm.eval()
    ours = [actnorm, conv, coupling]
    eager = [_EagerActNorm(actnorm), _EagerInvConv(conv), _EagerCoupling(coupling)]
    compiled = torch.compile(lambda v: _step(eager, v))
    cases = {"fastgen Glow step": lambda v: _step(ours, v), "eager PyTorch step": lambda v: _step(eager, v),
             "torch.compile(eager step)": compiled,
             "the conditioner alone": lambda v: (coupling.conditioner(v[:, :6]), torch.zeros(()))}
    leaf = x.clone().requires_grad_()

    rows = []
    for what in ("forward + log-det", "forward + backward"):
        timed = {name: (lambda fn=fn: torch.no_grad()(fn)(x)) if what == "forward + log-det"
                 else backward_from(fn, leaf)
                 for name, fn in cases.items()}
        rows += ratio_rows(time_interleaved_us(timed, device), "fastgen Glow step", timed, device, "glow",
                           **{"pass": what})
    return rows


def autoregressive_rows(device: str, batch: int = 4096, features: int = 16) -> list[dict]:
    torch.manual_seed(0)
    flows = {"MAF": MAF(features, layers=5, hidden=(128, 128)).to(device),
             "IAF": IAF(features, layers=5, hidden=(128, 128)).to(device)}
    for flow in flows.values():
        for p in flow.parameters():
            nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    x = torch.randn(batch, features, device=device)
    cases = {}
    for name, flow in flows.items():
        cases[f"{name} sample"] = lambda flow=flow: flow.sample(batch, seed=0)
        cases[f"{name} log_prob"] = lambda flow=flow: torch.no_grad()(flow.log_prob)(x)
    times = time_interleaved_us(cases, device)
    rows = []
    for name, us in times.items():
        rows.append({"candidate": name, "µs": us, **count_per_call(cases[name], device)})
        print("  autoregressive", rows[-1], flush=True)
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    glow = glow_rows(device)
    autoregressive = autoregressive_rows(device)
    count = "kernels" if device == "cuda" else "ops"
    columns = [("pass", "pass"), ("candidate", "candidate"), ("µs", "µs"), ("time / fastgen's", "time / fastgen's"),
               (count, f"{count} per call"), ("host_syncs", "host syncs")]
    sections = {
        "One Glow step (ActNorm, 1x1 conv, coupling with a 6-512-512-12 conv net), 12x16x16, batch 64, float32":
            markdown_table(glow, columns),
        "MAF and IAF, 16-D, 5 layers, MADE 128-128, batch 4,096: sampling (MAF: 16 passes per layer, IAF: 1) and "
        "density (MAF: 1, IAF: 16)": markdown_table(autoregressive, [c for c in columns
                                                                     if c[0] not in ("pass", "time / fastgen's")]),
    }
    return write_report(out, f"flows-{device}", environment(device), sections,
                        {"glow": glow, "autoregressive": autoregressive})
