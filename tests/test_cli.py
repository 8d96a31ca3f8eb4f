"""fastgen info and fastgen sample from the command line (generate: test_generate.py)."""

import json
from pathlib import Path

import pytest
from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]


cli = run_cli  # in-process; the tests that need a process start one


def test_info():
    result = cli("info", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert set(info["backends"]) == {"cuda", "triton", "cpu", "torch"} and info["torch"]
    assert "backends:" in cli("info").stdout


def test_sample_prints_metrics_and_plots(tmp_path):
    plot = tmp_path / "s.png"
    result = cli("sample", "gmm8", "-n", "3000", "--steps", "20", "--plot", str(plot))
    assert result.returncode == 0, result.stderr
    assert "MMD^2 to exact samples" in result.stdout and "mode weights" in result.stdout
    assert plot.stat().st_size > 0
    bad = cli("sample", "moons")
    assert bad.returncode == 2 and "source must be one of" in bad.stderr


def test_sample_runs_mcmc_with_diagnostics_and_plots(tmp_path):
    """fastgen sample TARGET --sampler nuts|hmc: the per-coordinate table (mean and its MCSE against the exact mean,
    sd, bulk and tail ESS, R-hat), the overall line (acceptance, divergences, tree depth or trajectory length,
    gradients per transition) and the two PNGs; the non-centred funnel's v has exact mean 0 and sd 3."""
    import re

    trace, rank = tmp_path / "trace.png", tmp_path / "rank.png"
    result = cli("sample", "funnel_noncentred", "--sampler", "nuts", "--chains", "64", "--steps", "100", "--warmup",
                 "100", "--trace-plot", str(trace), "--rank-plot", str(rank))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "ess_bulk" in out and "r_hat" in out and "tree depth mean" in out and "divergences 0 " in out
    row = re.search(r"^\s+0\s+(\S+)\s+(\S+)\s+0\.0000\s+(\S+)\s+(\S+)\s+3\.0000", out, re.M)
    assert row, out
    assert abs(float(row.group(3))) < 4.5 and abs(float(row.group(4)) - 3) < 0.3  # z of v's mean; v's sd
    assert trace.stat().st_size > 0 and rank.stat().st_size > 0
    chees = cli("sample", "banana", "--sampler", "hmc", "--chains", "64", "--steps", "50", "--warmup", "50")
    assert chees.returncode == 0 and "trajectory length" in chees.stdout, chees.stderr
    for args, message in [(("funnel",), "is an MCMC target: use --sampler nuts or hmc"),
                          (("moons", "--sampler", "nuts"), "source must be one of funnel"),
                          (("gmm8", "--trace-plot", "t.png"), "--trace-plot is for --sampler nuts or hmc"),
                          (("banana", "--sampler", "hmc", "--plot", "p.png"), "--plot is for the diffusion")]:
        bad = cli("sample", *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)


def test_bench_suites_are_discovered_from_the_package():
    import fastgen.bench

    files = sorted(p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py"))
    assert fastgen.bench.suite_names() == files
    assert set(fastgen.bench.suites()) == set(files)
    result = cli("bench", "--help")
    assert result.returncode == 0 and all(name in result.stdout for name in files)


@pytest.mark.slow
def test_sample_takes_a_trained_flow(tmp_path):
    """fastgen sample FLOW --target gmm8: exact draws of a saved flow, its cross-entropy on exact samples of the
    target (the same number as log_prob computed here) against the exact entropy, the metrics and the plot."""
    import re

    import torch

    import fastgen
    from fastgen.flows import NSF

    torch.manual_seed(0)
    flow = NSF(2, layers=1, hidden=(8,), bins=4, bound=4.0)
    torch.save(flow, tmp_path / "flow.pt")
    plot = tmp_path / "flow.png"
    result = cli("sample", str(tmp_path / "flow.pt"), "--target", "gmm8", "-n", "3000", "--seed", "2", "--plot",
                 str(plot))
    assert result.returncode == 0, result.stderr
    cross = float(re.search(r"cross-entropy on 3,000 exact samples ([0-9.]+) nats", result.stdout).group(1))
    held_out = fastgen.targets.eight_gaussians().sample(3000, seed=5)
    with torch.no_grad():
        assert abs(cross + float(flow.log_prob(held_out.float()).double().mean())) < 1e-3
    assert "within-mode spread / truth" in result.stdout and plot.exists()
    missing = cli("sample", str(tmp_path / "flow.pt"), "-n", "100")
    assert missing.returncode == 2 and "--target: a flow is compared against a built-in target" in missing.stderr
