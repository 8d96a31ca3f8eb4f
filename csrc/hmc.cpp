// Hamiltonian Monte Carlo's ops (schemas: fastgen/ops/hmc.py):
//   leapfrog_, per chain b: p <- p + kick eps_b grad_log_prob;  with drift: q <- q + eps_b M^-1 p,  float32
//     arithmetic. CPU: one parallel pass (AVX2 clone for float32); CUDA: kernels/hmc.cu.
//   gmm_hmc_: whole HMC chains on a diagonal Gaussian mixture in one call (kernels/hmc.h, shared with the CUDA
//     kernel): the CPU runs the chains in parallel, CUDA a chain per thread.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <type_traits>

#include "../kernels/hmc.h"
#include "checks.h"
#include "register.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;
using OptTensor = c10::optional<Tensor>;

void check_leapfrog(const Tensor& q, const Tensor& p, const Tensor& grad, const Tensor& step_sizes,
                    const OptTensor& inverse_mass, double kick) {
  check_state_dtype(q, "q");
  FASTGEN_CHECK(q.dim() >= 1 && q.is_contiguous(), "q must be a contiguous (B, ...) state");
  for (const Tensor* t : {&p, &grad}) {
    const char* name = t == &p ? "p" : "grad_log_prob";
    FASTGEN_CHECK(t->device() == q.device() && t->scalar_type() == q.scalar_type() && t->sizes() == q.sizes() &&
                      t->is_contiguous(),
                  name, " must be contiguous with q's shape, dtype and device (", q.sizes(), " ", q.scalar_type(),
                  " on ", q.device(), "), got ", t->sizes(), " ", t->scalar_type(), " on ", t->device());
  }
  FASTGEN_CHECK(step_sizes.device() == q.device() && step_sizes.scalar_type() == torch::kFloat32 &&
                    step_sizes.dim() == 1 && step_sizes.size(0) == q.size(0) && step_sizes.is_contiguous(),
                "step_sizes must be contiguous float32 of shape (", q.size(0), ") on q's device, got ",
                step_sizes.sizes(), " ", step_sizes.scalar_type(), " on ", step_sizes.device());
  if (inverse_mass.has_value()) {
    const Tensor& m = *inverse_mass;
    const int64_t size = q.size(0) ? q.numel() / q.size(0) : 0;
    FASTGEN_CHECK(m.device() == q.device() && m.scalar_type() == torch::kFloat32 && m.is_contiguous() &&
                      (m.numel() == size || m.numel() == q.numel()),
                  "inverse_mass must be contiguous float32 on q's device with ", size, " or ", q.numel(),
                  " elements, got ", m.sizes(), " ", m.scalar_type(), " on ", m.device());
  }
  FASTGEN_CHECK(std::isfinite(kick), "kick must be finite, got ", kick);
}

// The pass over elements [begin, end) of float32 buffers; mass_mode 0: none, 1: shared (size), 2: per element.
__attribute__((target_clones("avx2", "default"))) void leapfrog_floats(float* q, float* p, const float* g, float eps,
                                                                       const float* m, float kick, bool drift,
                                                                       int64_t n) {
  if (!drift) {
    for (int64_t i = 0; i < n; ++i) p[i] += kick * eps * g[i];
    return;
  }
  if (m == nullptr) {
    for (int64_t i = 0; i < n; ++i) {
      const float pi = p[i] + kick * eps * g[i];
      p[i] = pi;
      q[i] += eps * pi;
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    const float pi = p[i] + kick * eps * g[i];
    p[i] = pi;
    q[i] += eps * m[i] * pi;
  }
}

void leapfrog_cpu(const Tensor& q, const Tensor& p, const Tensor& grad, const Tensor& step_sizes,
                  const OptTensor& inverse_mass, float kick, bool drift) {
  const int64_t n = q.numel(), size = n / q.size(0);
  const float* eps = step_sizes.data_ptr<float>();
  const float* mass = inverse_mass.has_value() ? inverse_mass->data_ptr<float>() : nullptr;
  const bool shared = inverse_mass.has_value() && inverse_mass->numel() == size;
  dispatch_float(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* qp = q.data_ptr<T>();
    T* pp = p.data_ptr<T>();
    const T* gp = grad.data_ptr<T>();
    // Runs within one chain: a chain's step size and (shared) mass row are contiguous there.
    at::parallel_for(0, n, 1 << 13, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end;) {
        const int64_t b = i / size, stop = std::min(end, (b + 1) * size);
        const float* m = mass == nullptr ? nullptr : shared ? mass + (i - b * size) : mass + i;
        if constexpr (std::is_same_v<T, float>) {
          leapfrog_floats(qp + i, pp + i, gp + i, eps[b], m, kick, drift, stop - i);
        } else {
          for (int64_t j = i; j < stop; ++j) {
            const float pj = static_cast<float>(pp[j]) + kick * eps[b] * static_cast<float>(gp[j]);
            pp[j] = static_cast<T>(pj);
            if (drift) qp[j] = static_cast<T>(static_cast<float>(qp[j]) + eps[b] * (m ? m[j - i] : 1.0f) * pj);
          }
        }
        i = stop;
      }
    });
  });
}

