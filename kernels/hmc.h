// HMC on a diagonal Gaussian mixture, one chain's whole run written once for both compiled backends (csrc/hmc.cpp
// loops over chains, kernels/hmc.cu runs a chain per thread; the rule: fastgen/reference/hmc.py gmm_hmc_):
// n_transitions transitions of n_leapfrog leapfrog steps with the mixture's exact log-density and gradient, the
// identity mass, the Metropolis test; a trajectory whose energy error exceeds kDivergence or is not finite is
// rejected and counted. Stream layout per transition t (stride = R(B D) + 2 R(B), R rounding up to 4): momentum
// normals at offset + t stride + b D + d, the accept uniform at offset + t stride + R(B D) + R(B) + b (the slot
// between is fastgen.mcmc.hmc's step-size jitter, so a fused transition draws what the unfused one draws).
#pragma once

#include <math.h>
#include <stdint.h>

#include "constants.h"
#include "philox.h"

namespace fastgen {
namespace mixture_hmc {

constexpr float kDivergence = 1000.0f;

struct Mixture {
  const float* means;     // (K, D)
  const float* inv_vars;  // (K, D) 1 / sigma^2
  const float* log_coef;  // (K,) log w_k - sum_d log sigma_kd
  int K;
  int D;
};

// log p(x) (without -D/2 log 2 pi) and g = grad log p(x) = sum_k r_k (mu_k - x) / sigma_k^2.
FASTGEN_HD float log_prob_grad(const Mixture& m, const float* x, float* g) {
  float logit[kMaxGmmComponents];
  float top = -INFINITY;
  for (int k = 0; k < m.K; ++k) {
    float s = 0.0f;
    for (int d = 0; d < m.D; ++d) {
      const float diff = x[d] - m.means[k * m.D + d];
      s += diff * diff * m.inv_vars[k * m.D + d];
    }
    logit[k] = m.log_coef[k] - 0.5f * s;
    top = logit[k] > top ? logit[k] : top;
  }
  float total = 0.0f;
  for (int d = 0; d < m.D; ++d) g[d] = 0.0f;
  for (int k = 0; k < m.K; ++k) {
    const float w = expf(logit[k] - top);
    total += w;
    for (int d = 0; d < m.D; ++d) g[d] += w * (m.means[k * m.D + d] - x[d]) * m.inv_vars[k * m.D + d];
  }
  for (int d = 0; d < m.D; ++d) g[d] /= total;
  return top + logf(total);
}

// Rounded up to whole Philox counters (fastgen.core.rng.reserve).
FASTGEN_HD uint64_t reserved(uint64_t n) { return (n + 3) / 4 * 4; }

// One transition's positions (fastgen.core.rng.hmc_layout): `stride` in all, the accept uniforms from `uniforms`.
struct Layout {
  uint64_t stride;
  uint64_t uniforms;
};

FASTGEN_HD Layout stream_layout(uint64_t numel, uint64_t chains) {
  return Layout{reserved(numel) + 2 * reserved(chains), reserved(numel) + reserved(chains)};
}

struct Stream {
  uint64_t seed;
  uint64_t normals;   // this chain's first momentum position: offset + b D
  uint64_t uniforms;  // this chain's accept position: offset + R(B D) + R(B) + b
  uint64_t stride;    // positions per transition
};

// The chain's run on q (D floats, updated): returns the summed acceptance probabilities; adds the divergent
// transitions to *divergences.
FASTGEN_HD float run_chain(const Mixture& m, float* q, float eps, int64_t n_transitions, int64_t n_leapfrog,
                           const Stream& s, int* divergences) {
  float g[kMaxGmmDim], p[kMaxGmmDim], q1[kMaxGmmDim], g1[kMaxGmmDim];
  const int D = m.D;
  float log_p = log_prob_grad(m, q, g);
  float accepted = 0.0f;
  for (int64_t t = 0; t < n_transitions; ++t) {
    const uint64_t base = static_cast<uint64_t>(t) * s.stride;
    float kinetic0 = 0.0f;
    for (int d = 0; d < D; ++d) {
      p[d] = normal_at(s.seed, s.normals + base + d);
      kinetic0 += 0.5f * p[d] * p[d];
      q1[d] = q[d];
      g1[d] = g[d];
    }
    float log_p1 = log_p;
    for (int d = 0; d < D; ++d) p[d] += 0.5f * eps * g1[d];
    for (int64_t l = 0; l < n_leapfrog; ++l) {
      for (int d = 0; d < D; ++d) q1[d] += eps * p[d];
      log_p1 = log_prob_grad(m, q1, g1);
      const float kick = l == n_leapfrog - 1 ? 0.5f : 1.0f;
      for (int d = 0; d < D; ++d) p[d] += kick * eps * g1[d];
    }
    float kinetic1 = 0.0f;
    for (int d = 0; d < D; ++d) kinetic1 += 0.5f * p[d] * p[d];
    const float error = (kinetic1 - log_p1) - (kinetic0 - log_p);  // H' - H
    const bool finite = error - error == 0.0f;                     // neither NaN nor infinite
    const bool divergent = !finite || error > kDivergence;
    const float prob = divergent ? 0.0f : (error <= 0.0f ? 1.0f : expf(-error));
    accepted += prob;
    *divergences += divergent ? 1 : 0;
    if (uniform_at(s.seed, s.uniforms + base) < prob) {
      for (int d = 0; d < D; ++d) {
        q[d] = q1[d];
        g[d] = g1[d];
      }
      log_p = log_p1;
    }
  }
  return accepted;
}

}  // namespace mixture_hmc
}  // namespace fastgen
