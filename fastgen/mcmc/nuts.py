"""The No-U-Turn Sampler for many chains at once (Hoffman & Gelman 2014; Betancourt 2017's multinomial variant,
as Stan and NumPyro run it), iterative: every chain grows its own tree, doubling in a direction of its own, under
masks. Within a subtree the proposal is drawn by progressive uniform sampling and the U-turn criterion is checked
for every sub-subtree that a new leaf completes (NumPyro's checkpoints of momenta and their running sums, indexed
by the leaf's bits); a subtree that turns or diverges is discarded and ends its chain's tree; a completed one
replaces the proposal with probability min(1, w_subtree / w_tree) (biased progressive sampling) and the whole tree
is checked. The chains whose trees still grow are gathered at each doubling (one host read per doubling, and one
at 16, 32, ... leaves of a subtree to stop early when all of its chains ended), so a chain whose tree stopped costs
no more gradients. Adaptation, masses and the result: fastgen.mcmc.hmc's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..core.rng import reserve
from ..ops import uniform
from ..targets import GaussianMixture
from .hmc import DIVERGENCE, HMCResult, _kinetic, _Metric, _momentum, _run, leapfrog
from .langevin import _check_steps

__all__ = ["nuts"]


def _turning(p_left: torch.Tensor, p_right: torch.Tensor, p_sum: torch.Tensor, inverse_mass) -> torch.Tensor:
    """The generalized no-U-turn criterion (Betancourt 2013) of a subtree with end momenta p_left, p_right and
    momentum sum p_sum: M^-1 p_end . (p_sum - (p_left + p_right) / 2) <= 0 at either end."""
    rho = p_sum - 0.5 * (p_left + p_right)
    v_left, v_right = (p if inverse_mass is None else p * inverse_mass for p in (p_left, p_right))
    return ((v_left * rho).sum(1) <= 0) | ((v_right * rho).sum(1) <= 0)


def _checkpoints(leaf: int) -> tuple[int, int]:
    """The checkpoint slots a subtree's leaf `leaf` (from 0) is checked against (NumPyro's _leaf_idx_to_ckpt_idxs):
    idx_max = the set bits of leaf >> 1, idx_min = idx_max + 1 - the trailing set bits of leaf."""
    idx_max = bin(leaf >> 1).count("1")
    trailing = 0
    while leaf >> trailing & 1:
        trailing += 1
    return idx_max + 1 - trailing, idx_max


class _NUTS:
    def __init__(self, max_depth: int):
        self.max_depth = max_depth

    def __call__(self, w, log_p, grad, eps, metric: _Metric, evaluate, seed, offset, adapting):
        chains, dtype, device = w.shape[0], w.dtype, w.device
        p, offset = _momentum(w.shape, dtype, metric.inverse_mass(), seed, offset, device)
        h0 = _kinetic(p, metric.inverse_mass()) - log_p.to(dtype)
        left = [w.clone(), p.clone(), grad.clone()]
        right = [w.clone(), p.clone(), grad.clone()]
        proposal = [w.clone(), log_p.clone(), grad.clone()]
        log_weight = torch.zeros(chains, device=device, dtype=dtype)  # the start's weight exp(-(H0 - H0))
        p_sum = p.clone()
        active = torch.ones(chains, device=device, dtype=torch.bool)
        depth = torch.zeros(chains, device=device, dtype=torch.int64)
        evaluations = torch.zeros(chains, device=device, dtype=torch.int64)
        leaves = torch.zeros(chains, device=device, dtype=torch.int64)
        accept_sum = torch.zeros(chains, device=device)
        divergent = torch.zeros(chains, device=device, dtype=torch.bool)
        for d in range(self.max_depth):
            rows = active.nonzero().squeeze(1)  # the host read of this doubling
            b = rows.numel()
            if b == 0:
                break
            forward = uniform((b,), seed, offset, device=device) < 0.5
            offset += reserve(b)
            sub, offset = self._subtree(d, rows, forward, left, right, h0[rows], eps[rows], metric, evaluate, seed,
                                        offset)
            (tip_w, tip_p, tip_g), (s_w, s_lp, s_g), s_log_weight, s_sum, s_ok, s_div, s_acc, s_leaves, s_evals = sub
            fwd = forward[:, None]
            for end, side in ((right, fwd), (left, ~fwd)):  # the tree's end on the subtree's side is its tip
                for k, tip in enumerate((tip_w, tip_p, tip_g)):
                    end[k][rows] = torch.where(side, tip, end[k][rows])
            u = uniform((b,), seed, offset, device=device)
            offset += reserve(b)
            old = log_weight[rows]
            take = s_ok & (torch.log(u).to(dtype) < s_log_weight - old)  # biased progressive sampling
            for k, new in enumerate((s_w, s_lp, s_g)):
                mask = take[:, None] if new.dim() == 2 else take
                proposal[k][rows] = torch.where(mask, new, proposal[k][rows])
            log_weight[rows] = torch.where(s_ok, torch.logaddexp(old, s_log_weight), old)
            total = torch.where(s_ok[:, None], p_sum[rows] + s_sum, p_sum[rows])
            p_sum[rows] = total
            depth[rows] += 1
            leaves[rows] += s_leaves
            evaluations[rows] += s_evals
            accept_sum[rows] += s_acc
            divergent[rows] |= s_div
            turned = _turning(left[1][rows], right[1][rows], total, metric.inverse_mass(rows))
            active[rows] = s_ok & ~turned
        stat = accept_sum / leaves.clamp(min=1)
        return (*proposal, stat, divergent, evaluations, depth, offset)

    def _subtree(self, d, rows, forward, left, right, h0, eps, metric, evaluate, seed, offset):
        """2^d leapfrog steps of the chains `rows` from their tree's end in their direction: the tip, the
        proposal, the log of the summed weights exp(-H), the momentum sum, whether it completed without a U-turn
        or a divergence, whether it diverged, the summed acceptance statistics, the leaves built and the gradients
        evaluated per chain."""
        b, dtype, device = rows.numel(), left[0].dtype, left[0].device
        fwd = forward[:, None]
        tip = [torch.where(fwd, r[rows], l_[rows]) for r, l_ in zip(right, left, strict=True)]
        signed = torch.where(forward, eps, -eps)
        inverse_mass = metric.inverse_mass(rows)
        at = metric.evaluator(evaluate, rows)
        prop_w, prop_g = tip[0].clone(), tip[2].clone()
        prop_lp = torch.zeros(b, device=device)
        log_weight = torch.full((b,), -float("inf"), device=device, dtype=dtype)
        p_sum = torch.zeros_like(tip[1])
        ok = torch.ones(b, device=device, dtype=torch.bool)
        diverged = torch.zeros(b, device=device, dtype=torch.bool)
        accept = torch.zeros(b, device=device)
        leaves = torch.zeros(b, device=device, dtype=torch.int64)
        slots = max(d, 1)
        ck_p = torch.zeros((slots, *tip[1].shape), device=device, dtype=dtype)
        ck_sum = torch.zeros_like(ck_p)
        steps = 0
        for n in range(2**d):
            q1, p1, lp1, g1 = leapfrog(tip[0], tip[1], tip[2], at, signed, 1, inverse_mass)
            steps += 1
            error = _kinetic(p1, inverse_mass) - lp1.to(dtype) - h0
            finite = torch.isfinite(error)
            div = ok & (~finite | (error > DIVERGENCE))
            accept += torch.where(ok & finite, torch.exp(-error.clamp(min=0)), torch.zeros_like(error)).float()
            leaves += ok.long()
            live = ok & ~div
            leaf_weight = torch.where(finite, -error, torch.full_like(error, -float("inf")))
            new_weight = torch.logaddexp(log_weight, leaf_weight)
            u = uniform((b,), seed, offset, device=device)
            offset += reserve(b)
            take = live & (torch.log(u).to(dtype) < leaf_weight - new_weight)  # progressive uniform sampling
            prop_w = torch.where(take[:, None], q1, prop_w)
            prop_lp = torch.where(take, lp1, prop_lp)
            prop_g = torch.where(take[:, None], g1, prop_g)
            log_weight = torch.where(live, new_weight, log_weight)
            p_sum = torch.where(live[:, None], p_sum + p1, p_sum)
            tip = [torch.where(live[:, None], new, old) for new, old in zip((q1, p1, g1), tip, strict=True)]
            lo, hi = _checkpoints(n)
            if n % 2 == 0:
                ck_p[hi], ck_sum[hi] = p1, p_sum
            turned = torch.zeros_like(ok)
            for i in range(hi, lo - 1, -1):
                turned |= _turning(ck_p[i], p1, p_sum - ck_sum[i] + ck_p[i], inverse_mass)
            diverged |= div
            ok = live & ~turned
            done = n + 1
            if done >= 16 and done & (done - 1) == 0 and done < 2**d and not bool(ok.any()):
                break  # every subtree ended (checked at 16, 32, ... leaves: a host read each)
        return ((tip, (prop_w, prop_lp, prop_g), log_weight, p_sum, ok, diverged, accept, leaves,
                 torch.full((b,), steps, device=device, dtype=torch.int64)), offset)


def nuts(
    x0: torch.Tensor,  # (B, ...) initial chains
    *,
    log_prob: Callable | None = None,
    energy: Callable | GaussianMixture | None = None,
    n_steps: int,
    step_size=0.1,
    max_tree_depth: int = 10,
    mass=None,
    dense_mass: bool = False,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    adapt_steps: int = 0,
    target_accept: float = 0.8,
    adapt: str = "shared",
    adapt_mass: bool = False,
) -> HMCResult:
    """The No-U-Turn Sampler on a batch of independent chains: per transition, p ~ N(0, M) and a tree of leapfrog
    steps doubled up to ``max_tree_depth`` times (at most 2^max_tree_depth - 1 steps), each doubling in a random
    direction, until the trajectory makes a U-turn (M^-1 p_end . (sum p - (p_left + p_right) / 2) <= 0 at an end,
    of the tree or of any of its binary subtrees) or diverges (energy error above 1000, or non-finite); the next
    state is drawn from the tree's leaves with weights exp(-H) (multinomial, biased toward the last subtree). Every
    chain builds its own tree; result.tree_depth records the doublings.

    The arguments are :func:`~fastgen.mcmc.hmc`'s (log_prob or energy, step_size, mass and dense_mass, seed,
    adapt_steps with dual averaging toward target_accept of the tree's mean acceptance statistic, adapt,
    adapt_mass in Stan's windows) without the trajectory length, which NUTS chooses. log_prob must treat the
    chains (rows) independently: it is called on the chains whose trees are still growing."""
    max_tree_depth = _check_steps(max_tree_depth, "max_tree_depth")
    if not 1 <= max_tree_depth <= 16:
        raise ValueError(f"max_tree_depth must be an int in [1, 16], got {max_tree_depth}")
    return _run(_NUTS(max_tree_depth), x0, log_prob, energy, n_steps=n_steps, step_size=step_size, mass=mass,
                dense_mass=dense_mass, seed=seed, generator=generator, adapt_steps=adapt_steps,
                target_accept=target_accept, adapt=adapt, adapt_mass=adapt_mass, name="nuts")
