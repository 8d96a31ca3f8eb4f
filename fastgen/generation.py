"""Large-batch generation to disk: N samples in fixed-size shards plus a JSON manifest.

* Deterministic: sample i is drawn with its own seed, splitmix64(seed, i), through
  fastgen.sample's per-sample seeds, so its bytes do not depend on the chunk size,
  the number of processes, or restarts (for models that treat samples independently,
  as the built-in targets' exact models do).
* Resumable: shard k holds samples [k S, (k+1) S). It is written to a temporary
  name, fsynced and renamed, then its sidecar (range, SHA-256) likewise; a shard
  counts as done only when both are in place. Rerunning the same command skips
  finished shards; the manifest is written last, once every shard is done.
* Distributed: under torchrun (gloo on CPU, nccl on CUDA) rank r makes shards
  r, r + W, ...; rank 0 writes the manifest after a barrier.

Shards are .npy files: no dependency beyond numpy, memory-mappable, and their
header states dtype and shape.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import math
import os
import sys
import time

import numpy as np
import torch

from . import __version__, targets
from .samplers.diffusion import SAMPLERS, make_sampler
from .sde import DDPMSchedule, VPSDE

TARGETS = {"gmm8": targets.eight_gaussians, "rings": targets.rings, "grid": targets.grid}
MANIFEST = "manifest.json"
SETTINGS = "settings.json"


class GenerateError(RuntimeError):
    """A generation that cannot proceed: the message says why."""


def sample_seeds(seed: int, start: int, stop: int) -> torch.Tensor:
    """splitmix64(seed + i * golden) for i in [start, stop), as non-negative int64 seeds."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(1)).astype(np.int64))


@dataclasses.dataclass
class Source:
    name: str
    model: object
    shape: tuple
    prediction: str
    target: targets.GaussianMixture | None = None


def load_source(source: str, sampler: str, shape=None, prediction: str | None = None) -> Source:
    """A built-in target (its exact model), a TorchScript / torch.export file, or module:callable."""
    process = DDPMSchedule() if sampler in ("ddpm", "ddim") else VPSDE()
    if source in TARGETS:
        target = TARGETS[source]()
        pred = prediction or "eps"
        return Source(source, target.model(process, pred), (target.dim,), pred, target)
    if shape is None:
        raise GenerateError(f"--shape is needed for the model {source!r} (the shape of one sample, e.g. 3,32,32)")
    if ":" in source and not os.path.exists(source):
        module_name, _, attr = source.partition(":")
        try:
            model = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise GenerateError(f"cannot import {source!r}: {err}") from None
    else:
        if not os.path.isfile(source):
            known = ", ".join(TARGETS)
            raise GenerateError(f"no such model file: {source!r} (built-in targets: {known}; or module:callable)")
        try:
            model = torch.jit.load(source, map_location="cpu")
        except Exception:
            try:
                model = torch.export.load(source).module()
            except Exception as err:
                raise GenerateError(f"{source!r} is neither a TorchScript nor a torch.export file: {err}") from None
    if not callable(model):
        raise GenerateError(f"{source!r} is not callable as model(x, t)")
    return Source(source, model, tuple(shape), prediction or "eps")


def _fsync_write(path: str, write) -> None:
    """Write through a temporary file in the same folder, fsync, rename: the file appears whole or not at all."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise GenerateError(f"cannot write {path}: {err.strerror or err}") from None


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _shard_name(k: int) -> str:
    return f"shard-{k:06d}.npy"


def _shard_done(out: str, k: int, nbytes: int) -> bool:
    path = os.path.join(out, _shard_name(k))
    return os.path.exists(path + ".json") and os.path.exists(path) and os.path.getsize(path) == nbytes


def _world():
    """(rank, world size), initializing torch.distributed under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


class _Progress:
    def __init__(self, total: int, quiet: bool):
        self.total, self.done, self.start = total, 0, time.perf_counter()
        self.enabled = not quiet and sys.stderr.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        width = 30
        fill = width * self.done // max(self.total, 1)
        print(f"\r[{'#' * fill}{'.' * (width - fill)}] {self.done:,}/{self.total:,}  {rate:,.0f} samples/s  "
              f"ETA {eta:5.0f} s", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def _parse_bytes(budget) -> int:
    if isinstance(budget, (int, float)):
        return int(budget)
    text = str(budget).strip().upper()
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10), ("B", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * scale)
    return int(text)


