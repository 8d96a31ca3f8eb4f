"""Timing, bandwidth limit, profiling counts and report writing shared by the benchmarks.

GPU: triton.testing.do_bench (median) when triton is present, else CUDA events;
CPU: torch.utils.benchmark (median of blocked runs). Every ratio compares
timings taken in the same run.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics

import torch
import torch.utils.benchmark as tbench


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_us(fn, device: str, min_run_time: float = 0.5) -> float:
    """Median microseconds per call of fn(), after warm-up."""
    fn()
    sync(device)
    if device == "cuda":
        try:
            import triton.testing

            return 1e3 * triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        except ImportError:
            times = []
            for _ in range(50):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) * 1e3)
            return statistics.median(times)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def time_interleaved_us(fns: dict, device: str, rounds: int | None = None, min_run_time: float = 0.15) -> dict:
    """Median over `rounds` of each candidate's time, the candidates measured in turn within every round,
    so that interference from the rest of the machine hits them alike (ratios stay honest on a shared host)."""
    rounds = rounds or (3 if device == "cuda" else 7)
    samples = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_us(fn, device, min_run_time))
    return {name: statistics.median(v) for name, v in samples.items()}


def copy_fn(n_bytes: int, device: str):
    """A device copy that moves n_bytes (read n/2, write n/2): timed, it is the bandwidth limit."""
    half = max(1, n_bytes // 8)  # float32 elements read (= written)
    src = torch.empty(half, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def count_per_call(fn, device: str, calls: int = 3) -> dict:
    """Kernels launched (CUDA) or aten ops dispatched (CPU), and host syncs, per call of fn()."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync(device)
    events = prof.events()
    sync_names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
    syncs = sum(1 for e in events if e.name in sync_names or ("Memcpy" in e.name and "DtoH" in e.name))
    if device == "cuda":
        syncs -= 1  # the one after the loop
        kernels = sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA and "Memcpy" not in e.name
                      and "Memset" not in e.name)
        return {"kernels": kernels / calls, "host_syncs": max(syncs, 0) / calls}
    top = [e for e in events if e.cpu_parent is None and (e.name.startswith("aten::") or e.name.startswith("fastgen"))]
    return {"ops": len(top) / calls, "host_syncs": 0.0}


def ratio_rows(times: dict, ours: str, cases: dict, device: str, label: str, **fields) -> list[dict]:
    """One row per timed candidate: its time, its ratio to `ours`, its ops per call (not for the copy) and `fields`;
    each row is printed under `label` as it is made."""
    rows = []
    for name, us in times.items():
        counts = count_per_call(cases[name], device) if name != "copy of the same bytes" else {}
        rows.append({**fields, "candidate": name, "µs": us, "time / fastgen's": f"{us / times[ours]:.2f}", **counts})
        print(f"  {label}", rows[-1], flush=True)
    return rows


def backward_from(fn, *args):
    """A call of fn(*args) and its backward from fixed random output gradients, as a training loop hands a layer
    (a loss of .sum() would hand it an expanded gradient). Outputs that need no gradient are left out."""
    outs = fn(*args)
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in outs]

    def run():
        pairs = [(o, w) for o, w in zip(fn(*args), grads, strict=True) if o.requires_grad]
        torch.autograd.backward([o for o, _ in pairs], [w for _, w in pairs])
    return run


class _HostReads(torch.overrides.TorchFunctionMode):
    """Counts the calls that read a tensor's value on the host (each a device synchronization on a GPU):
    item, bool/int/float, tolist, nonzero, cpu, numpy, and indexing by a boolean mask."""

    NAMES = {"item", "__bool__", "__int__", "__float__", "__index__", "tolist", "nonzero", "masked_select", "cpu",
             "numpy"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in self.NAMES or (name in ("__getitem__", "__setitem__") and len(args) > 1 and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool
                for i in (args[1] if isinstance(args[1], tuple) else (args[1],)))):
            self.count += 1
        return func(*args, **(kwargs or {}))


def count_host_reads(fn) -> int:
    """Host reads of tensor values (device syncs on a GPU) during one call of fn(), counted on any device."""
    with _HostReads() as mode:
        fn()
    return mode.count


def environment(device: str) -> dict:
    info = {
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    else:
        info["device"] = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                info["device"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
        info["device"] += f" ({os.cpu_count()} cores)"
    return info


def markdown_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = []
    for row in rows:
        cells = []
        for key, _ in columns:
            v = row.get(key)
            cells.append("–" if v is None else (f"{v:,.1f}" if isinstance(v, float) else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, rule, *body])


def write_report(out_dir: str, name: str, env: dict, sections: dict[str, str], data: dict) -> str:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"{name}.json"), "w") as f:
        json.dump({"environment": env, **data}, f, indent=2)
    text = [f"## {name} — {env['date']}, {env['device']}, torch {env['torch']}, triton {env['triton']}", ""]
    for title, table in sections.items():
        text += [f"### {title}", "", table, ""]
    path = os.path.join(out_dir, f"{name}.md")
    with open(path, "w") as f:
        f.write("\n".join(text))
    return "\n".join(text)
