// Coupling ops: affine_coupling, spline_coupling and their backwards (schemas: fastgen/ops/coupling.py; rules:
// fastgen/reference/coupling.py). Checks, the CPU kernels (samples split across threads; the affine one on each
// sample's transformed part in blocks of float32 through vectorized exp / tanh / log, the spline one element by
// element), and the calls into kernels/coupling.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "register.h"
#include "../kernels/coupling.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;

constexpr int64_t kLanes = 16;

// Each sample's elements contiguous (the dims after the first), samples at least that many elements apart: a
// contiguous tensor, or a dim-1 slice of one (fastgen/ops/coupling.py's rows).
bool rows(const Tensor& v) {
  if (v.is_contiguous()) return true;
  if (v.dim() < 2) return false;
  int64_t expected = 1;
  for (int64_t d = v.dim() - 1; d >= 1; --d) {
    if (v.size(d) != 1 && v.stride(d) != expected) return false;
    expected *= v.size(d);
  }
  return v.size(0) <= 1 || v.stride(0) >= expected;
}

// The distance between samples of a rows() tensor, in elements.
int64_t row_stride(const Tensor& v, int64_t per_sample) { return v.size(0) <= 1 ? per_sample : v.stride(0); }

void check_params(const Tensor& first, const char* first_name, const Tensor& h, const Tensor* t, int64_t split,
                  int64_t scale_mode, double clamp) {
  check_state_dtype(first, first_name);
  FASTGEN_CHECK(first.dim() >= 1 && first.is_contiguous(), first_name,
                " must be contiguous with a leading batch dimension");
  const int64_t batch = first.size(0);
  const int64_t dim = batch ? first.numel() / batch : 0;
  FASTGEN_CHECK(split >= 0 && (split < dim || batch == 0), "split must leave elements to transform: 0 <= split < ",
                dim, " (the elements of one sample), got ", split);
  const Tensor* params[2] = {&h, t};
  const char* names[2] = {"h", "t"};
  for (int k = 0; k < 2; ++k) {
    if (params[k] == nullptr) continue;
    const Tensor& p = *params[k];
    FASTGEN_CHECK_TYPE(p.scalar_type() == first.scalar_type(), names[k], " must have the dtype of ", first_name, " (",
                       first.scalar_type(), "), got ", p.scalar_type());
    FASTGEN_CHECK(p.device() == first.device() && p.dim() >= 1 && p.size(0) == batch &&
                      p.numel() == batch * (dim - split) && rows(p),
                  names[k], " must be on the device of ", first_name, " with ", dim - split,
                  " elements per sample (the transformed part: ", dim, " - split), batch ", batch,
                  " first, each sample's elements contiguous (a contiguous tensor or a dim-1 slice of one), got ",
                  p.sizes(), " with strides ", p.strides(), " on ", p.device());
  }
  FASTGEN_CHECK(scale_mode == kSoftClamp || scale_mode == kSigmoid,
                "scale_mode must be 0 (soft clamp) or 1 (sigmoid), got ", scale_mode);
  FASTGEN_CHECK(std::isfinite(clamp) && clamp > 0.0, "clamp must be finite and > 0, got ", clamp);
}

// The backward's data-side x and log-det gradient against its output gradient.
void check_data_side(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x) {
  FASTGEN_CHECK(x.sizes() == grad_out.sizes() && x.scalar_type() == grad_out.scalar_type() &&
                    x.device() == grad_out.device() && x.is_contiguous(),
                "x must be contiguous with the shape, dtype and device of grad_out");
  FASTGEN_CHECK(grad_log_det.scalar_type() == at::kFloat && grad_log_det.dim() == 1 &&
                    grad_log_det.size(0) == grad_out.size(0) && grad_log_det.device() == grad_out.device() &&
                    grad_log_det.is_contiguous(),
                "grad_log_det must be contiguous float32 of shape (", grad_out.size(0), ",) on the device of x");
}

void check_backward(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x, const Tensor& h,
                    int64_t split, int64_t scale_mode, double clamp) {
  check_params(grad_out, "grad_out", h, nullptr, split, scale_mode, clamp);
  check_data_side(grad_out, grad_log_det, x);
}

