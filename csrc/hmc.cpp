// Hamiltonian Monte Carlo's fused leapfrog pass, leapfrog_ (schema: fastgen/ops/hmc.py), per chain b:
//   p <- p + kick eps_b grad_log_prob;  with drift: q <- q + eps_b M^-1 p,  arithmetic in float32.
// CPU: one parallel pass (AVX2 clone for float32); CUDA: kernels/hmc.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>

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

}  // namespace

#define HMC_OPS(X) X(leapfrog_, leapfrog)
FASTGEN_REGISTER_LOOP(HMC_OPS)

}  // namespace fastgen
