"""python -m bench {SUITE,all} [--device cpu|cuda] [--out DIR]: the suites are the bench_*.py files here."""

import argparse

import torch

from . import suite_names, suites


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="fastgen benchmarks")
    parser.add_argument("suite", choices=suite_names() + ["all"])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--max-log2", type=int, default=None, help="largest size, log2 elements (24 CPU, 27 GPU)")
    args = parser.parse_args()
    max_log2 = args.max_log2 or (27 if args.device == "cuda" else 24)
    for name, run in suites().items():
        if args.suite in (name, "all"):
            print(run(args.device, args.out, max_log2))


if __name__ == "__main__":
    main()