template <int Mode, bool Inverse>
__attribute__((always_inline)) inline float forward_floats(const float* x, const float* h, const float* t, float* out,
                                                           int64_t n, float clamp) {
  float lanes[kLanes] = {};
  for (int64_t j0 = 0; j0 < n; j0 += kLanes) {
    const int64_t m = std::min(kLanes, n - j0);
    for (int64_t k = 0; k < m; ++k) {
      const int64_t j = j0 + k;
      const Scale c = scale_of<Mode>(h[j], clamp);
      out[j] = Inverse ? (x[j] - t[j]) * c.down : x[j] * c.up + t[j];
      lanes[k] += c.s;
    }
  }
  float total = 0.0f;
  for (int64_t k = 0; k < kLanes; ++k) total += lanes[k];
  return Inverse ? -total : total;
}

template <int Mode, bool Inverse>
__attribute__((always_inline)) inline void backward_floats(const float* __restrict g, const float* __restrict x,
                                                           const float* __restrict h, float gl,
                                                           float* __restrict grad_in, float* __restrict grad_h,
                                                           int64_t n, float clamp) {
  for (int64_t j = 0; j < n; ++j) {
    const Scale c = scale_of<Mode>(h[j], clamp);
    if (Inverse) {
      grad_in[j] = g[j] * c.down;
      grad_h[j] = -(g[j] * x[j] + gl) * c.ds;
    } else {
      const float gin = g[j] * c.up;  // (a local: reading grad_in back would stop vectorization)
      grad_in[j] = gin;
      grad_h[j] = (gin * x[j] + gl) * c.ds;
    }
  }
}

// The options of one affine_coupling or affine_coupling_backward call.
struct AffineCall {
  int64_t split;
  bool inverse;
  int scale_mode;
  float clamp;
};

// One block of a sample's transformed part, float32 (AVX2 clone when present); returns its log_det share.
__attribute__((target_clones("avx2", "default"))) float forward_block(const float* x, const float* h, const float* t,
                                                                      float* out, int64_t n, const AffineCall& c) {
  if (c.scale_mode == kSoftClamp)
    return c.inverse ? forward_floats<kSoftClamp, true>(x, h, t, out, n, c.clamp)
                     : forward_floats<kSoftClamp, false>(x, h, t, out, n, c.clamp);
  return c.inverse ? forward_floats<kSigmoid, true>(x, h, t, out, n, c.clamp)
                   : forward_floats<kSigmoid, false>(x, h, t, out, n, c.clamp);
}

__attribute__((target_clones("avx2", "default"))) void backward_block(const float* g, const float* x, const float* h,
                                                                      float gl, float* grad_in, float* grad_h,
                                                                      int64_t n, const AffineCall& c) {
  if (c.scale_mode == kSoftClamp) {
    if (c.inverse) return backward_floats<kSoftClamp, true>(g, x, h, gl, grad_in, grad_h, n, c.clamp);
    return backward_floats<kSoftClamp, false>(g, x, h, gl, grad_in, grad_h, n, c.clamp);
  }
  if (c.inverse) return backward_floats<kSigmoid, true>(g, x, h, gl, grad_in, grad_h, n, c.clamp);
  backward_floats<kSigmoid, false>(g, x, h, gl, grad_in, grad_h, n, c.clamp);
}

// p as float32: the pointer itself for float, else converted into buf.
template <typename T>
const float* as_floats(const T* p, int64_t n, float* buf) {
  if constexpr (std::is_same<T, float>::value) {
    return p;
  } else {
    for (int64_t j = 0; j < n; ++j) buf[j] = static_cast<float>(p[j]);
    return buf;
  }
}

template <typename T>
void store_floats(const float* v, int64_t n, T* out) {
  if constexpr (!std::is_same<T, float>::value) {
    for (int64_t j = 0; j < n; ++j) out[j] = static_cast<T>(v[j]);
  }
}

int64_t rows_per_task(int64_t dim) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(dim, 1)); }

