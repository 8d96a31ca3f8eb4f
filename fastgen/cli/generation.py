"""Large-batch generation to disk: N samples in fixed-size shards plus a JSON manifest.

* Deterministic: sample i is drawn with its own seed, splitmix64(seed, i), through
  fastgen.sample's per-sample seeds, so its bytes do not depend on the chunk size,
  the number of processes, or restarts (for models that treat samples independently,
  as the built-in targets' exact models do).
* One run per folder: the run holds an exclusive lock on OUT/.lock (flock, released
  by the kernel when the process exits or dies, so a dead run's lock is never in
  the way); a second run on the same folder fails at once.
* Validated before anything is written: n, seed, shape, shard and chunk sizes, the
  memory budget, the free disk space, and the folder's own settings.json.
* Resumable: shard k holds samples [k S, (k+1) S). It is streamed to a temporary
  name, fsynced and renamed, then its sidecar (range, SHA-256) likewise; a shard
  counts as done only when both are in place and the shard's SHA-256 matches its
  sidecar: a resume rehashes every finished shard and regenerates bad ones.
  The manifest is written last, once every shard is done.
* Bounded memory: chunks are sized so that the sampler's working set stays within
  the memory budget; shards are written chunk by chunk, never held whole.
* Distributed: under torchrun (gloo on CPU, nccl on CUDA) rank 0 takes the lock and
  writes the settings, rank r makes shards r, r + W, ...; rank 0 writes the
  manifest after a barrier.

Shards are .npy files: no dependency beyond numpy, memory-mappable, and their
header states dtype and shape.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import io
import json
import logging
import math
import os
import re
import shutil
import socket
import sys
import time
import zipfile

import numpy as np
import torch

from .. import __version__, targets
from ..diffusion.processes import VPSDE, DDPMSchedule
from ..diffusion.samplers import SAMPLERS, make_sampler, spacings
from ..ops import diffusion as ops

TARGETS = {"gmm8": targets.eight_gaussians, "rings": targets.rings, "grid": targets.grid}
MANIFEST = "manifest.json"
SETTINGS = "settings.json"
LOCK = ".lock"
MAX_SHARDS = 10**6  # shard-000000 ... shard-999999
MAX_SEED = 2**64  # seeds are uint64
# Probe chunk sizes for measuring a run's working set (the peak bytes its sampling loop holds at once): two draws,
# whose difference is the per-sample part and whose rest the fixed part.
PROBE_SAMPLES = (2, 8)
# Blocks from this size up are mapped and unmapped one by one (glibc's M_MMAP_THRESHOLD, fixed for a run): the
# resident memory then follows the live tensor bytes that the probes measure, where glibc's default (a threshold
# that rises to 32 MB as large blocks are freed) keeps freed blocks and held 1.9-2.6x the live bytes.
MAP_THRESHOLD = 256 * 1024


class GenerateError(RuntimeError):
    """A generation that cannot proceed: the message says why."""


class SettingsError(GenerateError, ValueError):
    """An argument of generate() that is out of range or malformed (the command line's usage errors)."""


def sample_seeds(seed: int, start: int, stop: int) -> torch.Tensor:
    """splitmix64(seed + i * golden) for i in [start, stop), as non-negative int64 seeds."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(start, stop, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(1)).astype(np.int64))


_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "KIB": 2**10, "M": 2**20, "MB": 2**20, "MIB": 2**20,
          "G": 2**30, "GB": 2**30, "GIB": 2**30, "T": 2**40, "TB": 2**40, "TIB": 2**40}


def parse_bytes(budget) -> int:
    """A byte count from an int or a string like '256MB', '1.5GiB', '4096' (K, M, G, T are powers of 1024)."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, str)):
        raise SettingsError(f"memory_budget must be a size like 256MB or a number of bytes, got {budget!r}")
    if isinstance(budget, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", budget)
        if not match or match.group(2).upper() not in _UNITS:
            raise SettingsError(f"memory_budget must be a size like 256MB, 1.5GB or 4096 (bytes), got {budget!r}")
        value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    else:
        value = float(budget)
    if not math.isfinite(value) or value < 1:
        raise SettingsError(f"memory_budget must be a positive, finite size, got {budget!r}")
    return int(value)


def _int_in(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SettingsError(f"{name} must be an int, got {value!r}")
    if not lo <= value < hi:
        raise SettingsError(f"{name} must be in [{lo}, {hi}), got {value}")
    return int(value)


def check_shape(shape) -> tuple:
    """The shape of one sample: a non-empty tuple of ints >= 1."""
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__len__") or len(shape) == 0:
        raise SettingsError(f"shape must be a non-empty sequence of ints >= 1 (one sample, e.g. (3, 32, 32)), "
                            f"got {shape!r}")
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
            raise SettingsError(f"shape must be a non-empty sequence of ints >= 1, got {tuple(shape)!r}")
    return tuple(int(d) for d in shape)


@dataclasses.dataclass
class Source:
    name: str
    model: object
    shape: tuple
    prediction: str
    target: targets.GaussianMixture | None = None
    exported: bool = False
    flow: bool = False  # a fastgen.flows.Flow: exact samples in one pass from per-sample base draws


def _pickled_module(path: str) -> bool:
    """A torch.save archive (a zip with data.pkl and no torch.export archive_format record)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/data.pkl") for n in names) and not any(n.endswith("archive_format") for n in names)


def _flow_source(source: str, flow, shape, prediction) -> Source:
    event = tuple(flow.event_shape)
    if shape is not None and check_shape(shape) != event:
        raise SettingsError(f"shape: the flow {source!r} samples have shape {event}, got {tuple(shape)}")
    if prediction is not None:
        raise SettingsError("prediction is for diffusion models; a flow samples exactly")
    if any(t.conditional for t in flow.transforms):
        raise SettingsError(f"the flow {source!r} is conditional: generate draws unconditional flows only")
    return Source(source, flow.eval(), event, "flow", flow=True)


def load_source(source: str, sampler: str, shape=None, prediction: str | None = None) -> Source:
    """A built-in target (its exact model), a TorchScript / torch.export file, a fastgen.flows.Flow (saved with
    torch.save, or module:attribute), or module:callable."""
    from ..flows import Flow

    process = DDPMSchedule() if sampler in ("ddpm", "ddim") else VPSDE()
    if source in TARGETS:
        target = TARGETS[source]()
        pred = prediction or "eps"
        if shape is not None and check_shape(shape) != (target.dim,):
            raise SettingsError(f"shape: {source} samples have shape ({target.dim},), got {tuple(shape)}")
        return Source(source, target.model(process, pred), (target.dim,), pred, target)
    exported = False
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
        model, exported = _load_model_file(source)
    if isinstance(model, Flow):
        return _flow_source(source, model, shape, prediction)
    if shape is None:
        raise SettingsError(f"--shape is needed for the model {source!r} (the shape of one sample, e.g. 3,32,32)")
    shape = check_shape(shape)
    if not callable(model):
        raise GenerateError(f"{source!r} is not callable as model(x, t)")
    return Source(source, model, shape, prediction or "eps", exported=exported)


def _load_model_file(source: str):
    """(model, exported) from a TorchScript, torch.export or torch.save file: each is a zip archive, so any other
    file is refused at once (torch.export's loader would log its traceback first)."""
    if not zipfile.is_zipfile(source):
        raise GenerateError(f"{source!r} is neither a TorchScript, a torch.export nor a torch.save file (not a zip "
                            "archive)")
    try:
        return torch.jit.load(source, map_location="cpu"), False
    except Exception:
        pass
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.ERROR)  # its warning repeats, as a traceback, the error raised here
    try:
        if _pickled_module(source):  # torch.save of a whole module: unpickling runs its code (trust it)
            return torch.load(source, map_location="cpu", weights_only=False), False
        return torch.export.load(source).module(), True
    except Exception as err:
        raise GenerateError(f"{source!r} is neither a TorchScript, a torch.export nor a torch.save "
                            f"file: {err}") from None
    finally:
        export_log.setLevel(level)


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_write(path: str, data: bytes) -> None:
    """Write through a temporary file in the same folder, fsync, rename: the file appears whole or not at all."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path)
    except OSError as err:
        raise GenerateError(f"cannot write {path}: {err.strerror or err}") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class _ShardWriter:
    """One .npy shard streamed chunk by chunk to a temporary file and hashed on the way; commit() fsyncs and
    renames it into place and returns its SHA-256. Leaving the block without commit() removes the temporary file."""

    def __init__(self, path: str, shape: tuple):
        self.path, self.tmp = path, f"{path}.tmp.{os.getpid()}"
        self.sha = hashlib.sha256()
        self.file = self._io(lambda: open(self.tmp, "wb"))
        try:
            self.write(_npy_header(shape))
        except BaseException:
            self.__exit__()
            raise

    def _io(self, action):
        try:
            return action()
        except OSError as err:
            raise GenerateError(f"cannot write {self.path}: {err.strerror or err}") from None

    def write(self, data) -> None:
        self._io(lambda: self.file.write(data))
        self.sha.update(data)

    def commit(self) -> str:
        def finish():
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.tmp, self.path)
            _fsync_dir(self.path)

        self._io(finish)
        return self.sha.hexdigest()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.file.closed:
            self.file.close()
        if os.path.exists(self.tmp):
            os.remove(self.tmp)


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def _read_json(path: str, what: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (OSError, ValueError) as err:
        raise GenerateError(f"{path} ({what}) cannot be read: {getattr(err, 'strerror', None) or err}") from None


def _shard_name(k: int) -> str:
    return f"shard-{k:06d}.npy"


def _sha256(path: str) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            sha.update(block)
    return sha.hexdigest()


def _shard_problem(out: str, k: int, start: int, stop: int, nbytes: int) -> str | None:
    """Why shard k is not done ('missing' when absent), or None when it and its sidecar are whole and agree."""
    path = os.path.join(out, _shard_name(k))
    if not os.path.exists(path + ".json") or not os.path.exists(path):
        return "missing"
    if os.path.getsize(path) != nbytes:
        return f"{os.path.getsize(path)} bytes, expected {nbytes}"
    try:
        with open(path + ".json", "rb") as f:
            side = json.loads(f.read())
        if (side.get("file"), side.get("start"), side.get("stop")) != (_shard_name(k), start, stop):
            return "its sidecar names another range"
        if _sha256(path) != side.get("sha256"):
            return "its SHA-256 differs from its sidecar"
    except (OSError, ValueError, AttributeError) as err:
        return f"its sidecar cannot be read ({err})"
    return None


def _release_freed_memory():
    """glibc's malloc_trim: hand the heap's free pages back to the system after a chunk (blocks under malloc's
    mmap threshold are otherwise kept and fragment as chunks come and go)."""
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    return lambda: trim(0)


def _map_large_blocks() -> None:
    """glibc's mmap threshold fixed at MAP_THRESHOLD for the process (no effect elsewhere): a generate run's chunk
    buffers are then returned to the system when freed, so its resident memory stays near the measured working
    set (at a cost in page faults: gmm8's 3-step draws, 30% slower)."""
    try:
        import ctypes

        ctypes.CDLL(None).mallopt(-3, MAP_THRESHOLD)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


_trim_heap = _release_freed_memory()


def _world():
    """(rank, world size), initializing torch.distributed under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size(), True


class _FolderLock:
    """An exclusive flock on OUT/.lock, held for the run. The kernel releases it when the process exits or dies,
    so a lock file left by a killed run is taken over at once; the file names the holder for the error message."""

    def __init__(self, out: str):
        import fcntl

        self.path = os.path.join(out, LOCK)
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise GenerateError(f"cannot create the lock file {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise GenerateError(f"{out!r} is in use by another fastgen generate ({holder}); wait for it to finish "
                                f"or use another folder") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()} on {socket.gethostname()}, since "
                           f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None


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


def _shard_files(out: str) -> list[str]:
    return sorted(name for name in os.listdir(out) if name.startswith("shard-") and ".tmp." not in name)


_OWN_FILE = re.compile(r"^(shard-\d{6}\.npy(\.json)?|settings\.json|manifest\.json)(\.tmp\.\d+)?$|^\.lock$")
_SETTINGS_KEYS = {"source", "n", "sampler", "steps", "spacing", "seed", "shard_size", "prediction", "shape", "dtype"}
MANIFEST_FORMAT = "fastgen-shards/1"


def _check_own_folder(out: str) -> None:
    """generate writes only into an empty folder or one of its own runs: any other file, a settings.json without
    the keys fastgen writes or a manifest of another format is refused, and nothing is touched."""
    foreign = sorted(name for name in os.listdir(out) if not _OWN_FILE.match(name))
    if foreign:
        listed = ", ".join(foreign[:8]) + (f" and {len(foreign) - 8} more" if len(foreign) > 8 else "")
        raise GenerateError(f"{out!r} holds files fastgen generate did not write ({listed}); it writes only into an "
                            "empty folder or one of its own runs: use a new folder")
    settings_path, manifest_path = os.path.join(out, SETTINGS), os.path.join(out, MANIFEST)
    if os.path.exists(settings_path):
        old = _read_json(settings_path, "the settings of the generation in this folder")
        if not isinstance(old, dict) or not _SETTINGS_KEYS <= set(old):
            raise GenerateError(f"{settings_path} is not a settings file fastgen generate wrote; use a new folder")
    if os.path.exists(manifest_path):
        manifest = _read_json(manifest_path, "the manifest in this folder")
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise GenerateError(f"{manifest_path} is not a {MANIFEST_FORMAT} manifest of fastgen generate; use a new "
                                "folder")


def _claim_folder(out: str, settings: dict, need_bytes: int) -> _FolderLock:
    """Lock the folder, check it holds this generation or nothing, check the free space, write settings.json."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise GenerateError(f"the output path {out!r} is not a folder")
    if os.path.isdir(out):
        _check_own_folder(out)  # before the lock file: a folder of someone else's gets nothing written into it
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise GenerateError(f"cannot create the output folder {out!r}: {err.strerror or err}") from None
    lock = _FolderLock(out)
    try:
        _check_own_folder(out)
        settings_path = os.path.join(out, SETTINGS)
        shards = _shard_files(out)
        if os.path.exists(settings_path):
            old = _read_json(settings_path, "the settings of the generation in this folder")
            if old != settings and shards:
                changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
                raise GenerateError(f"{out!r} holds a generation with other settings ({', '.join(changed)} differ); "
                                    f"use a new folder")
        elif shards:
            raise GenerateError(f"{out!r} holds shard files but no {SETTINGS}: they are not adopted; use a new "
                                f"folder")
        free = shutil.disk_usage(out).free
        if need_bytes > free:
            raise GenerateError(f"the shards still to write need {need_bytes:,} bytes and {out!r} has {free:,} free")
        _fsync_write(settings_path, _json_bytes(settings))
    except BaseException:
        lock.release()
        raise
    return lock


def _agree(distributed: bool, ok: bool) -> None:
    """Under torchrun: every rank learns whether rank 0 could claim the folder (rank 0 raises its own error)."""
    if not distributed:
        return
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0], device="cuda" if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    if not flag.item():
        raise GenerateError("rank 0 could not claim the output folder (its error says why)")


def _labels(labels, n: int) -> tuple[np.ndarray | None, object]:
    """Sample i's class label, and how the settings record them: "balanced:K" (label i % K) or a .npy file of n
    integers (recorded with its SHA-256)."""
    if labels is None:
        return None, None
    if isinstance(labels, str) and labels.startswith("balanced:"):
        try:
            classes = int(labels.split(":", 1)[1])
        except ValueError:
            classes = 0
        if classes < 1:
            raise SettingsError(f"labels 'balanced:K' needs an int K >= 1 (the number of classes), got {labels!r}")
        return np.arange(n, dtype=np.int64) % classes, labels
    if isinstance(labels, str):
        try:
            values = np.load(labels, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise SettingsError(f"labels must be 'balanced:K' or a .npy file of {n} integers; {labels!r}: "
                                f"{err}") from None
        with open(labels, "rb") as f:
            record = {"file": os.path.abspath(labels), "sha256": hashlib.sha256(f.read()).hexdigest()}
    else:
        raise SettingsError(f"labels must be 'balanced:K' or the path of a .npy file, got {labels!r}")
    if values.shape != (n,) or values.dtype.kind not in "iu":
        raise SettingsError(f"labels must hold {n} integers (one per sample), got {values.dtype} {values.shape}")
    return values.astype(np.int64), record


def _check_guidance(guidance_scale, null_label, label_values) -> None:
    if guidance_scale is not None:
        if label_values is None or null_label is None:
            raise SettingsError("guidance_scale needs labels and null_label (the unconditional label)")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or \
                not math.isfinite(guidance_scale):
            raise SettingsError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
    elif null_label is not None:
        raise SettingsError("null_label is for guidance: give guidance_scale")


def _chunk_size(chunk_size, budget: int, job, per_shard: int) -> int:
    """Samples per draw: chunk_size, or the most whose measured working set (:func:`_working_set`: the sampler's
    buffers and the model's own tensors, at this run's settings) fits the budget; then evened out so that every
    draw of a shard has one size (the last one padded with the next samples' seeds and cut): allocations of one
    size reuse the freed blocks, where mixed sizes fragment the heap."""
    if chunk_size is None:
        fixed, per_sample = _working_set(job)
        chunk_size = (budget - fixed) // per_sample
        if chunk_size < 1:
            raise SettingsError(f"memory_budget of {budget:,} bytes is less than one sample's working set: "
                                f"{fixed + per_sample:,} bytes at least for shape {job.src.shape} ({per_sample:,} "
                                f"per sample and {fixed:,} fixed, measured on probe draws)")
    return -(-per_shard // -(-per_shard // min(chunk_size, per_shard)))


def _working_set(job) -> tuple[int, int]:
    """(fixed, per-sample) bytes the run's draws hold at once, from two probe draws of PROBE_SAMPLES samples
    through the run's own loop (model, sampler, guidance, the copy to the host), thrown away."""
    peaks = []
    for size in PROBE_SAMPLES:
        probe = _Drawer(dataclasses.replace(job, chunk_size=size), "a probe batch (for the memory budget)")
        peaks.append(_peak_bytes(lambda probe=probe, size=size: probe(0, size), job.device))
    (small, a), (large, b) = zip(PROBE_SAMPLES, peaks, strict=True)
    per_sample = max(1, math.ceil((b - a) / (large - small)))
    host = math.prod(job.src.shape)  # the finiteness check's bool per element (numpy's, not seen by the profiler)
    return max(0, a - small * per_sample), per_sample + host


def _peak_bytes(fn, device: torch.device) -> int:
    """The most bytes of tensors that fn() holds at once beyond those alive before it: the CUDA allocator's peak
    statistic, or elsewhere the running sum of the profiler's allocation events."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from torch.profiler import ProfilerActivity, profile

    with _quiet_fd2(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


@contextlib.contextmanager
def _quiet_fd2():
    """File descriptor 2 sent to /dev/null (the profiler's C++ start and stop lines go there); Python errors
    still raise."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _settings(src, n: int, sampler: str, steps: int, seed: int, shard_size: int) -> dict:
    """What a run is, as settings.json records it (the labels and guidance are added by the caller)."""
    spacing = spacings(sampler, DDPMSchedule() if sampler in ("ddpm", "ddim") else VPSDE())[0]
    settings = {"source": src.name, "n": n, "sampler": sampler, "steps": steps, "spacing": spacing, "seed": seed,
                "shard_size": shard_size, "prediction": src.prediction, "shape": list(src.shape),
                "dtype": "float32"}
    if src.flow:  # exact draws: the sampler's settings do not apply
        settings.update(sampler="flow", steps=None, spacing=None)
    return settings


def generate(source: str, n: int, out: str, *, sampler: str = "ddim", steps: int = 50, seed: int = 0,
             shard_size: int = 65536, chunk_size: int | None = None, memory_budget="256MB", shape=None,
             prediction: str | None = None, device=None, quiet: bool = False, allow_nonfinite: bool = False,
             labels=None, label_key: str = "y", guidance_scale: float | None = None,
             null_label: int | None = None) -> dict:
    """Generate n samples into folder `out` (see the module docstring); returns the manifest.

    The chunk size (samples per sampling call) is chunk_size, or the most samples whose working set fits in
    memory_budget: the peak bytes of the run's own loop (the sampler's buffers and the model's tensors), measured on
    two small probe draws before anything is written.
    ``labels`` ("balanced:K" or a .npy file of n integers) gives sample i the class label labels[i], passed to the
    model as the keyword ``label_key``; with ``guidance_scale`` the model is guided against ``null_label``.
    Labels, key and guidance are part of the settings a resumed run must repeat.
    """
    if sampler not in SAMPLERS:
        raise SettingsError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    n = _int_in("n", n, 1, 2**63)
    steps = _int_in("steps", steps, 1, 2**31)
    seed = _int_in("seed", seed, 0, MAX_SEED)
    shard_size = _int_in("shard_size", shard_size, 1, 2**63)
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise SettingsError(f"chunk_size must be an int >= 1 (or None: from memory_budget), got {chunk_size!r}")
    budget = parse_bytes(memory_budget)
    shards = -(-n // shard_size)
    if shards > MAX_SHARDS:
        raise SettingsError(f"n={n:,} in shards of {shard_size:,} makes {shards:,} shards, more than {MAX_SHARDS:,}: "
                            f"raise shard_size (--shard-size)")
    label_values, label_record = _labels(labels, n)
    _check_guidance(guidance_scale, null_label, label_values)
    src = load_source(source, sampler, shape, prediction)
    _map_large_blocks()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, world, distributed = _world()
    if device.type == "cuda" and distributed:
        device = torch.device("cuda", rank % torch.cuda.device_count())
    settings = _settings(src, n, sampler, steps, seed, shard_size)
    if src.flow and (label_values is not None or guidance_scale is not None):
        raise SettingsError("labels and guidance are for diffusion models, not a flow source")
    if label_values is not None:
        settings.update(labels=label_record, label_key=label_key)
    if guidance_scale is not None:
        settings.update(guidance_scale=float(guidance_scale), null_label=int(null_label))
    job = _Job(src=src, out=out, settings=settings, ranges=[(k, k * shard_size, min(n, (k + 1) * shard_size))
                                                           for k in range(shards)],
               rank=rank, world=world, distributed=distributed, device=device, chunk_size=chunk_size or 1,
               quiet=quiet, allow_nonfinite=allow_nonfinite, labels=label_values)
    job = dataclasses.replace(job, chunk_size=_chunk_size(chunk_size, budget, job, min(shard_size, n)))
    lock = None
    if rank == 0:
        try:
            missing = sum(job.sizes[k] for k, lo, hi in job.ranges
                          if not os.path.exists(os.path.join(out, _shard_name(k) + ".json")))
            lock = _claim_folder(out, settings, missing)
        except BaseException:
            _agree(distributed, False)
            raise
    _agree(distributed, True)
    try:
        return _run(job)
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass(frozen=True)
class _Job:
    """One process's part of a run: the source, the folder, the settings, the shards (k, lo, hi), the process's
    place among the ranks, and how it draws."""

    src: Source
    out: str
    settings: dict
    ranges: list
    rank: int
    world: int
    distributed: bool
    device: torch.device
    chunk_size: int
    quiet: bool
    allow_nonfinite: bool
    labels: np.ndarray | None = None

    @functools.cached_property
    def sizes(self) -> dict:
        """Each shard's file size in bytes."""
        per_sample = math.prod(self.src.shape) * 4
        file_bytes = {count: count * per_sample + len(_npy_header((count,) + self.src.shape))
                      for count in {hi - lo for _, lo, hi in (self.ranges[0], self.ranges[-1])}}
        return {k: file_bytes[hi - lo] for k, lo, hi in self.ranges}


def _shards_to_make(job: _Job) -> list:
    """This rank's shards that are not finished: a killed run's partial files are removed, damaged shards too."""
    for name in os.listdir(job.out):  # a killed run's partial files of this rank's shards never count
        owned = name.startswith("shard-") and name[6:12].isdigit() and int(name[6:12]) % job.world == job.rank
        if ".tmp." in name and owned:
            try:  # (another rank's temporary files may be in the middle of being written)
                os.remove(os.path.join(job.out, name))
            except FileNotFoundError:
                pass
    todo = []
    for k, lo, hi in job.ranges[job.rank::job.world]:
        problem = _shard_problem(job.out, k, lo, hi, job.sizes[k])
        if problem is None:
            continue
        if problem != "missing":
            print(f"fastgen generate: {_shard_name(k)} is damaged ({problem}): making it again", file=sys.stderr)
            for suffix in (".json", ""):  # the sidecar first: a shard without one is never taken as done
                path = os.path.join(job.out, _shard_name(k) + suffix)
                if os.path.exists(path):
                    os.remove(path)
        todo.append((k, lo, hi))
    return todo


class _Drawer:
    """Draws chunks of samples: the loop is planned (on CUDA: captured) once, at the first chunk, and drawn for
    every chunk with that chunk's per-sample seeds and labels."""

    def __init__(self, job: _Job, batch: str = "a batch"):
        self.job, self.loop, self.batch = job, None, batch  # batch: what an error calls a draw

    def _kwargs(self, lo: int):
        """The chunk's labels (its padding past n takes label 0: those samples are cut)."""
        job = self.job
        if job.labels is None:
            return None
        chunk = np.zeros(job.chunk_size, dtype=np.int64)
        part = job.labels[lo:lo + job.chunk_size]
        chunk[:len(part)] = part
        return {job.settings["label_key"]: torch.from_numpy(chunk)}

    def _flow(self, seeds: torch.Tensor) -> torch.Tensor:
        """x = f^-1(z), z ~ N(0, I) from each sample's own seed (as a sampler's prior draw)."""
        job = self.job
        if self.loop is None:
            self.loop = job.src.model.to(job.device)
        z = torch.empty((job.chunk_size,) + job.src.shape, device=job.device)
        ops.add_noise_(z, ops.noise_row(1.0, device=job.device), sample_seeds=seeds.to(job.device))
        with torch.no_grad():
            return self.loop.from_base(z)

    def _diffusion(self, seeds: torch.Tensor, kwargs) -> torch.Tensor:
        job, settings = self.job, self.job.settings
        if self.loop is None:
            guided = {} if "guidance_scale" not in settings else dict(
                guidance_scale=settings["guidance_scale"],
                uncond_kwargs={settings["label_key"]: torch.tensor([settings["null_label"]])})
            self.loop = make_sampler(job.src.model, (job.chunk_size,) + job.src.shape, sampler=settings["sampler"],
                                     steps=settings["steps"], spacing=settings["spacing"],
                                     prediction=job.src.prediction, per_sample_seeds=seeds, device=job.device,
                                     model_kwargs=kwargs, **guided)
        with torch.no_grad():
            return self.loop.draw(per_sample_seeds=seeds.to(job.device), model_kwargs=kwargs)

    def __call__(self, lo: int, hi: int) -> np.ndarray:
        job = self.job
        seeds = sample_seeds(job.settings["seed"], lo, lo + job.chunk_size)
        try:
            x = self._flow(seeds) if job.src.flow else self._diffusion(seeds, self._kwargs(lo))
        except Exception as err:
            hint = (" (a torch.export program traced at a fixed batch size runs only at that batch: export it with "
                    "a dynamic batch dimension, or set the chunk and shard sizes to it)" if job.src.exported else "")
            raise GenerateError(f"sampling {job.src.name!r} failed on {self.batch} of {hi - lo}: "
                                f"{type(err).__name__}: {err}{hint}") from None
        return x[: hi - lo].float().cpu().numpy()


def _make_shard(job: _Job, draw: _Drawer, shard: tuple, progress: _Progress) -> None:
    """Shard (k, first, stop), chunk by chunk into its temporary file, committed with its sidecar last."""
    k, first, stop = shard
    path = os.path.join(job.out, _shard_name(k))
    with _ShardWriter(path, (stop - first,) + job.src.shape) as writer:
        for lo in range(first, stop, job.chunk_size):
            hi = min(stop, lo + job.chunk_size)
            part = draw(lo, hi)
            if not job.allow_nonfinite:
                finite = np.isfinite(part).reshape(len(part), -1).all(axis=1)
                if not finite.all():
                    raise GenerateError(f"sample {lo + int(np.argmin(finite))} (shard {k}, {_shard_name(k)}) is "
                                        f"not finite: the model returned NaN or inf; nothing of that shard was "
                                        f"written (allow_nonfinite=True / --allow-nonfinite keeps such samples)")
            writer.write(memoryview(np.ascontiguousarray(part)).cast("B"))
            del part
            _trim_heap()
            progress.advance(hi - lo)
        digest = writer.commit()
    _fsync_write(path + ".json", _json_bytes({"file": _shard_name(k), "start": first, "stop": stop,
                                              "sha256": digest}))


def _run(job: _Job) -> dict | None:
    """This rank's shards, then (rank 0, after a barrier) the manifest."""
    todo = _shards_to_make(job)
    progress = _Progress(sum(hi - lo for _, lo, hi in todo), job.quiet or job.rank != 0)
    start, draw = time.perf_counter(), _Drawer(job)
    for shard in todo:
        _make_shard(job, draw, shard, progress)
    progress.close()
    if job.distributed:
        import torch.distributed as dist

        dist.barrier()
    if job.rank != 0:
        return None
    manifest = _write_manifest(job.out, job.settings, len(job.ranges))
    if not job.quiet:
        made, elapsed, n = sum(hi - lo for _, lo, hi in todo), time.perf_counter() - start, job.settings["n"]
        rate = f", {made / elapsed:,.0f} samples/s" if made and elapsed > 0 else ""
        print(f"fastgen generate: {n:,} samples in {len(job.ranges)} shards at {job.out} ({made:,} made now in "
              f"{elapsed:.1f} s{rate}; {job.world} process{'es' if job.world > 1 else ''})", file=sys.stderr)
    return manifest


def _npy_header(shape) -> bytes:
    """The .npy (format 1.0) header of a C-ordered little-endian float32 array of this shape, as np.save writes it."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def _write_manifest(out: str, settings: dict, shards: int) -> dict:
    entries = []
    for k in range(shards):
        sidecar = os.path.join(out, _shard_name(k) + ".json")
        if not os.path.exists(sidecar):
            raise GenerateError(f"shard {k} is missing in {out!r}; rerun the same command to finish it")
        entries.append(_read_json(sidecar, f"the sidecar of shard {k}"))
    manifest = {"format": MANIFEST_FORMAT, "settings": settings, "shards": entries,
                "versions": {"fastgen": __version__, "torch": torch.__version__, "numpy": np.__version__}}
    _fsync_write(os.path.join(out, MANIFEST), _json_bytes(manifest))
    return manifest


_SHARD_FILE = re.compile(r"^shard-\d{6}\.npy$")


def _shard_in(out: str, name) -> str:
    """The path of a manifest's shard entry, confined to the folder: a shard name as generate writes it (no
    absolute path, no separator, no ..), and, symlinks resolved, still inside the folder."""
    if not isinstance(name, str) or not _SHARD_FILE.match(name):
        raise GenerateError(f"the manifest names {name!r}: not a shard file of this folder (shard-NNNNNN.npy)")
    path = os.path.join(out, name)
    if os.path.dirname(os.path.realpath(path)) != os.path.realpath(out):
        raise GenerateError(f"{name} resolves outside {out!r} (a symbolic link): not read")
    return path


def _check_shard_header(path: str, shape: tuple) -> None:
    """The shard's .npy header against the settings: float32, C order, (its sample count, *sample shape)."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            got_shape, fortran, dtype = read(f)
        except ValueError as err:
            raise GenerateError(f"{os.path.basename(path)} is not a .npy file: {err}") from None
    if tuple(got_shape) != shape or fortran or dtype != np.dtype("<f4"):
        raise GenerateError(f"{os.path.basename(path)} holds {dtype} {tuple(got_shape)}, the settings say float32 "
                            f"{shape}")


def verify(out: str) -> dict:
    """Check a finished generation: every shard present in the folder, its range, checksum, shape and dtype as the
    manifest and the settings say."""
    path = os.path.join(out, MANIFEST)
    if not os.path.exists(path):
        raise GenerateError(f"{out!r} has no {MANIFEST}: the generation is not finished")
    manifest = _read_json(path, "the manifest")
    try:
        expected, n, entries = 0, manifest["settings"]["n"], list(manifest["shards"])
        shape = tuple(manifest["settings"]["shape"])
        for entry in entries:
            shard = _shard_in(out, entry["file"])
            if entry["start"] != expected:
                raise GenerateError(f"{entry['file']}: starts at {entry['start']}, expected {expected}")
            if not os.path.exists(shard):
                raise GenerateError(f"{entry['file']} is missing")
            if _sha256(shard) != entry["sha256"]:
                raise GenerateError(f"{entry['file']}: checksum differs from the manifest")
            _check_shard_header(shard, (entry["stop"] - entry["start"],) + shape)
            expected = entry["stop"]
    except (KeyError, TypeError) as err:
        raise GenerateError(f"{path} is not a fastgen manifest ({type(err).__name__}: {err})") from None
    if expected != n:
        raise GenerateError(f"the shards hold {expected} samples, the manifest says {n}")
    return manifest


class Samples:
    """The samples of a verified generation, shard by shard memory-mapped: len(), .shape, .dtype, indexing by int,
    slice or index array (only the shards touched are read), iteration over shards, np.asarray() for one array."""

    def __init__(self, shards: list[np.ndarray]):
        self.shards = shards
        self.starts = np.cumsum([0] + [len(s) for s in shards])
        first = shards[0]
        self.shape, self.dtype = (int(self.starts[-1]),) + first.shape[1:], first.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __iter__(self):
        return iter(self.shards)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return self[key[0]][(slice(None),) + key[1:]] if not isinstance(key[0], (int, np.integer)) \
                else self[key[0]][key[1:]]
        if isinstance(key, (int, np.integer)):
            i = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} is out of range for {len(self)} samples")
            k = int(np.searchsorted(self.starts, i, side="right")) - 1
            return np.asarray(self.shards[k][i - self.starts[k]])
        rows = np.arange(len(self))[key]  # a slice, or an index / boolean array, as numpy reads it
        shard = np.searchsorted(self.starts, rows, side="right") - 1
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        for k in np.unique(shard):
            picked = shard == k
            out[picked] = self.shards[k][rows[picked] - self.starts[k]]
        return out

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate(self.shards)
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"Samples(shape={self.shape}, dtype={self.dtype}, shards={len(self.shards)})"


def load(out: str, mmap: bool = True) -> Samples | np.ndarray:
    """The samples of a verified generation: memory-mapped shard by shard (a Samples; np.asarray() makes one
    array), or with mmap=False read into one array."""
    manifest = verify(out)
    shards = [np.load(_shard_in(out, e["file"]), mmap_mode="r" if mmap else None) for e in manifest["shards"]]
    return Samples(shards) if mmap else np.concatenate(shards)
