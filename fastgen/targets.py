"""Targets with exact answers: Gaussian mixtures (energy, score, log-density,
exact samples, and the exact score of every Gaussian-noised marginal), the
MCMC test densities (Neal's funnel, a banana, a correlated Gaussian: log-density,
exact samples, exact moments) and sample-only toy sets."""

from __future__ import annotations

import math

import torch

from .core.rng import resolve_seed


def _generator(seed, generator) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(resolve_seed(seed, generator))
    return g


class GaussianMixture:
    """p(x) = sum_k w_k N(x; mu_k, diag(sigma_k^2)).

    Args:
        means: (K, D) component means.
        stds: standard deviations, a float, (K,) (isotropic per component) or (K, D).
        weights: (K,) positive weights (normalized here); equal weights by default.

    Passed as ``energy=`` to :func:`fastgen.langevin`, it runs the fused
    in-register kernel (:func:`fastgen.ops.gmm_langevin_`).
    """

    def __init__(self, means, stds=1.0, weights=None):
        means = torch.as_tensor(means, dtype=torch.float64)
        if means.dim() != 2 or means.shape[0] < 1:
            raise ValueError(f"means must have shape (K, D), got {tuple(means.shape)}")
        k, d = means.shape
        stds = torch.as_tensor(stds, dtype=torch.float64)
        if stds.dim() == 0:
            stds = stds.expand(k, d)
        elif stds.shape == (k,):
            stds = stds[:, None].expand(k, d)
        elif stds.shape != (k, d):
            raise ValueError(f"stds must be a float, ({k},) or ({k}, {d}), got {tuple(stds.shape)}")
        if not bool((stds > 0).all()) or not bool(torch.isfinite(stds).all()):
            raise ValueError("stds must be finite and > 0")
        weights = torch.full((k,), 1.0 / k, dtype=torch.float64) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if weights.shape != (k,) or not bool((weights > 0).all()):
            raise ValueError(f"weights must be ({k},) and > 0, got {weights}")
        self.means = means
        self.stds = stds.contiguous()
        self.weights = weights / weights.sum()
        self._kernel_params: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def kernel_params(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(means, 1/sigma^2, log w_k - sum_d log sigma_kd) as float32 on `device` (cached)."""
        device = torch.device(device)
        if device not in self._kernel_params:
            log_coef = self.weights.log() - self.stds.log().sum(1)
            self._kernel_params[device] = tuple(
                t.to(device=device, dtype=torch.float32).contiguous()
                for t in (self.means, self.stds.pow(-2), log_coef))
        return self._kernel_params[device]

    def _components(self, x: torch.Tensor, sigma=None, alpha=None):
        """Per-component log-densities (B, K) and (mu - x) / var (B, K, D) of the law of alpha x0 + sigma eps."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32

        def per_sample(v):
            v = torch.as_tensor(v, dtype=dtype, device=x.device)
            return v.reshape(-1, 1, 1) if v.dim() > 0 else v

        means = self.means.to(x.device, dtype)[None]  # (1, K, D)
        var = self.stds.to(x.device, dtype).square()[None]
        if alpha is not None:
            a = per_sample(alpha)
            means, var = a * means, a.square() * var
        if sigma is not None:
            var = var + per_sample(sigma).square()
        diff = means - x.to(dtype)[:, None, :]  # (B, K, D)
        log_comp = (self.weights.to(x.device, dtype).log()
                    - 0.5 * (diff.square() / var).sum(-1)
                    - 0.5 * var.log().sum(-1)
                    - 0.5 * self.dim * math.log(2 * math.pi))  # fmt: skip
        return log_comp, diff / var

    def conditional(self, known_mask, values) -> GaussianMixture:
        """The law of the unknown coordinates given the known ones, exactly: the components restricted to the
        coordinates where ``known_mask`` (bool, (D,)) is False, weighted by w_k N(values; mu_k, sigma_k^2) on the
        known ones (``values``: (D,) or the known coordinates alone; the components are diagonal, so each keeps
        its mean and standard deviations)."""
        mask = torch.as_tensor(known_mask)
        if mask.dtype != torch.bool or mask.shape != (self.dim,) or bool(mask.all()) or not bool(mask.any()):
            raise ValueError(f"known_mask must be a ({self.dim},) bool tensor with known and unknown coordinates, "
                             f"got {known_mask!r}")
        values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
        if values.shape[0] == self.dim:
            values = values[mask]
        if values.shape[0] != int(mask.sum()):
            raise ValueError(f"values must give the {int(mask.sum())} known coordinates (or all {self.dim}), got "
                             f"{values.shape[0]}")
        mu, sd = self.means[:, mask], self.stds[:, mask]
        log_w = self.weights.log() + torch.distributions.Normal(mu, sd).log_prob(values).sum(-1)
        return GaussianMixture(self.means[:, ~mask], self.stds[:, ~mask], torch.softmax(log_w, 0))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x), shape (B,)."""
        return torch.logsumexp(self._components(x)[0], dim=-1)

    def noised_log_prob(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """log-density of the law of alpha x0 + sigma eps, x0 ~ p (alpha, sigma floats or (B,) tensors)."""
        return torch.logsumexp(self._components(x, sigma, alpha)[0], dim=-1)

    def energy(self, x: torch.Tensor) -> torch.Tensor:
        """U(x) = -log p(x), shape (B,)."""
        return -self.log_prob(x)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """grad log p(x) = sum_k r_k(x) (mu_k - x) / sigma_k^2, shape (B, D), x's dtype."""
        return self.diffused_score(x, None)

    def diffused_score(self, x: torch.Tensor, sigma) -> torch.Tensor:
        """Exact score of p convolved with N(0, sigma^2 I): a mixture with variances sigma_k^2 + sigma^2.

        sigma: None (no noise), a float, a 0-d tensor or a (B,) tensor (one per sample).
        """
        return self.noised_score(x, None, sigma)

    def noised_score(self, x: torch.Tensor, alpha, sigma) -> torch.Tensor:
        """Exact score of the law of alpha x0 + sigma eps, x0 ~ p (a mixture with means alpha mu_k and
        variances alpha^2 sigma_k^2 + sigma^2); alpha and sigma floats or (B,) tensors."""
        log_comp, pull = self._components(x, sigma, alpha)
        return (torch.softmax(log_comp, dim=-1)[..., None] * pull).sum(1).to(x.dtype)

    def model(self, process, prediction: str = "score", conditional: bool = False):
        """The exact model of this target under `process` (an SDE or a DDPMSchedule): a callable
        (x, t) -> score, eps, x0 or v of the marginal at time t, for fastgen.sample and the drop-ins.
        With ``conditional=True`` the components are classes: (x, t, y) -> the prediction of the marginal of
        component y_b for sample b (y a (B,) integer tensor; the model of p(x | y)); the null label y_b = -1 gives
        the whole mixture's (the unconditional model, for classifier-free guidance)."""
        if prediction not in ("score", "eps", "x0", "v"):
            raise ValueError(f"prediction must be score, eps, x0 or v, got {prediction!r}")

        def exact(x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
            alpha, sigma = process.marginal(t)
            alpha, sigma = alpha.to(x.device), sigma.to(x.device)
            xd = x.double()
            if conditional:
                if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
                    raise ValueError(f"y must be a ({x.shape[0]},) integer tensor of component labels, got {y!r}")
                log_comp, pull = self._components(xd, sigma, alpha)  # (B, K), (B, K, D)
                y = y.to(x.device).long()
                own = pull[torch.arange(x.shape[0], device=x.device), y.clamp_min(0)]
                whole = (torch.softmax(log_comp, dim=-1)[..., None] * pull).sum(1)
                score = torch.where((y < 0)[:, None], whole, own)
            else:
                score = self.noised_score(xd, alpha, sigma)
            a, s = (v.reshape(-1, 1) if v.dim() else v for v in (alpha, sigma))
            eps = -s * score
            x0 = (xd + s.square() * score) / a
            out = {"score": score, "eps": eps, "x0": x0, "v": a * eps - s * x0}[prediction]
            return out.to(x.dtype)

        return exact

    def posterior(self, x: torch.Tensor, alpha, sigma, y: torch.Tensor | None = None):
        """(E[x0 | x], E[eps | x]) for x = alpha x0 + sigma eps, x0 ~ p (or its component y_b for sample b; y_b = -1
        the whole mixture), alpha and sigma floats or (B,) tensors: per component, x0's posterior mean
        mu_k + alpha s_k^2 (x - alpha mu_k) / v_k and eps's sigma (x - alpha mu_k) / v_k, v_k = alpha^2 s_k^2 +
        sigma^2, weighted by the components' responsibilities. Defined at alpha = 0 and at sigma = 0."""
        log_comp, _ = self._components(x, sigma, alpha)  # (B, K)
        dtype = log_comp.dtype

        def per_sample(v):
            v = torch.as_tensor(v, dtype=dtype, device=x.device)
            return v.reshape(-1, 1, 1) if v.dim() > 0 else v

        a, s = per_sample(alpha), per_sample(sigma)
        means, var0 = self.means.to(x.device, dtype)[None], self.stds.to(x.device, dtype).square()[None]
        resid = x.to(dtype)[:, None, :] - a * means  # (B, K, D)
        var = a.square() * var0 + s.square()
        x0 = means + a * var0 * resid / var
        eps = s * resid / var
        weights = torch.softmax(log_comp, dim=-1)
        if y is not None:
            y = torch.as_tensor(y, device=x.device).long()
            own = torch.nn.functional.one_hot(y.clamp_min(0), self.n_components).to(dtype)
            weights = torch.where((y < 0)[:, None], weights, own)
        return (weights[..., None] * x0).sum(1).to(x.dtype), (weights[..., None] * eps).sum(1).to(x.dtype)

    def velocity(self, path, conditional: bool = False):
        """The exact flow-matching velocity of this target under an affine path (fastgen.flows.matching; data at
        t = 0): (x, t) -> alpha'(t) E[x0 | x_t] + sigma'(t) E[eps | x_t], t a float or (B,) tensor. With
        ``conditional=True``, (x, t, y) -> the velocity of component y_b's path (y_b = -1: the whole mixture)."""

        def exact(x: torch.Tensor, t, y: torch.Tensor | None = None) -> torch.Tensor:
            if conditional and (not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],)):
                raise ValueError(f"y must be a ({x.shape[0]},) integer tensor of component labels, got {y!r}")
            alpha, sigma = path.marginal(t)
            d_alpha, d_sigma = path.derivative(t)
            x0, eps = self.posterior(x.double(), alpha, sigma, y if conditional else None)
            rows = [v.to(x.device).reshape(-1, 1) if v.dim() else v.to(x.device) for v in (d_alpha, d_sigma)]
            return (rows[0] * x0 + rows[1] * eps).to(x.dtype)

        return exact

    def sample(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> torch.Tensor:
        """n exact samples (component by weight, then Gaussian), shape (n, D)."""
        g = _generator(seed, generator)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        z = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        x = self.means[comp] + self.stds[comp] * z
        return x.to(device=device, dtype=dtype)

    def __repr__(self) -> str:
        return f"GaussianMixture(components={self.n_components}, dim={self.dim})"


def eight_gaussians(radius: float = 2.0, std: float = 0.15) -> GaussianMixture:
    """Eight equal components on a circle of `radius`."""
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=1)
    return GaussianMixture(means, std)


