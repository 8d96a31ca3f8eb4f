"""fastgen generate: determinism across chunk sizes and processes, resumability after SIGKILL,
manifest checks, full-disk and bad-argument errors, flat peak memory, model sources."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli

from fastgen.cli import generation
from fastgen.cli.generation import GenerateError, generate, load, verify

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def shard_bytes(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*.npy"))}


cli = run_cli  # in-process; the tests that need a process start one


def test_bytes_do_not_depend_on_the_chunk_size(tmp_path):
    a = generate("gmm8", 2500, str(tmp_path / "a"), steps=10, shard_size=1000, chunk_size=1000, quiet=True)
    generate("gmm8", 2500, str(tmp_path / "b"), steps=10, shard_size=1000, chunk_size=137, quiet=True)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert [s["stop"] for s in a["shards"]] == [1000, 2000, 2500]
    x = load(str(tmp_path / "a"))
    assert x.shape == (2500, 2) and np.isfinite(x).all()


@pytest.mark.slow
def test_two_processes_under_torchrun_give_the_same_bytes(tmp_path):
    args = ["generate", "gmm8", "-n", "5000", "--steps", "10", "--shard-size", "1000", "--quiet"]
    single = cli(*args, "--out", str(tmp_path / "one"))
    assert single.returncode == 0, single.stderr
    # --standalone: torchrun picks a free rendezvous endpoint itself (no port race with other processes).
    dist = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "fastgen", *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, cwd=ROOT, env={**ENV, "OMP_NUM_THREADS": "1"},
                          timeout=300)
    assert dist.returncode == 0, dist.stderr
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "two")
    assert verify(str(tmp_path / "two"))["settings"]["n"] == 5000


@pytest.mark.slow
def test_resumes_after_sigkill_with_identical_bytes(tmp_path):
    args = ["generate", "gmm8", "-n", "40000", "--steps", "30", "--shard-size", "1000", "--quiet"]
    ref = cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    out = tmp_path / "killed"
    rng = random.Random(0)
    for _ in range(3):  # kill at random moments after at least one more shard is done
        done_before = len(list(out.glob("*.npy.json"))) if out.exists() else 0
        proc = subprocess.Popen([sys.executable, "-m", "fastgen", *args, "--out", str(out)], cwd=ROOT, env=ENV,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and len(list(out.glob("*.npy.json"))) <= done_before:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / "manifest.json").exists() or proc.returncode == 0
    final = cli(*args, "--out", str(out))
    assert final.returncode == 0, final.stderr
    assert shard_bytes(out) == shard_bytes(tmp_path / "ref")
    assert not [p for p in out.iterdir() if ".tmp." in p.name]
    assert json.loads((out / "manifest.json").read_text())["shards"] == \
        json.loads((tmp_path / "ref" / "manifest.json").read_text())["shards"]


def test_manifest_validation(tmp_path):
    out = tmp_path / "g"
    generate("gmm8", 300, str(out), steps=5, shard_size=100, quiet=True)
    manifest = verify(str(out))
    assert manifest["settings"]["sampler"] == "ddim" and manifest["versions"]["torch"] == torch.__version__
    shard = out / "shard-000001.npy"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(GenerateError, match="checksum differs"):
        verify(str(out))
    (out / "manifest.json").unlink()
    with pytest.raises(GenerateError, match="not finished"):
        verify(str(out))
    with pytest.raises(GenerateError, match="other settings"):
        generate("gmm8", 300, str(out), steps=6, shard_size=100, quiet=True)


def test_full_disk_leaves_no_corrupt_manifest(tmp_path, monkeypatch):
    def no_space(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(generation._ShardWriter, "write", lambda self, data: self._io(lambda: no_space(self, data)))
    out = tmp_path / "full"
    with pytest.raises(GenerateError, match="No space left on device"):
        generate("gmm8", 300, str(out), steps=5, shard_size=100, quiet=True)
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("shard-*"))


def test_unwritable_destination_and_bad_arguments(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = cli("generate", "gmm8", "-n", "10", "--out", str(blocker / "sub"))
    assert result.returncode == 1 and "cannot create the output folder" in result.stderr
    result = cli("generate", "gmm8", "-n", "10", "--out", str(blocker))
    assert result.returncode == 1 and "is not a folder" in result.stderr
    for bad in (["generate", "gmm8", "--out", "x"], ["generate", "gmm8", "-n", "0", "--out", "x"],
                ["generate", "gmm8", "-n", "5", "--out", "x", "--sampler", "nope"], ["frobnicate"]):
        result = cli(*bad)
        assert result.returncode == 2 and "--help)" in result.stderr and len(result.stderr.splitlines()) == 1
    result = cli("generate", "missing.pt", "-n", "5", "--out", str(tmp_path / "m"), "--shape", "2")
    assert result.returncode == 1 and "no such model file" in result.stderr
    result = cli("generate", "gen_models:wrong_shape", "-n", "5", "--out", str(tmp_path / "w"), "--shape", "4")
    assert result.returncode == 1 and "model must return a tensor of the state's shape" in result.stderr
    result = cli("generate", "gen_models:shrink", "-n", "5", "--out", str(tmp_path / "s"))
    assert result.returncode == 2 and "--shape is needed" in result.stderr


def test_torchscript_export_and_module_sources(tmp_path):
    class Net(torch.nn.Module):
        def forward(self, x, t):
            return 0.5 * x

    path = tmp_path / "net.pt"
    torch.jit.script(Net()).save(str(path))
    a = generate(str(path), 40, str(tmp_path / "ts"), shape=(3, 2), steps=5, quiet=True)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(Net(), (torch.randn(4, 3, 2), torch.rand(4)),
                                   dynamic_shapes={"x": {0: batch}, "t": {0: batch}})
    torch.export.save(exported, str(tmp_path / "net.pt2"))
    generate(str(tmp_path / "net.pt2"), 40, str(tmp_path / "ep"), shape=(3, 2), steps=5, chunk_size=16, quiet=True)
    generate("gen_models:shrink", 40, str(tmp_path / "mod"), shape=(3, 2), steps=5, quiet=True)  # tests/ is on sys.path
    assert a["settings"]["shape"] == [3, 2]
    assert shard_bytes(tmp_path / "ts") == shard_bytes(tmp_path / "mod") == shard_bytes(tmp_path / "ep")


def peak_rss_kb(n: int, out: Path) -> int:
    code = (f"import resource, fastgen; fastgen.generate('gen_models:shrink', {n}, {str(out)!r}, shape=(256,), "
            "steps=4, shard_size=2000, chunk_size=1000, quiet=True); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_n(tmp_path):
    small = peak_rss_kb(4000, tmp_path / "small")  # 4 MB of samples
    large = peak_rss_kb(40000, tmp_path / "large")  # 41 MB of samples: kept in memory, the peak would show it
    assert large - small < 15 * 1024, (small, large)


def test_chunk_size_is_checked(tmp_path):
    from fastgen.cli.generation import GenerateError, generate

    for bad in (0, -3, 2.5, True):
        with pytest.raises(GenerateError, match="chunk_size must be an int >= 1"):
            generate("gmm8", 10, str(tmp_path / "out"), chunk_size=bad, quiet=True)
    assert not (tmp_path / "out").exists()


def test_non_finite_samples_are_an_error_unless_allowed(tmp_path):
    from fastgen.cli.generation import GenerateError, generate, load

    with pytest.raises(GenerateError, match=r"sample \d+ \(shard 0, shard-000000.npy\) is not finite"):
        generate("gen_models:nan_after_zero", 20, str(tmp_path / "bad"), shape=(2,), steps=3, quiet=True)
    assert not (tmp_path / "bad" / "shard-000000.npy").exists()
    generate("gen_models:nan_after_zero", 20, str(tmp_path / "kept"), shape=(2,), steps=3, quiet=True,
             allow_nonfinite=True)
    assert np.isnan(load(str(tmp_path / "kept"))).any()


def test_a_model_returning_another_device_is_an_error():
    from gen_models import meta

    import fastgen

    with pytest.raises(ValueError, match="model must return a tensor of the state's shape .* on cpu, got .* on meta"):
        fastgen.sample(meta, (4, 2), steps=2, prediction="eps", device="cpu")


def test_labels_follow_their_samples_and_are_recorded(tmp_path):
    """Sample i gets label i % 3 (balanced:3) or labels[i] from a file, at any chunk size; the labels and the
    guidance settings are in the manifest; guided runs differ from unguided ones and repeat exactly."""
    common = dict(shape=(2,), prediction="eps", steps=8, shard_size=50, quiet=True)
    a = generate("gen_models:labelled", 120, str(tmp_path / "a"), labels="balanced:3", chunk_size=50, **common)
    generate("gen_models:labelled", 120, str(tmp_path / "b"), labels="balanced:3", chunk_size=17, **common)
    assert shard_bytes(tmp_path / "a") == shard_bytes(tmp_path / "b")
    assert a["settings"]["labels"] == "balanced:3" and a["settings"]["label_key"] == "y"
    path = tmp_path / "labels.npy"
    np.save(path, np.arange(120) % 3)
    c = generate("gen_models:labelled", 120, str(tmp_path / "c"), labels=str(path), chunk_size=50, **common)
    assert np.array_equal(load(str(tmp_path / "c")), load(str(tmp_path / "a")))
    assert c["settings"]["labels"]["sha256"] and c["settings"]["labels"]["file"].endswith("labels.npy")
    x = load(str(tmp_path / "a"))
    means = [x[np.arange(120) % 3 == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]  # the label moved the samples
    g = generate("gen_models:labelled", 120, str(tmp_path / "g"), labels="balanced:3", guidance_scale=3.0,
                 null_label=-1, chunk_size=50, **common)
    assert g["settings"]["guidance_scale"] == 3.0 and g["settings"]["null_label"] == -1
    guided = load(str(tmp_path / "g"))
    assert not np.array_equal(guided, x)
    generate("gen_models:labelled", 120, str(tmp_path / "h"), labels="balanced:3", guidance_scale=3.0,
             null_label=-1, chunk_size=33, **common)
    assert np.array_equal(load(str(tmp_path / "h")), guided)


def test_bad_labels_are_settings_errors(tmp_path):
    common = dict(shape=(2,), prediction="eps", steps=2, quiet=True)
    np.save(tmp_path / "short.npy", np.arange(5))
    with pytest.raises(generation.SettingsError, match="labels must hold 10 integers"):
        generate("gen_models:labelled", 10, str(tmp_path / "a"), labels=str(tmp_path / "short.npy"), **common)
    with pytest.raises(generation.SettingsError, match="balanced:K"):
        generate("gen_models:labelled", 10, str(tmp_path / "a"), labels="balanced:x", **common)
    with pytest.raises(generation.SettingsError, match="guidance_scale needs labels and null_label"):
        generate("gen_models:labelled", 10, str(tmp_path / "a"), labels="balanced:2", guidance_scale=2.0, **common)
    with pytest.raises(generation.SettingsError, match="null_label is for guidance"):
        generate("gen_models:labelled", 10, str(tmp_path / "a"), labels="balanced:2", null_label=0, **common)
    result = cli("generate", "gen_models:labelled", "-n", "6", "--out", str(tmp_path / "cli"), "--shape", "2",
                 "--prediction", "eps", "--steps", "2", "--labels", "balanced:2", "--guidance-scale", "2",
                 "--null-label", "-1", "--quiet")
    assert result.returncode == 0, result.stderr
    assert verify(str(tmp_path / "cli"))["settings"]["labels"] == "balanced:2"


def test_a_trained_flow_is_a_source(tmp_path):
    """A fastgen.flows.Flow saved with torch.save (and the CLI on it): exact draws x = f^-1(z) with z from each
    sample's own seed, so the bytes do not depend on chunk or shard sizes, and mapping them back through the flow
    gives standard normals (mean within 5 standard errors, variance within 5 of its standard errors)."""
    from fastgen.flows import NSF

    torch.manual_seed(0)
    flow = NSF(3, layers=2, hidden=(16,), bins=4, bound=3.0)
    with torch.no_grad():
        for p in flow.parameters():
            p.normal_(std=0.2)
    path = tmp_path / "flow.pt"
    torch.save(flow, path)
    generate(str(path), 4000, str(tmp_path / "a"), seed=5, shard_size=1500, chunk_size=700, quiet=True)
    result = cli("generate", str(path), "-n", "4000", "--out", str(tmp_path / "b"), "--seed", "5", "--quiet")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["sampler"] == "flow"
    x = torch.from_numpy(np.asarray(load(str(tmp_path / "a"))))
    assert torch.equal(x, torch.from_numpy(np.asarray(load(str(tmp_path / "b")))))
    with torch.no_grad():
        z = flow.transform(x)[0].double()
    n = len(z)
    assert (z.mean(0).abs() < 5 / n ** 0.5).all(), z.mean(0)
    assert ((z.var(0) - 1).abs() < 5 * (2 / n) ** 0.5).all(), z.var(0)
    with pytest.raises(generation.SettingsError, match="labels and guidance are for diffusion models"):
        generate(str(path), 10, str(tmp_path / "c"), labels="balanced:2", quiet=True)
    with pytest.raises(generation.SettingsError, match=r"samples have shape \(3,\), got \(2,\)"):
        generate(str(path), 10, str(tmp_path / "d"), shape=(2,), quiet=True)
    torch.save(NSF(3, layers=1, context_features=2), tmp_path / "conditional.pt")
    with pytest.raises(generation.SettingsError, match="is conditional"):
        generate(str(tmp_path / "conditional.pt"), 10, str(tmp_path / "e"), quiet=True)
