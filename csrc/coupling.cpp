// Affine coupling ops, affine_coupling and affine_coupling_backward (schemas: fastgen/ops/coupling.py; rule:
// fastgen/reference/coupling.py). Checks, the CPU kernels (samples split across threads, each sample's
// transformed part in blocks of float32 through vectorized exp / tanh / log), and the calls into
// kernels/coupling.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <tuple>
#include <type_traits>

#include "checks.h"
#include "cpu_math.h"

#ifdef FASTGEN_WITH_CUDA
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../kernels/launchers.h"
#endif

namespace fastgen {
namespace {

using torch::Tensor;

constexpr int64_t kLanes = 16;

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
    FASTGEN_CHECK(p.device() == first.device() && p.is_contiguous() && p.dim() >= 1 && p.size(0) == batch &&
                      p.numel() == batch * (dim - split),
                  names[k], " must be contiguous on the device of ", first_name, " with ", dim - split,
                  " elements per sample, batch first, got ", p.sizes());
  }
  FASTGEN_CHECK(scale_mode == 0 || scale_mode == 1, "scale_mode must be 0 (soft clamp) or 1 (sigmoid), got ",
                scale_mode);
  FASTGEN_CHECK(std::isfinite(clamp) && clamp > 0.0, "clamp must be finite and > 0, got ", clamp);
}

void check_backward(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x, const Tensor& h,
                    int64_t split, int64_t scale_mode, double clamp) {
  check_params(grad_out, "grad_out", h, nullptr, split, scale_mode, clamp);
  FASTGEN_CHECK(x.sizes() == grad_out.sizes() && x.scalar_type() == grad_out.scalar_type() &&
                    x.device() == grad_out.device() && x.is_contiguous(),
                "x must be contiguous with the shape, dtype and device of grad_out");
  FASTGEN_CHECK(grad_log_det.scalar_type() == at::kFloat && grad_log_det.dim() == 1 &&
                    grad_log_det.size(0) == grad_out.size(0) && grad_log_det.device() == grad_out.device() &&
                    grad_log_det.is_contiguous(),
                "grad_log_det must be contiguous float32 of shape (", grad_out.size(0), ",) on the device of x");
}

// s and ds/dh of one logit, and exp(s), exp(-s): vectorizable (tanh and log-sigmoid through exp of a non-positive
// argument; always inlined, since a call in the loop stops vectorization).
struct Scale {
  float s;
  float ds;  // ds / dh
  float up;  // exp(s)
  float down;  // exp(-s)
};

template <int Mode>
__attribute__((always_inline)) inline Scale scale_of(float h, float clamp) {
  Scale r;
  if (Mode == 0) {  // s = clamp tanh(h / clamp), tanh(|u|) = (1 - e) / (1 + e) with e = exp(-2 |u|)
    const float e = cpu::exp_nonpositive(-2.0f * std::fabs(h) / clamp);
    const float th = std::copysign((1.0f - e) / (1.0f + e), h);
    r.s = clamp * th;
    r.ds = 1.0f - th * th;
  } else {  // s = log sigmoid(a) = min(a, 0) + log(1 / (1 + e)), e = exp(-|a|); ds/da = sigmoid(-a)
    const float a = h + 2.0f;
    const float e = cpu::exp_nonpositive(-std::fabs(a));
    const float inv = 1.0f / (1.0f + e);
    r.s = std::min(a, 0.0f) + cpu::log_unit(inv);
    r.ds = a >= 0.0f ? e * inv : inv;
  }
  const float e = cpu::exp_nonpositive(-std::fabs(r.s)), big = 1.0f / e;  // exp(-|s|) and exp(|s|)
  r.up = r.s > 0.0f ? big : e;
  r.down = r.s > 0.0f ? e : big;
  return r;
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

// One block of a sample's transformed part, float32 (AVX2 clone when present); returns its log_det share.
__attribute__((target_clones("avx2", "default"))) float forward_block(const float* x, const float* h, const float* t,
                                                                      float* out, int64_t n, bool inverse, int mode,
                                                                      float clamp) {
  if (mode == 0) return inverse ? forward_floats<0, true>(x, h, t, out, n, clamp)
                                : forward_floats<0, false>(x, h, t, out, n, clamp);
  return inverse ? forward_floats<1, true>(x, h, t, out, n, clamp) : forward_floats<1, false>(x, h, t, out, n, clamp);
}

__attribute__((target_clones("avx2", "default"))) void backward_block(const float* g, const float* x, const float* h,
                                                                      float gl, float* grad_in, float* grad_h,
                                                                      int64_t n, bool inverse, int mode, float clamp) {
  if (mode == 0) {
    if (inverse) return backward_floats<0, true>(g, x, h, gl, grad_in, grad_h, n, clamp);
    return backward_floats<0, false>(g, x, h, gl, grad_in, grad_h, n, clamp);
  }
  if (inverse) return backward_floats<1, true>(g, x, h, gl, grad_in, grad_h, n, clamp);
  backward_floats<1, false>(g, x, h, gl, grad_in, grad_h, n, clamp);
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

std::tuple<Tensor, Tensor> affine_coupling_cpu(const Tensor& x, const Tensor& h, const Tensor& t, int64_t split,
                                               bool inverse, int64_t scale_mode, double clamp) {
  check_params(x, "x", h, &t, split, scale_mode, clamp);
  Tensor out = at::empty_like(x);
  const int64_t batch = x.size(0);
  Tensor log_det = at::empty({batch}, x.options().dtype(at::kFloat));
  if (batch == 0) return {out, log_det};
  const int64_t dim = x.numel() / batch, part = dim - split;
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
          const int64_t i = b * dim + split + j0, p = b * part + j0;
          float* dst = std::is_same<T, float>::value ? reinterpret_cast<float*>(op + i) : ob;
          total += forward_block(as_floats(xp + i, n, xb), as_floats(hp + p, n, hb), as_floats(tp + p, n, tb), dst,
                                 n, inverse, static_cast<int>(scale_mode), static_cast<float>(clamp));
          store_floats(ob, n, op + i);
        }
        ld[b] = total;
      }
    });
  });
  return {out, log_det};
}

