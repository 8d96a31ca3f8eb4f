// CUDA kernels of ActNorm and the squeeze (rules in fastgen/reference/glow.py, arguments in launchers.h). The 1x1
// convolution is a product of a (C, C) matrix with each sample's (C, S) matrix: csrc/glow.cpp hands it to cuBLAS.
#include <algorithm>

#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

template <typename T>
__global__ void actnorm_kernel(ActNormArgs a) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t numel = a.batch * a.channels * a.spatial;
  for (int64_t i = first; i < numel; i += stride) {
    const int64_t c = (i / a.spatial) % a.channels;
    const float s = a.log_scale[c], b = a.bias[c], x = load(static_cast<const T*>(a.x), i);
    store(static_cast<T*>(a.out), i, a.inverse ? (x - b) * expf(-s) : x * expf(s) + b);
  }
  for (int64_t row = first; row < a.batch; row += stride) {  // log_det: the same for every sample
    float total = 0.0f;
    for (int64_t c = 0; c < a.channels; ++c) total += a.log_scale[c];
    total *= static_cast<float>(a.spatial);
    a.log_det[row] = a.inverse ? -total : total;
  }
}

// One row (a channel of a sample) per warp, or per block (Block) for long rows: grad_in, and the row's sum g and
// sum g x.
template <typename T, bool Block>
__global__ void actnorm_backward_kernel(ActNormArgs a) {
  __shared__ float shared[kThreads / 32];
  const int64_t rows = a.batch * a.channels;
  const int64_t row = Block ? static_cast<int64_t>(blockIdx.x)
                            : static_cast<int64_t>(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (row >= rows) return;  // never in the Block case: every block has a row
  const int lanes = Block ? kThreads : 32;
  const int lane = Block ? threadIdx.x : (threadIdx.x & 31);
  const float s = a.log_scale[row % a.channels];
  const float m = a.inverse ? expf(-s) : expf(s);
  float sum_g = 0.0f, sum_gx = 0.0f;
  for (int64_t col = lane; col < a.spatial; col += lanes) {
    const int64_t i = row * a.spatial + col;
    const float g = load(static_cast<const T*>(a.grad_out), i);
    sum_g += g;
    sum_gx += g * load(static_cast<const T*>(a.x), i);
    store(static_cast<T*>(a.out), i, g * m);
  }
  if (Block) {
    sum_g = block_sum(sum_g, shared);
    sum_gx = block_sum(sum_gx, shared);
  } else {
    for (int o = 16; o > 0; o >>= 1) {
      sum_g += __shfl_down_sync(0xffffffffu, sum_g, o);
      sum_gx += __shfl_down_sync(0xffffffffu, sum_gx, o);
    }
  }
  if (lane == 0) {
    a.partial[2 * row] = sum_g;
    a.partial[2 * row + 1] = sum_gx;
  }
}

template <typename E>  // E: an unsigned type of the element's size
__global__ void squeeze_kernel(SqueezeArgs a) {
  const int64_t numel = a.batch * a.channels * 4 * a.height * a.width;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {  // i: index into the squeezed tensor
    const int64_t v = i % a.width, u = (i / a.width) % a.height;
    const int64_t q = (i / (a.width * a.height)) % (4 * a.channels), b = i / (a.width * a.height * 4 * a.channels);
    const int64_t c = q / 4, di = (q / 2) % 2, dj = q % 2;
    const int64_t j = ((b * a.channels + c) * 2 * a.height + 2 * u + di) * 2 * a.width + 2 * v + dj;
    if (a.inverse) {
      static_cast<E*>(a.out)[j] = static_cast<const E*>(a.x)[i];
    } else {
      static_cast<E*>(a.out)[i] = static_cast<const E*>(a.x)[j];
    }
  }
}

}  // namespace

cudaError_t actnorm(const ActNormArgs& a, cudaStream_t stream) {
  const int64_t numel = std::max(a.batch * a.channels * a.spatial, a.batch);
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_elementwise(actnorm_kernel<typename decltype(tag)::type>, a, numel, kItemsPerThread, stream);
  });
}

cudaError_t actnorm_backward(const ActNormArgs& a, cudaStream_t stream) {
  const int64_t rows = a.batch * a.channels;
  if (rows == 0) return cudaSuccess;
  return by_dtype(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (a.spatial > kWarpRow) {
      actnorm_backward_kernel<T, true><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(a);
    } else {
      const int64_t per_block = kThreads / 32;
      actnorm_backward_kernel<T, false>
          <<<static_cast<unsigned>((rows + per_block - 1) / per_block), kThreads, 0, stream>>>(a);
    }
    return cudaGetLastError();
  });
}

cudaError_t squeeze2d(const SqueezeArgs& a, cudaStream_t stream) {
  const int64_t numel = a.batch * a.channels * 4 * a.height * a.width;
  return a.element_size == 2 ? launch_elementwise(squeeze_kernel<uint16_t>, a, numel, kItemsPerThread, stream)
                             : launch_elementwise(squeeze_kernel<uint32_t>, a, numel, kItemsPerThread, stream);
}

}  // namespace cuda
}  // namespace fastgen