#ifdef FASTGEN_WITH_CUDA
void leapfrog_cuda(const Tensor& q, const Tensor& p, const Tensor& grad, const Tensor& step_sizes,
                   const OptTensor& inverse_mass, float kick, bool drift) {
  const c10::cuda::CUDAGuard guard(q.device());
  cuda::LeapfrogArgs a;
  a.q = q.data_ptr();
  a.p = p.data_ptr();
  a.grad = grad.data_ptr();
  a.step_sizes = step_sizes.data_ptr<float>();
  a.inverse_mass = inverse_mass.has_value() ? inverse_mass->data_ptr<float>() : nullptr;
  a.numel = q.numel();
  a.size = q.numel() / q.size(0);
  a.mass_shared = inverse_mass.has_value() && inverse_mass->numel() == a.size;
  a.kick = kick;
  a.drift = drift;
  C10_CUDA_CHECK(cuda::leapfrog(a, cuda_dtype(q), c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key).
void leapfrog(Tensor q, Tensor p, const Tensor& grad, const Tensor& step_sizes, const OptTensor& inverse_mass,
              double kick, bool drift) {
  check_leapfrog(q, p, grad, step_sizes, inverse_mass, kick);
  if (q.numel() == 0) return;
  const float k = static_cast<float>(kick);
  FASTGEN_ON_DEVICE(q, leapfrog_cpu(q, p, grad, step_sizes, inverse_mass, k, drift),
                    leapfrog_cuda(q, p, grad, step_sizes, inverse_mass, k, drift));
}

// ---------------------------------------------------------------- Gaussian-mixture chains

void check_gmm_hmc(const Tensor& q, const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef,
                   const Tensor& step_sizes, int64_t n_transitions, int64_t n_leapfrog, int64_t seed,
                   int64_t offset) {
  check_state_dtype(q, "q");
  FASTGEN_CHECK(q.dim() == 2 && q.is_contiguous(), "q must be a contiguous (chains, dim) state, got ", q.sizes());
  FASTGEN_CHECK(means.dim() == 2, "means must have shape (components, dim), got ", means.sizes());
  const int64_t K = means.size(0), D = means.size(1);
  FASTGEN_CHECK(q.size(1) == D, "q must have the mixture's dimension ", D, ", got shape ", q.sizes());
  FASTGEN_CHECK(D >= 1 && D <= kMaxGmmDim && K >= 1 && K <= kMaxGmmComponents, "the fused mixture kernel takes "
                "dimension 1..", kMaxGmmDim, " and 1..", kMaxGmmComponents, " components, got ", K, " in ", D);
  for (const Tensor* t : {&means, &inv_vars, &log_coef}) {
    const char* name = t == &means ? "means" : (t == &inv_vars ? "inv_vars" : "log_coef");
    FASTGEN_CHECK(t->device() == q.device() && t->scalar_type() == torch::kFloat32 && t->is_contiguous(), name,
                  " must be contiguous float32 on the device of q (", q.device(), ")");
  }
  CHECK_SAME_SHAPE(inv_vars, means);
  CHECK_SHAPE(log_coef, K);
  FASTGEN_CHECK(step_sizes.device() == q.device() && step_sizes.scalar_type() == torch::kFloat32 &&
                    step_sizes.dim() == 1 && step_sizes.size(0) == q.size(0) && step_sizes.is_contiguous(),
                "step_sizes must be contiguous float32 of shape (", q.size(0), ") on q's device");
  FASTGEN_CHECK(n_transitions >= 0, "n_transitions must be >= 0, got ", n_transitions);
  FASTGEN_CHECK(n_leapfrog >= 1, "n_leapfrog must be >= 1, got ", n_leapfrog);
  FASTGEN_CHECK(seed >= 0 && offset >= 0, "seed and offset must be non-negative, got ", seed, ", ", offset);
}

mixture_hmc::Mixture mixture_of(const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef) {
  return mixture_hmc::Mixture{means.data_ptr<float>(), inv_vars.data_ptr<float>(), log_coef.data_ptr<float>(),
                          static_cast<int>(means.size(0)), static_cast<int>(means.size(1))};
}

void gmm_hmc_cpu(const Tensor& q, const mixture_hmc::Mixture& m, const Tensor& step_sizes, int64_t n_transitions,
                 int64_t n_leapfrog, uint64_t seed, uint64_t offset, Tensor& accepted, Tensor& divergences) {
  const int64_t chains = q.size(0), D = m.D;
  const mixture_hmc::Layout layout =
      mixture_hmc::stream_layout(static_cast<uint64_t>(q.numel()), static_cast<uint64_t>(chains));
  const float* eps = step_sizes.data_ptr<float>();
  float* acc = accepted.data_ptr<float>();
  int* div = divergences.data_ptr<int>();
  dispatch_float(q.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* qp = q.data_ptr<T>();
    at::parallel_for(0, chains, 1, [&](int64_t begin, int64_t end) {
      float x[kMaxGmmDim];
      for (int64_t b = begin; b < end; ++b) {
        for (int64_t d = 0; d < D; ++d) x[d] = static_cast<float>(qp[b * D + d]);
        const mixture_hmc::Stream s{seed, offset + static_cast<uint64_t>(b * D),
                                    offset + layout.uniforms + static_cast<uint64_t>(b), layout.stride};
        div[b] = 0;
        acc[b] = mixture_hmc::run_chain(m, x, eps[b], n_transitions, n_leapfrog, s, div + b);
        for (int64_t d = 0; d < D; ++d) qp[b * D + d] = static_cast<T>(x[d]);
      }
    });
  });
}

#ifdef FASTGEN_WITH_CUDA
void gmm_hmc_cuda(const Tensor& q, const mixture_hmc::Mixture& m, const Tensor& step_sizes, int64_t n_transitions,
                  int64_t n_leapfrog, uint64_t seed, uint64_t offset, Tensor& accepted, Tensor& divergences) {
  const c10::cuda::CUDAGuard guard(q.device());
  cuda::GmmHmcArgs a;
  a.q = q.data_ptr();
  a.chains = q.size(0);
  a.mixture = m;
  a.step_sizes = step_sizes.data_ptr<float>();
  a.n_transitions = n_transitions;
  a.n_leapfrog = n_leapfrog;
  a.seed = seed;
  a.offset = offset;
  a.layout = mixture_hmc::stream_layout(static_cast<uint64_t>(q.numel()), static_cast<uint64_t>(a.chains));
  a.accepted = accepted.data_ptr<float>();
  a.divergences = divergences.data_ptr<int>();
  C10_CUDA_CHECK(cuda::gmm_hmc(a, cuda_dtype(q), c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry: returns (summed acceptance probabilities, divergent transitions) per chain.
std::tuple<Tensor, Tensor> gmm_hmc(Tensor q, const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef,
                                   const Tensor& step_sizes, int64_t n_transitions, int64_t n_leapfrog, int64_t seed,
                                   int64_t offset) {
  check_gmm_hmc(q, means, inv_vars, log_coef, step_sizes, n_transitions, n_leapfrog, seed, offset);
  Tensor accepted = torch::zeros({q.size(0)}, q.options().dtype(torch::kFloat32));
  Tensor divergences = torch::zeros({q.size(0)}, q.options().dtype(torch::kInt32));
  if (q.numel() == 0 || n_transitions == 0) return {accepted, divergences};
  const mixture_hmc::Mixture m = mixture_of(means, inv_vars, log_coef);
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  FASTGEN_ON_DEVICE(q, gmm_hmc_cpu(q, m, step_sizes, n_transitions, n_leapfrog, s, o, accepted, divergences),
                    gmm_hmc_cuda(q, m, step_sizes, n_transitions, n_leapfrog, s, o, accepted, divergences));
  return {accepted, divergences};
}

}  // namespace

#define HMC_OPS(X) X(leapfrog_, leapfrog) X(gmm_hmc_, gmm_hmc)
FASTGEN_REGISTER_LOOP(HMC_OPS)

}  // namespace fastgen
