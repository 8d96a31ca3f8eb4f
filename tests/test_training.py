"""Losses and EMA: exact minimizers and the moving-average rule."""

import torch

import fastgen
from fastgen.diffusion.processes import VPSDE, DDPMSchedule
from fastgen.diffusion.training import EMA, ddpm_loss, dsm_loss


def test_dsm_loss_is_smallest_at_the_true_score():
    gmm = fastgen.targets.eight_gaussians()
    sde = VPSDE()
    x0 = gmm.sample(4096, seed=0)
    exact = gmm.model(sde, "score")
    for weighting in ("sigma2", "likelihood"):
        g = lambda: torch.Generator().manual_seed(1)  # noqa: E731 - the same t and z for each model
        best = dsm_loss(exact, x0, sde, weighting=weighting, generator=g())
        worse = dsm_loss(lambda x, t: 1.1 * exact(x, t), x0, sde, weighting=weighting, generator=g())
        assert best < worse


def test_ddpm_loss_is_smallest_at_the_true_eps():
    gmm = fastgen.targets.eight_gaussians()
    sched = DDPMSchedule()
    x0 = gmm.sample(4096, seed=0)
    exact = gmm.model(sched, "eps")
    best = ddpm_loss(exact, x0, sched, generator=torch.Generator().manual_seed(2))
    zero = ddpm_loss(lambda x, t: torch.zeros_like(x), x0, sched, generator=torch.Generator().manual_seed(2))
    assert best < 0.8 * zero  # E|eps|^2 = 2 per sample for the zero model


def test_ema_update_rule():
    layer = torch.nn.Linear(3, 2)
    ema = EMA(layer.parameters(), decay=0.9, warmup=False)
    before = [p.detach().clone() for p in layer.parameters()]
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    ema.update()
    for s, b in zip(ema.shadow, before, strict=True):
        torch.testing.assert_close(s, b + 0.1)
    ema.copy_to()
    for p, b in zip(layer.parameters(), before, strict=True):
        torch.testing.assert_close(p, b + 0.1)
    state = ema.state_dict()
    ema.update()
    ema.load_state_dict(state)
    assert ema.updates == 1
