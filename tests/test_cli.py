"""fastgen info and fastgen sample from the command line (generate: test_generate.py)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "fastgen", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)


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


def test_bench_suites_are_discovered_from_the_package():
    import fastgen.bench

    files = sorted(p.stem[len("bench_"):] for p in (ROOT / "bench").glob("bench_*.py"))
    assert fastgen.bench.suite_names() == files
    assert set(fastgen.bench.suites()) == set(files)
    result = cli("bench", "--help")
    assert result.returncode == 0 and all(name in result.stdout for name in files)
