// CUDA kernels of the affine and rational-quadratic spline couplings (rules in fastgen/reference/coupling.py,
// arguments in launchers.h): the forward / inverse as per-sample sums (common.cuh's launch_row_sums: each element's
// term stores its output and returns its log-det term), the backward elementwise.
#include "common.cuh"

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

__device__ __forceinline__ float softplus(float u) { return fmaxf(u, 0.0f) + log1pf(expf(-fabsf(u))); }

template <typename T>
struct Softmax {  // of K logits: exp(u_j - max) / sum
  float max, inv_sum;
  __device__ Softmax(const T* u, int K) {
    max = -INFINITY;
    for (int j = 0; j < K; ++j) max = fmaxf(max, load(u, j));
    float sum = 0.0f;
    for (int j = 0; j < K; ++j) sum += expf(load(u, j) - max);
    inv_sum = 1.0f / sum;
  }
  __device__ float operator()(const T* u, int j) const { return expf(load(u, j) - max) * inv_sum; }
};

template <typename T>
struct SplineBin {
  int k;
  float x0, w, y0, h, d0, d1;
  float smw, smh, smw_before, smh_before;  // softmax at k, and summed over the bins before k

  __device__ SplineBin(const T* p, float v, const SplineCouplingArgs& a, bool on_y) {
    const int K = a.bins;
    const Softmax<T> sw(p, K), sh(p + K, K);
    const float cw = 1.0f - K * a.min_width, ch = 1.0f - K * a.min_height, span = 2.0f * a.bound;
    float sx = 0.0f, sy = 0.0f;
    smw_before = smh_before = 0.0f;
    for (k = 0;; ++k) {
      smw = sw(p, k);
      smh = sh(p + K, k);
      w = span * (a.min_width + cw * smw);
      h = span * (a.min_height + ch * smh);
      if (k == K - 1 || (on_y ? v < sy + h - a.bound : v < sx + w - a.bound)) break;
      sx += w;
      sy += h;
      smw_before += smw;
      smh_before += smh;
    }
    x0 = sx - a.bound;
    y0 = sy - a.bound;
    d0 = k == 0 ? 1.0f : a.min_derivative + softplus(load(p, 2 * K + k - 1));
    d1 = k == K - 1 ? 1.0f : a.min_derivative + softplus(load(p, 2 * K + k));
  }
};

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
    const SplineBin<T> b(p, v, a, a.inverse);
    const float s = b.h / b.w, bend = b.d0 + b.d1 - 2.0f * s;
    float theta, out;
    if (a.inverse) {
      const float r = v - b.y0;
      const float qa = r * bend + b.h * (s - b.d0), qb = b.h * b.d0 - r * bend, qc = -s * r;
      theta = 2.0f * qc / (-qb - sqrtf(fmaxf(qb * qb - 4.0f * qa * qc, 0.0f)));
      out = theta * b.w + b.x0;
    } else {
      theta = (v - b.x0) / b.w;
      const float u = theta * (1.0f - theta);
      out = b.y0 + b.h * (s * theta * theta + b.d0 * u) / (s + bend * u);
    }
    store(static_cast<T*>(a.out), i, out);
    const float u = theta * (1.0f - theta);
    const float m = b.d1 * theta * theta + 2.0f * s * u + b.d0 * (1.0f - theta) * (1.0f - theta);
    const float log_slope = 2.0f * logf(s) + logf(m) - 2.0f * logf(s + bend * u);
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
    const float gl = a.grad_log_det[row];
    const SplineBin<T> b(p, x, a, false);
    const float s = b.h / b.w, theta = (x - b.x0) / b.w, u = theta * (1.0f - theta);
    const float bend = b.d0 + b.d1 - 2.0f * s, den = s + bend * u, num = s * theta * theta + b.d0 * u;
    const float m = b.d1 * theta * theta + 2.0f * s * u + b.d0 * (1.0f - theta) * (1.0f - theta);
    const float dden = bend * (1.0f - 2.0f * theta), inv2 = 1.0f / (den * den);
    // y = y0 + h R, R = num / den; L = log dy/dx = 2 log s + log m - 2 log den: partials in theta, s, d0, d1
    const float r_theta = ((2.0f * s * theta + b.d0 * (1.0f - 2.0f * theta)) * den - num * dden) * inv2;
    const float r_s = (theta * theta * den - num * (1.0f - 2.0f * u)) * inv2;
    const float r_d0 = u * (den - num) * inv2, r_d1 = -num * u * inv2;
    const float l_theta = (2.0f * b.d1 * theta - 2.0f * b.d0 * (1.0f - theta) + 2.0f * s * (1.0f - 2.0f * theta)) / m -
                          2.0f * dden / den;
    const float l_s = 2.0f / s + 2.0f * u / m - 2.0f * (1.0f - 2.0f * u) / den;
    const float l_d0 = (1.0f - theta) * (1.0f - theta) / m - 2.0f * u / den, l_d1 = theta * theta / m - 2.0f * u / den;
    const float slope = s * s * m * inv2, l_x = l_theta / b.w;
    float a_f, a_l, grad_in;
    if (a.inverse) {  // g: gradient of x = f^-1(y); gl: of -log f'(x)
      grad_in = (g - gl * l_x) / slope;
      a_f = -grad_in;
      a_l = -gl;
    } else {
      a_f = g;
      a_l = gl;
      grad_in = g * slope + gl * l_x;
    }
    store(static_cast<T*>(a.out), i, grad_in);
    const float g_theta = a_f * b.h * r_theta + a_l * l_theta, g_s = a_f * b.h * r_s + a_l * l_s;
    const float g_x0 = -g_theta / b.w, g_w = -(g_theta * theta + g_s * s) / b.w;
    const float g_y0 = a_f, g_h = a_f * num / den + g_s / b.w;
    // through size_j = 2 bound (min + (1 - K min) softmax_j) and knot_k = sum_{j<k} size_j - bound
    const float cw = 2.0f * a.bound * (1.0f - K * a.min_width), ch = 2.0f * a.bound * (1.0f - K * a.min_height);
    const float dot_w = cw * (g_w * b.smw + g_x0 * b.smw_before), dot_h = ch * (g_h * b.smh + g_y0 * b.smh_before);
    const Softmax<T> sw(p, K), sh(p + K, K);
    for (int j = 0; j < K; ++j) {
      const float gw = j < b.k ? cw * g_x0 : (j == b.k ? cw * g_w : 0.0f);
      const float gh = j < b.k ? ch * g_y0 : (j == b.k ? ch * g_h : 0.0f);
      store(gp, j, sw(p, j) * (gw - dot_w));
      store(gp, K + j, sh(p + K, j) * (gh - dot_h));
    }
    for (int j = 0; j < K - 1; ++j) {
      const float sig = 1.0f / (1.0f + expf(-load(p, 2 * K + j)));
      const float gd = j == b.k - 1 ? a_f * b.h * r_d0 + a_l * l_d0 : (j == b.k ? a_f * b.h * r_d1 + a_l * l_d1 : 0.0f);
      store(gp, 2 * K + j, gd * sig);
    }
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
