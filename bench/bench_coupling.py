"""Coupling ops: the fused affine op's arithmetic (forward + log-det, and forward + backward) against the rule in
eager PyTorch and under torch.compile, with the copy-bandwidth limit measured in the same run; a whole RealNVP
coupling layer (conditioner included, and the conditioner alone) against nflows, zuko and normflows where installed
(``pip install --no-deps nflows zuko normflows``; not dependencies of fastgen); the fused rational-quadratic spline
op against nflows' spline (eager and under torch.compile), and a whole spline coupling layer against nflows', zuko's
and normflows'. Ops (CPU) / kernels (GPU) per call.

    python -m bench coupling [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import torch
from torch import nn

from fastgen.flows import AffineCoupling, SplineCoupling
from fastgen.flows.coupling import mlp
from fastgen.ops import affine_coupling, spline_coupling

from .common import (
    backward_from,
    copy_fn,
    environment,
    markdown_table,
    ratio_rows,
    time_interleaved_us,
    write_report,
)

CLAMP = 2.0


def eager_coupling(x, h, t, split: int):
    """The rule as usually written: soft-clamped log-scale, exp, affine, cat, per-sample sum."""
    s = CLAMP * torch.tanh(h / CLAMP)
    return torch.cat([x[:, :split], x[:, split:] * torch.exp(s) + t], dim=1), s.sum(1)


def arithmetic_rows(device: str, batch: int, dim: int) -> list[dict]:
    split = dim // 2
    g = torch.Generator(device).manual_seed(0)
    x = torch.randn(batch, dim, device=device, generator=g)
    h = torch.randn(batch, dim - split, device=device, generator=g)
    t = torch.randn(batch, dim - split, device=device, generator=g)
    compiled = torch.compile(eager_coupling)
    forward = {
        "fastgen fused op": lambda: affine_coupling(x, h, t, split, clamp=CLAMP),
        "eager PyTorch": lambda: eager_coupling(x, h, t, split),
        "torch.compile(eager)": lambda: compiled(x, h, t, split),
    }
    leaves = [v.clone().requires_grad_() for v in (x, h, t)]
    backward = {
        "fastgen fused op": backward_from(lambda a, b, c: affine_coupling(a, b, c, split, clamp=CLAMP), *leaves),
        "eager PyTorch": backward_from(lambda a, b, c: eager_coupling(a, b, c, split), *leaves),
        "torch.compile(eager)": backward_from(lambda a, b, c: compiled(a, b, c, split), *leaves),
    }
    # bytes: forward reads x, h, t and writes out and log_det; forward + backward adds reading the gradient, x,
    # h and writing grad_x and grad_h
    elements = batch * dim
    copies = {"forward + log-det": copy_fn(4 * (elements + elements) * 1 + 4 * batch, device),
              "forward + backward": copy_fn(4 * (2 * elements + 4 * elements), device)}
    rows = []
    for what, cases in (("forward + log-det", forward), ("forward + backward", backward)):
        cases = dict(cases, **{"copy of the same bytes": copies[what]})
        for fn in cases.values():  # compile and warm up outside the timing
            fn()
        rows += ratio_rows(time_interleaved_us(cases, device), "fastgen fused op", cases, device, "coupling",
                           **{"pass": what})
    return rows


class _Contextless(nn.Module):
    """nflows calls its conditioner with (inputs, context)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x, context=None):
        return self.net(x)


