"""Coupling ops, affine and rational-quadratic spline: the fused ops on every backend against the reference (registry
harness, SAMPLES), their exact inverses, log-determinants against autograd Jacobians, gradients against float64
autograd of the rule; the spline against its defining properties (it interpolates its knots with the given
derivatives), against nflows' spline where installed, and far outside its bound."""

import math

import pytest
import torch
from conftest import Sample, cpu_backends

import fastgen
from fastgen.ops import affine_coupling, spline_coupling
from fastgen.reference import coupling as R


def _inputs(device, dtype, shape, split, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    batch, size = shape[0], math.prod(shape[1:])
    x = (scale * torch.randn(shape, generator=g)).to(device, dtype)
    h = (2.0 * torch.randn(batch, size - split, generator=g)).to(device, dtype)
    t = torch.randn(batch, size - split, generator=g).to(device, dtype)
    return x, h, t


def _forward_samples(device, dtype):
    out = []
    for shape, split, inverse, mode in [((5, 4), 2, False, 0), ((3, 6), 1, True, 1), ((0, 4), 2, False, 0),
                                        ((2, 4, 3, 3), 18, False, 1), ((1, 1000003), 500000, True, 0),
                                        ((700, 2), 1, False, 0), ((4, 5), 0, True, 0)]:
        x, h, t = _inputs(device, dtype, shape, split)
        out.append(Sample(x=x, h=h, t=t, split=split, inverse=inverse, scale_mode=mode, clamp=1.5,
                          grad=("x", "h", "t")))
    return out


def _backward_samples(device, dtype):
    out = []
    for shape, split, inverse, mode in [((5, 4), 2, False, 0), ((3, 6), 1, True, 1), ((0, 4), 2, False, 0),
                                        ((2, 4, 3, 3), 18, True, 0), ((1, 1000003), 3, False, 1)]:
        x, h, _ = _inputs(device, dtype, shape, split, seed=1)
        g = torch.Generator().manual_seed(2)
        grad_out = torch.randn(shape, generator=g).to(device, dtype)
        grad_log_det = torch.randn(shape[0], generator=g).to(device)
        out.append(Sample(grad_out=grad_out, grad_log_det=grad_log_det, x=x, h=h, split=split, inverse=inverse,
                          scale_mode=mode, clamp=2.5))
    return out


def _spline_inputs(device, dtype, shape, split, bins, seed=0, scale=2.0, spread=1.0):
    """x ~ N(0, scale^2) and raw parameters ~ N(0, spread^2). The registry samples take spread 0.5: with wider
    logits some bins get flat enough (slope ~ min_derivative) that float32 arithmetic, any of it, loses more than
    the harness's 1e-4 on a few elements in 10^5; the spline tests below go there with tolerances that say so."""
    g = torch.Generator().manual_seed(seed)
    batch, size = shape[0], math.prod(shape[1:])
    x = (scale * torch.randn(shape, generator=g)).to(device, dtype)
    params = (spread * torch.randn(batch, size - split, 3 * bins - 1, generator=g)).to(device, dtype)
    return x, params


def _spline_samples(device, dtype):
    out = []
    for shape, split, bins, inverse in [((3, 3), 1, 3, False), ((4, 5), 2, 8, True), ((0, 4), 2, 4, False),
                                        ((2, 4, 3, 3), 18, 5, False), ((6, 2), 1, 1, True), ((5, 4), 0, 2, False),
                                        ((2, 30001), 1, 4, True), ((300, 6), 3, 33, False)]:
        x, params = _spline_inputs(device, dtype, shape, split, bins, scale=4.0, spread=0.5)
        out.append(Sample(x=x, params=params, split=split, bins=bins, bound=3.0, inverse=inverse, min_width=1e-3,
                          min_height=2e-3, min_derivative=1e-2, grad=("x", "params")))
    return out


def _spline_backward_samples(device, dtype):
    out = []
    for shape, split, bins, inverse in [((3, 3), 1, 3, False), ((4, 5), 2, 8, True), ((0, 4), 2, 4, False),
                                        ((2, 4, 3, 3), 18, 5, True), ((6, 2), 1, 1, False),
                                        ((2, 30001), 1, 4, False), ((300, 6), 3, 33, True)]:
        x, params = _spline_inputs(device, dtype, shape, split, bins, seed=1, scale=4.0, spread=0.5)
        g = torch.Generator().manual_seed(2)
        grad_out = torch.randn(shape, generator=g).to(device, dtype)
        grad_log_det = torch.randn(shape[0], generator=g).to(device)
        out.append(Sample(grad_out=grad_out, grad_log_det=grad_log_det, x=x, params=params, split=split, bins=bins,
                          bound=3.0, inverse=inverse, min_width=1e-3, min_height=2e-3, min_derivative=1e-2))
    return out


SAMPLES = {"affine_coupling": _forward_samples, "affine_coupling_backward": _backward_samples,
           "spline_coupling": _spline_samples, "spline_coupling_backward": _spline_backward_samples}


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("scale", ["soft_clamp", "sigmoid"])
def test_inverse_undoes_forward_including_large_values(backend, scale):
    """inverse(forward(x)) = x within 1e-5, and the two log-dets cancel, for inputs up to 1e4; logits up to 1e3 with
    the soft clamp (its scale stays in (e^-clamp, e^clamp)), up to 4 with Glow's sigmoid (its scale goes to 0 as the
    logit goes to -inf, and below about -16 the float32 map is no longer invertible: why soft_clamp is the
    default)."""
    x, h, t = _inputs("cpu", torch.float32, (64, 6), 3, seed=3)
    x = x * torch.logspace(-2, 4, 64)[:, None]
    h = h * torch.logspace(-2, 3, 64)[:, None] if scale == "soft_clamp" else h.clamp(-4, 4)
    with fastgen.use_backend(backend):
        y, ld = affine_coupling(x, h, t, 3, scale=scale)
        back, ld_back = affine_coupling(y, h, t, 3, inverse=True, scale=scale)
    assert torch.isfinite(y).all() and torch.isfinite(ld).all()
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ld + ld_back, torch.zeros(64), rtol=0, atol=1e-4)


