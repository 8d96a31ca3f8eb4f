"""Flow matching (Lipman et al. 2022; rectified flow, Liu et al. 2022): probability paths from data to noise,
the conditional flow-matching losses (CFM, minibatch OT-CFM, Schrödinger-bridge CFM), ODE sampling of a learned
velocity field with classifier-free guidance, and its likelihood.

Convention (SD3's, diffusers' FlowMatchEulerDiscreteScheduler's): data x0 at t = 0, noise eps ~ N(0, I) at t = 1,

    x_t = alpha(t) x0 + sigma(t) eps,    velocity u_t = alpha'(t) x0 + sigma'(t) eps,

so the linear path (alpha, sigma) = (1 - t, t) has u = eps - x0, and sampling integrates dx/dt = v(x, t) from
t = 1 down to 0. A model is ``velocity(x, t, **model_kwargs) -> v`` with t a (B,) tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..core.checks import check_batch
from ..core.rng import reserve, resolve_seed
from ..diffusion.processes import (
    AffinePath,
    CosinePath,
    LinearPath,
    PolynomialPath,
    VPPath,
    per_sample,
    shift_time,
    time_grid,
)
from ..ops import cfm_interpolate, normal, uniform
from ..ops._common import STATE_DTYPES
from .divergence import divergence_terms
from .ode import _FIXED, odeint
from .optimal_transport import assignment, sinkhorn

__all__ = ["AffinePath", "CosinePath", "LinearPath", "PolynomialPath", "VPPath", "cfm_loss", "flow_log_prob",
           "reflow_pairs", "sample_flow", "shift_time", "time_grid", "to_x0_eps"]


def to_x0_eps(v: torch.Tensor, x: torch.Tensor, t, path: AffinePath) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a velocity v at (x, t): the 2 x 2 solve of x = alpha x0 + sigma eps, v = alpha' x0 +
    sigma' eps (the score is -eps / sigma). Defined wherever alpha sigma' - sigma alpha' != 0: for every t on the
    linear, cosine and VP paths, t = 1 included; for t < 1 on a polynomial path of degree n > 1 (whose velocity
    vanishes at t = 1)."""
    alpha, sigma = (per_sample(u, x) for u in path.marginal(t))
    d_alpha, d_sigma = (per_sample(u, x) for u in path.derivative(t))
    det = alpha * d_sigma - sigma * d_alpha
    return (d_sigma * x - sigma * v) / det, (alpha * v - d_alpha * x) / det


# ---------------------------------------------------------------------------------------------------- training


