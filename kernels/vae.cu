// CUDA kernel of the fused Gaussian reparameterization (see csrc/vae.cpp for the rule), as per-row sums
// (common.cuh's launch_row_sums): each element's term stores z, each row's sum is its log-density.
// The launcher is declared in launchers.h.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

template <typename T>
struct RsampleOp {
  GaussianRsampleArgs a;

  __device__ float term(int64_t i) const {  // stores z_i; returns -eps_i^2 / 2 - log_std_i
    const float eps = normal_at(a.seed, a.offset + static_cast<uint64_t>(i));
    const float s = load(static_cast<const T*>(a.log_std), i);
    store(static_cast<T*>(a.z), i, load(static_cast<const T*>(a.mean), i) + expf(s) * eps);
    return -0.5f * eps * eps - s;
  }
  __device__ void finish(int64_t row, float total) const { a.log_prob[row] = total - a.log_norm; }
};

}  // namespace

cudaError_t gaussian_rsample(const GaussianRsampleArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case kFloat16:
      return launch_row_sums(RsampleOp<__half>{a}, a.batch, a.dim, stream);
    case kBFloat16:
      return launch_row_sums(RsampleOp<__nv_bfloat16>{a}, a.batch, a.dim, stream);
    default:
      return launch_row_sums(RsampleOp<float>{a}, a.batch, a.dim, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
