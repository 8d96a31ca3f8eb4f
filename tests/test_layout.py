"""The package's layout: a short top level of families, and the flat layout's module paths still importable."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import fastgen

ROOT = Path(__file__).resolve().parents[1]


def test_top_level_is_a_short_list_of_families():
    entries = sorted(p.name for p in (ROOT / "fastgen").iterdir()
                     if p.name != "__pycache__" and not p.name.endswith((".so", ".pyd")))
    assert entries == ["__init__.py", "__main__.py", "cli", "core", "diffusion", "flows", "integrations", "mcmc",
                       "metrics.py", "nn", "ops", "reference", "targets.py"]


@pytest.mark.parametrize("old", sorted(fastgen.OLD_PATHS))
def test_old_module_paths_are_their_homes(old):
    module = importlib.import_module(old)
    home = fastgen.OLD_PATHS[old]
    if isinstance(home, str):
        assert module is importlib.import_module(home)
        assert module.__spec__.name == home and module.__name__ == home
    leaf = old.rpartition(".")[2]
    if old.count(".") == 1 and leaf not in ("likelihood", "divergence"):  # those two names are functions
        assert getattr(fastgen, leaf) is module


def test_the_names_the_readme_showed_before_still_resolve():
    from fastgen.k_sampling import CFGDenoiser, get_sigmas_karras, sample_dpmpp_2m  # noqa: F401
    from fastgen.samplers.diffusion import SAMPLERS, sample  # noqa: F401
    from fastgen.sde import VPSDE, DDPMSchedule  # noqa: F401
    from fastgen.training import EMA, ddpm_loss, dsm_loss, ism_loss, ssm_loss  # noqa: F401

    assert fastgen.cnf.CNF is fastgen.flows.CNF and fastgen.ode.odeint is fastgen.flows.odeint
    assert fastgen.gan.d_loss is fastgen.nn.gan.d_loss and fastgen.vae.elbo is fastgen.nn.vae.elbo
    assert fastgen.ebm.ReplayBuffer is fastgen.mcmc.ReplayBuffer
    assert fastgen.generation.verify is fastgen.cli.verify and fastgen.toy_ebm.report
    assert fastgen.likelihood is fastgen.diffusion.likelihood and callable(fastgen.divergence)
    assert fastgen.samplers.langevin is fastgen.langevin is fastgen.mcmc.langevin
    assert fastgen.nn.spectral_norm is fastgen.nn.spectral.spectral_norm
    assert fastgen.rng.reserve and fastgen.constants.Coef and fastgen.RNGState is fastgen.core.RNGState


def test_import_fastgen_imports_no_optional_peer():
    """diffusers is imported by fastgen.integrations.diffusers (or its old path) only, when asked for."""
    code = ("import sys, fastgen; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('diffusers', 'k_diffusion')))")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