void affine_forward_cpu(const Tensor& x, const Tensor& h, const Tensor& t, const AffineCall& c, Tensor& out,
                        Tensor& log_det) {
  const int64_t batch = x.size(0), split = c.split;
  if (batch == 0) return;
  const int64_t dim = x.numel() / batch, part = dim - split;
  const int64_t hs = row_stride(h, part), ts = row_stride(t, part);
  float* ld = log_det.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* hp = h.data_ptr<T>();
    const T* tp = t.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, batch, rows_per_task(dim), [&](int64_t b0, int64_t b1) {
      float xb[cpu::kBlock], hb[cpu::kBlock], tb[cpu::kBlock], ob[cpu::kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        std::memcpy(op + b * dim, xp + b * dim, sizeof(T) * split);
        float total = 0.0f;
        for (int64_t j0 = 0; j0 < part; j0 += cpu::kBlock) {
          const int64_t n = std::min(cpu::kBlock, part - j0);
          const int64_t i = b * dim + split + j0;
          float* dst = std::is_same<T, float>::value ? reinterpret_cast<float*>(op + i) : ob;
          total += forward_block(as_floats(xp + i, n, xb), as_floats(hp + b * hs + j0, n, hb),
                                 as_floats(tp + b * ts + j0, n, tb), dst, n, c);
          store_floats(ob, n, op + i);
        }
        ld[b] = total;
      }
    });
  });
}

void affine_backward_cpu(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x, const Tensor& h,
                         const AffineCall& c, Tensor& grad_in, Tensor& grad_h) {
  const int64_t batch = x.size(0), split = c.split;
  if (batch == 0) return;
  const int64_t dim = x.numel() / batch, part = dim - split, hs = row_stride(h, part);
  const float* gl = grad_log_det.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = grad_out.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const T* hp = h.data_ptr<T>();
    T* gin = grad_in.data_ptr<T>();
    T* gh = grad_h.data_ptr<T>();
    at::parallel_for(0, batch, rows_per_task(dim), [&](int64_t b0, int64_t b1) {
      float gb[cpu::kBlock], xb[cpu::kBlock], hb[cpu::kBlock], ib[cpu::kBlock], hgb[cpu::kBlock];
      for (int64_t b = b0; b < b1; ++b) {
        std::memcpy(gin + b * dim, gp + b * dim, sizeof(T) * split);
        for (int64_t j0 = 0; j0 < part; j0 += cpu::kBlock) {
          const int64_t n = std::min(cpu::kBlock, part - j0);
          const int64_t i = b * dim + split + j0, p = b * part + j0;
          constexpr bool direct = std::is_same<T, float>::value;
          float* in_dst = direct ? reinterpret_cast<float*>(gin + i) : ib;
          float* h_dst = direct ? reinterpret_cast<float*>(gh + p) : hgb;
          backward_block(as_floats(gp + i, n, gb), as_floats(xp + i, n, xb), as_floats(hp + b * hs + j0, n, hb), gl[b],
                         in_dst, h_dst, n, c);
          store_floats(ib, n, gin + i);
          store_floats(hgb, n, gh + p);
        }
      }
    });
  });
}

// ---- Rational-quadratic spline coupling (rule: fastgen/reference/coupling.py; the maths: kernels/coupling.h, which
// the CUDA kernel shares). One element at a time: its 3 bins - 1 parameters are read straight from params (width
// logits, height logits, interior derivative logits). The arithmetic is double: scalar code costs about the same in
// either precision on the CPU, and near flat, narrow bins the rule is ill-conditioned enough that float32 loses 1e-4
// of the gradient.

using SplineOptions = spline::Options<double>;

template <typename T>
struct Softmax {  // of K <= 64 logits, each exp computed once
  double v[64];
  Softmax(const T* u, int64_t K) {
    double max = -INFINITY, sum = 0.0;
    for (int64_t j = 0; j < K; ++j) max = std::max(max, static_cast<double>(u[j]));
    for (int64_t j = 0; j < K; ++j) sum += (v[j] = std::exp(static_cast<double>(u[j]) - max));
    const double inv = 1.0 / sum;
    for (int64_t j = 0; j < K; ++j) v[j] *= inv;
  }
  double operator()(int64_t j) const { return v[j]; }
};

template <typename T>
struct Logits {  // the raw parameters of one element, in double
  const T* p;
  double operator()(int64_t j) const { return static_cast<double>(p[j]); }
};

// out of one element; adds log dy/dx (negated for the inverse) to log_det.
template <typename T>
double spline_element(double v, const T* p, const SplineOptions& o, bool inverse, double& log_det) {
  if (!(v >= -o.bound && v <= o.bound)) return v;
  const Softmax<T> sw(p, o.bins), sh(p + o.bins, o.bins);
  const spline::Bin<double> b = spline::find_bin(sw, sh, Logits<T>{p}, v, o, inverse);
  double log_slope;
  const double out = spline::value(b, v, inverse, log_slope);
  log_det += inverse ? -log_slope : log_slope;
  return out;
}

