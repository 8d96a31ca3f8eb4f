"""CUDA-only checks (marked gpu; skipped without a CUDA device; run by bench/gpu_check.sh).
The op-vs-reference tests of the other files also cover the cuda and triton backends there."""

import pytest
import torch

import fastgen

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_graph_replays_draw_fresh_noise(backend):
    if fastgen.ops._common._backend._usable(backend, torch.device("cuda")) is not None:
        pytest.skip(f"backend {backend} unavailable")
    rng = fastgen.RNGState(seed=3, device="cuda")
    x = torch.zeros(4096, 8, device="cuda")
    score = torch.zeros_like(x)
    with fastgen.use_backend(backend):
        fastgen.ops.ula_step_(x, score, 0.5, rng.state, 0)  # warm-up / compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            x.zero_()
            fastgen.ops.ula_step_(x, score, 0.5, rng.state, 0)
            rng.advance_(x.numel())
        graph.replay()
        first = x.clone()
        graph.replay()
        second = x.clone()
    assert not torch.equal(first, second)
    # Each replay used the counters its state pointed at: compare with explicit offsets.
    with fastgen.use_backend(backend):
        base = int(rng.state[1]) - 2 * x.numel()  # the warm-up call did not advance the state
        want = fastgen.ops.ula_step_(torch.zeros_like(x), score, 0.5, 3, base + x.numel())
    torch.testing.assert_close(second, want)


def test_langevin_loop_has_no_host_sync():
    gmm = fastgen.targets.eight_gaussians()
    x0 = torch.randn(4096, 2, device="cuda")
    steps = torch.full((4096,), 1e-3, device="cuda")
    fastgen.langevin(x0, score=gmm.score, n_steps=2, step_size=1e-3, seed=0)  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fastgen.langevin(x0, score=gmm.score, n_steps=20, step_size=1e-3, seed=0)
        fastgen.langevin(x0, energy=gmm, n_steps=20, step_size=1e-3, seed=0)
        fastgen.ops.ula_step_(x0.clone(), x0, steps, 0, 0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
