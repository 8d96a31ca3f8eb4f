// CUDA kernels of the fused Gaussian reparameterization (see csrc/vae.cpp for the rule): samples of up to
// kWarpRow elements take one warp each (8 per block; a VAE's latents), longer ones a block each, the
// log-density summed by shuffles / block_sum. The launcher is declared in csrc/vae.cpp.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

constexpr int64_t kWarpRow = 2048;  // elements per sample below which a warp, not a block, takes a sample

template <typename T>
__device__ __forceinline__ float rsample_element(const GaussianRsampleArgs& a, int64_t i) {
  const float eps = normal_at(a.seed, a.offset + static_cast<uint64_t>(i));
  const float s = load(static_cast<const T*>(a.log_std), i);
  store(static_cast<T*>(a.z), i, load(static_cast<const T*>(a.mean), i) + expf(s) * eps);
  return -0.5f * eps * eps - s;
}

// One warp per sample: sample blockIdx.x * (kThreads / 32) + warp.
template <typename T>
__global__ void gaussian_rsample_warp_kernel(GaussianRsampleArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= a.batch) return;
  const int lane = threadIdx.x & 31;
  float total = 0.0f;
  for (int64_t col = lane; col < a.dim; col += 32) total += rsample_element<T>(a, row * a.dim + col);
  for (int o = 16; o > 0; o >>= 1) total += __shfl_down_sync(0xffffffffu, total, o);
  if (lane == 0) a.log_prob[row] = total - a.log_norm;
}

// One block per sample.
template <typename T>
__global__ void gaussian_rsample_kernel(GaussianRsampleArgs a) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  float total = 0.0f;
  for (int64_t col = threadIdx.x; col < a.dim; col += kThreads) total += rsample_element<T>(a, row * a.dim + col);
  total = block_sum(total, shared);
  if (threadIdx.x == 0) a.log_prob[row] = total - a.log_norm;
}

template <typename T>
void launch(const GaussianRsampleArgs& a, cudaStream_t stream) {
  // grid x takes up to 2^31 - 1 blocks
  if (a.dim <= kWarpRow) {
    const int64_t rows_per_block = kThreads / 32;
    const unsigned blocks = static_cast<unsigned>((a.batch + rows_per_block - 1) / rows_per_block);
    gaussian_rsample_warp_kernel<T><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    gaussian_rsample_kernel<T><<<static_cast<unsigned>(a.batch), kThreads, 0, stream>>>(a);
  }
}

}  // namespace

cudaError_t gaussian_rsample(const GaussianRsampleArgs& a, cudaStream_t stream) {
  if (a.batch == 0) return cudaSuccess;
  switch (a.dtype) {
    case kFloat16:
      launch<__half>(a, stream);
      break;
    case kBFloat16:
      launch<__nv_bfloat16>(a, stream);
      break;
    default:
      launch<float>(a, stream);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastgen
