"""The package as users install it: an sdist built from the tree, a wheel built from that sdist (so the sdist is
complete), installed into a clean venv holding only torch and numpy, then imported from outside the repository.
Full tier: it compiles fastgen._C once more (about 4 minutes on 2 cores)."""

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

SMOKE = """
import torch, fastgen
assert fastgen.build_info(), "fastgen._C did not load from the wheel"
gmm = fastgen.targets.eight_gaussians()
x = fastgen.langevin(torch.randn(2000, 2), energy=gmm, n_steps=200, step_size=1e-2, seed=0)
assert x.shape == (2000, 2) and torch.isfinite(x).all()
model = gmm.model(fastgen.VPSDE(), "eps")
x = fastgen.sample(model, (256, 2), sde=fastgen.VPSDE(), sampler="dpmpp_2m", steps=10, prediction="eps", seed=0)
assert x.shape == (256, 2) and torch.isfinite(x).all()
print("smoke ok", fastgen.__file__)
"""


def _run(*args, cwd=None, env=None) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=1200,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_sdist_and_wheel_install_and_run_in_a_clean_venv(tmp_path):
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp_path)
    (sdist,) = dist.glob("fastgen-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in archive.getnames()}
    tracked = _run("git", "ls-files", "csrc", "kernels", "fastgen", cwd=ROOT).split()
    missing = [f for f in tracked if f not in names]
    assert not missing, f"the sdist leaves out {missing}"

    _run(sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w", dist, sdist,
         cwd=tmp_path, env={"MAX_JOBS": str(os.cpu_count() or 2)})
    (wheel,) = dist.glob("fastgen-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    _run(python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}", "numpy")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", wheel)
    assert "smoke ok" in _run(python, "-c", SMOKE, cwd=tmp_path)
    assert "usage: fastgen" in _run(venv / "bin" / "fastgen", "--help", cwd=tmp_path)