template <typename T>
struct StoreGrad {
  T* gp;
  void operator()(int64_t j, double value) const { gp[j] = static_cast<T>(value); }
};

// Backward of one element at its data-side value x: writes the 3 bins - 1 parameter gradients, returns the input
// gradient. g is the output gradient (of y forward, of x inverse), gl the log-det's.
template <typename T>
double spline_element_backward(double g, double gl, double x, const T* p, T* gp, const SplineOptions& o, bool inverse) {
  if (!(x >= -o.bound && x <= o.bound)) {
    for (int64_t j = 0; j < 3 * o.bins - 1; ++j) gp[j] = static_cast<T>(0.0);
    return g;
  }
  const Softmax<T> sw(p, o.bins), sh(p + o.bins, o.bins);
  const spline::Bin<double> b = spline::find_bin(sw, sh, Logits<T>{p}, x, o, false);
  const spline::Grads<double> r = spline::backward(b, x, g, gl, inverse);
  spline::param_grads(b, r, o, sw, sh, Logits<T>{p}, StoreGrad<T>{gp});
  return r.grad_in;
}

void check_spline(const Tensor& first, const char* first_name, const Tensor& params, int64_t split, int64_t bins,
                  double bound, double min_width, double min_height, double min_derivative) {
  check_state_dtype(first, first_name);
  FASTGEN_CHECK(first.dim() >= 1 && first.is_contiguous(), first_name,
                " must be contiguous with a leading batch dimension");
  const int64_t batch = first.size(0);
  const int64_t dim = batch ? first.numel() / batch : 0;
  FASTGEN_CHECK(split >= 0 && (split < dim || batch == 0), "split must leave elements to transform: 0 <= split < ",
                dim, " (the elements of one sample), got ", split);
  FASTGEN_CHECK(bins >= 1 && bins <= 64, "bins must be in [1, 64], got ", bins);
  FASTGEN_CHECK(std::isfinite(bound) && bound > 0.0, "bound must be finite and > 0, got ", bound);
  FASTGEN_CHECK(min_width >= 0.0 && min_width * bins < 1.0, "min_width must be >= 0 with bins * min_width < 1, got ",
                min_width);
  FASTGEN_CHECK(min_height >= 0.0 && min_height * bins < 1.0,
                "min_height must be >= 0 with bins * min_height < 1, got ", min_height);
  FASTGEN_CHECK(min_derivative >= 0.0 && min_derivative < 1.0, "min_derivative must be in [0, 1), got ",
                min_derivative);
  FASTGEN_CHECK_TYPE(params.scalar_type() == first.scalar_type(), "params must have the dtype of ", first_name, " (",
                     first.scalar_type(), "), got ", params.scalar_type());
  FASTGEN_CHECK(params.device() == first.device() && params.is_contiguous() && params.dim() >= 1 &&
                    params.size(0) == batch && params.numel() == batch * (dim - split) * (3 * bins - 1),
                "params must be contiguous on the device of ", first_name, " with (D - split) * (3 bins - 1) = ",
                dim - split, " * ", 3 * bins - 1, " elements per sample, batch first, got ", params.sizes());
}

// The options of one spline_coupling or spline_coupling_backward call.
struct SplineCall {
  int64_t split;
  bool inverse;
  SplineOptions o;
};

int64_t spline_rows_per_task(int64_t dim, int64_t bins) {
  return std::max<int64_t>(1, 2048 / std::max<int64_t>(dim * bins, 1));
}

void spline_forward_cpu(const Tensor& x, const Tensor& params, const SplineCall& c, Tensor& out, Tensor& log_det) {
  const int64_t batch = x.size(0), split = c.split, bins = c.o.bins;
  if (batch == 0) return;
  const int64_t dim = x.numel() / batch, part = dim - split, per = 3 * bins - 1;
  float* ld = log_det.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* pp = params.data_ptr<T>();
    T* op = out.data_ptr<T>();
    at::parallel_for(0, batch, spline_rows_per_task(dim, bins), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        std::memcpy(op + b * dim, xp + b * dim, sizeof(T) * split);
        double total = 0.0;
        for (int64_t j = 0; j < part; ++j) {
          const int64_t i = b * dim + split + j;
          op[i] = static_cast<T>(
              spline_element(static_cast<double>(xp[i]), pp + (b * part + j) * per, c.o, c.inverse, total));
        }
        ld[b] = static_cast<float>(total);
      }
    });
  });
}

