"""Spectral normalization: the forward (training mode) and forward+backward of spectrally normalized models
against the plain model — torch's parametrization, torch's older hook-based spectral_norm, torch.compile of the
parametrized model, fastgen's drop-in and fastgen's grouped SpectralNorm — timed in turn (medians), with the
aten ops (CPU) or kernels (GPU) each dispatches per forward; and the power iteration alone against torch's
eager loop and the bandwidth limit (a copy moving the bytes of two reads of every weight)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils import parametrizations

import fastgen

from .common import copy_fn, count_per_call, environment, markdown_table, time_interleaved_us, write_report


def mlp() -> nn.Sequential:
    layers = []
    for _ in range(8):
        layers += [nn.Linear(1024, 1024), nn.ReLU()]
    return nn.Sequential(*layers)


def conv_discriminator() -> nn.Sequential:
    """A DCGAN-style discriminator on 32x32 RGB images."""
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.LeakyReLU(0.1), nn.Conv2d(64, 128, 4, 2, 1),
                         nn.LeakyReLU(0.1), nn.Conv2d(128, 128, 3, padding=1), nn.LeakyReLU(0.1),
                         nn.Conv2d(128, 256, 4, 2, 1), nn.LeakyReLU(0.1), nn.Conv2d(256, 512, 4, 2, 1),
                         nn.LeakyReLU(0.1), nn.Flatten(), nn.Linear(512 * 4 * 4, 1))


MODELS = {"8x1024 MLP, batch 256": (mlp, (256, 1024)), "conv discriminator 32x32, batch 64": (conv_discriminator,
                                                                                             (64, 3, 32, 32))}
LAYERS = (nn.Linear, nn.Conv2d)


def variants(make, device: str) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = make().to(device)
    out = {"plain": copy.deepcopy(base)}
    model = copy.deepcopy(base)
    for m in model.modules():
        if isinstance(m, LAYERS):
            parametrizations.spectral_norm(m)
    out["torch parametrization"] = model
    model = copy.deepcopy(base)
    for m in model.modules():
        if isinstance(m, LAYERS):
            torch.nn.utils.spectral_norm(m)
    out["torch spectral_norm (hooks)"] = model
    model = copy.deepcopy(base)
    for m in model.modules():
        if isinstance(m, LAYERS):
            fastgen.nn.spectral_norm(m)
    out["fastgen.nn.spectral_norm (drop-in)"] = model
    model = copy.deepcopy(base)
    fastgen.nn.SpectralNorm.apply(model)
    out["fastgen.nn.SpectralNorm (grouped)"] = model
    return out


def bench(device: str) -> tuple[list[dict], list[dict]]:
    rows, power_rows = [], []
    for name, (make, shape) in MODELS.items():
        models = variants(make, device)
        x = torch.randn(shape, device=device)
        compiled = torch.compile(models["torch parametrization"])
        try:
            compiled(x).sum().backward()
            models["torch.compile (torch parametrization)"] = compiled
        except Exception as err:  # noqa: BLE001 (recorded in the report)
            print(f"  spectral_norm: torch.compile failed: {type(err).__name__}: {err}", flush=True)
        forward = {k: (lambda m=m: m(x)) for k, m in models.items()}
        train = {k: (lambda m=m: m(x).sum().backward()) for k, m in models.items()}
        t_forward = time_interleaved_us(forward, device)
        t_train = time_interleaved_us(train, device)
        for k in models:
            counts = count_per_call(forward[k], device) if "compile" not in k else {}
            rows.append({"model": name, "candidate": k, "forward µs": t_forward[k],
                         "forward / plain": f"{t_forward[k] / t_forward['plain']:.2f}", "fwd+bwd µs": t_train[k],
                         "fwd+bwd / plain": f"{t_train[k] / t_train['plain']:.2f}",
                         "dispatches": counts.get("kernels", counts.get("ops"))})
            print("  spectral_norm", rows[-1], flush=True)
        # the power iteration alone (one step of every layer)
        layers = [m for m in models["torch parametrization"].modules() if isinstance(m, LAYERS)]
        weights = [m.parametrizations.weight.original.detach().flatten(1).contiguous() for m in layers]
        us = [m.parametrizations.weight[0]._u.clone() for m in layers]
        vs = [m.parametrizations.weight[0]._v.clone() for m in layers]

        def eager():
            for w, u, v in zip(weights, us, vs, strict=True):
                u2 = nn.functional.normalize(torch.mv(w, v), dim=0, eps=1e-12)
                v2 = nn.functional.normalize(torch.mv(w.t(), u2), dim=0, eps=1e-12)
                torch.vdot(u2, torch.mv(w, v2))

        n_bytes = 2 * sum(w.numel() * w.element_size() for w in weights)
        cases = {"fastgen spectral_norm_power (grouped)": lambda: fastgen.ops.spectral_norm_power(weights, us, vs),
                 "eager torch (mv, normalize, vdot per layer)": eager,
                 "copy of 2x the weights' bytes": copy_fn(n_bytes, device)}
        times = time_interleaved_us(cases, device)
        for k, us_ in times.items():
            power_rows.append({"model": name, "candidate": k, "µs": us_,
                               "vs fastgen": f"{us_ / times['fastgen spectral_norm_power (grouped)']:.2f}",
                               "GB/s": n_bytes / us_ / 1e3})
            print("  spectral_norm power", power_rows[-1], flush=True)
    return rows, power_rows


def run(device: str, out: str, max_log2: int) -> str:
    rows, power_rows = bench(device)
    models = markdown_table(rows, [("model", "model"), ("candidate", "candidate"), ("forward µs", "forward µs"),
                                   ("forward / plain", "forward / plain"), ("fwd+bwd µs", "fwd+bwd µs"),
                                   ("fwd+bwd / plain", "fwd+bwd / plain"),
                                   ("dispatches", "ops (CPU) / kernels (GPU) per forward")])
    power = markdown_table(power_rows, [("model", "model"), ("candidate", "candidate"), ("µs", "µs"),
                                        ("vs fastgen", "time / fastgen's"), ("GB/s", "GB/s (2 reads of W)")])
    return write_report(out, "spectral_norm", environment(device),
                        {"Spectrally normalized models (training mode)": models,
                         "One power-iteration step of every layer": power}, {"rows": rows, "power": power_rows})
