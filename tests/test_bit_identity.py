"""Outputs are bit-identical to recorded hashes: every op on every CPU backend, and every sampler.

The hashes were recorded before the ops layer moved onto the op registry, so they pin
that no refactoring changes a single bit for the same (seed, offset). They depend on
the CPU kernels' SIMD clone (recorded with the AVX2 one) and on the Triton interpreter;
where those differ, the test skips and says why. To re-record after an intended change:
``python tests/test_bit_identity.py`` prints the table.
"""

import hashlib
import sys

import pytest
import torch

if __name__ != "__main__":
    from conftest import cpu_backends  # noqa: F401  (sets TRITON_INTERPRET before fastgen loads)
else:
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")

import fastgen  # noqa: E402
from fastgen import k_sampling  # noqa: E402
from fastgen.ops import diffusion as dops  # noqa: E402


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _inputs(seed, *shape, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def op_cases():
    """name -> fn() returning the tensors to hash; each runs on the current backend."""
    ops = fastgen.ops
    x, s = _inputs(1, 37, 5), _inputs(2, 37, 5)
    steps = _inputs(3, 37).abs() * 0.1 + 0.01
    gmm = fastgen.targets.eight_gaussians()
    # (the rows' velocity columns D_ALPHA, D_SIGMA, added later, are 0: those predictions do not read them)
    coef = torch.tensor([[0.8, 0.6, 1.0, 0.9, 0.3, 0.2, 0.1, 0.4, 0.0, 0.0]])
    table = torch.cat([torch.rand(6, 8, generator=torch.Generator().manual_seed(4)) + 0.1, torch.zeros(6, 2)], 1)
    cases = {
        "uniform": lambda: ops.uniform(1001, 7, 2**33 + 5),
        "normal": lambda: ops.normal(1001, 7, 13),
        "ula_step_": lambda: ops.ula_step_(x.clone(), s, 0.05, 11, 2**32 - 7),
        "ula_step_options": lambda: ops.ula_step_(x.clone(), s, steps, 5, 9, clamp=(-1.5, 2.0), grad_clip=4.0),
        "ula_step_fp16": lambda: ops.ula_step_(x.half(), s.half(), 0.05, 3, 0),
        "mala_propose": lambda: ops.mala_propose(x, s, steps, 4, 100),
        "mala_accept_": lambda: _mala_accept(x, s),
        "gmm_langevin_": lambda: ops.gmm_langevin_(_inputs(5, 64, 2), gmm, 5, 1e-2, 3, 10),
        "diffusion_step_eps": lambda: dops.diffusion_step_(x.clone(), s, coef, prediction="eps", seed=3, offset=5),
        "diffusion_step_v_clip": lambda: dops.diffusion_step_(x.clone(), s, coef, prediction="v", clip=1.0, seed=3),
        "diffusion_step_index_aux": lambda: _step_index_aux(x, s, table),
        "diffusion_step_sample_seeds": lambda: dops.diffusion_step_(
            x.clone(), s, coef, prediction="x0", sample_seeds=torch.arange(37) * 3 + 1, sample_offset=10),
        "langevin_correct_": lambda: dops.langevin_correct_(x.clone(), s, table[:1], snr=0.16, prediction="score",
                                                            seed=9, offset=4),
        "langevin_correct_sample_seeds": lambda: dops.langevin_correct_(
            x.clone(), s, table, snr=0.1, prediction="eps", index=torch.full((37,), 2), sample_seeds=torch.arange(37)),
    }
    return cases


def _mala_accept(x, s):
    y = fastgen.ops.mala_propose(x, s, 0.3, 1, 0)
    state = (x.clone(), _inputs(6, 37), s.clone())
    accepted, prob = fastgen.ops.mala_accept_(*state, y, _inputs(7, 37), -y, 0.3, 1, 5000, return_prob=True)
    return (accepted, prob) + state


def _step_index_aux(x, s, table):
    aux = torch.zeros_like(x)
    out = dops.diffusion_step_(x.clone(), s, table, index=torch.arange(37) % 6, prediction="eps", aux=aux,
                               aux_store="increment", seed=2)
    return out, aux


def sampler_cases():
    gmm = fastgen.targets.eight_gaussians()
    x0 = _inputs(8, 64, 2)
    cases = {
        "langevin": lambda: fastgen.langevin(x0, score=gmm.score, n_steps=5, step_size=1e-2, seed=1),
        "langevin_gmm": lambda: fastgen.langevin(x0, energy=gmm, n_steps=5, step_size=1e-2, seed=1),
        "mala": lambda: fastgen.mala(x0, log_prob=gmm.log_prob, n_steps=5, step_size=0.1, seed=2, adapt_steps=3),
        "annealed_langevin": lambda: fastgen.annealed_langevin(
            x0, score=lambda x, sigma: -x / (1 + sigma[:, None] ** 2), sigmas=[1.0, 0.5, 0.1], n_steps_each=2, eps=1e-2,
            seed=3),
    }
    # The samplers at the step spacing (and pc corrector) they had when the hashes were recorded.
    for sampler in fastgen.samplers.diffusion.SAMPLERS:
        pred = "eps" if sampler in ("ddpm", "ddim") else "score"
        process = fastgen.DDPMSchedule() if sampler in ("ddpm", "ddim") else fastgen.VPSDE()
        model = gmm.model(process, pred)
        then = dict(spacing="leading" if sampler in ("ddpm", "ddim") else "uniform",
                    **({"corrector": "per_sample"} if sampler == "pc" else {}))
        cases[f"sample_{sampler}"] = (lambda sampler=sampler, pred=pred, model=model, then=then: fastgen.sample(
            model, (64, 2), sampler=sampler, steps=4, prediction=pred, seed=5, device="cpu", graph=False, **then))
    model = gmm.model(fastgen.VPSDE(), "eps")
    cases["sample_per_sample_seeds"] = lambda: fastgen.sample(
        model, (16, 2), sampler="euler_maruyama", steps=4, prediction="eps", per_sample_seeds=torch.arange(16),
        device="cpu", graph=False, spacing="uniform")
    denoiser = gmm.model(fastgen.VESDE(0.01, 10.0), "x0")
    sigmas = k_sampling.get_sigmas_karras(4, 0.01, 10.0)
    for name in ("sample_euler", "sample_euler_ancestral", "sample_heun", "sample_dpmpp_2m"):
        fn = getattr(k_sampling, name)

        def run(fn=fn):
            torch.manual_seed(0)
            return fn(lambda x, sigma: denoiser(x, sigma), x0 * 10, sigmas)

        cases[f"k_{name}"] = run
    return cases


def _run(fn):
    out = fn()
    return _digest(*(out if isinstance(out, tuple) else (out,)))


def clone_of_this_build() -> str:
    return fastgen.build_info().get("cpu_kernels", "none")


# Recorded with: python tests/test_bit_identity.py (AVX2 CPU clone, Triton interpreter, torch 2.13 CPU).
RECORDED = {
    'cpu/diffusion_step_eps': '07e4f379c72b6575',
    'cpu/diffusion_step_index_aux': '3688f525ba9eeb74',
    'cpu/diffusion_step_sample_seeds': '0e503483d2aa3c82',
    'cpu/diffusion_step_v_clip': 'f5606de26cf6b062',
    'cpu/gmm_langevin_': 'ab33b2ca1b2bb3a0',
    'cpu/langevin_correct_': '734d7d76a479297f',
    'cpu/langevin_correct_sample_seeds': 'bb41fb0c2f46eca8',
    'cpu/mala_accept_': '63de1c201311c140',
    'cpu/mala_propose': 'f43b7c23af401bec',
    'cpu/normal': 'c05f680fe7275ce1',
    'cpu/ula_step_': 'c3e1ee5ecfb6d7f1',
    'cpu/ula_step_fp16': '421d9a9ea51d2751',
    'cpu/ula_step_options': 'a699a41ba375a4e3',
    'cpu/uniform': '3da94f5c7b6865e8',
    'triton/diffusion_step_eps': 'd9428d42219a3bbc',
    'triton/diffusion_step_index_aux': '77b580c0fe977118',
    'triton/diffusion_step_sample_seeds': '5011a9aa8263a50d',
    'triton/diffusion_step_v_clip': '183d362e7b9c6bfa',
    'triton/gmm_langevin_': 'b820741e2c2d8858',
    'triton/langevin_correct_': '80be0160f36d528d',
    # Re-recorded after the fix of the Triton corrector, which read only lane 0's row through a per-sample index:
    'triton/langevin_correct_sample_seeds': '1835d42862eb56f1',
    'triton/mala_accept_': '66cc8494157202d0',
    'triton/mala_propose': '880b403d2f73755f',
    'triton/normal': 'a928330251126818',
    'triton/ula_step_': '17504b29e3705b2d',
    'triton/ula_step_fp16': '421d9a9ea51d2751',
    'triton/ula_step_options': '6039b86aae89cc7a',
    'triton/uniform': '3da94f5c7b6865e8',
    'torch/diffusion_step_eps': 'beff732f13c29590',
    'torch/diffusion_step_index_aux': 'e9857ef0f88d0c97',
    'torch/diffusion_step_sample_seeds': '7f39834bb1118562',
    'torch/diffusion_step_v_clip': 'cfe652bcf460a83f',
    'torch/gmm_langevin_': 'd4c9652fea1cc849',
    'torch/langevin_correct_': '36a3c46d940bc69c',
    'torch/langevin_correct_sample_seeds': 'c3094ee90b40ef29',
    'torch/mala_accept_': 'fe7cd319d10ae3f4',
    'torch/mala_propose': '5e3712e514e2d3ac',
    'torch/normal': '9dc1c7af30c2bce9',
    'torch/ula_step_': 'f1e4d8c3dfdd5043',
    'torch/ula_step_fp16': '421d9a9ea51d2751',
    'torch/ula_step_options': '253f3a83251180e1',
    'torch/uniform': '3da94f5c7b6865e8',
    'sampler/annealed_langevin': '2e245113ff522beb',
    'sampler/k_sample_dpmpp_2m': '05ea9088c118c1fc',
    'sampler/k_sample_euler': '81c8aeade6c7a292',
    'sampler/k_sample_euler_ancestral': 'd7f1252a67adb817',
    'sampler/k_sample_heun': 'd99d957c5e15cde9',
    'sampler/langevin': 'c4371de9c1ba9390',
    'sampler/langevin_gmm': '5150c28ecb99d93e',
    'sampler/mala': '2056e7fe049efb47',
    'sampler/sample_ddim': '164c38d8c9d6e192',
    'sampler/sample_ddpm': '64c433759e357f9e',
    'sampler/sample_dpmpp_2m': '1abe178b12c86712',
    'sampler/sample_euler_ancestral': '0f59043908b1b75a',
    'sampler/sample_euler_maruyama': '3b215bf69a72df66',
    'sampler/sample_ode_euler': '399b14ce148a4fbf',
    'sampler/sample_ode_heun': '50693771b18d57d6',
    'sampler/sample_pc': '5320ed243a06a99f',
    'sampler/sample_per_sample_seeds': 'd7713ca2162a1cd2',
}
RECORDED_CLONE = "avx2"


def _expected(key):
    if key not in RECORDED:
        pytest.fail(f"no recorded hash for {key}")
    return RECORDED[key]


@pytest.mark.parametrize("name", sorted(op_cases()))
@pytest.mark.parametrize("backend", ["cpu", "triton", "torch"])
def test_op_outputs_are_bit_identical(backend, name):
    from conftest import cpu_backends

    if backend not in cpu_backends():
        pytest.skip(f"backend {backend} does not run CPU tensors here")
    if backend == "cpu" and clone_of_this_build() != RECORDED_CLONE:
        pytest.skip(f"hashes recorded with the {RECORDED_CLONE} CPU kernels, this build runs {clone_of_this_build()}")
    with fastgen.use_backend(backend):
        assert _run(op_cases()[name]) == _expected(f"{backend}/{name}")


@pytest.mark.parametrize("name", sorted(sampler_cases()))
def test_sampler_outputs_are_bit_identical(name):
    if clone_of_this_build() != RECORDED_CLONE:
        pytest.skip(f"hashes recorded with the {RECORDED_CLONE} CPU kernels, this build runs {clone_of_this_build()}")
    assert _run(sampler_cases()[name]) == _expected(f"sampler/{name}")


if __name__ == "__main__":
    from fastgen import _backend

    table = {}
    for backend in ("cpu", "triton", "torch"):
        if _backend._usable(backend, torch.device("cpu")) is not None:
            continue
        with fastgen.use_backend(backend):
            for name, fn in sorted(op_cases().items()):
                table[f"{backend}/{name}"] = _run(fn)
    for name, fn in sorted(sampler_cases().items()):
        table[f"sampler/{name}"] = _run(fn)
    print("RECORDED = {")
    for key, value in table.items():
        print(f"    {key!r}: {value!r},")
    print("}")
    sys.exit(0)
