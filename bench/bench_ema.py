"""Multi-tensor EMA of a model's parameters: fastgen's ema_update_ against torch._foreach_lerp_ (what
fastgen used before, and what most EMA helpers call), a per-tensor lerp_ loop, torch.compile of the
eager update, and a copy of the same bytes (the bandwidth limit), timed in turn (medians)."""

from __future__ import annotations

import torch

import fastgen

from .common import copy_fn, environment, markdown_table, time_interleaved_us, write_report

# Parameter shapes of a small UNet-like model (many small tensors) and of one large layer.
MODELS = {
    "160 tensors, 2.1M params": [(64, 64, 3, 3)] * 40 + [(64,)] * 80 + [(256, 256)] * 20 + [(256,)] * 20,
    "1 tensor, 16.8M params": [(4096, 4096)],
}


def bench(device: str) -> list[dict]:
    rows = []
    for name, shapes in MODELS.items():
        params = [torch.randn(s, device=device) for s in shapes]
        shadow = [p.clone() for p in params]
        numel = sum(p.numel() for p in params)

        def eager():
            for a, v in zip(shadow, params, strict=True):
                a.add_(v - a, alpha=0.001)

        compiled = torch.compile(eager)
        cases = {
            "fastgen ema_update_": lambda: fastgen.ops.ema_update_(shadow, params, 0.999),
            "torch._foreach_lerp_": lambda: torch._foreach_lerp_(shadow, params, 0.001),
            "per-tensor lerp_ loop": lambda: [a.lerp_(v, 0.001) for a, v in zip(shadow, params, strict=True)],
            "torch.compile (eager update)": compiled,
            "copy of the same bytes": copy_fn(3 * 4 * numel, device),
        }
        times = time_interleaved_us(cases, device)
        for case, us in times.items():
            rows.append({"model": name, "candidate": case, "µs": us,
                         "vs fastgen": us / times["fastgen ema_update_"],
                         "GB/s": 3 * 4 * numel / us / 1e3})
            print("  ema", rows[-1], flush=True)
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    rows = bench(device)
    md = markdown_table(rows, [("model", "model"), ("candidate", "candidate"), ("µs", "µs"),
                               ("vs fastgen", "time / fastgen's"), ("GB/s", "GB/s (read a, v; write a)")])
    return write_report(out, "ema", environment(device), {"Multi-tensor EMA update": md}, {"rows": rows})
