"""Hamiltonian Monte Carlo: the fused leapfrog pass against the same update in eager PyTorch and under
torch.compile, and the copy of the same bytes (the bandwidth limit); and HMC and NUTS on a 100-D correlated Gaussian
with 1,024 chains: ESS per second, per gradient evaluation and host reads per transition, against torchebm's HMC,
pyro's NUTS, numpyro's vectorized NUTS and BlackJAX's ChEES-HMC where installed (make bench installs them;
hamiltorch is not on PyPI).

    python -m bench hmc [--device cpu|cuda]
"""

from __future__ import annotations

import time

import torch

import fastgen
from fastgen.mcmc import ess, hmc, nuts
from fastgen.ops import leapfrog_

from .common import copy_fn, count_per_call, environment, markdown_table, time_interleaved_us, write_report


def leapfrog_rows(device: str, max_log2: int) -> list[dict]:
    """µs per interior leapfrog pass (p += eps g; q += eps M^-1 p) at 2^k elements."""
    rows = []
    for log2 in (16, 20, min(24, max_log2)):
        chains = 1024
        n = 2**log2
        q, p, g = (torch.randn(chains, n // chains, device=device) for _ in range(3))
        eps = torch.full((chains,), 0.01, device=device)
        m = torch.rand(n // chains, device=device) + 0.5

        def eager():
            p.add_(g * eps[:, None])
            q.add_(p * m * eps[:, None])

        compiled = torch.compile(eager)
        cases = {"fastgen leapfrog_": lambda: leapfrog_(q, p, g, eps, m, 1.0, True), "eager": eager,
                 "torch.compile": compiled, "copy of the same bytes": copy_fn(5 * 4 * n, device)}
        times = time_interleaved_us(cases, device)
        for name, us in times.items():
            row = {"elements": f"2^{log2}", "candidate": name, "µs": us,
                   "÷ fastgen": f"{us / times['fastgen leapfrog_']:.2f}"}
            if name != "copy of the same bytes":
                row.update(count_per_call(cases[name], device))
            rows.append(row)
            print("  leapfrog", row, flush=True)
    return rows


WARMUP, KEEP = 200, 200


def mixture_rows(device: str) -> list[dict]:
    """µs per HMC transition (L = 8) on the 8-Gaussian ring: hmc(energy=mixture), each transition one gmm_hmc_
    launch; the same sampler on the mixture's log_prob (autograd and the leapfrog op: L + 1 passes and L
    evaluations); torchebm's HMC on the same energy where installed. Runs of 10 transitions, interleaved."""
    gmm = fastgen.targets.eight_gaussians()
    rows = []
    for chains in (4096, 65536):
        x0 = gmm.sample(chains, seed=0).to(device)

        def log_prob(x):
            return gmm.log_prob(x)

        cases = {"fastgen hmc, fused (gmm_hmc_)": lambda: hmc(x0, energy=gmm, n_steps=10, step_size=0.1,
                                                             n_leapfrog=8, seed=1),
                 "fastgen hmc, general (autograd + leapfrog_)": lambda: hmc(x0, log_prob=log_prob, n_steps=10,
                                                                            step_size=0.1, n_leapfrog=8, seed=1)}
        try:
            from torchebm.core.base_model import BaseModel
            from torchebm.samplers import HamiltonianMonteCarlo

            class Mixture(BaseModel):
                def forward(self, x):
                    return -gmm.log_prob(x)

            peer = HamiltonianMonteCarlo(Mixture(), step_size=0.1, n_leapfrog_steps=8)
            cases["torchebm 0.8.9 HamiltonianMonteCarlo"] = lambda: peer.sample(x=x0.clone(), n_steps=10)
        except ImportError:
            pass
        times = time_interleaved_us(cases, device, rounds=5)
        ours = times["fastgen hmc, fused (gmm_hmc_)"]
        for name, us in times.items():
            rows.append({"chains": chains, "candidate": name, "µs per transition": us / 10,
                         "time / fused": f"{us / ours:.2f}"})
            print("  mixture", rows[-1], flush=True)
    return rows


def _row(name: str, draws: torch.Tensor, seconds: float, gradients: float | None, host_reads, accept, note="") -> dict:
    """The smallest bulk ESS over the coordinates of draws (chains, draws, dim), per second and per 1,000 gradient
    evaluations of one chain (gradients: per chain over the kept transitions)."""
    worst = float(ess(draws.double()).min())
    chains = draws.shape[0]
    row = {"sampler": name, "chains": chains, "seconds": seconds, "min ESS": worst, "ESS/s": worst / seconds,
           "ESS per 1k gradients per chain": None if gradients is None else 1000 * worst / chains / gradients,
           "host reads per transition": host_reads, "accept": accept, "note": note}
    print("  sampler", row, flush=True)
    return row


def fastgen_rows(device: str, target, x0: torch.Tensor) -> list[dict]:
    """fastgen's HMC (L = 10; and ChEES), NUTS (diagonal and dense mass), all with Stan's windowed mass adaptation,
    and the host reads per transition counted on a short run."""
    from bench.common import count_host_reads

    common = dict(log_prob=target.log_prob, seed=1)
    runs = {
        "fastgen hmc, L = 10, diagonal mass": lambda w, k, eps=0.05: hmc(
            x0, n_steps=k, step_size=eps, n_leapfrog=10, adapt_steps=w, adapt_mass=w > 0, **common),
        "fastgen hmc, ChEES, diagonal mass": lambda w, k, eps=0.05: hmc(
            x0, n_steps=k, step_size=eps, n_leapfrog=4, adapt_steps=w, adapt_mass=w > 0, adapt_length=w > 0,
            **common),
        "fastgen nuts, diagonal mass": lambda w, k, eps=0.05: nuts(
            x0, n_steps=k, step_size=eps, adapt_steps=w, adapt_mass=w > 0, **common),
        "fastgen nuts, dense mass": lambda w, k, eps=0.05: nuts(
            x0, n_steps=k, step_size=eps, adapt_steps=w, adapt_mass=w > 0, dense_mass=True, **common),
    }
    rows, results = [], {}
    for name, fn in runs.items():
        start = time.perf_counter()
        result = fn(WARMUP, KEEP)
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        results[name] = result
        # host reads per kept transition: the difference of 20 and 10 transitions at the adapted step size and
        # mass, without adaptation
        m = result.inverse_mass
        common["mass"] = torch.linalg.inv(m) if "dense" in name else 1.0 / m
        reads = (count_host_reads(lambda fn=fn: fn(0, 20, result.step_size))
                 - count_host_reads(lambda fn=fn: fn(0, 10, result.step_size))) / 10
        del common["mass"]
        rows.append(_row(name, result.draws, seconds, float(result.gradients.double().mean()), reads,
                         float(result.accept_rate.mean())))
    return rows, results


def peer_rows(target, x0: torch.Tensor, tuned) -> list[dict]:
    """The peers that are installed (make bench installs them), on the same target, starts and transition counts:
    torchebm's HMC (no adaptation: given fastgen's adapted step size and mass, its first WARMUP transitions
    dropped), pyro's NUTS (one chain, its own adaptation; a chain per process is how pyro runs chains), numpyro's
    NUTS with vectorized chains and BlackJAX's ChEES-HMC under vmap (JAX on the CPU, times including compilation)."""
    import numpy as np

    from bench.common import count_host_reads

    rows = []
    chains, dim = x0.shape
    precision = torch.linalg.inv(target.covariance).float()
    try:
        from torchebm.core.base_model import BaseModel
        from torchebm.samplers import HamiltonianMonteCarlo

        class Gaussian(BaseModel):
            def forward(self, x):
                return 0.5 * ((x @ precision) * x).sum(-1)

        eps, inverse_mass = float(tuned.step_size.mean()), tuned.inverse_mass
        sampler = HamiltonianMonteCarlo(Gaussian(), step_size=eps, n_leapfrog_steps=10, mass=1.0 / inverse_mass)
        reads = (count_host_reads(lambda: sampler.sample(x=x0.clone(), n_steps=20))
                 - count_host_reads(lambda: sampler.sample(x=x0.clone(), n_steps=10))) / 10
        start = time.perf_counter()
        trajectory = sampler.sample(x=x0.clone(), n_steps=WARMUP + KEEP, return_trajectory=True)
        seconds = time.perf_counter() - start
        rows.append(_row("torchebm 0.8.9 HamiltonianMonteCarlo, L = 10", trajectory[:, WARMUP:], seconds,
                         (10 + 1) * KEEP, reads, None, "fastgen's adapted step size and mass given; L + 1 "
                                                           "gradients and 2 energies per transition"))
    except ImportError:
        rows.append({"sampler": "torchebm", "note": "not installed"})
    try:
        import pyro
        from pyro.infer import MCMC, NUTS

        def pyro_run(warmup, keep):
            kernel = NUTS(potential_fn=lambda params: 0.5 * (params["x"] @ precision @ params["x"]))
            mcmc = MCMC(kernel, num_samples=keep, warmup_steps=warmup, initial_params={"x": x0[0]}, num_chains=1,
                        disable_progbar=True)
            mcmc.run()
            return mcmc

        reads = (count_host_reads(lambda: pyro_run(0, 20)) - count_host_reads(lambda: pyro_run(0, 10))) / 10
        start = time.perf_counter()
        mcmc = pyro_run(WARMUP, KEEP)
        seconds = time.perf_counter() - start
        rows.append(_row(f"pyro {pyro.__version__} NUTS (1 chain)", mcmc.get_samples(group_by_chain=True)["x"],
                         seconds, None, reads, None, "ESS/s of one chain: pyro runs a chain per process"))
    except ImportError:
        rows.append({"sampler": "pyro", "note": "not installed"})
    try:
        import jax
        import numpyro
        from numpyro.infer import MCMC as NMCMC
        from numpyro.infer import NUTS as NNUTS

        p_j = jax.numpy.asarray(precision.numpy())
        start = time.perf_counter()
        mcmc = NMCMC(NNUTS(potential_fn=lambda x: 0.5 * x @ p_j @ x), num_warmup=WARMUP, num_samples=KEEP,
                     num_chains=chains, chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), init_params=jax.numpy.asarray(x0.numpy()), extra_fields=("num_steps",))
        draws = torch.from_numpy(np.asarray(mcmc.get_samples(group_by_chain=True)))
        seconds = time.perf_counter() - start
        steps = float(np.asarray(mcmc.get_extra_fields()["num_steps"]).mean()) * KEEP
        rows.append(_row(f"numpyro {numpyro.__version__} NUTS, vectorized chains", draws, seconds, steps, None,
                         None, "JAX on the CPU, compilation included; diagonal mass adapted"))
    except ImportError:
        rows.append({"sampler": "numpyro", "note": "not installed"})
    try:
        import blackjax
        import jax
        import optax

        p_j = jax.numpy.asarray(precision.numpy())

        def logdensity(x):
            return -0.5 * x @ p_j @ x

        start = time.perf_counter()
        warmup = blackjax.chees_adaptation(logdensity, num_chains=chains)
        (states, parameters), _ = warmup.run(jax.random.PRNGKey(1), jax.numpy.asarray(x0.numpy()), step_size=0.05,
                                             optim=optax.adam(0.025), num_steps=WARMUP)
        kernel = blackjax.dynamic_hmc(logdensity, **parameters).step

        def one(state, key):
            state, info = jax.vmap(kernel)(jax.random.split(key, chains), state)
            return state, (state.position, info.num_integration_steps)

        _, (draws, steps) = jax.lax.scan(one, states, jax.random.split(jax.random.PRNGKey(2), KEEP))
        draws = torch.from_numpy(np.asarray(draws)).transpose(0, 1)
        seconds = time.perf_counter() - start
        rows.append(_row(f"blackjax {blackjax.__version__} ChEES-HMC, vmap", draws, seconds,
                         float(np.asarray(steps).mean()) * KEEP, None, None,
                         "JAX on the CPU, compilation included; no mass adaptation in its ChEES"))
    except ImportError:
        rows.append({"sampler": "blackjax", "note": "not installed"})
    return rows


def sampler_rows(device: str, chains: int = 1024, dim: int = 100) -> list[dict]:
    """HMC and NUTS on N(0, S), S with correlation 0.9 between neighbours and scales from 0.1 to 1
    (fastgen.targets.correlated_gaussian), 1,024 chains, WARMUP adaptation and KEEP kept transitions: the smallest
    bulk ESS over the coordinates, per second and per gradient evaluation, against the peers on the CPU."""
    target = fastgen.targets.correlated_gaussian(dim)
    x0 = (torch.randn(chains, dim, generator=torch.Generator().manual_seed(0)) * 0.5).to(device)
    rows, results = fastgen_rows(device, target, x0)
    if device == "cpu":
        rows += peer_rows(target, x0, results["fastgen hmc, L = 10, diagonal mass"])
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    env = environment(device)
    print(f"hmc benchmark on {env['device']} (torch {env['torch']})", flush=True)
    leap = leapfrog_rows(device, max_log2)
    mixture = mixture_rows(device)
    samplers = sampler_rows(device)
    count_key = "kernels" if device == "cuda" else "ops"
    sections = {
        "The fused leapfrog pass (p += eps g; q += eps M^-1 p), 1,024 chains": markdown_table(leap, [
            ("elements", "elements"), ("candidate", "candidate"), ("µs", "µs"), ("÷ fastgen", "time ÷ fastgen's"),
            (count_key, count_key), ("host_syncs", "host syncs")]),
        "HMC on the 8-Gaussian ring, L = 8: µs per transition": markdown_table(mixture, [
            ("chains", "chains"), ("candidate", "candidate"), ("µs per transition", "µs per transition"),
            ("time / fused", "time ÷ fused")]),
        "100-D correlated Gaussian, 200 + 200 transitions": markdown_table(samplers, [
            ("sampler", "sampler"), ("chains", "chains"), ("seconds", "seconds"), ("min ESS", "min bulk ESS"),
            ("ESS/s", "ESS/s"), ("ESS per 1k gradients per chain", "ESS per 1k gradients per chain"),
            ("host reads per transition", "host reads per transition"), ("accept", "acceptance"),
            ("note", "note")]),
    }
    data = {"leapfrog": leap, "mixture": mixture, "samplers": samplers}
    return write_report(out, f"hmc-{device}", env, sections, data)
