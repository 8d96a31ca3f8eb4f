"""The fastgen command line: generate, bench, info, sample.

    fastgen generate gmm8 -n 1000000 --out samples/       (also under torchrun, see the README)
    fastgen bench [SUITE|all] [--device cpu|cuda] [--out DIR]   (SUITE: a bench_<suite>.py of fastgen.bench)
    fastgen info
    fastgen sample gmm8 [--sampler dpmpp_2m] [--steps 50] [-n 20000] [--plot sample.png]
    fastgen sample funnel --sampler nuts [--chains 256] [--steps 500] [--warmup 500] [--trace-plot t.png]
                                         [--rank-plot r.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _shape(text: str) -> tuple:
    """3,32,32 or 3x32x32: ints >= 1."""
    parts = text.strip().replace("x", ",").split(",")
    if not all(p.strip().isdigit() and int(p) >= 1 for p in parts):
        raise argparse.ArgumentTypeError(f"must be integers >= 1 like 3,32,32, got {text!r}")
    return tuple(int(p) for p in parts)


def _int_range(lo: int, hi: int):
    """An argparse type: an integer in [lo, hi)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value < hi:
            raise argparse.ArgumentTypeError(f"expected an integer in [{lo}, {hi:,}), got {text}")
        return value

    return parse


_positive = _int_range(1, 2**63)


def _budget(text: str) -> int:
    from .generation import SettingsError, parse_bytes

    try:
        return parse_bytes(text)
    except SettingsError as err:
        raise argparse.ArgumentTypeError(str(err).replace("memory_budget ", "")) from None


def cmd_generate(args) -> int:
    from .generation import SettingsError, generate

    try:
        generate(args.source, args.n, args.out, sampler=args.sampler, steps=args.steps, seed=args.seed,
                 shard_size=args.shard_size, chunk_size=args.chunk_size, memory_budget=args.memory_budget,
                 shape=args.shape, prediction=args.prediction, device=args.device, quiet=args.quiet,
                 allow_nonfinite=args.allow_nonfinite, labels=args.labels, label_key=args.label_key,
                 guidance_scale=args.guidance_scale, null_label=args.null_label)
    except SettingsError as err:
        args.usage.error(str(err))
    except KeyboardInterrupt:
        print(f"fastgen generate: interrupted; the finished shards are kept in {args.out}: rerun the same command "
              f"to resume", file=sys.stderr)
        return 130
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

    from .generation import TARGETS, GenerateError, SettingsError, load_source, sample_seeds
    from .mcmc import MCMC_SAMPLERS, MCMC_TARGETS

    for flag, path in (("--plot", args.plot), ("--trace-plot", args.trace_plot), ("--rank-plot", args.rank_plot)):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            args.usage.error(f"{flag}: the folder of {path!r} does not exist")
    if args.sampler in MCMC_SAMPLERS:
        from .mcmc import run

        if args.source not in MCMC_TARGETS:
            args.usage.error(f"--sampler {args.sampler}: source must be one of {', '.join(MCMC_TARGETS)}, got "
                             f"{args.source!r}")
        if args.plot:
            args.usage.error("--plot is for the diffusion samplers; MCMC writes --trace-plot and --rank-plot")
        return run(args.source, args.sampler, args.chains, args.steps or 500, 500 if args.warmup is None else
                   args.warmup, args.seed, args.dense_mass, args.trace_plot, args.rank_plot)
    if args.source not in TARGETS and args.source in MCMC_TARGETS:
        args.usage.error(f"source {args.source!r} is an MCMC target: use --sampler {' or '.join(MCMC_SAMPLERS)}")
    for flag, value in (("--trace-plot", args.trace_plot), ("--rank-plot", args.rank_plot),
                        ("--warmup", args.warmup), ("--dense-mass", args.dense_mass or None)):
        if value is not None:
            args.usage.error(f"{flag} is for --sampler {' or '.join(MCMC_SAMPLERS)}")
    args.steps = args.steps or 50
    seeds = sample_seeds(args.seed, 0, args.n)
    if args.source in TARGETS:
        if args.target not in (None, args.source):
            args.usage.error(f"--target is for a flow source; {args.source} is sampled against itself")
        target, name = TARGETS[args.source](), args.source
        process = fastgen.DDPMSchedule() if args.sampler in ("ddpm", "ddim") else fastgen.VPSDE()
        x = fastgen.sample(target.model(process, "eps"), (args.n, target.dim), sampler=args.sampler,
                           steps=args.steps, prediction="eps", per_sample_seeds=seeds).float().cpu()
        label = f"{args.sampler}, {args.steps} steps, default spacing"
    else:
        try:
            src = load_source(args.source, args.sampler)
        except (GenerateError, SettingsError) as err:
            args.usage.error(f"source must be one of {', '.join(TARGETS)}, or a trained flow: {err}")
        if not src.flow:
            args.usage.error(f"source {args.source!r} is a model, not a flow: sample it with fastgen generate")
        if args.target not in TARGETS:
            args.usage.error(f"--target: a flow is compared against a built-in target ({', '.join(TARGETS)}), got "
                             f"{args.target!r}")
        target, name = TARGETS[args.target](), f"{args.target} by the flow {args.source}"
        if src.shape != (target.dim,):
            args.usage.error(f"the flow's samples have shape {src.shape}, {args.target}'s ({target.dim},)")
        z = torch.empty((args.n,) + src.shape)
        fastgen.ops.diffusion.add_noise_(z, fastgen.ops.diffusion.noise_row(1.0), sample_seeds=seeds)
        with torch.no_grad():
            x = src.model.from_base(z).float()
            held_out = target.sample(min(args.n, 20000), seed=args.seed + 3)
            cross = -float(src.model.log_prob(held_out.float()).double().mean())
        label = "the flow (exact draws)"
    exact = target.sample(args.n, seed=args.seed + 1)
    sub = min(args.n, 4000)
    print(f"{args.n:,} samples of {name} with {label}")
    if args.source not in TARGETS:
        entropy = float(-target.log_prob(held_out.double()).mean())
        print(f"cross-entropy on {len(held_out):,} exact samples {cross:.4f} nats, exact entropy {entropy:.4f}: "
              f"KL(target || flow) ~ {cross - entropy:.4f}")
    metric = fastgen.metrics
    print(f"multi-scale MMD^2 to exact samples (n={sub}): {metric.mmd(x[:sub], exact[:sub], 'multiscale'):.2e}   "
          f"(exact vs exact: {metric.mmd(exact[:sub], target.sample(sub, seed=args.seed + 2), 'multiscale'):.2e})")
    weights = metric.mode_weights(x, target)
    print(f"mode weights: max deviation from the truth {(weights - target.weights).abs().max():.4f}")
    spread = metric.within_mode_spread(x, target)
    print(f"within-mode spread / truth: {spread.min():.3f} to {spread.max():.3f} over the {len(spread)} modes "
          f"(1 = exact; exact samples: {metric.within_mode_spread(exact, target).min():.3f} to "
          f"{metric.within_mode_spread(exact, target).max():.3f})")
    if args.plot:
        from .demo import density_plot

        density_plot(x, exact, args.plot, f"fastgen {label}, {len(x):,} samples",
                     f"{args.source}: sample density")
        print(f"plot: {args.plot}")
    return 0


