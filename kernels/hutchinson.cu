// CUDA kernel of the Hutchinson reduction (see csrc/hutchinson.cpp for the rule), as per-row sums (common.cuh's
// launch_row_sums) with the probe regenerated from the stream. The launcher is declared in launchers.h.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

template <typename T>
struct HutchinsonOp {
  HutchinsonDotArgs a;

  __device__ float term(int64_t i) const {  // vjp_i eps_i
    const uint64_t n = a.offset + static_cast<uint64_t>(i);
    const float eps = a.rademacher ? (uniform_at(a.seed, n) < 0.5f ? -1.0f : 1.0f) : normal_at(a.seed, n);
    return load(static_cast<const T*>(a.vjp), i) * eps;
  }
  __device__ void finish(int64_t row, float total) const { a.out[row] = total; }
};

}  // namespace

cudaError_t hutchinson_dot(const HutchinsonDotArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case kFloat16:
      return launch_row_sums(HutchinsonOp<__half>{a}, a.batch, a.dim, stream);
    case kBFloat16:
      return launch_row_sums(HutchinsonOp<__nv_bfloat16>{a}, a.batch, a.dim, stream);
    default:
      return launch_row_sums(HutchinsonOp<float>{a}, a.batch, a.dim, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
