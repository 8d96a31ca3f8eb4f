"""Python overhead of fastgen's calls at sizes where the kernel is nearly free.

Cases: one ``ula_step_`` on 1,024 elements; one ``diffusion_step_`` (a DDIM row) at
batch 16; the diffusers drop-in's DDIM ``step`` at batch 16; and ``fastgen.sample``'s
cost per step at batch 1,024 with a trivial model (``model(x, t) = -x``), next to a
hand-written eager Euler-Maruyama loop with the same model.

``python -m bench.bench_overhead --compare OTHER_TREE`` times this tree against another
built source tree (e.g. a ``git worktree`` of an older commit, built in place), one
worker process per tree, the trees measured in turn within every round (medians), so
before/after ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import torch

BATCH_SAMPLE, STEPS = 1024, 100


def cases(device: str) -> dict:
    """name -> (fn, calls per fn()) for the overhead cases."""
    import fastgen
    from fastgen.ops import diffusion as D

    x = torch.randn(1024, device=device)
    score = torch.randn_like(x)
    xs, outs = torch.randn(16, 2, device=device), torch.randn(16, 2, device=device)
    row = D.ddim_coefficients(fastgen.DDPMSchedule(), 500, 480).float().to(device)
    result = {
        "ula_step_ (1,024 elements)": (lambda: fastgen.ops.ula_step_(x, score, 1e-3, 0, 0), 1),
        "diffusion_step_ (DDIM row, batch 16)": (lambda: D.diffusion_step_(xs, outs, row, prediction="eps"), 1),
    }
    try:
        from fastgen.integrations.diffusers import DDIMScheduler

        scheduler = DDIMScheduler()
        scheduler.set_timesteps(50)
        t = scheduler.timesteps[10]
        img, img_out = torch.randn(16, 4, 8, 8, device=device), torch.randn(16, 4, 8, 8, device=device)
        result["diffusers drop-in DDIM step (16x4x8x8)"] = (lambda: scheduler.step(img_out, t, img), 1)
    except ImportError:
        pass

    def model(x, t):
        return -x

    sde = fastgen.VPSDE()
    result[f"fastgen.sample euler_maruyama, trivial model (batch {BATCH_SAMPLE}), per step"] = (
        lambda: fastgen.sample(model, (BATCH_SAMPLE, 2), sde=sde, steps=STEPS, seed=0, device=device, graph=False),
        STEPS)
    x0 = torch.randn(BATCH_SAMPLE, 2, device=device)
    result[f"eager Euler-Maruyama loop, trivial model (batch {BATCH_SAMPLE}), per step"] = (
        lambda: eager_em_loop(model, sde, x0, STEPS), STEPS)
    return result


def eager_em_loop(model, sde, x: torch.Tensor, steps: int) -> torch.Tensor:
    """The reverse-SDE Euler-Maruyama loop as a user writes it in eager PyTorch (score model)."""
    ts = torch.linspace(sde.T, sde.eps, steps + 1, device=x.device)
    x = x.clone()
    for i in range(steps):
        t, dt = ts[i], ts[i + 1] - ts[i]
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        drift = -0.5 * beta * x - beta * model(x, t.expand(x.shape[0]))
        x = x + drift * dt + torch.sqrt(beta * -dt) * torch.randn_like(x)
    return x


def _time_us(fn, calls: int, device: str) -> float:
    """Median µs per call (torch.utils.benchmark, blocked runs); self-contained so that a worker can run
    against any source tree."""
    import torch.utils.benchmark as tbench

    if device == "cuda":
        torch.cuda.synchronize()
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=0.3).median * 1e6 / calls


def worker(device: str) -> None:
    """Reads case names on stdin, answers each with its time (µs per call) as one JSON line."""
    torch.set_num_threads(1)
    table = cases(device)
    for fn, _ in table.values():
        fn()
    print(json.dumps(sorted(table)), flush=True)
    for line in sys.stdin:
        fn, calls = table[line.strip()]
        print(json.dumps(_time_us(fn, calls, device)), flush=True)


def _workers(trees: dict, device: str) -> dict:
    procs = {}
    for label, tree in trees.items():
        env = dict(os.environ, PYTHONPATH=tree)
        procs[label] = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--device", device],
                                        cwd=tree, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    return procs


def compare(trees: dict, device: str, rounds: int, sessions: int = 3) -> list[dict]:
    """Median µs per call of every case in every tree. The trees are timed in turn within each round (the order
    alternating between rounds), in `sessions` sets of fresh worker processes: a process's own placement
    (core, memory) moves its timings by up to 10% on this host, identical code included."""
    samples: dict = {}
    for _ in range(sessions):
        procs = _workers(trees, device)
        names = {label: json.loads(p.stdout.readline()) for label, p in procs.items()}
        common = [n for n in next(iter(names.values())) if all(n in v for v in names.values())]
        for r in range(rounds):
            for n in common:
                order = list(procs.items()) if r % 2 == 0 else list(procs.items())[::-1]  # neither always first
                for label, p in order:
                    p.stdin.write(n + "\n")
                    p.stdin.flush()
                    samples.setdefault((label, n), []).append(json.loads(p.stdout.readline()))
        for p in procs.values():
            p.stdin.close()
            p.wait()
    rows = []
    labels = list(trees)
    for n in common:
        row = {"case": n}
        for label in labels:
            row[f"{label} µs"] = statistics.median(samples[(label, n)])
        if len(labels) == 2:
            row[f"{labels[1]} / {labels[0]}"] = f"{row[f'{labels[1]} µs'] / row[f'{labels[0]} µs']:.2f}"
        rows.append(row)
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    """The suite entry point: every case in this tree (interleaved rounds, medians)."""
    from .common import environment, markdown_table, time_interleaved_us, write_report

    table = cases(device)
    per_fn = time_interleaved_us({n: fn for n, (fn, _) in table.items()}, device, min_run_time=0.3)
    rows = [{"case": n, "µs per call": per_fn[n] / calls} for n, (_, calls) in table.items()]
    md = markdown_table(rows, [("case", "case"), ("µs per call", "µs per call")])
    return write_report(out, "overhead", environment(device), {"Python overhead": md}, {"rows": rows})


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_overhead", description=__doc__.splitlines()[0])
    p.add_argument("--compare", metavar="TREE", help="another built source tree to time against this one")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--rounds", type=int, default=5, help="rounds per session of fresh workers")
    p.add_argument("--sessions", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.device)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.compare:
        rows = compare({"before": os.path.abspath(args.compare), "after": here}, args.device, args.rounds,
                       args.sessions)
    else:
        rows = compare({"this tree": here}, args.device, args.rounds, args.sessions)
    from .common import markdown_table

    print(markdown_table(rows, [(k, k) for k in rows[0]]))


if __name__ == "__main__":
    main()
