"""Throughput plots of a suite's JSON: elements (or chains) per second against size, with the copy limit."""

from __future__ import annotations

import json
import math
import os

LABELS = {"cpu": "fastgen cpu", "cuda": "fastgen cuda", "triton": "fastgen triton", "eager": "eager PyTorch",
          "eager_": "eager, in place", "compile": "torch.compile", "fused op": "fastgen fused op"}


def throughput_plot(out: str, suite: str, device: str) -> str | None:
    path = os.path.join(out, f"{suite}-{device}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data = json.load(f)
    rows = data.get("ula") or data.get("ddpm_step")
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size_key = "elements" if "elements" in rows[0] else "shape"
    labels = [r[size_key] for r in rows]
    sizes = [2 ** int(label[2:]) if size_key == "elements" else math.prod(int(v) for v in label.split("x"))
             for label in labels]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    skip = {size_key, "copy", "bw_pct", "bw %"}
    for key in rows[0]:
        if key in skip or key.startswith("vs_") or key.startswith("x "):
            continue
        rates = [s / r[key] * 1e6 if r.get(key) else float("nan") for s, r in zip(sizes, rows, strict=True)]
        ax.plot(sizes, rates, "o-",
                label=LABELS.get(key, key))
    copies = [s / r["copy"] * 1e6 for s, r in zip(sizes, rows, strict=True)]
    ax.plot(sizes, copies, "k--", label="bandwidth limit (copy)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("elements")
    ax.set_ylabel("elements per second")
    env = data["environment"]
    ax.set_title(f"{suite} on {env['device']}, torch {env['torch']}")
    ax.legend(fontsize=8)
    png = os.path.join(out, f"{suite}-{device}.png")
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
