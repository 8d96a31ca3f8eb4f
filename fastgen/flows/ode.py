"""ODE solvers for batched states on the state's device: fixed-step Euler, midpoint and RK4, and an adaptive
Dormand-Prince 5(4) with a step size and error control per sample and no host synchronization inside the solve.
Gradients flow by backpropagation through the solver or by the adjoint method.

A state is a tensor or a tuple of tensors, each (B, ...); ``f(t, y)`` gets the times as a (B,) tensor of the
state's dtype and returns dy/dt with the state's structure and shapes."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["odeint"]

# Butcher tableaus (c, A, b) of the fixed-step methods.
_FIXED = {
    "euler": ([0.0], [[]], [1.0]),
    "heun": ([0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    "midpoint": ([0.0, 0.5], [[], [0.5]], [0.0, 1.0]),
    "rk4": ([0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
# Dormand & Prince (1980): the 5th-order solution weights b (= the last stage row, first same as last) and
# the error weights b - b* against the embedded 4th-order solution.
_DP_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
_DP_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
_DP_E = [35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
         -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40]
METHODS = ("dopri5",) + tuple(_FIXED)
CONTROLS = ("sample", "batch")


@dataclasses.dataclass(frozen=True)
class SolveOptions:
    """A solve's settings, checked by :func:`odeint` (its arguments of the same names)."""

    method: str = "dopri5"
    steps: int | None = None
    rtol: float = 1e-5
    atol: float = 1e-5
    control: str = "sample"  # or "batch"; the adjoint's backward solve uses "max" (worst sample)
    max_steps: int = 10_000
    sync_every: int = 1  # -1: poll without blocking (CUDA); 0: never check; k: a blocking check every k attempts
    first_step: float | None = None
    check_finite: bool = False
    stats: dict | None = None