def rings(radii=(1.0, 2.0, 3.0), per_ring=(8, 16, 24), std: float = 0.08) -> GaussianMixture:
    """Concentric rings, each a ring of equal components, weighted by component count."""
    means = []
    for r, n in zip(radii, per_ring, strict=True):
        a = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
        means.append(r * torch.stack([a.cos(), a.sin()], dim=1))
    return GaussianMixture(torch.cat(means), std)


def grid(size: int = 5, spacing: float = 1.0, std: float = 0.1) -> GaussianMixture:
    """size x size equal components on a square grid centred at 0."""
    ticks = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * spacing
    means = torch.cartesian_prod(ticks, ticks)
    return GaussianMixture(means, std)


def two_moons(n: int, noise: float = 0.1, seed: int | None = None, generator=None) -> torch.Tensor:
    """n samples of the two interleaved half circles (sample-only), shape (n, 2)."""
    g = _generator(seed, generator)
    t = torch.rand(n, generator=g, dtype=torch.float64) * math.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.where(upper, t.cos(), 1 - t.cos())
    y = torch.where(upper, t.sin(), 0.5 - t.sin())
    pts = torch.stack([x, y], dim=1) + noise * torch.randn(n, 2, generator=g, dtype=torch.float64)
    return pts.float()


def checkerboard(n: int, squares: int = 4, seed: int | None = None, generator=None) -> torch.Tensor:
    """n uniform samples on the dark squares of a squares x squares board on [-2, 2]^2, shape (n, 2)."""
    g = _generator(seed, generator)
    side = 4.0 / squares
    i = torch.randint(0, squares, (n,), generator=g)
    j = (torch.randint(0, squares // 2, (n,), generator=g) * 2 + i % 2) % squares
    u = torch.rand(n, 2, generator=g)
    return torch.stack([i, j], dim=1).float() * side - 2.0 + u * side


class Density:
    """A log-density with exact draws and moments, for MCMC: ``log_prob(x)`` (x (B, dim) -> (B,), up to a
    constant, differentiable), ``sample(n, seed)`` (n exact draws, float32), ``mean`` and ``variance`` (dim,)
    float64."""

    def __init__(self, name: str, dim: int, log_prob, sample, mean: torch.Tensor, variance: torch.Tensor):
        self.name, self.dim, self._log_prob, self._sample = name, dim, log_prob, sample
        self.mean, self.variance = mean, variance

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        return self._log_prob(x)

    def sample(self, n: int, seed: int | None = None, generator=None) -> torch.Tensor:
        return self._sample(n, _generator(seed, generator)).float()

    def __repr__(self) -> str:
        return f"Density({self.name}, dim={self.dim})"


def funnel(dim: int = 10, centred: bool = True) -> Density:
    """Neal's funnel: v ~ N(0, 3^2), x_i | v ~ N(0, e^v), i < dim. Centred, the state is (v, x), whose neck (v < -4,
    9% of the mass) is hard for HMC; non-centred, (v, z) with x = e^(v/2) z, z ~ N(0, I): a Gaussian."""
    if dim < 2:
        raise ValueError(f"dim must be >= 2, got {dim}")

    def log_prob(s):
        v = s[:, 0]
        if not centred:
            return -v.square() / 18 - 0.5 * s[:, 1:].square().sum(1)
        return -v.square() / 18 - 0.5 * (s[:, 1:].square() * torch.exp(-s[:, :1])).sum(1) - 0.5 * (dim - 1) * v

    def sample(n, g):
        v = 3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
        z = torch.randn(n, dim - 1, generator=g, dtype=torch.float64)
        return torch.cat([v, z * torch.exp(v / 2) if centred else z], 1)

    mean = torch.zeros(dim, dtype=torch.float64)
    variance = torch.full((dim,), math.exp(4.5) if centred else 1.0, dtype=torch.float64)  # E e^v = e^(9/2)
    variance[0] = 9.0
    return Density("funnel" if centred else "funnel_noncentred", dim, log_prob, sample, mean, variance)


def banana(b: float = 0.5) -> Density:
    """x1 ~ N(0, 1), x2 | x1 ~ N(b (x1^2 - 1), 1): mean (0, 0), variance (1, 1 + 2 b^2)."""
    def log_prob(x):
        return -0.5 * x[:, 0].square() - 0.5 * (x[:, 1] - b * (x[:, 0].square() - 1)).square()

    def sample(n, g):
        x1 = torch.randn(n, generator=g, dtype=torch.float64)
        return torch.stack([x1, b * (x1.square() - 1) + torch.randn(n, generator=g, dtype=torch.float64)], 1)

    return Density("banana", 2, log_prob, sample, torch.zeros(2, dtype=torch.float64),
                   torch.tensor([1.0, 1.0 + 2 * b * b], dtype=torch.float64))


def correlated_gaussian(dim: int = 100, rho: float = 0.9) -> Density:
    """N(0, S), S_ij = s_i s_j rho^|i - j|, scales s log-spaced from 0.1 to 1 (``covariance`` holds S)."""
    scales = torch.logspace(-1, 0, dim, dtype=torch.float64)
    cov = scales[:, None] * scales[None, :] * rho ** (torch.arange(dim)[:, None] - torch.arange(dim)).abs()
    precision, factor = torch.linalg.inv(cov), torch.linalg.cholesky(cov)
    cast: dict = {}

    def log_prob(x):
        p = cast.get((x.device, x.dtype))
        if p is None:
            p = cast[(x.device, x.dtype)] = precision.to(x.device, x.dtype)
        return -0.5 * ((x @ p) * x).sum(1)

    density = Density(f"gaussian{dim}", dim, log_prob,
                      lambda n, g: torch.randn(n, dim, generator=g, dtype=torch.float64) @ factor.T,
                      torch.zeros(dim, dtype=torch.float64), cov.diagonal().clone())
    density.covariance = cov
    return density


TOY_2D = ("eight_gaussians", "two_moons", "checkerboard", "rings")


def toy_2d(name: str, n: int, seed: int | None = None) -> torch.Tensor:
    """n samples (float32, (n, 2)) of the 2-D toy target ``name``: one of TOY_2D."""
    if name == "eight_gaussians":
        return eight_gaussians().sample(n, seed=seed)
    if name == "rings":
        return rings().sample(n, seed=seed)
    if name == "two_moons":
        return two_moons(n, seed=seed)
    if name == "checkerboard":
        return checkerboard(n, seed=seed)
    raise ValueError(f"target must be one of {', '.join(TOY_2D)}, got {name!r}")


def toy_2d_entropy(name: str, held_out: torch.Tensor) -> float | None:
    """-mean log p(held_out) where the toy target's density is known in closed form (the mixtures), else None:
    a model's held-out cross-entropy minus this is its KL(data || model)."""
    mixture = {"eight_gaussians": eight_gaussians, "rings": rings}.get(name)
    return None if mixture is None else float(-mixture().log_prob(held_out.double()).mean())
