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


class _MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(3, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x, t):
        return self.net(torch.cat([x, t[:, None]], dim=1))


def test_sample_has_no_host_sync_and_graph_replays_differ():
    from fastgen.diffusion.processes import VPSDE

    model = _MLP().cuda().eval()
    sde = VPSDE()
    with torch.no_grad():
        fastgen.sample(model, (1024, 2), sde=sde, steps=5, seed=0, graph=False)  # warm-up (lazy inits)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for sampler in ("euler_maruyama", "pc", "ode_heun", "ddim", "dpmpp_2m"):
                fastgen.sample(model, (1024, 2), sde=None if sampler == "ddim" else sde, sampler=sampler, steps=10,
                               seed=0, graph=False, prediction="eps")
        finally:
            torch.cuda.set_sync_debug_mode("default")
        runner = fastgen.make_sampler(model, (1024, 2), sde=sde, sampler="euler_maruyama", steps=20, prediction="eps",
                                      seed=7, device="cuda", graph=True)
        assert runner.graph is not None
        first, second = runner.draw(), runner.draw()
    assert torch.isfinite(first).all() and not torch.equal(first, second)


def test_sample_graph_fallback_warns_once_with_the_reason():
    def model(x, t):  # a host read inside the model: not capturable
        return -x * float(t[0].item() > 0)

    with pytest.warns(RuntimeWarning, match="running without a CUDA graph"):
        x = fastgen.sample(model, (64, 2), steps=4, seed=0, device="cuda")
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("namespace", ["fastgen", "fastgen_triton"])
def test_out_of_range_device_index_makes_that_sample_nan(namespace):
    """A CUDA index is read by the kernel (a host check would sync): out of range, its sample's state is NaN and
    nothing is read outside coef; the other samples are stepped as usual."""
    if not hasattr(torch.ops, namespace) or not hasattr(getattr(torch.ops, namespace), "diffusion_step_"):
        pytest.skip(f"{namespace} has no diffusion_step_ here")
    op = getattr(torch.ops, namespace).diffusion_step_
    x = torch.randn(4, 5, device="cuda")
    coef = torch.rand(6, 8, device="cuda") + 0.5
    index = torch.tensor([1, 6, -1, 10**12], device="cuda")
    y = x.clone()
    op(y, torch.randn_like(x), coef, index, seed=0)
    torch.cuda.synchronize()
    assert torch.isnan(y[1:]).all() and torch.isfinite(y[0]).all()


def test_spectral_norm_and_residual_flow_forward_have_no_host_sync():
    """The grouped spectral norm (every backend) and a residual block's roulette log-det (its series length comes
    from the counter-based stream evaluated on the host CPU, the probe from the device) never wait on the GPU."""
    from fastgen.flows import ResidualFlow

    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)]).cuda()
    fastgen.nn.SpectralNorm.apply(model)
    flow = ResidualFlow(2, blocks=2, hidden=32, seed=0).cuda()
    x, data = torch.randn(64, 256, device="cuda"), torch.randn(128, 2, device="cuda")
    model(x).sum().backward()  # warm-up
    (-flow.log_prob(data).mean()).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for backend in ("cuda", "triton"):
            with fastgen.use_backend(backend):
                model(x).sum().backward()
        (-flow.log_prob(data).mean()).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cnf_solve_waits_on_the_gpu_only_at_its_ends_and_captures_in_a_cuda_graph():
    """The adaptive solve learns that it has finished without blocking (the same few synchronizations, at the
    start and the end, for 3 or 30 steps); with sync_every=0 a whole log-likelihood solve replays from a CUDA
    graph and matches the eager solve."""
    import copy
    import warnings

    from fastgen.flows.continuous import CNF, MLPDynamics

    torch.manual_seed(0)
    cpu_cnf = CNF(MLPDynamics(2, (32, 32)), event_shape=(2,))
    cnf = copy.deepcopy(cpu_cnf).cuda()
    x = torch.randn(512, 2)
    counts = []
    for tol in (1e-3, 1e-7):
        for flow in (cpu_cnf, cnf):
            flow.flow.solver.update(rtol=tol, atol=tol)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with torch.no_grad():
                    got = cnf.log_prob(x.cuda())
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
        assert cnf.flow.stats["attempts"] < 1000
        with torch.no_grad():
            torch.testing.assert_close(got.cpu(), cpu_cnf.log_prob(x), rtol=1e-4, atol=1e-4)
    assert counts[0] == counts[1] <= 8

    cnf.flow.solver.update(rtol=1e-5, atol=1e-5)
    xc = x.cuda()
    with torch.no_grad():
        cnf.log_prob(xc)
    cnf.flow.solver.update(sync_every=0, max_steps=cnf.flow.stats["attempts"] + 4)
    static_x = xc.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        cnf.log_prob(static_x)  # warm-up on a side stream, as torch.cuda.graphs asks
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out = cnf.log_prob(static_x)
    other = torch.randn(512, 2, device="cuda")
    static_x.copy_(other)
    graph.replay()
    with torch.no_grad():
        want = cnf.log_prob(other)
    torch.testing.assert_close(out, want)


class _LabelMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(4, 8)  # label -1 -> row 3 (the null label)
        self.net = torch.nn.Sequential(torch.nn.Linear(11, 64), torch.nn.SiLU(), torch.nn.Linear(64, 2))

    def forward(self, x, t, y):
        return self.net(torch.cat([x, t[:, None], self.embed(torch.where(y < 0, 3, y))], dim=1))


def test_guided_inpainting_loop_captures_in_one_graph_and_replays_with_new_labels():
    """Labels, classifier-free guidance with rescale and inpainting in one captured loop: every replay equals the
    eager run with the same labels, data and per-sample seeds, and a replay makes no host sync."""
    model = _LabelMLP().cuda().eval()
    g = torch.Generator().manual_seed(0)
    labels = [torch.randint(0, 3, (512,), generator=g).cuda() for _ in range(2)]
    known = torch.randn(512, 2, generator=g).cuda()
    common = dict(sde=fastgen.VPSDE(), sampler="dpmpp_2m", steps=12, prediction="eps", device="cuda",
                  per_sample_seeds=torch.arange(512), uncond_kwargs={"y": torch.tensor([-1])}, guidance_scale=4.0,
                  guidance_rescale=0.7, known=known, known_mask=torch.tensor([True, False], device="cuda"))
    with torch.no_grad():
        runner = fastgen.make_sampler(model, (512, 2), model_kwargs={"y": labels[0]}, graph=True, **common)
        assert runner.graph is not None
        for y in labels:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
            try:
                got = runner.draw(model_kwargs={"y": y})
            finally:
                torch.cuda.set_sync_debug_mode("default")
            want = fastgen.sample(model, (512, 2), model_kwargs={"y": y}, graph=False, **common)
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
            assert torch.equal(got[:, 0], known[:, 0])
