"""Bad input per public family, fixed cases: every public entry point given a NaN, an inf, an empty batch, a
tensor of the wrong rank, an integer tensor or a non-contiguous view either raises an error whose message names
the argument, or returns what it returns on the clean equivalent (the contiguous tensor; an empty batch for an
empty batch). A NaN, an inf, a wrong rank and an integer dtype must raise."""

import pytest
import torch

import fastgen
from fastgen.diffusion.likelihood import likelihood
from fastgen.flows import RealNVP, divergence, odeint
from fastgen.integrations import k_diffusion

GMM = fastgen.targets.eight_gaussians()
EPS_MODEL = GMM.model(fastgen.VPSDE(), "eps")
FLOW = RealNVP(2, layers=2)
DECODER = torch.nn.Linear(2, 2)


def first(result):
    return result[0] if isinstance(result, tuple) else result


# (family, name, the argument's name, the call on that argument). Each call is deterministic (seeded). The entry
# points of chains and ODE states take (B, ...) (a 1-D x is B scalar states), the others (B, D).
ANY_RANK = ("langevin", "mala", "annealed_langevin", "odeint", "divergence", "k_diffusion.sample_euler")
CASES = [
    ("mcmc", "langevin", "x0", lambda x: fastgen.langevin(x, score=lambda v: -v, n_steps=3, step_size=0.1, seed=0)),
    ("mcmc", "mala", "x0", lambda x: first(fastgen.mala(x, log_prob=lambda v: -0.5 * v.square().sum(1), n_steps=3,
                                                         step_size=0.1, seed=0))),
    ("mcmc", "annealed_langevin", "x0",
     lambda x: fastgen.annealed_langevin(x, score=lambda v, s: -v / (1 + s[:, None] ** 2), sigmas=[1.0, 0.5],
                                         n_steps_each=2, eps=1e-2, seed=0)),
    ("diffusion", "sample(init=)", "init",
     lambda x: fastgen.sample(EPS_MODEL, (4, 2), init=x, strength=0.5, sampler="ddim", steps=4, prediction="eps",
                              seed=0)),
    ("diffusion", "likelihood", "x",
     lambda x: likelihood(EPS_MODEL, x, sde=fastgen.VPSDE(), prediction="eps", solver="rk4", steps=4,
                          seed=0).log_prob),
    ("flows", "Flow.log_prob", "x", lambda x: FLOW.log_prob(x)),
    ("flows", "odeint", "y0", lambda x: odeint(lambda t, y: -y, x, 0.0, 1.0, method="rk4", steps=4)),
    ("flows", "divergence", "x", lambda x: divergence(lambda v: -2 * v, x, seed=0)),
    ("nn", "vae.elbo", "mean",
     lambda x: fastgen.nn.vae.elbo(torch.ones(4, 2) * 0.5, x, torch.zeros(4, 2), DECODER, likelihood="gaussian",
                                   seed=0)),
    ("integrations", "k_diffusion.sample_euler", "x",
     lambda x: k_diffusion.sample_euler(lambda v, s: 0.5 * v, x, torch.tensor([2.0, 1.0, 0.0]), disable=True)),
    ("metrics", "mode_weights", "x", lambda x: fastgen.metrics.mode_weights(x, GMM)),
]


def clean() -> torch.Tensor:
    return torch.randn(4, 2, generator=torch.Generator().manual_seed(0))


def bad(kind: str, name: str) -> torch.Tensor:
    x = clean()
    if kind in ("nan", "inf"):
        x[1, 0] = float(kind)
        return x
    if kind == "empty":
        return x[:0]
    if kind == "rank":  # no batch dimension
        return x[0, 0] if name in ANY_RANK else x[0]
    if kind == "integer":
        return x.round().to(torch.int64)
    assert kind == "strided"
    return torch.stack([x, -x], dim=-1)[..., 0]  # same values, stride 2


MUST_RAISE = ("nan", "inf", "rank", "integer")


@pytest.mark.parametrize("kind", [*MUST_RAISE, "empty", "strided"])
@pytest.mark.parametrize("family,name,arg,call", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_names_the_argument_or_changes_nothing(family, name, arg, call, kind):
    x = bad(kind, name)
    if kind == "strided":
        assert not x.is_contiguous()
    try:
        got = call(x)
    except (ValueError, TypeError, IndexError) as err:
        assert arg in str(err), f"{name} on a {kind} {arg}: the error does not name {arg}: {err}"
        return
    assert kind not in MUST_RAISE, f"{name} took a {kind} {arg} without an error"
    if kind == "empty":
        assert got.dim() >= 1 and got.shape[0] == 0, f"{name}: an empty batch gave {tuple(got.shape)}"
        return
    want = call(clean())
    torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"{name}: a non-contiguous {arg} changed the result")
