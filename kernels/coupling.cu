// CUDA kernels of the affine and rational-quadratic spline couplings (rules in fastgen/reference/coupling.py,
// arguments in launchers.h): the forward / inverse as per-sample sums (common.cuh's launch_row_sums: each element's
// term stores its output and returns its log-det term), the backward elementwise.
#include "common.cuh"
#include "coupling.h"
#include "fastmath.h"

namespace fastgen {
namespace cuda {
namespace {

// fastmath.h's log-scale, as the CPU computes it, for the run-time scale mode.
__device__ __forceinline__ Scale log_scale(float h, int mode, float clamp) {
  return mode == kSoftClamp ? scale_of<kSoftClamp>(h, clamp) : scale_of<kSigmoid>(h, clamp);
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
    const Scale s = log_scale(load(static_cast<const T*>(a.h), row * a.h_stride + c), a.scale_mode, a.clamp);
    const float t = load(static_cast<const T*>(a.t), row * a.t_stride + c);
    store(static_cast<T*>(a.out), i, a.inverse ? (x - t) * s.down : x * s.up + t);
    return s.s;
  }
  __device__ void finish(int64_t row, float total) const { a.log_det[row] = a.inverse ? -total : total; }
};

// The backwards, elementwise: the kept part's gradient passes through, op.moved(i, row, c, g) writes the gradients
// of transformed element i (column c of the transformed part) from its output gradient g.
template <typename T, typename Op>
__global__ void coupling_backward_kernel(Op op) {
  const int64_t dim = op.a.dim, split = op.a.split, numel = op.a.batch * dim;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = i / dim, col = i - row * dim;
    const float g = load(static_cast<const T*>(op.a.grad_out), i);
    if (col < split) {
      store(static_cast<T*>(op.a.out), i, g);
    } else {
      op.moved(i, row, col - split, g);
    }
  }
}

template <typename T>
struct CouplingBackwardOp {
  AffineCouplingArgs a;

  __device__ void moved(int64_t i, int64_t row, int64_t c, float g) const {
    const int64_t p = row * (a.dim - a.split) + c;  // grad_h is contiguous
    const Scale s = log_scale(load(static_cast<const T*>(a.h), row * a.h_stride + c), a.scale_mode, a.clamp);
    const float x = load(static_cast<const T*>(a.x), i), gl = a.grad_log_det[row];
    if (a.inverse) {
      store(static_cast<T*>(a.out), i, g * s.down);
      store(static_cast<T*>(a.grad_h), p, -(g * x + gl) * s.ds);
    } else {
      const float gin = g * s.up;
      store(static_cast<T*>(a.out), i, gin);
      store(static_cast<T*>(a.grad_h), p, (gin * x + gl) * s.ds);
    }
  }
};

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
struct SplineBackwardOp {
  SplineCouplingArgs a;

  __device__ void moved(int64_t i, int64_t row, int64_t c, float g) const {
    const int K = a.bins;
    const int64_t q = (row * (a.dim - a.split) + c) * (3 * K - 1);
    const T* p = static_cast<const T*>(a.params) + q;
    T* gp = static_cast<T*>(a.grad_params) + q;
    const float x = load(static_cast<const T*>(a.x), i);
    if (!(x >= -a.bound && x <= a.bound)) {
      for (int j = 0; j < 3 * K - 1; ++j) store(gp, j, 0.0f);
      store(static_cast<T*>(a.out), i, g);
      return;
    }
    const spline::Options<float> o = spline_options(a);
    const Softmax<T> sw(p, K), sh(p + K, K);
    const spline::Bin<float> b = spline::find_bin(sw, sh, Logits<T>{p}, x, o, false);
    const spline::Grads<float> r = spline::backward(b, x, g, a.grad_log_det[row], a.inverse);
    store(static_cast<T*>(a.out), i, r.grad_in);
    spline::param_grads(b, r, o, sw, sh, Logits<T>{p}, StoreGrad<T>{gp});
  }
};

}  // namespace

cudaError_t affine_coupling(const AffineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_row_sums(CouplingOp<typename decltype(tag)::type>{a}, a.batch, a.dim, stream);
  });
}

cudaError_t affine_coupling_backward(const AffineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_elementwise(coupling_backward_kernel<T, CouplingBackwardOp<T>>, CouplingBackwardOp<T>{a},
                              a.batch * a.dim, kItemsPerThread, stream);
  });
}

cudaError_t spline_coupling(const SplineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    return launch_row_sums(SplineOp<typename decltype(tag)::type>{a}, a.batch, a.dim, stream);
  });
}

cudaError_t spline_coupling_backward(const SplineCouplingArgs& a, cudaStream_t stream) {
  return by_dtype(a.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return launch_elementwise(coupling_backward_kernel<T, SplineBackwardOp<T>>, SplineBackwardOp<T>{a},
                              a.batch * a.dim, 1, stream);
  });
}

}  // namespace cuda
}  // namespace fastgen