def cmd_bench(args) -> int:
    from ..bench import suites
    from ..bench.plot import throughput_plot

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


def _generate_parser(sub) -> None:
    from ..diffusion.samplers import SAMPLERS

    g = sub.add_parser("generate", help="generate N samples into shards and a manifest (resumable)")
    g.add_argument("source", help="a built-in target (gmm8, rings, grid), a TorchScript / torch.export file, "
                                  "module:callable, or a fastgen.flows.Flow (a torch.save file or module:attribute; "
                                  "exact draws, --sampler and --steps do not apply)")
    g.add_argument("-n", type=_positive, required=True, help="number of samples")
    g.add_argument("--out", required=True, help="output folder (shards, settings.json, manifest.json)")
    g.add_argument("--sampler", default="ddim", choices=SAMPLERS)
    g.add_argument("--steps", type=_positive, default=50)
    g.add_argument("--seed", type=_int_range(0, 2**64), default=0, help="in [0, 2**64)")
    g.add_argument("--shard-size", type=_positive, default=65536, help="samples per shard file")
    g.add_argument("--chunk-size", type=_positive, default=None, help="samples per sampling call (default: "
                                                                      "from --memory-budget)")
    g.add_argument("--memory-budget", type=_budget, default="256MB",
                   help="bound on the sampler's working set, e.g. 256MB, 2GB (K/M/G are powers of 1024; default "
                        "256MB); the model's own activations come on top")
    g.add_argument("--shape", type=_shape, default=None, help="shape of one sample, for a model (e.g. 3,32,32)")
    g.add_argument("--prediction", choices=["eps", "x0", "v", "score"], default=None)
    g.add_argument("--device", default=None)
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument("--allow-nonfinite", action="store_true", help="keep samples with NaN or inf (default: an error)")
    g.add_argument("--labels", default=None, help="class labels: balanced:K (sample i gets i %% K) or a .npy file "
                                                  "of N integers; recorded in the settings and manifest")
    g.add_argument("--label-key", default="y", help="the model's keyword for the label (default y)")
    g.add_argument("--guidance-scale", type=float, default=None, help="classifier-free guidance scale "
                                                                      "(needs --labels and --null-label)")
    g.add_argument("--null-label", type=int, default=None, help="the unconditional label, for guidance")
    g.set_defaults(func=cmd_generate, usage=g)


