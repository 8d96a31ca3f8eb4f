// The Hutchinson reduction, hutchinson_dot (schema: fastgen/ops/hutchinson.py):
//   out_b = sum_i vjp[b, i] eps(offset + b D + i),   eps = sign(u - 1/2) (+1 where u >= 1/2) of the stream's
//   uniform u, or its normal; float32 arithmetic. The backward (fastgen/ops/hutchinson.py) redraws eps.
// CPU: samples split across threads, the probe drawn in blocks of cpu::kBlock; CUDA: kernels/hutchinson.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "register.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;

constexpr int64_t kLanes = 16;

void check_hutchinson(const Tensor& vjp, int64_t seed, int64_t offset) {
  check_state_dtype(vjp, "vjp");
  FASTGEN_CHECK(vjp.dim() >= 1, "vjp must have a leading batch dimension (shape (B, ...)), got a 0-d tensor");
  FASTGEN_CHECK(vjp.is_contiguous(), "vjp must be contiguous (call .contiguous() first)");
  FASTGEN_CHECK(seed >= 0, "seed must be an int in [0, 2**63 - 1], got ", seed);
  FASTGEN_CHECK(offset >= 0, "offset must be an int in [0, 2**63 - 1], got ", offset);
}

void hutchinson_dot_cpu(const Tensor& vjp, int64_t seed, int64_t offset, bool rademacher, Tensor& out) {
  const int64_t batch = vjp.size(0);
  const int64_t dim = batch ? vjp.numel() / batch : 0;
  float* o = out.data_ptr<float>();
  dispatch_float(vjp.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* v = vjp.data_ptr<T>();
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1)), [&](int64_t b0, int64_t b1) {
      float eps[cpu::kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        float lanes[kLanes] = {};  // independent partial sums, so that the products vectorize
        for (int64_t d0 = 0; d0 < dim; d0 += cpu::kBlock) {
          const int64_t n = std::min(cpu::kBlock, dim - d0);
          const uint64_t first = static_cast<uint64_t>(offset + b * dim + d0);
          if (rademacher) {
            cpu::fill_uniforms(static_cast<uint64_t>(seed), first, n, eps);
            for (int64_t i = 0; i < n; ++i) eps[i] = eps[i] < 0.5f ? -1.0f : 1.0f;
          } else {
            cpu::fill_normals(static_cast<uint64_t>(seed), first, n, eps);
          }
          const T* row = v + b * dim + d0;
          int64_t i = 0;
          for (; i + kLanes <= n; i += kLanes)
            for (int64_t j = 0; j < kLanes; ++j) lanes[j] += static_cast<float>(row[i + j]) * eps[i + j];
          for (; i < n; ++i) lanes[i % kLanes] += static_cast<float>(row[i]) * eps[i];
        }
        float total = 0.0f;
        for (int64_t j = 0; j < kLanes; ++j) total += lanes[j];
        o[b] = total;
      }
    });
  });
}

#ifdef FASTGEN_WITH_CUDA
void hutchinson_dot_cuda(const Tensor& vjp, int64_t seed, int64_t offset, bool rademacher, Tensor& out) {
  const c10::cuda::CUDAGuard guard(vjp.device());
  const int64_t batch = vjp.size(0);
  cuda::HutchinsonDotArgs args{vjp.data_ptr(), out.data_ptr<float>(), cuda_dtype(vjp), batch,
                               batch ? vjp.numel() / batch : 0, static_cast<uint64_t>(seed),
                               static_cast<uint64_t>(offset), rademacher};
  C10_CUDA_CHECK(cuda::hutchinson_dot(args, c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key).
Tensor hutchinson_dot(const Tensor& vjp, int64_t seed, int64_t offset, bool rademacher) {
  check_hutchinson(vjp, seed, offset);
  Tensor out = at::empty({vjp.size(0)}, vjp.options().dtype(at::kFloat));
  FASTGEN_ON_DEVICE(vjp, hutchinson_dot_cpu(vjp, seed, offset, rademacher, out),
                    hutchinson_dot_cuda(vjp, seed, offset, rademacher, out));
  return out;
}

}  // namespace

#define HUTCHINSON_OPS(X) X(hutchinson_dot, hutchinson_dot)
FASTGEN_REGISTER_LOOP(HUTCHINSON_OPS)

}  // namespace fastgen
