"""The fastgen command line: generate, bench, info, sample.

    fastgen generate gmm8 -n 1000000 --out samples/       (also under torchrun, see the README)
    fastgen bench [SUITE|all] [--device cpu|cuda] [--out DIR]   (SUITE: a bench_<suite>.py of fastgen.bench)
    fastgen info
    fastgen sample gmm8 [--sampler dpmpp_2m] [--steps 50] [-n 20000] [--plot sample.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch


def _shape(text: str) -> tuple:
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape must be integers like 3,32,32, got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def cmd_generate(args) -> int:
    from .generation import GenerateError, generate

    try:
        generate(args.source, args.n, args.out, sampler=args.sampler, steps=args.steps, seed=args.seed,
                 shard_size=args.shard_size, chunk_size=args.chunk_size, memory_budget=args.memory_budget,
                 shape=args.shape, prediction=args.prediction, device=args.device, quiet=args.quiet,
                 allow_nonfinite=args.allow_nonfinite)
    except GenerateError as err:
        print(f"fastgen generate: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_info(args) -> int:
    import fastgen

    info = {
        "fastgen": fastgen.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda (torch)": torch.version.cuda,
        "devices": ["cpu"] + [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())],
        "build": fastgen.build_info(),
        "backends": fastgen.backends(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if args.json:
        print(json.dumps(info, indent=1, default=str))
        return 0
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                text = str(v).strip().replace("\n", "\n      ")
                print(f"  {k}: {text}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_sample(args) -> int:
    import fastgen
    from .generation import TARGETS, sample_seeds

    if args.source not in TARGETS:
        print(f"fastgen sample: error: source must be one of {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    target = TARGETS[args.source]()
    process = fastgen.DDPMSchedule() if args.sampler in ("ddpm", "ddim") else fastgen.VPSDE()
    x = fastgen.sample(target.model(process, "eps"), (args.n, target.dim), sampler=args.sampler, steps=args.steps,
                       prediction="eps", per_sample_seeds=sample_seeds(args.seed, 0, args.n)).float().cpu()
    exact = target.sample(args.n, seed=args.seed + 1)
    sub = min(args.n, 4000)
    print(f"{args.n:,} samples of {args.source} with {args.sampler}, {args.steps} steps")
    print(f"MMD^2 to exact samples (n={sub}): {fastgen.metrics.mmd(x[:sub], exact[:sub]):.2e}   "
          f"(exact vs exact: {fastgen.metrics.mmd(exact[:sub], target.sample(sub, seed=args.seed + 2)):.2e})")
    weights = fastgen.metrics.mode_weights(x, target)
    print(f"mode weights: max deviation from the truth {(weights - target.weights).abs().max():.4f}")
    if args.plot:
        from .demo import density_plot

        density_plot(x, exact, args.plot)
        print(f"plot: {args.plot}")
    return 0


def cmd_bench(args) -> int:
    from .bench import suites
    from .bench.plot import throughput_plot

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("fastgen bench: error: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 1
    max_log2 = 27 if device == "cuda" else 24
    for name, run in suites().items():
        if args.suite in (name, "all"):
            print(run(device, args.out, max_log2))
            path = throughput_plot(args.out, name, device)
            if path:
                print(f"plot: {path}")
    return 0


def parser() -> argparse.ArgumentParser:
    from .bench import suite_names
    from .samplers.diffusion import SAMPLERS

    p = argparse.ArgumentParser(prog="fastgen", description="fused samplers for generative models")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate N samples into shards and a manifest (resumable)")
    g.add_argument("source", help="a built-in target (gmm8, rings, grid), a TorchScript / torch.export file, "
                                  "or module:callable")
    g.add_argument("-n", type=_positive, required=True, help="number of samples")
    g.add_argument("--out", required=True, help="output folder (shards, settings.json, manifest.json)")
    g.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    g.add_argument("--steps", type=_positive, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--shard-size", type=_positive, default=65536, help="samples per shard file")
    g.add_argument("--chunk-size", type=_positive, default=None, help="samples per sampling call (default: "
                                                                      "from --memory-budget)")
    g.add_argument("--memory-budget", default="256MB")
    g.add_argument("--shape", type=_shape, default=None, help="shape of one sample, for a model (e.g. 3,32,32)")
    g.add_argument("--prediction", choices=["eps", "x0", "v", "score"], default=None)
    g.add_argument("--device", default=None)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--allow-nonfinite", action="store_true", help="keep samples with NaN or inf (default: an error)")
    g.set_defaults(func=cmd_generate)

    b = sub.add_parser("bench", help="run bench/'s suites: markdown, JSON and a PNG plot")
    b.add_argument("suite", nargs="?", default="all", choices=suite_names() + ["all"])
    b.add_argument("--device", choices=["cpu", "cuda"], default=None)
    b.add_argument("--out", default="bench/out")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="versions, build, backends and devices")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("sample", help="sample a built-in target, print metrics, save a plot")
    s.add_argument("source", help="gmm8, rings or grid")
    s.add_argument("-n", type=_positive, default=20000)
    s.add_argument("--sampler", default="dpmpp_2m", choices=SAMPLERS)
    s.add_argument("--steps", type=_positive, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--plot", default=None, help="write a density plot here")
    s.set_defaults(func=cmd_sample)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
