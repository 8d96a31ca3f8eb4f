// Device helpers shared by the CUDA kernels: float32 loads/stores of every
// state dtype, and a block-wide sum.
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

}  // namespace
}  // namespace cuda
}  // namespace fastgen