def parser() -> argparse.ArgumentParser:
    from ..bench import suite_names
    from ..diffusion.samplers import SAMPLERS

    p = _Parser(prog="fastgen", description="fused samplers for generative models")
    sub = p.add_subparsers(dest="command", required=True)
    _generate_parser(sub)

    b = sub.add_parser("bench", help="run bench/'s suites: markdown, JSON and a PNG plot")
    b.add_argument("suite", nargs="?", default="all", choices=suite_names() + ["all"])
    b.add_argument("--device", choices=["cpu", "cuda"], default=None)
    b.add_argument("--out", default="bench/out")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="versions, build, backends and devices")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_info)

    s = sub.add_parser("sample", help="sample a built-in target (or a trained flow) by a diffusion sampler, or run "
                                      "MCMC chains (nuts, hmc) with their diagnostics; print metrics, save plots")
    s.add_argument("source", help="gmm8, rings or grid; or a fastgen.flows.Flow (torch.save file or "
                                  "module:attribute), compared against --target; with --sampler nuts or hmc also "
                                  "funnel, funnel_noncentred, banana, gaussian100")
    s.add_argument("--target", default=None, help="for a flow source: the built-in target it was trained on")
    s.add_argument("-n", type=_int_range(2, 2**31), default=20000, help="at least 2: the metrics compare sample sets")
    s.add_argument("--sampler", default="dpmpp_2m", choices=list(SAMPLERS) + ["nuts", "hmc"])
    s.add_argument("--steps", type=_positive, default=None, help="diffusion steps (default 50), or kept MCMC "
                                                                   "transitions (default 500)")
    s.add_argument("--seed", type=_int_range(0, 2**63 - 2), default=0)
    s.add_argument("--plot", default=None, help="write a density plot here")
    s.add_argument("--chains", type=_int_range(2, 2**24), default=256, help="MCMC: chains (default 256)")
    s.add_argument("--warmup", type=_int_range(0, 2**31), default=None, help="MCMC: adaptation transitions "
                                                                             "(default 500)")
    s.add_argument("--dense-mass", action="store_true", help="MCMC: adapt a dense mass matrix (default diagonal)")
    s.add_argument("--trace-plot", default=None, help="MCMC: write a trace plot (PNG) here")
    s.add_argument("--rank-plot", default=None, help="MCMC: write a rank plot (PNG) here")
    s.set_defaults(func=cmd_sample, usage=s)

    t = sub.add_parser("toy", help="the seeds' toy experiments: 'ebm' runs the two-mode EBM under four methods")
    t.add_argument("name", choices=["ebm"])
    t.add_argument("--steps", type=_positive, default=400, help="gradient-flow updates")
    t.add_argument("--lr", type=float, default=0.1, help="update size (flow time per update)")
    t.add_argument("--out", default="ebm_toy.png", help="where to write the theta(t) plot")
    t.set_defaults(func=cmd_toy)
    return p


def cmd_toy(args) -> int:
    from .toy_ebm import report

    if not args.lr > 0:
        raise ValueError(f"--lr must be > 0, got {args.lr}")
    return report(args.steps, args.lr, args.out)


def main(argv=None) -> int:
    """Every error is one line on stderr: exit 2 for usage, 1 at run time, 130 on Ctrl-C (FASTGEN_DEBUG=1 shows
    the traceback of an unexpected error)."""
    args = parser().parse_args(argv)
    from .generation import GenerateError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"fastgen {args.command}: interrupted", file=sys.stderr)
        return 130
    except GenerateError as err:
        print(f"fastgen {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Exception as err:
        if os.environ.get("FASTGEN_DEBUG"):
            raise
        message = " ".join(str(err).split())
        print(f"fastgen {args.command}: error: {type(err).__name__}: {message} (FASTGEN_DEBUG=1 shows where)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