def generate(source: str, n: int, out: str, *, sampler: str = "ddim", steps: int = 50, seed: int = 0,
             shard_size: int = 65536, chunk_size: int | None = None, memory_budget="256MB", shape=None,
             prediction: str | None = None, device=None, quiet: bool = False, allow_nonfinite: bool = False) -> dict:
    """Generate n samples into folder `out` (see the module docstring); returns the manifest."""
    if sampler not in SAMPLERS:
        raise GenerateError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if n < 1 or shard_size < 1 or steps < 1:
        raise GenerateError("n, shard_size and steps must be >= 1")
    src = load_source(source, sampler, shape, prediction)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    per_sample = math.prod(src.shape) * 4
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise GenerateError(f"chunk_size must be an int >= 1 (or None: from memory_budget), got {chunk_size!r}")
    if chunk_size is None:  # state, model output, aux, temporaries: about 8 copies of a sample each
        chunk_size = max(1, _parse_bytes(memory_budget) // (8 * per_sample))
    chunk_size = min(chunk_size, shard_size)
    rank, world, distributed = _world()
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    settings = {"source": src.name, "n": n, "sampler": sampler, "steps": steps, "seed": seed,
                "shard_size": shard_size, "prediction": src.prediction, "shape": list(src.shape),
                "dtype": "float32"}
    if os.path.exists(out) and not os.path.isdir(out):
        raise GenerateError(f"the output path {out!r} is not a folder")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise GenerateError(f"cannot create the output folder {out!r}: {err.strerror or err}") from None
    settings_path = os.path.join(out, SETTINGS)
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            if json.load(f) != settings:
                raise GenerateError(f"{out!r} holds a generation with other settings; use a new folder")
    elif rank == 0:
        _fsync_write(settings_path, lambda f: f.write(_json_bytes(settings)))
    shards = math.ceil(n / shard_size)
    mine = [k for k in range(rank, shards, world)]
    for name in os.listdir(out):  # a killed run's partial files of this rank's shards never count
        owned = name.startswith("shard-") and name[6:12].isdigit() and int(name[6:12]) % world == rank
        if ".tmp." in name and owned:
            try:  # (another rank's temporary files may be in the middle of being written)
                os.remove(os.path.join(out, name))
            except FileNotFoundError:
                pass
    header = np.lib.format.header_data_from_array_1_0(np.empty((0,) + src.shape, np.float32))
    todo = []
    for k in mine:
        count = min(n, (k + 1) * shard_size) - k * shard_size
        arr_bytes = count * per_sample
        nbytes = arr_bytes + _npy_header_size(header, (count,) + src.shape)
        if not _shard_done(out, k, nbytes):
            todo.append((k, count))
    progress = _Progress(sum(c for _, c in todo), quiet or rank != 0)
    start = time.perf_counter()
    samplers = {}  # one planned (on CUDA: captured) loop per chunk size, reused for every chunk of that size

    def draw(lo: int, hi: int) -> torch.Tensor:
        seeds = sample_seeds(seed, lo, hi)
        if hi - lo not in samplers:
            samplers[hi - lo] = make_sampler(src.model, (hi - lo,) + src.shape, sampler=sampler, steps=steps,
                                             prediction=src.prediction, per_sample_seeds=seeds, device=device)
        return samplers[hi - lo].draw(per_sample_seeds=seeds.to(device))

    for k, count in todo:
        first = k * shard_size
        parts = []
        for lo in range(first, first + count, chunk_size):
            hi = min(first + count, lo + chunk_size)
            try:
                with torch.no_grad():
                    x = draw(lo, hi)
            except (ValueError, TypeError, RuntimeError) as err:
                raise GenerateError(f"sampling {src.name!r} failed: {err}") from None
            part = x.float().cpu().numpy()
            if not allow_nonfinite and not np.isfinite(part).all():
                bad = lo + int(np.argmin(np.isfinite(part).reshape(len(part), -1).all(axis=1)))
                raise GenerateError(f"sample {bad} (shard {k}, {_shard_name(k)}) is not finite: the model returned "
                                    f"NaN or inf; nothing of that shard was written (allow_nonfinite=True / "
                                    f"--allow-nonfinite keeps such samples)")
            parts.append(part)
            progress.advance(hi - lo)
        shard = np.concatenate(parts)
        path = os.path.join(out, _shard_name(k))
        _fsync_write(path, lambda f: np.save(f, shard))
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
        _fsync_write(path + ".json", lambda f: f.write(_json_bytes(
            {"file": _shard_name(k), "start": first, "stop": first + count, "sha256": digest})))
    progress.close()
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    manifest = _write_manifest(out, settings, shards) if rank == 0 else None
    if rank == 0 and not quiet:
        made = sum(c for _, c in todo)
        elapsed = time.perf_counter() - start
        print(f"fastgen generate: {n:,} samples in {shards} shards at {out} ({made:,} made now in {elapsed:.1f} s"
              f"{f', {made / elapsed:,.0f} samples/s' if made and elapsed > 0 else ''}; {world} process"
              f"{'es' if world > 1 else ''})", file=sys.stderr)
    return manifest


def _npy_header_size(header: dict, shape) -> int:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {**header, "shape": tuple(shape)})
    return buf.tell()


def _write_manifest(out: str, settings: dict, shards: int) -> dict:
    entries = []
    for k in range(shards):
        sidecar = os.path.join(out, _shard_name(k) + ".json")
        if not os.path.exists(sidecar):
            raise GenerateError(f"shard {k} is missing in {out!r}; rerun the same command to finish it")
        with open(sidecar) as f:
            entries.append(json.load(f))
    manifest = {"format": "fastgen-shards/1", "settings": settings, "shards": entries,
                "versions": {"fastgen": __version__, "torch": torch.__version__, "numpy": np.__version__}}
    _fsync_write(os.path.join(out, MANIFEST), lambda f: f.write(_json_bytes(manifest)))
    return manifest


def verify(out: str) -> dict:
    """Check a finished generation: every shard present, its range and checksum as the manifest says."""
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        raise GenerateError(f"{out!r} has no {MANIFEST}: the generation is not finished")
    with open(path) as f:
        manifest = json.load(f)
    expected = 0
    for entry in manifest["shards"]:
        shard = os.path.join(out, entry["file"])
        if entry["start"] != expected:
            raise GenerateError(f"{entry['file']}: starts at {entry['start']}, expected {expected}")
        if hashlib.sha256(open(shard, "rb").read()).hexdigest() != entry["sha256"]:
            raise GenerateError(f"{entry['file']}: checksum differs from the manifest")
        expected = entry["stop"]
    if expected != manifest["settings"]["n"]:
        raise GenerateError(f"the shards hold {expected} samples, the manifest says {manifest['settings']['n']}")
    return manifest


def load(out: str, mmap: bool = True) -> np.ndarray:
    """All samples of a verified generation as one array (shards concatenated)."""
    manifest = verify(out)
    return np.concatenate([np.load(os.path.join(out, e["file"]), mmap_mode="r" if mmap else None)
                           for e in manifest["shards"]])