def cfm_loss(velocity: Callable, x0: torch.Tensor, *, path: AffinePath | None = None, coupling: str | None = None,
             time: str = "uniform", loc: float = 0.0, scale: float = 1.0, sigma: float = 0.0, reg: float = 0.05,
             seed: int | None = None, generator: torch.Generator | None = None, model_kwargs: dict | None = None,
             group=None, noise: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample conditional flow-matching loss |v(x_t, t) - u_t|^2 / D, x_t and u_t from the path between the
    data x0 (B, ...) and noise eps (the noise stream at ``seed``), t ~ U(0, 1) (``time="uniform"``) or the
    logit-normal sigmoid(loc + scale n) (SD3's, ``time="logit_normal"``).

    coupling: None (independent pairs: CFM), "ot" (eps permuted by the exact minibatch OT assignment for the
    squared distance: OT-CFM, Tong et al. 2023) or "sinkhorn" (pairs drawn from the entropic plan of ``reg`` times
    the mean cost). sigma > 0: the Schrödinger-bridge variant on the linear path, x_t + sigma sqrt(t (1 - t)) z
    with the bridge's velocity u_t + (1 - 2t) / (2 t (1 - t)) sigma sqrt(t (1 - t)) z (coupling "sinkhorn" with
    reg = 2 sigma^2 is the bridge's static plan). x_t and u_t come from one fused pass
    (:func:`fastgen.ops.cfm_interpolate`, the noise regenerated at its paired rows). Its gradient in the model's
    parameters is that of the marginal flow-matching loss (tests/test_flow_matching.py).

    noise: the noise paired with each x0 row, given (reflow's pairs, :func:`reflow_pairs`), instead of drawn.

    group: a torch.distributed process group (``torch.distributed.group.WORLD`` under torchrun) whose ranks
    each hold an equal share of the global batch and pass the same seed: the noise and times are those of the
    global batch (rank r's rows are global rows r B ... (r + 1) B - 1), and a coupling is planned over the global
    batch (the data all-gathered, the plan made on rank 0 and broadcast, each rank's noise rows regenerated
    locally): each rank's losses equal those of one process on the concatenated batch."""
    path = LinearPath() if path is None else path
    x0 = check_batch(x0, "x0")
    if coupling not in (None, "ot", "sinkhorn"):
        raise ValueError(f"coupling must be None, 'ot' or 'sinkhorn', got {coupling!r}")
    if not isinstance(path, AffinePath):
        raise TypeError(f"path must be an AffinePath (LinearPath(), CosinePath(), ...), got {type(path).__name__}")
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma < 0:
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
    if sigma > 0 and not isinstance(path, LinearPath):
        raise ValueError("sigma > 0 (the Schrödinger bridge) is defined on the LinearPath")
    seed = resolve_seed(seed, generator)
    batch, device = x0.shape[0], x0.device
    rank, world = _place(group)
    total = world * batch  # the global batch: the noise at positions 0 .. total D - 1, then the times
    offset = reserve(total * x0[0].numel())
    t = _draw_times(batch, time, loc, scale, seed, offset + rank * batch, device)
    offset += reserve(total)
    pairing = None if world == 1 else torch.arange(rank * batch, (rank + 1) * batch, device=device)
    if coupling is not None:  # the noise drawn once more for the costs; the op regenerates its paired rows
        pairing = _global_pairing(x0, coupling, reg, seed, offset, group)
        offset += reserve(total)
    if noise is None:
        x_t, target = _interpolate(path, x0, t, seed, pairing)
    else:
        x_t, target = path.interpolate(x0, _given_noise(noise, x0, coupling, group), t.to(x0.dtype))
    if sigma > 0:
        tt = per_sample(t, x0)
        z = normal(x0.shape, seed, offset + rank * x0.numel(), device=device).to(x0.dtype)
        spread = sigma * torch.sqrt(tt * (1 - tt))
        x_t = x_t + spread * z
        target = target + (1 - 2 * tt) / (2 * tt * (1 - tt)).clamp_min(1e-12) * spread * z
    v = velocity(x_t, t.to(x0.dtype), **(model_kwargs or {}))
    if not isinstance(v, torch.Tensor) or v.shape != x0.shape:
        raise ValueError(f"velocity must return a tensor of x0's shape {tuple(x0.shape)}, got "
                         f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
    return (v - target).square().reshape(batch, -1).mean(1)


def _interpolate(path: AffinePath, x0: torch.Tensor, t: torch.Tensor, seed: int, pairing) -> tuple:
    """(x_t, u_t) with the stream's noise at position 0 (rows paired as given): the fused op for float32,
    float16 and bfloat16 data, the path's own arithmetic otherwise (float64)."""
    if x0.dtype in STATE_DTYPES:
        return cfm_interpolate(x0.contiguous(), path.coefficients(t), seed, 0, pairing=pairing)
    eps = normal(x0.shape, seed, 0, device=x0.device).to(x0.dtype)
    return path.interpolate(x0, eps if pairing is None else eps[pairing], t)


def _draw_times(batch: int, time: str, loc: float, scale: float, seed: int, offset: int, device) -> torch.Tensor:
    """(B,) float64 training times in (0, 1) from the stream's uniforms (logit-normal through the normal quantile)."""
    if time not in ("uniform", "logit_normal"):
        raise ValueError(f"time must be 'uniform' or 'logit_normal', got {time!r}")
    u = uniform((batch,), seed, offset, device=device).double().clamp(1e-6, 1 - 1e-6)
    if time == "uniform":
        return u
    for name, v in (("loc", loc), ("scale", scale)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")
    return torch.sigmoid(loc + scale * math.sqrt(2) * torch.erfinv(2 * u - 1))


def _given_noise(noise, x0: torch.Tensor, coupling, group) -> torch.Tensor:
    if coupling is not None or group is not None:
        raise ValueError("noise (given pairs) goes without coupling and group: the pairs are the coupling")
    noise = check_batch(noise, "noise")
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    return noise.to(x0.dtype)


def reflow_pairs(velocity: Callable, noise: torch.Tensor, *, steps: int = 50, method: str = "heun",
                 **options) -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow's reflow (Liu et al. 2022): (x0, noise), x0 = the flow's sample from that noise (:func:`
    sample_flow` with ``steps``, ``method`` and ``options``). Training a new field with ``cfm_loss(model, x0,
    noise=noise)`` on such pairs straightens the paths, so fewer steps sample as well."""
    return sample_flow(velocity, noise, steps=steps, method=method, **options), noise


def _place(group) -> tuple[int, int]:
    """(rank, world size) in a process group, (0, 1) without one."""
    if group is None:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        raise ValueError("group is given but torch.distributed is not initialized (init_process_group first)")
    return dist.get_rank(group), dist.get_world_size(group)


def _global_pairing(x0: torch.Tensor, coupling: str, reg: float, seed: int, offset: int, group) -> torch.Tensor:
    """The global noise row of each local data row: the coupling of the whole batch (all-gathered), planned on the
    group's first rank and broadcast; this rank's share of it."""
    rank, world = _place(group)
    if world == 1:
        return _pairing(x0, normal(x0.shape, seed, 0, device=x0.device), coupling, reg, seed, offset)
    import torch.distributed as dist

    parts = [torch.empty_like(x0) for _ in range(world)]
    dist.all_gather(parts, x0.contiguous(), group=group)
    batch = x0.shape[0]
    plan = torch.empty(world * batch, dtype=torch.int64, device=x0.device)
    if rank == 0:
        data = torch.cat(parts)
        plan = _pairing(data, normal(data.shape, seed, 0, device=x0.device), coupling, reg, seed, offset)
    dist.broadcast(plan, src=dist.get_global_rank(group, 0), group=group)
    return plan[rank * batch:(rank + 1) * batch]


def _pairing(x0: torch.Tensor, eps: torch.Tensor, coupling: str, reg: float, seed: int, offset: int) -> torch.Tensor:
    """The noise row paired with each data row: the exact OT assignment, or a draw from each row of the entropic
    plan (the stream's uniforms at offset)."""
    cost = torch.cdist(x0.reshape(len(x0), -1).double(), eps.reshape(len(eps), -1).double()).square()
    if coupling == "ot":
        return assignment(cost)
    if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg <= 0:
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    plan = sinkhorn(cost, reg * float(cost.mean()))
    u = uniform((len(x0), 1), seed, offset, device=x0.device).double()
    rows = plan / plan.sum(1, keepdim=True)
    return torch.searchsorted(rows.cumsum(1), u * rows.sum(1, keepdim=True)).squeeze(1).clamp_max(len(x0) - 1)


# ---------------------------------------------------------------------------------------------------- sampling


def sample_flow(velocity: Callable, noise: torch.Tensor, *, path: AffinePath | None = None, steps: int = 50,
                method: str = "euler", grid: torch.Tensor | None = None, shift: float | None = None,
                mu: float | None = None, model_kwargs: dict | None = None, guidance_scale: float | None = None,
                uncond_kwargs: dict | None = None, init: torch.Tensor | None = None, strength: float | None = None,
                known: torch.Tensor | None = None, known_mask: torch.Tensor | None = None, rtol: float = 1e-5,
                atol: float = 1e-5) -> torch.Tensor:
    """x0 from noise x1 (B, ...) by integrating dx/dt = v(x, t) from t = 1 to 0.

    method: "euler", "heun", "midpoint" or "rk4" on the time grid (``grid``, decreasing from 1 to 0; else
    :func:`time_grid` of ``steps``, ``shift`` / ``mu``), or "dopri5" (adaptive, per sample: fastgen.flows.odeint).
    Classifier-free guidance: with ``guidance_scale`` w, v = v_u + w (v_c - v_u), v_c with ``model_kwargs`` and
    v_u with ``uncond_kwargs`` (w = 1: the conditional field, 0: the unconditional one).
    img2img: ``init`` (like noise) and ``strength`` s in (0, 1]: the run starts at t = s from
    alpha(s) init + sigma(s) noise, on the grid scaled by s. Inpainting: where ``known_mask`` (bool, the shape of
    noise or of one sample) is True, the state is set after every step to the path's point alpha(t) known +
    sigma(t) noise, and the result to ``known``."""
    path = LinearPath() if path is None else path
    noise = check_batch(noise, "noise")
    field = _guided(velocity, noise.shape[0], model_kwargs, guidance_scale, uncond_kwargs)
    start, x = _start(path, noise, init, strength)
    replace = _replacement(path, noise, known, known_mask)
    if method == "dopri5":
        if grid is not None or shift is not None or mu is not None or replace is not None:
            raise ValueError("grid, shift, mu and known are for the fixed-step methods; dopri5 chooses its own steps")
        return odeint(lambda t, y: field(y, t), x, start, 0.0, rtol=rtol, atol=atol)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {', '.join((*_METHODS, 'dopri5'))}, got {method!r}")
    ts = (time_grid(steps, shift, mu) if grid is None else _check_grid(grid)) * start
    c, a, b = _METHODS[method]
    with torch.no_grad():
        for t, t_next in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
            h = t_next - t
            k = []
            for ci, row in zip(c, a, strict=True):
                xi = x + sum((h * aij) * kj for aij, kj in zip(row, k, strict=False)) if row else x
                k.append(field(xi, t + ci * h))
            x = x + sum((h * bi) * ki for bi, ki in zip(b, k, strict=True) if bi)
            if replace is not None:
                x = replace(x, t_next)
    return x


def _start(path: AffinePath, noise: torch.Tensor, init, strength) -> tuple[float, torch.Tensor]:
    """(the first time, the first state): 1 and the noise, or img2img's s and alpha(s) init + sigma(s) noise."""
    if init is None and strength is None:
        return 1.0, noise.clone()
    if init is None or strength is None:
        raise ValueError("img2img needs init and strength, both")
    init = check_batch(init, "init")
    if init.shape != noise.shape:
        raise ValueError(f"init must have noise's shape {tuple(noise.shape)}, got {tuple(init.shape)}")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
        raise ValueError(f"strength must be a number in (0, 1], got {strength!r}")
    alpha, sigma = (float(v) for v in path.marginal(float(strength)))
    return float(strength), alpha * init.to(noise) + sigma * noise


def _replacement(path: AffinePath, noise: torch.Tensor, known, known_mask):
    """(x, t) -> x with its known part set to the path's point at t (None without inpainting)."""
    if known is None and known_mask is None:
        return None
    if known is None or known_mask is None:
        raise ValueError("inpainting needs known and known_mask, both")
    known = check_batch(known, "known")
    if known.shape != noise.shape:
        raise ValueError(f"known must have noise's shape {tuple(noise.shape)}, got {tuple(known.shape)}")
    if not isinstance(known_mask, torch.Tensor) or known_mask.dtype != torch.bool or \
            known_mask.shape not in (noise.shape, noise.shape[1:]):
        raise ValueError(f"known_mask must be a bool tensor of noise's shape {tuple(noise.shape)} or of one sample "
                         f"{tuple(noise.shape[1:])}")
    known, mask, fixed = known.to(noise), known_mask.to(noise.device), noise.clone()

    def replace(x: torch.Tensor, t: float) -> torch.Tensor:
        if t <= 0:
            return torch.where(mask, known, x)
        alpha, sigma = (float(v) for v in path.marginal(t))
        return torch.where(mask, alpha * known + sigma * fixed, x)

    return replace


_METHODS = _FIXED


def _check_grid(grid) -> torch.Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
    if grid.numel() < 2 or not bool((grid[1:] < grid[:-1]).all()) or not bool(((grid >= 0) & (grid <= 1)).all()):
        raise ValueError(f"grid must decrease through at least 2 times in [0, 1], got {grid.tolist()}")
    return grid


def _guided(velocity: Callable, batch: int, model_kwargs, scale, uncond_kwargs) -> Callable:
    """(x, t float) -> v at the batch's time, guided when a scale is given."""
    if not callable(velocity):
        raise TypeError(f"velocity must be callable (x, t) -> v, got {type(velocity).__name__}")
    own = dict(model_kwargs or {})

    def call(x, t, kwargs):  # t: a float (the fixed grids) or the adaptive solver's per-sample times
        tt = t.to(x.dtype).expand(x.shape[0]) if isinstance(t, torch.Tensor) else torch.full(
            (x.shape[0],), t, dtype=x.dtype, device=x.device)
        v = velocity(x, tt, **kwargs)
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            raise ValueError(f"velocity must return a tensor of x's shape {tuple(x.shape)}, got "
                             f"{tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__}")
        return v

    if scale is None:
        if uncond_kwargs is not None:
            raise ValueError("uncond_kwargs is for guidance: give guidance_scale")
        return lambda x, t: call(x, t, own)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"guidance_scale must be a finite number, got {scale!r}")
    if uncond_kwargs is None:
        raise ValueError("guidance_scale needs uncond_kwargs (the unconditional model's keywords)")
    uncond = dict(uncond_kwargs)
    for key, value in uncond.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == 1 and batch != 1:
            uncond[key] = value.expand(batch, *value.shape[1:])

    def guided(x, t):
        v_u = call(x, t, uncond)
        return v_u + scale * (call(x, t, own) - v_u)

    return guided


# ---------------------------------------------------------------------------------------------------- likelihood


def flow_log_prob(velocity: Callable, x: torch.Tensor, *, method: str = "exact", probes: int = 1,
                  seed: int | None = None, generator: torch.Generator | None = None, rtol: float = 1e-6,
                  atol: float = 1e-6, create_graph: bool = False, model_kwargs: dict | None = None) -> torch.Tensor:
    """log p_0(x) (B,) under the flow of ``velocity``: x integrated from t = 0 to 1 (dopri5, per sample) with
    d log p / dt = -div v, plus the standard normal prior at t = 1. method "exact" (D vector-Jacobian products;
    flat (B, D) data) or "hutchinson" (``probes`` probes from the stream at ``seed``). ``create_graph=True``
    keeps the graph for gradients in the model's parameters (and in x)."""
    x = check_batch(x, "x")
    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    seed = resolve_seed(seed, generator) if method == "hutchinson" else 0
    kwargs = dict(model_kwargs or {})

    def dynamics(t, state):
        y = state[0]
        tt = t.to(y.dtype).expand(y.shape[0])  # (B,): the solver's per-sample times
        v, div, _ = divergence_terms(lambda z: velocity(z, tt, **kwargs), y, method=method, probes=probes,
                                     noise="rademacher", seed=seed, create_graph=create_graph, frobenius=False)
        return (v, -div) if create_graph else (v.detach(), -div.detach())

    z, delta = odeint(dynamics, (x, x.new_zeros(x.shape[0])), 0.0, 1.0, rtol=rtol, atol=atol)
    dims = x[0].numel()
    prior = -0.5 * z.reshape(len(z), -1).square().sum(1) - 0.5 * dims * math.log(2 * math.pi)
    return prior - delta