std::tuple<Tensor, Tensor> affine_coupling_backward_cpu(const Tensor& grad_out, const Tensor& grad_log_det,
                                                        const Tensor& x, const Tensor& h, int64_t split, bool inverse,
                                                        int64_t scale_mode, double clamp) {
  check_backward(grad_out, grad_log_det, x, h, split, scale_mode, clamp);
  Tensor grad_in = at::empty_like(grad_out);
  Tensor grad_h = at::empty_like(h);
  const int64_t batch = x.size(0);
  if (batch == 0) return {grad_in, grad_h};
  const int64_t dim = x.numel() / batch, part = dim - split;
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
          backward_block(as_floats(gp + i, n, gb), as_floats(xp + i, n, xb), as_floats(hp + p, n, hb), gl[b], in_dst,
                         h_dst, n, inverse, static_cast<int>(scale_mode), static_cast<float>(clamp));
          store_floats(ib, n, gin + i);
          store_floats(hgb, n, gh + p);
        }
      }
    });
  });
  return {grad_in, grad_h};
}

#ifdef FASTGEN_WITH_CUDA
cuda::AffineCouplingArgs cuda_args(const Tensor& x, const Tensor& h, int64_t split, bool inverse, int64_t scale_mode,
                                   double clamp) {
  cuda::AffineCouplingArgs a{};
  a.x = x.data_ptr();
  a.h = h.data_ptr();
  a.dtype = cuda_dtype(x);
  a.batch = x.size(0);
  a.dim = a.batch ? x.numel() / a.batch : 0;
  a.split = split;
  a.inverse = inverse;
  a.scale_mode = static_cast<int>(scale_mode);
  a.clamp = static_cast<float>(clamp);
  return a;
}

std::tuple<Tensor, Tensor> affine_coupling_cuda(const Tensor& x, const Tensor& h, const Tensor& t, int64_t split,
                                                bool inverse, int64_t scale_mode, double clamp) {
  check_params(x, "x", h, &t, split, scale_mode, clamp);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor out = at::empty_like(x);
  Tensor log_det = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  cuda::AffineCouplingArgs a = cuda_args(x, h, split, inverse, scale_mode, clamp);
  a.t = t.data_ptr();
  a.out = out.data_ptr();
  a.log_det = log_det.data_ptr<float>();
  C10_CUDA_CHECK(cuda::affine_coupling(a, c10::cuda::getCurrentCUDAStream()));
  return {out, log_det};
}

std::tuple<Tensor, Tensor> affine_coupling_backward_cuda(const Tensor& grad_out, const Tensor& grad_log_det,
                                                         const Tensor& x, const Tensor& h, int64_t split, bool inverse,
                                                         int64_t scale_mode, double clamp) {
  check_backward(grad_out, grad_log_det, x, h, split, scale_mode, clamp);
  const c10::cuda::CUDAGuard guard(x.device());
  Tensor grad_in = at::empty_like(grad_out);
  Tensor grad_h = at::empty_like(h);
  cuda::AffineCouplingArgs a = cuda_args(x, h, split, inverse, scale_mode, clamp);
  a.grad_out = grad_out.data_ptr();
  a.grad_log_det = grad_log_det.data_ptr<float>();
  a.out = grad_in.data_ptr();
  a.grad_h = grad_h.data_ptr();
  C10_CUDA_CHECK(cuda::affine_coupling_backward(a, c10::cuda::getCurrentCUDAStream()));
  return {grad_in, grad_h};
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(fastgen, CPU, m) {
  m.impl("affine_coupling", &affine_coupling_cpu);
  m.impl("affine_coupling_backward", &affine_coupling_backward_cpu);
}

#ifdef FASTGEN_WITH_CUDA
TORCH_LIBRARY_IMPL(fastgen, CUDA, m) {
  m.impl("affine_coupling", &affine_coupling_cuda);
  m.impl("affine_coupling_backward", &affine_coupling_backward_cuda);
}
#endif

}  // namespace fastgen