@pytest.mark.parametrize("scale,clamp", [("soft_clamp", 2.0), ("soft_clamp", 0.5), ("sigmoid", 2.0)])
def test_log_det_is_the_log_determinant_of_the_jacobian(scale, clamp):
    """A whole coupling (identity part feeding the conditioner, the fused op on the rest), D = 5: log_det equals
    log|det J| of torch.autograd.functional.jacobian within 1e-4, forward and inverse."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 6))

    def layer(v, inverse=False):
        h, t = net(v[:2]).unsqueeze(0).chunk(2, dim=1)
        out, log_det = affine_coupling(v.unsqueeze(0), h.contiguous(), t.contiguous(), 2, inverse=inverse,
                                       scale=scale, clamp=clamp)
        return out[0], log_det[0]

    for inverse in (False, True):
        for seed in range(3):
            v = torch.randn(5, generator=torch.Generator().manual_seed(seed)) * 2
            jac = torch.autograd.functional.jacobian(lambda u: layer(u, inverse)[0], v)
            torch.testing.assert_close(layer(v, inverse)[1], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("scale", ["soft_clamp", "sigmoid"])
def test_fused_gradients_equal_float64_autograd_of_the_rule(inverse, scale):
    """The fused backward (every backend) against autograd of the rule written out in float64 torch."""
    x, h, t = _inputs("cpu", torch.float32, (6, 5, 2), 4, seed=4)
    w_out, w_ld = torch.randn(6, 5, 2, dtype=torch.float64), torch.randn(6, dtype=torch.float64)

    def rule(x, h, t):
        hb = h.double()
        s = 1.5 * torch.tanh(hb / 1.5) if scale == "soft_clamp" else torch.nn.functional.logsigmoid(hb + 2)
        xa, xb = x.double().reshape(6, -1)[:, :4], x.double().reshape(6, -1)[:, 4:]
        moved = (xb - t.double()) * torch.exp(-s) if inverse else xb * torch.exp(s) + t.double()
        return torch.cat([xa, moved], 1).reshape(6, 5, 2), (-s if inverse else s).sum(1)

    leaves = [v.double().requires_grad_() for v in (x, h, t)]
    out, ld = rule(*leaves)
    want = torch.autograd.grad((out * w_out).sum() + (ld * w_ld).sum(), leaves)
    for backend in cpu_backends():
        leaves = [v.clone().requires_grad_() for v in (x, h, t)]
        with fastgen.use_backend(backend):
            out, ld = affine_coupling(*leaves, 4, inverse=inverse, scale=scale, clamp=1.5)
            got = torch.autograd.grad((out.double() * w_out).sum() + (ld.double() * w_ld).sum(), leaves)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.double(), w, rtol=2e-5, atol=2e-5, msg=backend)


def test_the_transformed_part_can_be_the_channels_of_an_image():
    """(B, C, H, W) split at channel c: split = c H W and h, t shaped (B, C - c, H, W)."""
    x, _, _ = _inputs("cpu", torch.float32, (2, 4, 3, 3), 0)
    h, t = torch.randn(2, 2, 3, 3), torch.randn(2, 2, 3, 3)
    y, ld = affine_coupling(x, h, t, 2 * 9)
    assert torch.equal(y[:, :2], x[:, :2])
    s = 2.0 * torch.tanh(h / 2.0)
    torch.testing.assert_close(y[:, 2:], x[:, 2:] * s.exp() + t)
    torch.testing.assert_close(ld, s.sum((1, 2, 3)))


@pytest.mark.parametrize("backend", cpu_backends())
@pytest.mark.parametrize("inverse", [False, True])
def test_h_and_t_are_read_in_place_from_one_conditioner_output(backend, inverse):
    """h and t as dim-1 slices of one conditioner output ((B, 2W) and (B, 2C', H, W)): the same outputs and
    gradients as contiguous copies, on every backend, and the C++ op makes no copy of them (no aten::clone/copy_)."""
    for shape, split, width in (((6, 5), 2, 3), ((3, 4, 2, 3), 12, (2, 2, 3))):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(9))
        out_shape = (shape[0], 2 * width) if isinstance(width, int) else (shape[0], 2 * width[0]) + width[1:]
        net_out = torch.randn(out_shape, generator=torch.Generator().manual_seed(10))
        half = out_shape[1] // 2
        with fastgen.use_backend(backend):
            leaves = [x.clone().requires_grad_(), net_out.clone().requires_grad_()]
            h, t = leaves[1][:, :half], leaves[1][:, half:]
            assert not h.is_contiguous()
            with torch.profiler.profile() as prof:
                y, ld = affine_coupling(leaves[0], h, t, split, inverse=inverse)
            names = {e.name for e in prof.events()}
            if backend == "cpu":  # the C++ kernel (the reference and the interpreted Triton copy on their own)
                assert not names & {"aten::clone", "aten::copy_", "aten::contiguous"}, names
            got = torch.autograd.grad((y * y).sum() + ld.sum(), leaves)
            copies = [x.clone().requires_grad_(), net_out.clone().requires_grad_()]
            y2, ld2 = affine_coupling(copies[0], copies[1][:, :half].contiguous(), copies[1][:, half:].contiguous(),
                                      split, inverse=inverse)
            want = torch.autograd.grad((y2 * y2).sum() + ld2.sum(), copies)
        torch.testing.assert_close(y, y2, rtol=0, atol=0)
        torch.testing.assert_close(ld, ld2, rtol=0, atol=0)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w)


def test_bad_input_names_the_argument():
    x, h, t = _inputs("cpu", torch.float32, (3, 4), 2)
    with pytest.raises(ValueError, match="split must leave elements to transform"):
        affine_coupling(x, h, t, 4)
    with pytest.raises(ValueError, match="h must be on the device of x with 3 elements per sample"):
        affine_coupling(x, h, t, 1)
    with pytest.raises(TypeError, match="t must have the dtype of x"):
        affine_coupling(x, h, t.double(), 2)
    with pytest.raises(ValueError, match="scale must be one of soft_clamp, sigmoid"):
        affine_coupling(x, h, t, 2, scale="exp")
    with pytest.raises(ValueError, match="clamp must be finite and > 0"):
        affine_coupling(x, h, t, 2, clamp=0.0)


# ---------------------------------------------------------------- rational-quadratic spline


def _knots(params, bins, bound=3.0):
    return R.spline_knots(params.reshape(-1, 3 * bins - 1).double(), bins, bound, 1e-3, 1e-3, 1e-3)


@pytest.mark.parametrize("backend", cpu_backends())
def test_spline_interpolates_its_knots_with_their_derivatives(backend):
    """The defining property (Durkan et al. 2019, eq. 4-5): at each knot x_k the spline equals y_k and its slope
    (the exp of its log-det, one element per sample) is d_k, from the bins on both sides (at x_k itself and one
    float32 step below it), with slope 1 at the bound where the identity tails continue it: continuous, with a
    continuous derivative, across bins and into the tails."""
    bins, n = 5, 40
    params = torch.randn(n, 1, 3 * bins - 1, generator=torch.Generator().manual_seed(5))
    xk, _, yk, _, d = _knots(params, bins)
    for k in range(bins + 1):
        at = xk[:, k].float()[:, None]
        below = torch.nextafter(at, torch.tensor(-math.inf))
        with fastgen.use_backend(backend):
            y, ld = spline_coupling(at, params, 0, bins, bound=3.0)
            _, ld_below = spline_coupling(below, params, 0, bins, bound=3.0)
        torch.testing.assert_close(y[:, 0].double(), yk[:, k], rtol=0, atol=2e-6)
        torch.testing.assert_close(ld.exp().double(), d[:, k], rtol=1e-3, atol=0)
        torch.testing.assert_close(ld_below.exp().double(), d[:, k], rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", cpu_backends())
def test_spline_is_monotone_finite_and_invertible_everywhere(backend):
    """Each element's map on a sorted grid from -1e4 to 1e4 (through the bound, the knots and the tails): finite,
    increasing, inverse(forward) within 1e-5 (relative for large values) plus what float32 rounding of y costs
    where the spline is flat (its slope reaches 2e-4 with these parameters: an error of one float32 step in y is
    one step / slope in x; the float64 inverse of the same y is off by as much), log-dets cancelling where x is
    well conditioned, and finite gradients at +-1e4 and at the knots."""
    bins = 6
    params = 1.5 * torch.randn(1, 8, 3 * bins - 1, generator=torch.Generator().manual_seed(6))
    xk = _knots(params, bins)[0].float()
    grid = torch.cat([torch.tensor([-1e4, -50.0, -3.0001]), torch.linspace(-3, 3, 2001), torch.tensor([3.0001, 1e4])])
    x = grid[:, None].expand(-1, 8).contiguous()
    x = torch.cat([x, xk.T.contiguous()])  # every knot of every element
    p = params.expand(x.shape[0], -1, -1).contiguous()
    with fastgen.use_backend(backend):
        y, ld = spline_coupling(x, p, 0, bins, bound=3.0)
        back, ld_back = spline_coupling(y, p, 0, bins, bound=3.0, inverse=True)
        xg, pg = x.clone().requires_grad_(), p.clone().requires_grad_()
        out, log_det = spline_coupling(xg, pg, 0, bins, bound=3.0)
        gx, gp = torch.autograd.grad(out.sum() + log_det.sum(), (xg, pg))
    assert torch.isfinite(y).all() and torch.isfinite(ld).all() and torch.isfinite(gx).all() and \
        torch.isfinite(gp).all()
    assert (y[1:len(grid)] > y[:len(grid) - 1]).all()
    slope = R._spline(x.reshape(-1).double(), p.reshape(-1, 3 * bins - 1).double(), bins, 3.0, False, 1e-3, 1e-3,
                      1e-3)[1].exp().reshape(x.shape)
    allowed = 1e-5 * (1 + x.abs()) + 2 * torch.finfo(torch.float32).eps * (1 + y.abs()) / slope
    assert ((back - x).abs() <= allowed).all(), float(((back - x).abs() / allowed).max())
    assert ((back - x).abs() <= 1e-5 * (1 + x.abs()))[slope > 0.05].all()
    # Where x is well determined by y (and off the knots, where the log-slope of a narrow bin moves by 1e-2 per
    # 1e-6 in x) the log-dets cancel within 1e-3.
    steady = (slope > 0.05).all(1) & (torch.arange(len(x)) < len(grid))
    torch.testing.assert_close((ld + ld_back)[steady], torch.zeros_like(ld)[steady], rtol=0, atol=1e-3)
    assert torch.equal(y[[0, 1, len(grid) - 1]], x[[0, 1, len(grid) - 1]])  # the tails are the identity


def test_spline_log_det_is_the_log_determinant_of_the_jacobian():
    """A whole spline coupling (conditioner on the kept part, D = 6 and D = 8): log_det = log|det J| of autograd's
    Jacobian within 1e-4, forward and inverse."""
    torch.manual_seed(0)
    bins = 4
    for dim, split in ((6, 2), (8, 5)):
        net = torch.nn.Sequential(torch.nn.Linear(split, 16), torch.nn.Tanh(),
                                  torch.nn.Linear(16, (dim - split) * (3 * bins - 1)))

        def layer(v, inverse=False):
            out, log_det = spline_coupling(v[None], net(v[:split])[None].contiguous(), split, bins, bound=3.0,
                                           inverse=inverse)
            return out[0], log_det[0]

        for inverse in (False, True):
            for seed in range(3):
                v = torch.randn(dim, generator=torch.Generator().manual_seed(seed)) * 1.5
                jac = torch.autograd.functional.jacobian(lambda u: layer(u, inverse)[0], v)
                torch.testing.assert_close(layer(v, inverse)[1], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("inverse", [False, True])
def test_spline_fused_gradients_equal_float64_autograd_of_the_rule(inverse):
    """Every backend's fused backward against autograd of the reference rule in float64 (relative: the inverse's
    gradients reach 1e3 where a bin is steep)."""
    bins = 7
    x, params = _spline_inputs("cpu", torch.float32, (9, 6), 2, bins, seed=7, scale=2.0)
    w_out, w_ld = torch.randn(9, 6, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    options = (2, bins, 3.0, inverse, 1e-3, 1e-3, 1e-3)
    leaves = [v.double().requires_grad_() for v in (x, params)]
    out, ld = R.spline_coupling(*leaves, *options)
    want = torch.autograd.grad((out * w_out).sum() + (ld * w_ld).sum(), leaves)
    for backend in cpu_backends():
        leaves = [v.clone().requires_grad_() for v in (x, params)]
        with fastgen.use_backend(backend):
            out, ld = spline_coupling(*leaves, 2, bins, bound=3.0, inverse=inverse)
            got = torch.autograd.grad((out.double() * w_out).sum() + (ld.double() * w_ld).sum(), leaves)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4 * float(w.abs().max()), msg=backend)


def test_spline_equals_nflows_spline():
    """nflows' own unconstrained_rational_quadratic_spline (linear tails) on the same inputs and parameters."""
    splines = pytest.importorskip("nflows.transforms.splines.rational_quadratic")
    bins = 6
    x, params = _spline_inputs("cpu", torch.float32, (64, 5), 0, bins, seed=8, scale=3.0)
    for inverse in (False, True):
        y, ld = spline_coupling(x, params, 0, bins, bound=4.0, inverse=inverse)
        want, want_ld = splines.unconstrained_rational_quadratic_spline(
            x, params[..., :bins], params[..., bins:2 * bins], params[..., 2 * bins:], inverse=inverse,
            tails="linear", tail_bound=4.0)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ld, want_ld.sum(1), rtol=1e-4, atol=1e-4)