void spline_backward_cpu(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x, const Tensor& params,
                         const SplineCall& c, Tensor& grad_in, Tensor& grad_params) {
  const int64_t batch = x.size(0), split = c.split, bins = c.o.bins;
  if (batch == 0) return;
  const int64_t dim = x.numel() / batch, part = dim - split, per = 3 * bins - 1;
  const float* gl = grad_log_det.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* gp = grad_out.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const T* pp = params.data_ptr<T>();
    T* gin = grad_in.data_ptr<T>();
    T* gpp = grad_params.data_ptr<T>();
    at::parallel_for(0, batch, spline_rows_per_task(dim, bins), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        std::memcpy(gin + b * dim, gp + b * dim, sizeof(T) * split);
        for (int64_t j = 0; j < part; ++j) {
          const int64_t i = b * dim + split + j, q = (b * part + j) * per;
          gin[i] = static_cast<T>(spline_element_backward(static_cast<double>(gp[i]), gl[b],
                                                          static_cast<double>(xp[i]), pp + q, gpp + q, c.o, c.inverse));
        }
      }
    });
  });
}

#ifdef FASTGEN_WITH_CUDA
cuda::AffineCouplingArgs affine_cuda_args(const Tensor& x, const Tensor& h, const AffineCall& c, Tensor& out) {
  cuda::AffineCouplingArgs a{};
  a.x = x.data_ptr();
  a.h = h.data_ptr();
  a.out = out.data_ptr();
  a.dtype = cuda_dtype(x);
  a.batch = x.size(0);
  a.dim = a.batch ? x.numel() / a.batch : 0;
  a.split = c.split;
  a.inverse = c.inverse;
  a.scale_mode = c.scale_mode;
  a.clamp = c.clamp;
  a.h_stride = row_stride(h, a.dim - c.split);
  return a;
}

void affine_forward_cuda(const Tensor& x, const Tensor& h, const Tensor& t, const AffineCall& c, Tensor& out,
                         Tensor& log_det) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::AffineCouplingArgs a = affine_cuda_args(x, h, c, out);
  a.t = t.data_ptr();
  a.t_stride = row_stride(t, a.dim - c.split);
  a.log_det = log_det.data_ptr<float>();
  C10_CUDA_CHECK(cuda::affine_coupling(a, c10::cuda::getCurrentCUDAStream()));
}

void affine_backward_cuda(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x, const Tensor& h,
                          const AffineCall& c, Tensor& grad_in, Tensor& grad_h) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::AffineCouplingArgs a = affine_cuda_args(x, h, c, grad_in);
  a.grad_out = grad_out.data_ptr();
  a.grad_log_det = grad_log_det.data_ptr<float>();
  a.grad_h = grad_h.data_ptr();
  C10_CUDA_CHECK(cuda::affine_coupling_backward(a, c10::cuda::getCurrentCUDAStream()));
}

cuda::SplineCouplingArgs spline_cuda_args(const Tensor& x, const Tensor& params, const SplineCall& c, Tensor& out) {
  cuda::SplineCouplingArgs a{};
  a.x = x.data_ptr();
  a.params = params.data_ptr();
  a.out = out.data_ptr();
  a.dtype = cuda_dtype(x);
  a.batch = x.size(0);
  a.dim = a.batch ? x.numel() / a.batch : 0;
  a.split = c.split;
  a.bins = static_cast<int>(c.o.bins);
  a.inverse = c.inverse;
  a.bound = static_cast<float>(c.o.bound);
  a.min_width = static_cast<float>(c.o.min_width);
  a.min_height = static_cast<float>(c.o.min_height);
  a.min_derivative = static_cast<float>(c.o.min_derivative);
  return a;
}

void spline_forward_cuda(const Tensor& x, const Tensor& params, const SplineCall& c, Tensor& out, Tensor& log_det) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::SplineCouplingArgs a = spline_cuda_args(x, params, c, out);
  a.log_det = log_det.data_ptr<float>();
  C10_CUDA_CHECK(cuda::spline_coupling(a, c10::cuda::getCurrentCUDAStream()));
}