def _col(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A per-sample (B,) or shared 0-d step, shaped to multiply y."""
    h = h.to(y.dtype)
    return h.reshape(-1, *[1] * (y.dim() - 1)) if h.dim() and y.dim() else h


def _combine(y, h, ks, coefs):
    """y + h sum_j coefs_j k_j, per component (stages with a zero coefficient skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = None
        for c, k in zip(coefs, ks, strict=False):
            if c != 0.0:
                acc = k[i] * c if acc is None else acc + k[i] * c
        out.append(yi if acc is None else yi + _col(h, yi) * acc)
    return tuple(out)


def _where(mask: torch.Tensor, a, b):
    return tuple(torch.where(mask.reshape(-1, *[1] * (ai.dim() - 1)) if mask.dim() else mask, ai, bi)
                 for ai, bi in zip(a, b, strict=True))


class _Problem:
    """f with the batch's times, the structure check on its first call, and the evaluation count."""

    def __init__(self, f, y0, batch, n_checked):
        self.f, self.batch, self.nfe = f, batch, 0
        self.shapes = [tuple(v.shape) for v in y0]
        self.n_checked, self.checked = n_checked, False

    def __call__(self, t: torch.Tensor, y):
        t = t.to(y[0].dtype)
        out = self.f(t if t.dim() else t.expand(self.batch), y)
        self.nfe += 1
        out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
        if not self.checked:
            got = [tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in out]
            if got[:self.n_checked] != self.shapes[:self.n_checked] or len(got) != len(self.shapes):
                raise ValueError(f"f must return dy/dt of the state's shapes {self.shapes}, got {got}")
            self.checked = True
        return out


def _norm(v, control: str) -> torch.Tensor:
    """The mixed RMS norm (max over components of each one's RMS): per sample (B,) for control "sample", over
    the whole batch (torchdiffeq's norm) for "batch", the largest per-sample norm for "max"."""
    if control == "batch":
        return torch.stack([x.float().square().mean().sqrt() if x.numel() else x.new_zeros((), dtype=torch.float32)
                            for x in v]).amax(0).double()
    per = torch.stack([x.float().square().reshape(x.shape[0], -1).mean(1).sqrt() for x in v]).amax(0).double()
    return per.amax() if control == "max" else per


def _fixed(f: _Problem, y, t0: float, t1: float, method: str, steps: int, device):
    c, a, b = _FIXED[method]
    h = torch.tensor((t1 - t0) / steps, dtype=torch.float64, device=device)
    for n in range(steps):
        t = t0 + n * h
        ks = []
        for ci, ai in zip(c, a, strict=False):
            ks.append(f(t + ci * h, _combine(y, h, ks, ai)))
        y = _combine(y, h, ks, b)
    return y


def _initial_step(f: _Problem, y, f0, t0, direction, opts: SolveOptions, n_err: int):
    """Hairer, Norsett & Wanner's starting step (as scipy and torchdiffeq choose it), per sample."""
    atol, rtol, control = opts.atol, opts.rtol, opts.control
    scale = [atol + rtol * v.abs() for v in y[:n_err]]
    d0 = _norm([v / s for v, s in zip(y, scale, strict=False)], control)
    d1 = _norm([v / s for v, s in zip(f0, scale, strict=False)], control)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    f1 = f(t0 + h0 * direction, _combine(y, h0 * direction, [f0], [1.0]))
    d2 = _norm([(b - a) / s for a, b, s in zip(f0, f1, scale, strict=False)], control) / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.clamp_min(h0 * 1e-3, 1e-6), (0.01 / big.clamp_min(1e-300)) ** (1 / 5))
    return torch.minimum(100 * h0, h1)


class _Poll:
    """Whether the solve has finished, learnt without blocking: each attempt copies its "any sample running" flag
    to pinned host memory behind an event; the host reads only flags whose event has completed (a few attempts
    late, which costs masked no-op attempts, not synchronizations)."""

    def __init__(self, depth: int = 64):
        self.flags = [torch.empty((), dtype=torch.bool, pin_memory=True) for _ in range(depth)]
        self.pending: list = []
        self.next = 0

    def finished(self, running: torch.Tensor) -> bool:
        if len(self.pending) == len(self.flags):  # the device is a full ring behind: wait for the oldest
            self.pending[0][0].synchronize()
        flag = self.flags[self.next]
        self.next = (self.next + 1) % len(self.flags)
        flag.copy_(running, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        self.pending.append((event, flag))
        while self.pending and self.pending[0][0].query():
            _, done_flag = self.pending.pop(0)
            if not bool(done_flag):
                return True
        return False


class _Dopri5:
    """One adaptive solve's state: per sample (or shared) time, step size, counters and stop flags."""

    def __init__(self, f: _Problem, y, t0: float, t1: float, opts: SolveOptions, n_err: int):
        device = y[0].device
        self.f, self.opts, self.n_err, self.t1 = f, opts, n_err, t1
        self.direction = 1.0 if t1 >= t0 else -1.0
        self.per_sample = opts.control == "sample"
        shape = (f.batch,) if self.per_sample else ()
        self.t = torch.full(shape, t0, dtype=torch.float64, device=device)
        self.t_end = torch.full(shape, t1, dtype=torch.float64, device=device)
        self.k1 = f(self.t, y)
        if opts.first_step is None:
            with torch.no_grad():
                h = _initial_step(f, y, self.k1, self.t, self.direction, opts, n_err)
        else:
            h = torch.full(shape, float(opts.first_step), dtype=torch.float64, device=device)
        self.h = torch.minimum(h, torch.tensor(abs(t1 - t0), dtype=torch.float64, device=device))
        self.accepted = torch.zeros(shape, dtype=torch.int64, device=device)
        self.rejected = torch.zeros_like(self.accepted)
        self.nonfinite = torch.zeros(shape, dtype=torch.bool, device=device)  # stopped: a non-finite f or state
        self.underflow = torch.zeros_like(self.nonfinite)  # stopped: the step size fell below 1e-14 of the span
        self.tiny = 1e-14 * abs(t1 - t0)

    def _finite(self, values) -> torch.Tensor:
        """Whether each sample's (or, with a shared step, every) component is finite."""
        finite = torch.stack([torch.isfinite(v).reshape(v.shape[0], -1).all(1) for v in values]).all(0)
        return finite if self.per_sample else finite.all()

    def running(self) -> torch.Tensor:
        return ((self.t_end - self.t) * self.direction > 0) & ~self.nonfinite & ~self.underflow

    def attempt(self, y):
        """One attempted step of every active sample (the others carry a zero step); returns the new state."""
        opts, n_err, t = self.opts, self.n_err, self.t
        remaining = (self.t_end - t) * self.direction
        active = (remaining > 0) & ~self.nonfinite & ~self.underflow
        with torch.no_grad():  # f non-finite at an accepted state (at t0: NaN dynamics) stops the sample at once
            finite = self._finite(self.k1[:n_err]) & torch.isfinite(self.h)
        self.nonfinite |= active & ~finite
        active &= finite
        step = torch.where(active, torch.minimum(self.h, remaining), torch.zeros_like(self.h))
        last = step >= remaining
        hd = step * self.direction
        ks = [self.k1]
        for i in range(1, 6):
            ks.append(self.f(t + _DP_C[i] * hd, _combine(y, hd, ks, _DP_A[i])))
        y5 = _combine(y, hd, ks, _DP_A[6])
        k7 = self.f(t + hd, y5)
        ks.append(k7)
        with torch.no_grad():  # the step-size controller is not differentiated
            err = _combine(tuple(torch.zeros_like(v) for v in y[:n_err]), hd, [k[:n_err] for k in ks], _DP_E)
            scale = [opts.atol + opts.rtol * torch.maximum(a.abs(), b.abs())
                     for a, b in zip(y[:n_err], y5[:n_err], strict=True)]
            ratio = _norm([e / s for e, s in zip(err, scale, strict=False)], opts.control)
            ratio = torch.where(torch.isfinite(ratio), ratio, torch.full_like(ratio, math.inf))  # reject, h / 5
        if opts.check_finite:
            self.nonfinite |= active & ~self._finite(y5[:n_err])
        self.underflow |= active & (step < self.tiny)
        ok = (ratio <= 1) & active
        y = _where(ok, y5, y)
        self.k1 = _where(ok, k7, self.k1)
        self.t = torch.where(ok, torch.where(last, self.t_end, t + hd), t)
        self.accepted += ok
        self.rejected += active & ~ok
        # the next step: h (0.9 ratio^(-1/5)), within [h / 5, 10 h] after a rejection ([h, 10 h] after acceptance)
        low = torch.where(ratio < 1, torch.ones_like(ratio), torch.full_like(ratio, 0.2))
        factor = torch.where(ratio == 0, torch.full_like(ratio, 10.0),
                             torch.minimum(torch.full_like(ratio, 10.0), torch.maximum(0.9 * ratio ** -0.2, low)))
        self.h = torch.where(active, step * factor, self.h)
        return y

    def finish(self, y, attempts: int):
        """The solution; with checks (sync_every != 0) the errors found on the device, raised after the solve."""
        opts = self.opts
        done = (self.t_end - self.t) * self.direction <= 0
        if opts.stats is not None:
            opts.stats.update(nfe=self.f.nfe, attempts=attempts, accepted=self.accepted, rejected=self.rejected,
                              done=done)
        if not opts.sync_every:
            return _where(done, y, tuple(torch.full_like(v, float("nan")) for v in y))
        if bool(self.nonfinite.any()):  # one synchronization, after the solve
            count = int(self.nonfinite.sum())
            if self.per_sample:
                index = int(self.nonfinite.nonzero()[0, 0])
                first = f", the first sample {index} at t = {float(self.t[index]):.6g}"
            else:
                first = f" at t = {float(self.t):.6g}"
            raise FloatingPointError(f"odeint: the state or f(t, y) went non-finite for {count} sample(s){first}: the "
                                     "dynamics returned NaN or inf there")
        if bool(self.underflow.any()):
            where = self.t[self.underflow] if self.per_sample else self.t
            raise RuntimeError(f"odeint: the step size underflowed for {int(self.underflow.sum())} sample(s), at t "
                               f"in [{float(where.min()):.6g}, {float(where.max()):.6g}]: the dynamics are stiff or "
                               "non-finite there (check_finite=True tells which)")
        if not bool(done.all()):
            raise RuntimeError(f"odeint: {int((~done).sum())} sample(s) did not reach t1={self.t1} within "
                               f"max_steps={opts.max_steps} attempts; raise max_steps or loosen rtol/atol")
        return y


def _dopri5(f: _Problem, y, t0: float, t1: float, opts: SolveOptions, n_err: int):
    """Masked per-sample (or shared) accept/reject: every attempt runs the six stages of a step on the whole batch,
    samples that have reached t1 carry a zero step. To stop early the host looks at the state every
    ``sync_every`` attempts, never with 0, and with -1 (CUDA) through :class:`_Poll`, without blocking."""
    solve = _Dopri5(f, y, t0, t1, opts, n_err)
    poll = _Poll() if opts.sync_every == -1 else None
    attempts = 0
    for attempts in range(1, opts.max_steps + 1):
        y = solve.attempt(y)
        running = solve.running()
        if poll is not None:
            if poll.finished(running.any()):
                break
        elif opts.sync_every and attempts % opts.sync_every == 0 and not bool(running.any()):
            break
    return solve.finish(y, attempts)


def _solve(f, y, t0, t1, opts, n_err=None):
    problem = f if isinstance(f, _Problem) else _Problem(f, y, y[0].shape[0], len(y))
    n_err = len(y) if n_err is None else n_err
    if opts.method in _FIXED:
        y = _fixed(problem, y, t0, t1, opts.method, opts.steps, y[0].device)
        if opts.stats is not None:
            opts.stats.update(nfe=problem.nfe, attempts=opts.steps)
        return y
    return _dopri5(problem, y, t0, t1, opts, n_err)


class _Adjoint(torch.autograd.Function):
    """Forward: the solve without a graph. Backward: the adjoint system solved from t1 back to t0,

        dy/dt = f,   da/dt = -a^T df/dy,   dq/dt = -a^T df/dtheta,   a(t1) = dL/dy(t1),  q(t1) = 0,

    giving dL/dy(t0) = a(t0) and dL/dtheta = q(t0). The backward solve shares one step size over the batch (the
    parameter integral q sums over samples), sized by the worst sample, with q left out of the error norm."""

    @staticmethod
    def forward(ctx, f, opts, t0, t1, n_y, *tensors):
        y0, params = tensors[:n_y], tensors[n_y:]
        with torch.no_grad():
            y1 = _solve(f, y0, t0, t1, opts)
        ctx.f, ctx.opts, ctx.t0, ctx.t1, ctx.n_y = f, opts, t0, t1, n_y
        ctx.params = params  # the very tensors f uses, for the vector-Jacobian products
        ctx.save_for_backward(*y1)
        return y1

    @staticmethod
    def backward(ctx, *grads):
        n, f = ctx.n_y, ctx.f
        y1, params = ctx.saved_tensors, ctx.params
        batch = y1[0].shape[0]

        def augmented(t, state):
            y, a = state[:n], state[n:2 * n]
            with torch.enable_grad():
                y = tuple(v.detach().requires_grad_(True) for v in y)
                out = f(t, y)
                out = (out,) if isinstance(out, torch.Tensor) else tuple(out)
                vjp = torch.autograd.grad(out, y + params, a, allow_unused=True)
            vjp = [torch.zeros_like(v) if g is None else g for g, v in zip(vjp, y + params, strict=False)]
            return tuple(o.detach() for o in out) + tuple(-g for g in vjp)

        state = tuple(y1) + tuple(torch.zeros_like(v) if g is None else g for g, v in zip(grads, y1, strict=False)) \
            + tuple(torch.zeros_like(p) for p in params)
        opts = dataclasses.replace(ctx.opts, control="max" if ctx.opts.control == "sample" else ctx.opts.control,
                                   stats=None)
        problem = _Problem(augmented, state, batch, 2 * n)
        with torch.no_grad():
            out = _solve(problem, state, ctx.t1, ctx.t0, opts, n_err=2 * n)
        return (None, None, None, None, None) + tuple(out[n:2 * n]) + tuple(out[2 * n:])


def _check_problem(f, y: tuple, t0, t1) -> None:
    if not y or any(not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.dim() < 1 for v in y):
        raise ValueError("y0 must be a floating-point tensor (B, ...) or a tuple of them")
    if any(v.shape[0] != y[0].shape[0] or v.device != y[0].device for v in y):
        raise ValueError(f"y0's tensors must share the batch size and device, got shapes "
                         f"{[tuple(v.shape) for v in y]}")
    if not callable(f):
        raise TypeError(f"f must be callable (t, y) -> dy/dt, got {type(f).__name__}")
    for name, v in (("t0", t0), ("t1", t1)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v!r}")


def _check_options(y: tuple, *, method, steps, rtol, atol, control, max_steps, sync_every, first_step,
                   check_finite, stats) -> SolveOptions:
    """odeint's solver arguments, checked (sync_every=None resolved for y's device)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}")
    if method in _FIXED:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"method {method!r} needs steps, an int >= 1, got {steps!r}")
    elif steps is not None:
        raise ValueError("steps is for the fixed-step methods; dopri5 chooses its own (rtol, atol)")
    for name, v in (("rtol", rtol), ("atol", atol)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if rtol == 0 and atol == 0:
        raise ValueError("rtol and atol cannot both be 0")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
    if sync_every is not None and (isinstance(sync_every, bool) or not isinstance(sync_every, int)
                                   or sync_every < 0):
        raise ValueError(f"sync_every must be None or an int >= 0, got {sync_every!r}")
    if sync_every is None:
        sync_every = -1 if y[0].is_cuda else 1
    if first_step is not None and not (isinstance(first_step, (int, float)) and first_step > 0):
        raise ValueError(f"first_step must be a number > 0, got {first_step!r}")
    if sync_every and not all(bool(torch.isfinite(v).all()) for v in y):
        raise ValueError("y0 must be finite")
    return SolveOptions(method=method, steps=steps, rtol=float(rtol), atol=float(atol), control=control,
                        max_steps=max_steps, sync_every=sync_every, first_step=first_step, check_finite=check_finite,
                        stats=stats)


def odeint(
    f: Callable,
    y0,
    t0: float = 0.0,
    t1: float = 1.0,
    *,
    method: str = "dopri5",
    steps: int | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    control: str = "sample",
    max_steps: int = 10_000,
    sync_every: int | None = None,
    first_step: float | None = None,
    check_finite: bool = False,
    adjoint: bool = False,
    adjoint_params=None,
    stats: dict | None = None,
):
    """y(t1) for dy/dt = f(t, y), y(t0) = y0, on y0's device.

    method: "dopri5" (adaptive Dormand-Prince 5(4), local extrapolation, first-same-as-last: 6 evaluations per
        attempted step; error |err| / (atol + rtol max(|y_n|, |y_n+1|)) in the RMS norm, max over the state's
        components, accepted at <= 1; next step h * clamp(0.9 ratio^(-1/5), 0.2, 10); starting step by
        Hairer-Norsett-Wanner), or "euler", "midpoint", "rk4" with ``steps`` uniform steps.
    control: "sample" (each sample has its own step size, accept/reject and time; the solve ends when the last
        sample reaches t1), or "batch" (one step size for the batch, the norm taken over the whole batch as
        torchdiffeq does).
    sync_every: None (default): on a GPU the host learns that every sample is done without blocking (a flag
        copied to pinned memory behind an event each attempt, read once the event has completed), so the solve
        makes no synchronization until its end; on the CPU it checks every attempt. k > 0: a blocking check
        every k attempts. 0: no check: the solve runs exactly ``max_steps`` attempts, makes no synchronization
        at all (it can be captured in a CUDA graph) and returns NaN for samples that did not reach t1.
        Otherwise a sample that does not reach t1 within ``max_steps`` attempts is an error, raised after the
        solve, as are ``check_finite``'s.
    check_finite: also flag on the device the samples whose new state went non-finite in an accepted step (f
        returning NaN or inf at an accepted state, e.g. at t0, always stops that sample at once); an error at the
        end of the solve naming the first such sample.
    adjoint: gradients by the adjoint method (memory independent of the number of steps) for the tensors in y0
        and ``adjoint_params`` (default: the parameters of f when f is an nn.Module); otherwise by
        backpropagation through the solver's operations (step sizes are not differentiated).
    stats: a dict to receive nfe (evaluations of f, each on the whole batch), attempts, and per-sample
        accepted / rejected step counts and done flags (tensors on the device)."""
    single = isinstance(y0, torch.Tensor)
    y = (y0,) if single else tuple(y0)
    _check_problem(f, y, t0, t1)
    opts = _check_options(y, method=method, steps=steps, rtol=rtol, atol=atol, control=control, max_steps=max_steps,
                          sync_every=sync_every, first_step=first_step, check_finite=check_finite, stats=stats)
    call = f if not single else (lambda t, state: (f(t, state[0]),))
    t0, t1 = float(t0), float(t1)
    if t0 == t1 or y[0].shape[0] == 0:  # nothing to integrate: no time, or an empty batch
        return y0
    if adjoint:
        if adjoint_params is None:
            if not isinstance(f, nn.Module):
                raise ValueError("adjoint=True needs adjoint_params (the tensors f depends on) when f is not an "
                                 "nn.Module")
            adjoint_params = [p for p in f.parameters() if p.requires_grad]
        params = tuple(adjoint_params)
        if any(not isinstance(p, torch.Tensor) for p in params):
            raise ValueError("adjoint_params must be tensors")
        out = _Adjoint.apply(call, opts, t0, t1, len(y), *y, *params)
    else:
        out = _solve(call, y, t0, t1, opts)
    return out[0] if single else tuple(out)
