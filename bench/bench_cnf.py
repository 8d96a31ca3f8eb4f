"""Continuous-flow solves: (1) a FFJORD log-likelihood on 2-D data (a 2-64-64-64-2 concat-MLP trained briefly on
the 8 Gaussians, exact divergence, dopri5 at rtol = atol = 1e-5, batch 1,024): fastgen.cnf with per-sample and
with batch step-size control against torchdiffeq's odeint on ffjord's ODEfunc with the same dynamics; (2) the
log-likelihood of a diffusion model through its probability-flow ODE (a 64-512-512-64 eps-MLP under a VP process,
Hutchinson with one Rademacher probe, RK45 at 1e-5, batch 256): fastgen.likelihood against score_sde's
likelihood.py loop (scipy's solve_ivp on a flattened host copy of the state). Reported: time per solve,
evaluations of the dynamics, host reads of tensor values per step (each a device synchronization on a GPU) and
the error against a tight-tolerance solve."""

from __future__ import annotations

import torch
from torch import nn

import fastgen
from fastgen.flows.continuous import CNF, MLPDynamics

from .common import count_host_reads, environment, markdown_table, time_interleaved_us, write_report

TOL = 1e-5


def _trained_cnf(device: str) -> CNF:
    torch.manual_seed(0)
    gmm = fastgen.targets.eight_gaussians()
    cnf = CNF(MLPDynamics(2, (64, 64, 64), nn.Tanh), event_shape=(2,), method="rk4", steps=6).to(device)
    opt = torch.optim.Adam(cnf.parameters(), lr=1e-2)
    for it in range(200):
        loss = -cnf.log_prob(gmm.sample(256, seed=it, device=device)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    cnf.flow.solver.update(method="dopri5", steps=None, rtol=TOL, atol=TOL)
    return cnf


class _Counted(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.calls = f, 0

    def forward(self, t, y):
        self.calls += 1
        return self.f(t, y)


def ffjord_rows(device: str) -> list[dict]:
    try:
        import torchdiffeq
    except ImportError as err:  # recorded: the GPU machine has no network to install it
        print(f"  cnf: torchdiffeq unavailable ({err}); its row is left out", flush=True)
        torchdiffeq = None
    cnf = _trained_cnf(device)
    dynamics = cnf.flow.dynamics
    x = fastgen.targets.eight_gaussians().sample(1024, seed=1, device=device)

    class ODEfunc(nn.Module):  # ffjord/lib/layers/odefunc.py, with divergence_bf (the exact trace) for 2-D
        def forward(self, t, states):
            y = states[0]
            with torch.set_grad_enabled(True):
                y.requires_grad_(True)
                dy = dynamics(t.expand(y.shape[0]), y)
                div = sum(torch.autograd.grad(dy[:, i].sum(), y, create_graph=True)[0][:, i]
                          for i in range(y.shape[1]))
            return dy, div

    odefunc = _Counted(ODEfunc())
    times_grid = torch.tensor([0.0, 1.0], device=device)

    def theirs():
        with torch.no_grad():
            z, delta = torchdiffeq.odeint(odefunc, (x, torch.zeros(x.shape[0], device=device)), times_grid,
                                          rtol=TOL, atol=TOL, method="dopri5")
        return -0.5 * z[-1].square().sum(1) - torch.log(torch.tensor(2 * torch.pi)) + delta[-1]

    def ours(control):
        def solve():
            cnf.flow.solver["control"] = control
            with torch.no_grad():
                return cnf.log_prob(x)
        return solve

    cases = {"fastgen.cnf, per-sample control": ours("sample"), "fastgen.cnf, batch control": ours("batch")}
    if torchdiffeq is not None:
        cases["torchdiffeq.odeint on ffjord's ODEfunc"] = theirs
    cnf.flow.solver.update(rtol=1e-10, atol=1e-10)
    reference = ours("sample")()
    cnf.flow.solver.update(rtol=TOL, atol=TOL)
    times = time_interleaved_us(cases, device, rounds=3)
    rows = []
    for name, fn in cases.items():
        odefunc.calls = 0
        reads = count_host_reads(fn)
        if name.startswith("fastgen"):
            stats = cnf.flow.stats
            nfe, steps = stats["nfe"], stats["attempts"]
        else:
            nfe = odefunc.calls
            steps = (nfe - 2) / 6
        err = (fn() - reference).abs().max().item()
        rows.append({"what": "FFJORD log p, 2-D, batch 1024, dopri5 1e-5", "candidate": name, "ms": times[name] / 1e3,
                     "vs fastgen": f"{times[name] / times['fastgen.cnf, per-sample control']:.2f}", "nfe": nfe,
                     "reads per step": f"{reads / steps:.1f}", "error": f"{err:.1e}"})
        print("  cnf", rows[-1], flush=True)
    return rows


def _score_sde_likelihood(model, sde, x: torch.Tensor, eps_t: float, calls: list, integrate):
    """score_sde's likelihood.py (get_likelihood_fn) on the same model and data: scipy's RK45 on the host, the
    state copied to and from the device at every evaluation; calls[0] counts the evaluations."""
    import numpy as np

    device, dim = x.device, x.shape[1]

    def score_sde():  # score_sde/likelihood.py: get_likelihood_fn
        shape = x.shape
        epsilon = (torch.randint(0, 2, shape, device=device).float() * 2 - 1)

        def drift_fn(sample, t):
            alpha, sigma = sde.marginal(t.double())
            score = -model(sample, t) / sigma.to(sample)[:, None]
            return sde.reverse_drift(sample, t.double(), score, probability_flow=True)

        def div_fn(sample, t):
            with torch.enable_grad():
                sample.requires_grad_(True)
                fn_eps = torch.sum(drift_fn(sample, t) * epsilon)
                grad_fn_eps = torch.autograd.grad(fn_eps, sample)[0]
            sample.requires_grad_(False)
            return torch.sum(grad_fn_eps * epsilon, dim=tuple(range(1, len(sample.shape))))

        def ode_func(t, state):
            calls[0] += 1
            sample = torch.from_numpy(state[:-shape[0]].reshape(shape)).to(device).type(torch.float32)
            vec_t = torch.ones(sample.shape[0], device=device) * t
            drift = drift_fn(sample, vec_t).detach().cpu().numpy().reshape((-1,))
            logp_grad = div_fn(sample, vec_t).detach().cpu().numpy().reshape((-1,))
            return np.concatenate([drift, logp_grad], axis=0)

        init = np.concatenate([x.cpu().numpy().reshape((-1,)), np.zeros((shape[0],))], axis=0)
        solution = integrate.solve_ivp(ode_func, (eps_t, sde.T), init, rtol=TOL, atol=TOL, method="RK45")
        zp = solution.y[:, -1]
        z = torch.from_numpy(zp[:-shape[0]]).to(device).reshape(shape).float()
        delta_logp = torch.from_numpy(zp[-shape[0]:]).to(device).float()
        prior = -0.5 * z.square().sum(1) - 0.5 * dim * torch.log(torch.tensor(2 * torch.pi))
        return prior + delta_logp


    return score_sde


def likelihood_rows(device: str) -> list[dict]:

    try:
        from scipy import integrate
    except ImportError as err:
        print(f"  cnf: scipy unavailable ({err}); score_sde's row is left out", flush=True)
        integrate = None

    torch.manual_seed(0)
    dim, batch = 64, 256
    net = nn.Sequential(nn.Linear(dim + 1, 512), nn.SiLU(), nn.Linear(512, 512), nn.SiLU(), nn.Linear(512, dim))
    net = net.to(device)

    def model(x, t):  # an eps-prediction model
        return net(torch.cat([x, t.to(x.dtype)[:, None]], 1))

    sde = fastgen.VPSDE()
    x = torch.rand(batch, dim, device=device) * 2 - 1
    eps_t = 1e-5

    def ours(control):
        def solve():
            return fastgen.likelihood(model, x, sde=sde, prediction="eps", seed=0, rtol=TOL, atol=TOL, eps=eps_t,
                                      control=control, stats=stats).log_prob
        return solve

    calls = [0]
    score_sde = _score_sde_likelihood(model, sde, x, eps_t, calls, integrate)

    stats: dict = {}
    cases = {"fastgen.likelihood, per-sample control": ours("sample"),
             "fastgen.likelihood, batch control": ours("batch")}
    if integrate is not None:
        cases["score_sde likelihood.py (scipy RK45, host copies)"] = score_sde
    times = time_interleaved_us(cases, device, rounds=3)
    rows = []
    for name, fn in cases.items():
        calls[0] = 0
        reads = count_host_reads(fn)
        if name.startswith("fastgen"):
            nfe, steps = stats["nfe"], stats["attempts"]
        else:
            nfe, steps = calls[0], (calls[0] - 2) / 6
        rows.append({"what": f"diffusion log p, D={dim}, batch {batch}, RK45 1e-5", "candidate": name,
                     "ms": times[name] / 1e3,
                     "vs fastgen": f"{times[name] / times['fastgen.likelihood, per-sample control']:.2f}",
                     "nfe": nfe, "reads per step": f"{reads / steps:.1f}"})
        print("  cnf", rows[-1], flush=True)
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    rows = ffjord_rows(device) + likelihood_rows(device)
    table = markdown_table(rows, [("what", "what"), ("candidate", "candidate"), ("ms", "ms per solve"),
                                  ("vs fastgen", "time / fastgen's"), ("nfe", "evaluations"),
                                  ("reads per step", "host reads per step"), ("error", "max error vs 1e-10 solve")])
    return write_report(out, "cnf", environment(device), {"ODE solves": table}, {"rows": rows})