void spline_backward_cuda(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x, const Tensor& params,
                          const SplineCall& c, Tensor& grad_in, Tensor& grad_params) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::SplineCouplingArgs a = spline_cuda_args(x, params, c, grad_in);
  a.grad_out = grad_out.data_ptr();
  a.grad_log_det = grad_log_det.data_ptr<float>();
  a.grad_params = grad_params.data_ptr();
  C10_CUDA_CHECK(cuda::spline_coupling_backward(a, c10::cuda::getCurrentCUDAStream()));
}
#endif

// ---- The ops' entries (one per schema, registered on every device key).

std::tuple<Tensor, Tensor> affine_coupling(const Tensor& x, const Tensor& h, const Tensor& t, int64_t split,
                                           bool inverse, int64_t scale_mode, double clamp) {
  check_params(x, "x", h, &t, split, scale_mode, clamp);
  const AffineCall c{split, inverse, static_cast<int>(scale_mode), static_cast<float>(clamp)};
  Tensor out = at::empty_like(x);
  Tensor log_det = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  FASTGEN_ON_DEVICE(x, affine_forward_cpu(x, h, t, c, out, log_det), affine_forward_cuda(x, h, t, c, out, log_det));
  return {out, log_det};
}

std::tuple<Tensor, Tensor> affine_coupling_backward(const Tensor& grad_out, const Tensor& grad_log_det,
                                                    const Tensor& x, const Tensor& h, int64_t split, bool inverse,
                                                    int64_t scale_mode, double clamp) {
  check_backward(grad_out, grad_log_det, x, h, split, scale_mode, clamp);
  const AffineCall c{split, inverse, static_cast<int>(scale_mode), static_cast<float>(clamp)};
  Tensor grad_in = at::empty_like(grad_out);
  Tensor grad_h = at::empty(h.sizes(), h.options());
  FASTGEN_ON_DEVICE(x, affine_backward_cpu(grad_out, grad_log_det, x, h, c, grad_in, grad_h),
                    affine_backward_cuda(grad_out, grad_log_det, x, h, c, grad_in, grad_h));
  return {grad_in, grad_h};
}

std::tuple<Tensor, Tensor> spline_coupling(const Tensor& x, const Tensor& params, int64_t split, int64_t bins,
                                           double bound, bool inverse, double min_width, double min_height,
                                           double min_derivative) {
  check_spline(x, "x", params, split, bins, bound, min_width, min_height, min_derivative);
  const SplineCall c{split, inverse, {bins, bound, min_width, min_height, min_derivative}};
  Tensor out = at::empty_like(x);
  Tensor log_det = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  FASTGEN_ON_DEVICE(x, spline_forward_cpu(x, params, c, out, log_det), spline_forward_cuda(x, params, c, out, log_det));
  return {out, log_det};
}

std::tuple<Tensor, Tensor> spline_coupling_backward(const Tensor& grad_out, const Tensor& grad_log_det,
                                                    const Tensor& x, const Tensor& params, int64_t split,
                                                    int64_t bins, double bound, bool inverse, double min_width,
                                                    double min_height, double min_derivative) {
  check_spline(grad_out, "grad_out", params, split, bins, bound, min_width, min_height, min_derivative);
  check_data_side(grad_out, grad_log_det, x);
  const SplineCall c{split, inverse, {bins, bound, min_width, min_height, min_derivative}};
  Tensor grad_in = at::empty_like(grad_out);
  Tensor grad_params = at::empty_like(params);
  FASTGEN_ON_DEVICE(x, spline_backward_cpu(grad_out, grad_log_det, x, params, c, grad_in, grad_params),
                    spline_backward_cuda(grad_out, grad_log_det, x, params, c, grad_in, grad_params));
  return {grad_in, grad_params};
}

}  // namespace

#define COUPLING_OPS(X) \
  X(affine_coupling, affine_coupling) \
  X(affine_coupling_backward, affine_coupling_backward) \
  X(spline_coupling, spline_coupling) \
  X(spline_coupling_backward, spline_coupling_backward)
FASTGEN_REGISTER_LOOP(COUPLING_OPS)

}  // namespace fastgen