def layer_rows(device: str, batch: int, dim: int, hidden: int = 64) -> list[dict]:
    """A whole coupling layer with a ReLU MLP conditioner (split dim / 2, two hidden layers) on each library."""
    split = dim // 2
    torch.manual_seed(0)
    x = torch.randn(batch, dim, device=device)
    layers = {"fastgen AffineCoupling": AffineCoupling(dim, hidden=(hidden, hidden)).to(device)}
    conditioner = mlp(split, 2 * (dim - split), (hidden, hidden)).to(device)
    try:
        from nflows.transforms.coupling import AffineCouplingTransform

        mask = torch.zeros(dim)
        mask[split:] = 1  # nflows: 1 marks the transformed features
        layers["nflows AffineCouplingTransform"] = AffineCouplingTransform(
            mask, lambda a, b: _Contextless(mlp(a, b, (hidden, hidden), zero_last=False))).to(device)
    except ImportError:
        pass
    try:
        import zuko

        layers["zuko GeneralCouplingTransform"] = zuko.flows.GeneralCouplingTransform(
            dim, mask=torch.arange(dim) < split, hidden_features=(hidden, hidden)).to(device)
    except ImportError:
        pass
    try:
        import normflows

        layers["normflows AffineCouplingBlock"] = normflows.flows.AffineCouplingBlock(
            mlp(split, 2 * (dim - split), (hidden, hidden), zero_last=False)).to(device)
    except ImportError:
        pass

    return _layer_table(layers, conditioner, x, split, "fastgen AffineCoupling", "layer")


def _layer_table(layers: dict, conditioner: nn.Module, x: torch.Tensor, split: int, ours_name: str,
                 label: str) -> list[dict]:
    """Forward + log-det and forward + backward of each layer on x, interleaved, with its conditioner alone."""
    device = x.device.type

    def call(name, layer):
        if name.startswith("zuko"):
            return lambda: layer().call_and_ladj(x)
        return lambda: layer(x)

    rows = []
    for what in ("forward + log-det", "forward + backward"):
        cases = {name: call(name, layer) for name, layer in layers.items()}
        cases["the conditioner alone"] = lambda: (conditioner(x[:, :split]), torch.zeros(()))
        if what == "forward + backward":
            cases = {name: backward_from(fn) for name, fn in cases.items()}
        if what == "forward + log-det":
            cases = {name: (lambda fn=fn: torch.no_grad()(fn)()) for name, fn in cases.items()}
        rows += ratio_rows(time_interleaved_us(cases, device), ours_name, cases, device, label, **{"pass": what})
    return rows


def spline_layer_rows(device: str, batch: int, dim: int, hidden: int = 64, bins: int = 8,
                      bound: float = 4.0) -> list[dict]:
    """A whole spline coupling layer (split dim / 2, 8 bins) on each library: the MLP conditioner of layer_rows for
    fastgen, nflows and zuko (zuko's spline has its bound fixed at 5); normflows' layer takes only its own residual
    network (2 blocks of the same width)."""
    split = dim // 2
    torch.manual_seed(0)
    x = 2 * torch.randn(batch, dim, device=device)
    layers = {"fastgen SplineCoupling": SplineCoupling(dim, hidden=(hidden, hidden), bins=bins, bound=bound)}
    conditioner = mlp(split, (dim - split) * (3 * bins - 1), (hidden, hidden)).to(device)
    try:
        from nflows.transforms.coupling import PiecewiseRationalQuadraticCouplingTransform

        mask = torch.zeros(dim)
        mask[split:] = 1
        layers["nflows PiecewiseRationalQuadraticCoupling"] = PiecewiseRationalQuadraticCouplingTransform(
            mask, lambda a, b: _Contextless(mlp(a, b, (hidden, hidden), zero_last=False)), num_bins=bins,
            tails="linear", tail_bound=bound)
    except ImportError:
        pass
    try:
        import zuko

        layers["zuko GeneralCouplingTransform (RQS)"] = zuko.flows.GeneralCouplingTransform(
            dim, mask=torch.arange(dim) < split, univariate=zuko.transforms.MonotonicRQSTransform,
            shapes=[(bins,), (bins,), (bins - 1,)], hidden_features=(hidden, hidden))
    except ImportError:
        pass
    try:
        import normflows

        layers["normflows CoupledRationalQuadraticSpline"] = normflows.flows.CoupledRationalQuadraticSpline(
            dim, num_blocks=2, num_hidden_channels=hidden, num_bins=bins, tail_bound=bound)
    except ImportError:
        pass
    for layer in layers.values():
        for p in layer.parameters():  # away from the identity start
            nn.init.normal_(p, std=0.05) if p.dim() > 1 else None
    layers = {name: layer.to(device) for name, layer in layers.items()}
    return _layer_table(layers, conditioner, x, split, "fastgen SplineCoupling", "spline layer")


