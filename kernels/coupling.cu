// CUDA kernels of the affine coupling (rule in fastgen/reference/coupling.py, arguments in launchers.h): the
// forward / inverse as per-sample sums (common.cuh's launch_row_sums: each element's term stores its output and
// returns its log-scale), the backward elementwise.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

struct LogScale {
  float s;
  float ds;  // ds / dh
};

__device__ __forceinline__ LogScale log_scale(float h, int mode, float clamp) {
  if (mode == 0) {  // s = clamp tanh(h / clamp)
    const float th = tanhf(h / clamp);
    return {clamp * th, 1.0f - th * th};
  }
  const float a = h + 2.0f;  // s = log sigmoid(a) = min(a, 0) - log1p(exp(-|a|)), ds/da = sigmoid(-a)
  const float e = expf(-fabsf(a));
  return {fminf(a, 0.0f) - log1pf(e), a >= 0.0f ? e / (1.0f + e) : 1.0f / (1.0f + e)};
}

template <typename T>
struct CouplingOp {
  AffineCouplingArgs a;

  __device__ float term(int64_t i) const {  // stores out_i; returns its log-scale (0 on the kept part)
    const int64_t row = i / a.dim, col = i - row * a.dim;
    const float x = load(static_cast<const T*>(a.x), i);
    if (col < a.split) {
      store(static_cast<T*>(a.out), i, x);
      return 0.0f;
    }
    const int64_t p = row * (a.dim - a.split) + (col - a.split);
    const LogScale s = log_scale(load(static_cast<const T*>(a.h), p), a.scale_mode, a.clamp);
    const float t = load(static_cast<const T*>(a.t), p);
    store(static_cast<T*>(a.out), i, a.inverse ? (x - t) * expf(-s.s) : x * expf(s.s) + t);
    return s.s;
  }
  __device__ void finish(int64_t row, float total) const { a.log_det[row] = a.inverse ? -total : total; }
};

template <typename T>
__global__ void coupling_backward_kernel(AffineCouplingArgs a) {
  const int64_t numel = a.batch * a.dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = i / a.dim, col = i - row * a.dim;
    const float g = load(static_cast<const T*>(a.grad_out), i);
    if (col < a.split) {
      store(static_cast<T*>(a.out), i, g);
      continue;
    }
    const int64_t p = row * (a.dim - a.split) + (col - a.split);
    const LogScale s = log_scale(load(static_cast<const T*>(a.h), p), a.scale_mode, a.clamp);
    const float x = load(static_cast<const T*>(a.x), i), gl = a.grad_log_det[row];
    if (a.inverse) {
      store(static_cast<T*>(a.out), i, g * expf(-s.s));
      store(static_cast<T*>(a.grad_h), p, -(g * x + gl) * s.ds);
    } else {
      const float gin = g * expf(s.s);
      store(static_cast<T*>(a.out), i, gin);
      store(static_cast<T*>(a.grad_h), p, (gin * x + gl) * s.ds);
    }
  }
}

template <typename T>
cudaError_t launch_backward(const AffineCouplingArgs& a, cudaStream_t stream) {
  const int64_t numel = a.batch * a.dim;
  if (numel == 0) return cudaSuccess;
  const int64_t blocks = (numel + kThreads * kItemsPerThread - 1) / (kThreads * kItemsPerThread);
  coupling_backward_kernel<T><<<static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32), kThreads, 0,
                                stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t affine_coupling(const AffineCouplingArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case kFloat16:
      return launch_row_sums(CouplingOp<__half>{a}, a.batch, a.dim, stream);
    case kBFloat16:
      return launch_row_sums(CouplingOp<__nv_bfloat16>{a}, a.batch, a.dim, stream);
    default:
      return launch_row_sums(CouplingOp<float>{a}, a.batch, a.dim, stream);
  }
}

cudaError_t affine_coupling_backward(const AffineCouplingArgs& a, cudaStream_t stream) {
  switch (a.dtype) {
    case kFloat16:
      return launch_backward<__half>(a, stream);
    case kBFloat16:
      return launch_backward<__nv_bfloat16>(a, stream);
    default:
      return launch_backward<float>(a, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
