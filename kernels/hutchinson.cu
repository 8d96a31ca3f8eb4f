// CUDA kernels of the Hutchinson reduction (see csrc/hutchinson.cpp for the rule): samples of up to kWarpRow
// elements take one warp each (8 per block), longer ones a block each; the probe is regenerated from the stream.
// The launcher is declared in csrc/hutchinson.cpp.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

constexpr int64_t kWarpRow = 2048;  // elements per sample below which a warp, not a block, takes a sample

template <typename T>
__device__ __forceinline__ float probe_times(const HutchinsonDotArgs& a, int64_t i) {
  const uint64_t n = a.offset + static_cast<uint64_t>(i);
  const float eps = a.rademacher ? (uniform_at(a.seed, n) < 0.5f ? -1.0f : 1.0f) : normal_at(a.seed, n);
  return load(static_cast<const T*>(a.vjp), i) * eps;
}

// One warp per sample: sample blockIdx.x * (kThreads / 32) + warp.
template <typename T>
__global__ void hutchinson_dot_warp_kernel(HutchinsonDotArgs a) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= a.batch) return;
  const int lane = threadIdx.x & 31;
  float total = 0.0f;
  for (int64_t col = lane; col < a.dim; col += 32) total += probe_times<T>(a, row * a.dim + col);
  for (int o = 16; o > 0; o >>= 1) total += __shfl_down_sync(0xffffffffu, total, o);
  if (lane == 0) a.out[row] = total;
}

// One block per sample.
template <typename T>
__global__ void hutchinson_dot_kernel(HutchinsonDotArgs a) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  float total = 0.0f;
  for (int64_t col = threadIdx.x; col < a.dim; col += kThreads) total += probe_times<T>(a, row * a.dim + col);
  total = block_sum(total, shared);
  if (threadIdx.x == 0) a.out[row] = total;
}

template <typename T>
void launch(const HutchinsonDotArgs& a, cudaStream_t stream) {
  if (a.dim <= kWarpRow) {
    const int64_t rows_per_block = kThreads / 32;
    const unsigned blocks = static_cast<unsigned>((a.batch + rows_per_block - 1) / rows_per_block);
    hutchinson_dot_warp_kernel<T><<<blocks, kThreads, 0, stream>>>(a);
  } else {
    hutchinson_dot_kernel<T><<<static_cast<unsigned>(a.batch), kThreads, 0, stream>>>(a);
  }
}

}  // namespace

cudaError_t hutchinson_dot(const HutchinsonDotArgs& a, cudaStream_t stream) {
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
