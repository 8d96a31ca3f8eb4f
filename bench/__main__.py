"""python -m bench {langevin,diffusion,all} [--device cpu|cuda] [--out DIR]"""

import argparse

import torch

from . import bench_diffusion, bench_langevin

SUITES = {"langevin": bench_langevin.run, "diffusion": bench_diffusion.run}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="fastgen benchmarks")
    parser.add_argument("suite", choices=sorted(SUITES) + ["all"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--max-log2", type=int, default=None, help="largest size, log2 elements (24 CPU, 27 GPU)")
    args = parser.parse_args()
    max_log2 = args.max_log2 or (27 if args.device == "cuda" else 24)
    for name, run in SUITES.items():
        if args.suite in (name, "all"):
            print(run(args.device, args.out, max_log2))


if __name__ == "__main__":
    main()