def test_spline_bad_input_names_the_argument():
    x, params = _spline_inputs("cpu", torch.float32, (3, 4), 2, 4)
    with pytest.raises(ValueError, match="split must leave elements to transform"):
        spline_coupling(x, params, 4, 4)
    with pytest.raises(ValueError, match=r"params must be contiguous .* 2 \* 14 elements per sample"):
        spline_coupling(x, params, 2, 5)
    with pytest.raises(ValueError, match="bins must be in"):
        spline_coupling(x, params, 2, 0)
    with pytest.raises(ValueError, match="bound must be finite and > 0"):
        spline_coupling(x, params, 2, 4, bound=-1.0)
    with pytest.raises(ValueError, match="min_width must be >= 0 with bins"):
        spline_coupling(x, params, 2, 4, min_width=0.3)
    with pytest.raises(TypeError, match="params must have the dtype of x"):
        spline_coupling(x, params.double(), 2, 4)


# ---------------------------------------------------------------- fastgen.flows layers and models


def test_coupling_layer_inverts_and_its_log_det_is_the_jacobians():
    """AffineCoupling with a random (not zero-started) conditioner, D = 5 and D = 8, both scales: inverse(forward)
    within 1e-5 on inputs up to 1e2 (larger ones make t large, and (y - t) loses float32 digits to it), log|det| of
    autograd's Jacobian within 1e-4, and gradcheck in float64."""
    from fastgen.flows import AffineCoupling

    torch.manual_seed(1)
    for features, scale in ((5, "soft_clamp"), (8, "sigmoid")):
        layer = AffineCoupling(features, scale=scale)
        for p in layer.parameters():
            torch.nn.init.normal_(p, std=0.1)
        x = torch.randn(32, features) * torch.logspace(-1, 2, 32)[:, None]
        z, log_det = layer(x)
        torch.testing.assert_close(layer.inverse(z), x, rtol=1e-5, atol=1e-5)
        for v in x[:4]:
            jac = torch.autograd.functional.jacobian(lambda u: layer(u[None])[0][0], v)
            torch.testing.assert_close(layer(v[None])[1][0], torch.linalg.slogdet(jac)[1], rtol=1e-4, atol=1e-4)
        double = layer.double()
        assert torch.autograd.gradcheck(lambda u: double(u), (torch.randn(3, features, dtype=torch.float64,
                                                                        requires_grad=True),))
        layer.float()


