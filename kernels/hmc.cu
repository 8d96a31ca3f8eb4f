// CUDA kernel of the fused leapfrog pass: p <- p + kick eps_b grad, then (drift) q <- q + eps_b M^-1 p, float32
// arithmetic, one element per thread in a grid-stride loop. The launcher is declared in launchers.h.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

template <typename T>
__global__ void leapfrog_kernel(LeapfrogArgs a) {
  T* q = static_cast<T*>(a.q);
  T* p = static_cast<T*>(a.p);
  const T* g = static_cast<const T*>(a.grad);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < a.numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const float eps = a.step_sizes[i / a.size];
    const float pi = load(p, i) + a.kick * eps * load(g, i);
    store(p, i, pi);
    if (a.drift) {
      const float m = a.inverse_mass == nullptr ? 1.0f : a.inverse_mass[a.mass_shared ? i % a.size : i];
      store(q, i, load(q, i) + eps * m * pi);
    }
  }
}

template <typename T>
cudaError_t launch(const LeapfrogArgs& a, cudaStream_t stream) {
  const int64_t wanted = (a.numel + kThreads * kItemsPerThread - 1) / (kThreads * kItemsPerThread);
  const unsigned blocks = static_cast<unsigned>(wanted < 65535 ? (wanted > 0 ? wanted : 1) : 65535);
  leapfrog_kernel<T><<<blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t leapfrog(const LeapfrogArgs& args, DType dtype, cudaStream_t stream) {
  switch (dtype) {
    case kFloat16:
      return launch<__half>(args, stream);
    case kBFloat16:
      return launch<__nv_bfloat16>(args, stream);
    default:
      return launch<float>(args, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
