// Fill a float32 buffer from the shared Philox stream (parity tests, samplers).
#include "launchers.h"

namespace fastgen {
namespace cuda {

__global__ void philox_fill_kernel(float* __restrict__ out,  // (n,)
                                   int64_t n,                // elements
                                   bool normal,              // normals instead of uniforms
                                   RngArgs rng) {
  uint64_t seed, offset;
  resolve_rng(rng, &seed, &offset);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const uint64_t n = offset + static_cast<uint64_t>(i);
    out[i] = normal ? normal_at(seed, n) : uniform_at(seed, n);
  }
}

cudaError_t philox_fill(float* out, int64_t n, bool normal, RngArgs rng, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  const int grid = static_cast<int>(blocks < 65535 * 8 ? blocks : 65535 * 8);
  philox_fill_kernel<<<grid, threads, 0, stream>>>(out, n, normal, rng);
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastgen
