// CUDA kernels of the affine and rational-quadratic spline couplings (rules in fastgen/reference/coupling.py,
// arguments in launchers.h): the forward / inverse as per-sample sums (common.cuh's launch_row_sums: each element's
// term stores its output and returns its log-det term), the backward elementwise.
#include "common.cuh"
#include "coupling.h"

namespace fastgen {
namespace cuda {
namespace {

struct LogScale {
  float s;
  float ds;  // ds / dh
};

__device__ __forceinline__ LogScale log_scale(float h, int mode, float clamp) {
  if (mode == kSoftClamp) {  // s = clamp tanh(h / clamp)
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
    const int64_t c = col - a.split;
    const LogScale s = log_scale(load(static_cast<const T*>(a.h), row * a.h_stride + c), a.scale_mode, a.clamp);
    const float t = load(static_cast<const T*>(a.t), row * a.t_stride + c);
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
    const int64_t c = col - a.split, p = row * (a.dim - a.split) + c;  // grad_h is contiguous
    const LogScale s = log_scale(load(static_cast<const T*>(a.h), row * a.h_stride + c), a.scale_mode, a.clamp);
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

// ---- Rational-quadratic spline: one thread per element, its 3 bins - 1 parameters read from global memory.

template <typename T>
struct Softmax {  // of K logits: exp(u_j - max) / sum, each exp recomputed when read (no per-thread array)
  const T* u;
  float max, inv_sum;
  __device__ Softmax(const T* logits, int K) : u(logits) {
    max = -INFINITY;
    for (int j = 0; j < K; ++j) max = fmaxf(max, load(u, j));
    float sum = 0.0f;
    for (int j = 0; j < K; ++j) sum += expf(load(u, j) - max);
    inv_sum = 1.0f / sum;
  }
  __device__ float operator()(int64_t j) const { return expf(load(u, j) - max) * inv_sum; }
};

template <typename T>
struct Logits {  // the raw parameters of one element, in float
  const T* p;
  __device__ float operator()(int64_t j) const { return load(p, j); }
};

template <typename T>
struct StoreGrad {
  T* gp;
  __device__ void operator()(int64_t j, float value) const { store(gp, j, value); }
};

__device__ __forceinline__ spline::Options<float> spline_options(const SplineCouplingArgs& a) {
  return {a.bins, a.bound, a.min_width, a.min_height, a.min_derivative};
}

template <typename T>
struct SplineOp {
  SplineCouplingArgs a;

  __device__ float term(int64_t i) const {  // stores out_i; returns its log-det term (0 on the kept part, tails)
    const int64_t row = i / a.dim, col = i - row * a.dim;
    const float v = load(static_cast<const T*>(a.x), i);
    if (col < a.split || !(v >= -a.bound && v <= a.bound)) {
      store(static_cast<T*>(a.out), i, v);
      return 0.0f;
    }
    const T* p = static_cast<const T*>(a.params) + (row * (a.dim - a.split) + (col - a.split)) * (3 * a.bins - 1);
    const spline::Options<float> o = spline_options(a);
    const Softmax<T> sw(p, a.bins), sh(p + a.bins, a.bins);
    const spline::Bin<float> b = spline::find_bin(sw, sh, Logits<T>{p}, v, o, a.inverse);
    float log_slope;
    store(static_cast<T*>(a.out), i, spline::value(b, v, a.inverse, log_slope));
    return a.inverse ? -log_slope : log_slope;
  }
  __device__ void finish(int64_t row, float total) const { a.log_det[row] = total; }
};

template <typename T>
__global__ void spline_backward_kernel(SplineCouplingArgs a) {
  const int64_t numel = a.batch * a.dim;
  const int K = a.bins;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = i / a.dim, col = i - row * a.dim;
    const float g = load(static_cast<const T*>(a.grad_out), i);
    if (col < a.split) {
      store(static_cast<T*>(a.out), i, g);
      continue;
    }
    const int64_t q = (row * (a.dim - a.split) + (col - a.split)) * (3 * K - 1);
    const T* p = static_cast<const T*>(a.params) + q;
    T* gp = static_cast<T*>(a.grad_params) + q;
    const float x = load(static_cast<const T*>(a.x), i);
    if (!(x >= -a.bound && x <= a.bound)) {
      for (int j = 0; j < 3 * K - 1; ++j) store(gp, j, 0.0f);
      store(static_cast<T*>(a.out), i, g);
      continue;
    }
    const spline::Options<float> o = spline_options(a);
    const Softmax<T> sw(p, K), sh(p + K, K);
    const spline::Bin<float> b = spline::find_bin(sw, sh, Logits<T>{p}, x, o, false);
    const spline::Grads<float> r = spline::backward(b, x, g, a.grad_log_det[row], a.inverse);
    store(static_cast<T*>(a.out), i, r.grad_in);
    spline::param_grads(b, r, o, sw, sh, Logits<T>{p}, StoreGrad<T>{gp});
  }
}

}  // namespace

cudaError_t affine_coupling(const AffineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_row_sums(CouplingOp<typename decltype(tag)::type>{a}, a.batch, a.dim, stream);
  });
}

cudaError_t affine_coupling_backward(const AffineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_elementwise(coupling_backward_kernel<typename decltype(tag)::type>, a, a.batch * a.dim,
                              kItemsPerThread, stream);
  });
}

cudaError_t spline_coupling(const SplineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_row_sums(SplineOp<typename decltype(tag)::type>{a}, a.batch, a.dim, stream);
  });
}

cudaError_t spline_coupling_backward(const SplineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_elementwise(spline_backward_kernel<typename decltype(tag)::type>, a, a.batch * a.dim, 1, stream);
  });
}

}  // namespace cuda
}  // namespace fastgen
