"""Divergences of an MLP (D -> 512 -> 512 -> D, softplus) at D = 2, 64, 784, batch 1,024: fastgen.divergence
(Hutchinson, one Rademacher probe from the noise stream, the reduction fused with regenerating it) against
ffjord's divergence_approx as written (a probe tensor, autograd.grad, multiply and sum), the same with the MLP
under torch.compile, the exact trace by torch.func (vmap of jacrev; D = 2 and 64), and the floor: the forward and
the vector-Jacobian product alone with a probe made beforehand. The goal: fastgen's work beyond that floor is at
most 10% of it at D = 784."""

from __future__ import annotations

import torch
from torch import nn

import fastgen

from .common import environment, markdown_table, time_interleaved_us, write_report

BATCH, WIDTH = 1024, 512


def mlp(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, WIDTH), nn.Softplus(), nn.Linear(WIDTH, WIDTH), nn.Softplus(),
                         nn.Linear(WIDTH, dim))


def rows_for(dim: int, device: str) -> list[dict]:
    torch.manual_seed(0)
    net = mlp(dim).to(device)
    x = torch.randn(BATCH, dim, device=device)
    fixed = (torch.randint(0, 2, x.shape, device=device) * 2 - 1).float()

    def ours():
        return fastgen.divergence(net, x, seed=0)

    def ffjord(model=net):  # ffjord/lib/layers/odefunc.py: divergence_approx with sample_rademacher_like
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            e = torch.randint(low=0, high=2, size=y.shape, device=device).to(y) * 2 - 1
            e_dzdx = torch.autograd.grad(model(y), y, e)[0]
            return (e_dzdx * e).view(y.shape[0], -1).sum(dim=1)

    def floor():
        with torch.enable_grad():
            y = x.detach().requires_grad_(True)
            return torch.autograd.grad(net(y), y, fixed)[0]

    compiled = torch.compile(net)
    cases = {"fastgen.divergence (hutchinson)": ours, "ffjord divergence_approx (eager)": ffjord,
             "ffjord divergence_approx, torch.compile(MLP)": lambda: ffjord(compiled),
             "forward + VJP only (the floor)": floor}
    if dim <= 64:
        def single(v):
            return net(v[None])[0]

        jac = torch.func.vmap(torch.func.jacrev(single))
        cases["exact: torch.func vmap(jacrev) trace"] = lambda: torch.diagonal(jac(x), dim1=1, dim2=2).sum(1)
        cases["exact: fastgen.divergence(method='exact')"] = lambda: fastgen.divergence(net, x, method="exact")
    times = time_interleaved_us(cases, device)
    base, vjp = times["fastgen.divergence (hutchinson)"], times["forward + VJP only (the floor)"]
    rows = [{"D": dim, "candidate": name, "µs": us, "vs fastgen": f"{us / base:.2f}"} for name, us in times.items()]
    rows[0]["beyond the floor"] = f"{(base - vjp) / vjp:+.1%}"
    for row in rows:
        print("  hutchinson", row, flush=True)
    return rows


def run(device: str, out: str, max_log2: int) -> str:
    rows = [row for dim in (2, 64, 784) for row in rows_for(dim, device)]
    table = markdown_table(rows, [("D", "D"), ("candidate", "candidate"), ("µs", "µs per call"),
                                  ("vs fastgen", "time / fastgen's"),
                                  ("beyond the floor", "fastgen's work beyond forward + VJP")])
    return write_report(out, "hutchinson", environment(device),
                        {f"Divergence of a D-512-512-D MLP, batch {BATCH}": table}, {"rows": rows})
