// CUDA kernels of the hmc loop: the fused leapfrog pass (p <- p + kick eps_b grad, then (drift) q <- q + eps_b M^-1 p,
// float32 arithmetic, one element per thread in a grid-stride loop) and whole HMC chains on a Gaussian mixture (a
// chain per thread, its state in registers and local memory; the maths: hmc.h). Launchers: launchers.h.
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

template <typename T>
__global__ void gmm_hmc_kernel(GmmHmcArgs a) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (b >= a.chains) return;
  const int D = a.mixture.D;
  T* q = static_cast<T*>(a.q) + b * D;
  float x[kMaxGmmDim];
  for (int d = 0; d < D; ++d) x[d] = load(q, d);
  const mixture_hmc::Stream s{a.seed, a.offset + static_cast<uint64_t>(b * D),
                              a.offset + a.layout.uniforms + static_cast<uint64_t>(b), a.layout.stride};
  int divergences = 0;
  a.accepted[b] =
      mixture_hmc::run_chain(a.mixture, x, a.step_sizes[b], a.n_transitions, a.n_leapfrog, s, &divergences);
  a.divergences[b] = divergences;
  for (int d = 0; d < D; ++d) store(q, d, x[d]);
}

template <typename T>
cudaError_t launch_gmm(const GmmHmcArgs& a, cudaStream_t stream) {
  if (a.chains == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((a.chains + kThreads - 1) / kThreads);
  gmm_hmc_kernel<T><<<blocks, kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t gmm_hmc(const GmmHmcArgs& args, DType dtype, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto tag) { return launch_gmm<typename decltype(tag)::type>(args, stream); });
}

cudaError_t leapfrog(const LeapfrogArgs& args, DType dtype, cudaStream_t stream) {
  return by_dtype(dtype, [&](auto tag) { return launch<typename decltype(tag)::type>(args, stream); });
}

}  // namespace cuda
}  // namespace fastgen
