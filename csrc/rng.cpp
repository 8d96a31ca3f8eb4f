// philox_fill_: out[i] = uniform or normal at counter offset + i of the
// shared Philox stream, on CPU and CUDA. The parity tests and the samplers'
// accept/reject draws use it.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "checks.h"
#include "cpu_math.h"

#ifdef FASTGEN_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../kernels/launchers.h"
#endif

namespace fastgen {
namespace cpu {

__attribute__((target_clones("avx2", "default"))) void fill_normals(uint64_t seed, uint64_t first, int64_t count,
                                                                     float* out) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = normal_at_vectorizable(seed, first + static_cast<uint64_t>(i));
  }
}

__attribute__((target_clones("avx2", "default"))) static void fill_uniforms(uint64_t seed, uint64_t first,
                                                                             int64_t count, float* out) {
  for (int64_t i = 0; i < count; ++i) {
    out[i] = uniform_at(seed, first + static_cast<uint64_t>(i));
  }
}

}  // namespace cpu

namespace {

void check_fill(const torch::Tensor& out, int64_t seed, int64_t offset) {
  CHECK_DTYPE(out, torch::kFloat32);
  CHECK_CONTIGUOUS(out);
  FASTGEN_CHECK(seed >= 0, "seed must be a non-negative 63-bit integer, got ", seed);
  FASTGEN_CHECK(offset >= 0, "offset must be non-negative, got ", offset);
}

torch::Tensor philox_fill_cpu(torch::Tensor out, int64_t seed, int64_t offset,
                              const c10::optional<torch::Tensor>& rng_state, bool normal) {
  check_fill(out, seed, offset);
  const int64_t* state = rng_state_ptr(rng_state, out);
  RngArgs rng{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), state};
  uint64_t s, o;
  resolve_rng(rng, &s, &o);
  float* data = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    if (normal) {
      cpu::fill_normals(s, o + static_cast<uint64_t>(begin), end - begin, data + begin);
    } else {
      cpu::fill_uniforms(s, o + static_cast<uint64_t>(begin), end - begin, data + begin);
    }
  });
  return out;
}

#ifdef FASTGEN_WITH_CUDA
torch::Tensor philox_fill_cuda(torch::Tensor out, int64_t seed, int64_t offset,
                               const c10::optional<torch::Tensor>& rng_state, bool normal) {
  check_fill(out, seed, offset);
  const c10::cuda::CUDAGuard guard(out.device());
  RngArgs rng{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), rng_state_ptr(rng_state, out)};
  C10_CUDA_CHECK(cuda::philox_fill(out.data_ptr<float>(), out.numel(), normal, rng,
                                   at::cuda::getCurrentCUDAStream()));
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) { m.impl("philox_fill_", &philox_fill_cpu); }

#ifdef FASTGEN_WITH_CUDA
TORCH_LIBRARY_IMPL(fastgen, CUDA, m) { m.impl("philox_fill_", &philox_fill_cuda); }
#endif

}  // namespace fastgen
