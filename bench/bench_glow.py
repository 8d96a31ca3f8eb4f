"""Glow's layer ops: ActNorm, the invertible 1x1 convolution and the squeeze, forward (+ log-det) and forward +
backward (from random output gradients), fastgen's fused op against the same layer in eager PyTorch (as Glow
implementations write it) and under
torch.compile, with a copy of the same bytes as the bandwidth limit. Two sizes: a Glow level on 3x32x32 at batch 64
(12 channels of 16x16) and a large one (48 channels, 2^max_log2 elements). Ops (CPU) / kernels (GPU) per forward
call.

    python -m bench glow [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import math

import torch

from fastgen.ops import actnorm, invconv1x1, squeeze2d

from .common import (
    backward_from,
    copy_fn,
    count_per_call,
    environment,
    markdown_table,
    time_interleaved_us,
    write_report,
)


def _eager_actnorm(x, log_scale, bias):
    shape = (1, -1, 1, 1)
    out = x * log_scale.exp().view(shape) + bias.view(shape)
    return out, (x.shape[2] * x.shape[3] * log_scale.sum()).expand(x.shape[0])


def _eager_invconv(x, weight, log_s):
    out = torch.nn.functional.conv2d(x, weight[:, :, None, None])
    return out, (x.shape[2] * x.shape[3] * log_s.sum()).expand(x.shape[0])


def _eager_squeeze(x):
    b, c, h, w = x.shape
    return x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def _cases(device: str, shape):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(device)
    c = shape[1]
    log_scale, bias = (0.1 * torch.randn(c, generator=g)).to(device), torch.randn(c, generator=g).to(device)
    q = torch.linalg.qr(torch.randn(c, c, generator=g))[0].to(device)
    log_s = torch.zeros(c, device=device)
    return {
        "actnorm": ((x, log_scale, bias), actnorm, _eager_actnorm),
        "invconv1x1": ((x, q, log_s), invconv1x1, _eager_invconv),
        "squeeze2d": ((x,), squeeze2d, _eager_squeeze),
    }


def rows(device: str, max_log2: int) -> list[dict]:
    big = 2 ** max_log2
    shapes = {"64x12x16x16": (64, 12, 16, 16), f"2^{max_log2}, 48 channels": (big // (48 * 64 * 64), 48, 64, 64)}
    result = []
    for size, shape in shapes.items():
        n_bytes = 2 * 4 * math.prod(shape)  # read x once, write the output once
        for op_name, (args, fused, eager) in _cases(device, shape).items():
            compiled = torch.compile(eager, dynamic=False)
            leaves = [a.clone().requires_grad_() for a in args]
            for what in ("forward", "forward + backward"):
                if what == "forward":
                    fns = {name: (lambda f=f: torch.no_grad()(f)(*args))
                           for name, f in (("fastgen", fused), ("eager", eager), ("torch.compile", compiled))}
                    fns["copy (bandwidth limit)"] = copy_fn(n_bytes, device)
                else:
                    fns = {name: backward_from(f, *leaves)
                           for name, f in (("fastgen", fused), ("eager", eager), ("torch.compile", compiled))}
                times = time_interleaved_us(fns, device)
                for name, us in times.items():
                    counts = count_per_call(fns[name], device) if what == "forward" and not name.startswith("copy") \
                        else {}
                    result.append({"size": size, "op": op_name, "pass": what, "candidate": name, "µs": us,
                                   "time / fastgen's": f"{us / times['fastgen']:.2f}", **counts})
                    print("  glow", result[-1], flush=True)
    return result


def run(device: str, out: str, max_log2: int) -> str:
    table = rows(device, min(max_log2, 24 if device == "cpu" else 27))
    count = "kernels" if device == "cuda" else "ops"
    columns = [("size", "size"), ("op", "op"), ("pass", "pass"), ("candidate", "candidate"), ("µs", "µs"),
               ("time / fastgen's", "time / fastgen's"), (count, f"{count} per call")]
    sections = {"Glow's layer ops, float32": markdown_table(table, columns)}
    return write_report(out, f"glow-{device}", environment(device), sections, {"rows": table})
