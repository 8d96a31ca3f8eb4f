// CUDA kernel of the flow-matching interpolation (rule: fastgen/reference/flow_matching.py, arguments in
// launchers.h): elementwise, each element's noise regenerated from the stream at its noise row's position.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

template <typename T>
__global__ void cfm_interpolate_kernel(CfmInterpolateArgs a) {
  const int64_t numel = a.batch * a.dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = i / a.dim, col = i - row * a.dim;
    const int64_t source = a.pairing != nullptr ? a.pairing[row] : row;
    const float eps = normal_at(a.seed, a.offset + static_cast<uint64_t>(source * a.dim + col));
    const float* c = a.coef + 4 * row;  // alpha, sigma, alpha', sigma' (scalar loads: coef may be 4-byte aligned)
    const float x = load(static_cast<const T*>(a.x0), i);
    store(static_cast<T*>(a.x_t), i, c[0] * x + c[1] * eps);
    store(static_cast<T*>(a.target), i, c[2] * x + c[3] * eps);
  }
}

}  // namespace

cudaError_t cfm_interpolate(const CfmInterpolateArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_elementwise(cfm_interpolate_kernel<typename decltype(tag)::type>, a, a.batch * a.dim,
                              kItemsPerThread, stream);
  });
}

}  // namespace cuda
}  // namespace fastgen