def spline_rows(device: str, batch: int, dim: int, bins: int = 8, bound: float = 4.0) -> list[dict]:
    """The spline arithmetic (no conditioner): fastgen's op against nflows' unconstrained_rational_quadratic_spline
    with linear tails (the usual eager implementation), eager and compiled, where nflows is installed."""
    split = dim // 2
    g = torch.Generator(device).manual_seed(0)
    x = 2 * torch.randn(batch, dim, device=device, generator=g)
    params = torch.randn(batch, dim - split, 3 * bins - 1, device=device, generator=g)
    cases = {"fastgen fused op": lambda a, p: spline_coupling(a, p, split, bins, bound=bound)}
    try:
        from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline as rqs

        def nflows_spline(a, p):
            y, log_det = rqs(a[:, split:], p[..., :bins], p[..., bins:2 * bins], p[..., 2 * bins:], tails="linear",
                             tail_bound=bound)
            return torch.cat([a[:, :split], y], dim=1), log_det.sum(1)

        cases["nflows (eager)"] = nflows_spline
        cases["torch.compile(nflows)"] = torch.compile(nflows_spline)
    except ImportError:
        pass
    leaves = [x.clone().requires_grad_(), params.clone().requires_grad_()]

    rows = []
    for what in ("forward + log-det", "forward + backward"):
        timed = {name: (lambda fn=fn: fn(x, params)) if what == "forward + log-det" else backward_from(fn, *leaves)
                 for name, fn in cases.items()}
        for name, fn in list(timed.items()):
            try:  # compile and warm up outside the timing
                fn()
            except Exception as error:  # noqa: BLE001 - a peer that does not compile is reported, not fatal
                print(f"  spline: {name} failed: {type(error).__name__}: {error}"[:300], flush=True)
                del timed[name]
        rows += ratio_rows(time_interleaved_us(timed, device), "fastgen fused op", timed, device, "spline",
                           **{"pass": what})
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    batch, dim = 65536, 64
    arithmetic = arithmetic_rows(device, batch, dim)
    layer = layer_rows(device, 8192, dim)
    spline = spline_rows(device, 16384, dim)
    spline_layer = spline_layer_rows(device, 8192, dim)
    count = "kernels" if device == "cuda" else "ops"
    columns = [("pass", "pass"), ("candidate", "candidate"), ("µs", "µs"), ("time / fastgen's", "time / fastgen's"),
               (count, f"{count} per call"), ("host_syncs", "host syncs")]
    sections = {
        f"Coupling arithmetic, batch {batch} x D {dim} (split {dim // 2}), float32, soft-clamped scale":
            markdown_table(arithmetic, columns),
        f"Whole coupling layer, batch 8192 x D {dim}, ReLU MLP conditioner {dim // 2}-64-64-{dim}":
            markdown_table(layer, columns),
        f"Rational-quadratic spline arithmetic, batch 16384 x D {dim} (split {dim // 2}), 8 bins, float32":
            markdown_table(spline, columns),
        f"Whole spline coupling layer, batch 8192 x D {dim}, 8 bins, MLP conditioner {dim // 2}-64-64-"
        f"{dim // 2 * 23}": markdown_table(spline_layer, columns),
    }
    return write_report(out, f"coupling-{device}", environment(device), sections,
                        {"arithmetic": arithmetic, "layer": layer, "spline": spline,
                                                              "spline_layer": spline_layer})