@pytest.mark.slow
def test_realnvp_example_learns_eight_gaussians_and_its_density_integrates_to_one():
    """examples/flows_2d.py: an 8-layer RealNVP trained by maximum likelihood on the 8-Gaussian target for 2,000
    steps (fixed seed, about 30 s): held-out cross-entropy within 0.3 nats of the target's exact entropy (the gap
    is KL(data || model) >= 0), its density integrates to 1 within 1% on a grid, and its samples put 1/8 on each
    mode within 0.03."""
    from conftest import load_example

    from fastgen.targets import eight_gaussians, toy_2d, toy_2d_entropy

    flow = load_example("flows_2d").train("eight_gaussians", 2000, flow="realnvp", seed=0)
    held_out = toy_2d("eight_gaussians", 20000, seed=1)
    with torch.no_grad():
        nll = -float(flow.log_prob(held_out).double().mean())
        assert nll - toy_2d_entropy("eight_gaussians", held_out) < 0.3, nll
        side = torch.linspace(-4.5, 4.5, 451)
        grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), -1).reshape(-1, 2)
        mass = flow.log_prob(grid).double().exp().sum() * (side[1] - side[0]) ** 2
    assert abs(float(mass) - 1) < 0.01, float(mass)
    x = flow.sample(4000, seed=3)
    assert (fastgen.metrics.mode_weights(x, eight_gaussians())[:8] - 1 / 8).abs().max() < 0.03


def test_bad_flow_input_names_the_argument():
    from fastgen.flows import AffineCoupling, RealNVP

    with pytest.raises(ValueError, match="split must keep at least one feature and transform at least one"):
        AffineCoupling(4, split=4)
    with pytest.raises(ValueError, match="split must keep"):
        AffineCoupling(4, split=0)
    with pytest.raises(ValueError, match="features must be an int >= 2"):
        AffineCoupling(1)
    with pytest.raises(ValueError, match="scale must be one of"):
        AffineCoupling(4, scale="exp")
    with pytest.raises(ValueError, match=r"x must have shape \(B, 4\)"):
        AffineCoupling(4)(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"conditioner must return \(B, 4\)"):
        AffineCoupling(4, conditioner=torch.nn.Linear(2, 3))(torch.randn(3, 4))
    flow = RealNVP(3, layers=2)
    with pytest.raises(ValueError, match=r"x must have shape \(B, 3\)"):
        flow.log_prob(torch.randn(5, 4))
    with pytest.raises(ValueError, match="x must be finite"):
        flow.log_prob(torch.tensor([[0.0, float("nan"), 1.0]]))
