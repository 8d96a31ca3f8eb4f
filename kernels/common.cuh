// Device helpers shared by the CUDA kernels: float32 loads/stores of every state dtype, a block-wide sum, per-row
// sums, a grid-stride launcher and the dispatch on dtype.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "launchers.h"

namespace fastgen {
namespace cuda {
namespace {

__device__ __forceinline__ float load(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half* p, int64_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16* p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float* p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, int64_t i, float v) { p[i] = __float2bfloat16_rn(v); }

constexpr int kThreads = 256;
constexpr int kItemsPerThread = 4;

// Sum over the block of `v` (kThreads threads); every thread gets the total.
__device__ float block_sum(float v, float* shared /* kThreads / 32 floats */) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < kThreads / 32; ++w) total += shared[w];
  __syncthreads();
  return total;
}

// Per-row sums over `batch` rows of `dim` elements: op.term(i) is element i's term (it may also store outputs),
// op.finish(row, total) receives each row's sum. Rows of up to kWarpRow elements take one warp each (8 per
// block), longer rows a block each.
constexpr int64_t kWarpRow = 2048;

template <typename Op>
__global__ void row_sum_warp_kernel(Op op, int64_t batch, int64_t dim) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= batch) return;  // the whole warp leaves together
  const int lane = threadIdx.x & 31;
  float total = 0.0f;
  for (int64_t col = lane; col < dim; col += 32) total += op.term(row * dim + col);
  for (int o = 16; o > 0; o >>= 1) total += __shfl_down_sync(0xffffffffu, total, o);
  if (lane == 0) op.finish(row, total);
}

template <typename Op>
__global__ void row_sum_block_kernel(Op op, int64_t dim) {
  __shared__ float shared[kThreads / 32];
  const int64_t row = blockIdx.x;
  float total = 0.0f;
  for (int64_t col = threadIdx.x; col < dim; col += kThreads) total += op.term(row * dim + col);
  total = block_sum(total, shared);
  if (threadIdx.x == 0) op.finish(row, total);
}

template <typename Op>
cudaError_t launch_row_sums(const Op& op, int64_t batch, int64_t dim, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (dim <= kWarpRow) {
    const int64_t rows_per_block = kThreads / 32;
    row_sum_warp_kernel<Op><<<static_cast<unsigned>((batch + rows_per_block - 1) / rows_per_block), kThreads, 0,
                              stream>>>(op, batch, dim);
  } else {
    row_sum_block_kernel<Op><<<static_cast<unsigned>(batch), kThreads, 0, stream>>>(op, dim);
  }
  return cudaGetLastError();
}

// A grid-stride kernel over numel elements, at most `items` per thread.
template <typename Args>
cudaError_t launch_elementwise(void (*kernel)(Args), const Args& a, int64_t numel, int64_t items, cudaStream_t stream) {
  if (numel == 0) return cudaSuccess;
  const int64_t blocks = (numel + kThreads * items - 1) / (kThreads * items);
  kernel<<<static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

template <typename T>
struct Tag {
  using type = T;
};

// f(Tag<T>{}) for the element type T of dtype.
template <typename F>
cudaError_t by_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case kFloat16:
      return f(Tag<__half>{});
    case kBFloat16:
      return f(Tag<__nv_bfloat16>{});
    default:
      return f(Tag<float>{});
  }
}

}  // namespace
}  // namespace cuda
}  // namespace fastgen
