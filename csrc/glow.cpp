// Glow's layer ops: actnorm, invconv1x1, squeeze2d and the backwards (schemas: fastgen/ops/glow.py; rules:
// fastgen/reference/glow.py). A tensor (B, C, ...) is B C rows of S elements. ActNorm and the squeeze: CPU rows
// split across threads, CUDA kernels in kernels/glow.cu; the backward's per-row sums are finished here over the
// batch. The 1x1 convolution is a (C, C) matrix times each sample's (C, S) matrix: a batched GEMM (MKL / cuBLAS
// through at::matmul), in float32.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "checks.h"
#include "register.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;

constexpr int64_t kLanes = 16;

int64_t spatial_of(const Tensor& x) {
  int64_t s = 1;
  for (int64_t d = 2; d < x.dim(); ++d) s *= x.size(d);
  return s;
}

void check_input(const Tensor& x, const char* name) {
  check_state_dtype(x, name);
  FASTGEN_CHECK(x.dim() >= 2, name, " must have shape (B, C, ...), got ", x.sizes());
  FASTGEN_CHECK(x.is_contiguous(), name, " must be contiguous (call .contiguous() first)");
}

// One ValueError for every way of being wrong, as fastgen/ops/_common.py's check_vector.
void check_channel_vector(const Tensor& v, const char* name, const Tensor& x, const char* x_name) {
  FASTGEN_CHECK(v.scalar_type() == at::kFloat && v.dim() == 1 && v.size(0) == x.size(1) &&
                    v.device() == x.device() && v.is_contiguous(),
                name, " must be contiguous float32 of shape (", x.size(1), ",) (the channels of ", x_name,
                ") on the device of ", x_name, ", got ", v.scalar_type(), " ", v.sizes(), " on ", v.device());
}

// As fastgen/ops/_common.py's check_like (device, shape, then dtype), and contiguous.
void check_like_input(const Tensor& x, const Tensor& grad_out) {
  FASTGEN_CHECK(x.device() == grad_out.device(), "x must be on the device of grad_out (", grad_out.device(),
                "), got ", x.device());
  FASTGEN_CHECK(x.sizes() == grad_out.sizes(), "x must have the shape of grad_out ", grad_out.sizes(), ", got ",
                x.sizes());
  FASTGEN_CHECK_TYPE(x.scalar_type() == grad_out.scalar_type(), "x must have dtype ", grad_out.scalar_type(),
                     ", got ", x.scalar_type());
  FASTGEN_CHECK(x.is_contiguous(), "x must be contiguous");
}

void check_actnorm(const Tensor& x, const Tensor& log_scale, const Tensor& bias) {
  check_input(x, "x");
  check_channel_vector(log_scale, "log_scale", x, "x");
  check_channel_vector(bias, "bias", x, "x");
}

void check_actnorm_backward(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x,
                            const Tensor& log_scale) {
  check_input(grad_out, "grad_out");
  FASTGEN_CHECK(grad_log_det.scalar_type() == at::kFloat && grad_log_det.dim() == 1 &&
                    grad_log_det.size(0) == grad_out.size(0) && grad_log_det.device() == grad_out.device() &&
                    grad_log_det.is_contiguous(),
                "grad_log_det must be contiguous float32 of shape (", grad_out.size(0), ",) on the device of grad_out");
  check_like_input(x, grad_out);
  check_channel_vector(log_scale, "log_scale", grad_out, "grad_out");
}

void actnorm_cpu(const Tensor& x, const Tensor& log_scale, const Tensor& bias, bool inverse, Tensor& out,
                 Tensor& log_det) {
  const int64_t batch = x.size(0), channels = x.size(1), spatial = spatial_of(x);
  const float* s = log_scale.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  double total = 0.0;
  for (int64_t c = 0; c < channels; ++c) total += s[c];
  total *= static_cast<double>(spatial);
  log_det.fill_(inverse ? -total : total);
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* in = x.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, batch * channels, std::max<int64_t>(1, 32768 / std::max<int64_t>(spatial, 1)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t c = r % channels;
        const T* xr = in + r * spatial;
        T* yr = o + r * spatial;
        if (inverse) {
          const float m = std::exp(-s[c]), shift = -b[c] * m;
          for (int64_t j = 0; j < spatial; ++j) yr[j] = static_cast<T>(static_cast<float>(xr[j]) * m + shift);
        } else {
          const float m = std::exp(s[c]), shift = b[c];
          for (int64_t j = 0; j < spatial; ++j) yr[j] = static_cast<T>(static_cast<float>(xr[j]) * m + shift);
        }
      }
    });
  });
}

// Writes grad_in; returns (grad_log_scale, grad_bias).
std::tuple<Tensor, Tensor> actnorm_backward_cpu(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x,
                                                const Tensor& log_scale, bool inverse, Tensor& grad_in) {
  const int64_t batch = x.size(0), channels = x.size(1), spatial = spatial_of(x);
  std::vector<double> sums(static_cast<size_t>(2 * batch * channels));
  const float* s = log_scale.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = grad_out.data_ptr<T>();
    const T* xs = x.data_ptr<T>();
    T* gi = grad_in.data_ptr<T>();
    at::parallel_for(0, batch * channels, std::max<int64_t>(1, 32768 / std::max<int64_t>(spatial, 1)),
                     [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const float m = std::exp(inverse ? -s[r % channels] : s[r % channels]);
        const int64_t base = r * spatial;
        double total_g = 0.0, total_gx = 0.0;
        for (int64_t j0 = 0; j0 < spatial; j0 += 1024) {  // float lanes within a block, double across blocks
          const int64_t j1 = std::min(spatial, j0 + 1024);
          float lane_g[kLanes] = {}, lane_gx[kLanes] = {};
          for (int64_t j = j0; j < j1; j += kLanes) {
            const int64_t n = std::min(kLanes, j1 - j);
            for (int64_t k = 0; k < n; ++k) {
              const float gv = static_cast<float>(g[base + j + k]);
              lane_g[k] += gv;
              lane_gx[k] += gv * static_cast<float>(xs[base + j + k]);
              gi[base + j + k] = static_cast<T>(gv * m);
            }
          }
          for (int64_t k = 0; k < kLanes; ++k) {
            total_g += lane_g[k];
            total_gx += lane_gx[k];
          }
        }
        sums[2 * r] = total_g;
        sums[2 * r + 1] = total_gx;
      }
    });
  });
  // the rule's per-channel sums over the batch (finish_actnorm_backward, without its ATen calls)
  double g_ld = 0.0;
  const float* gl = grad_log_det.data_ptr<float>();
  for (int64_t b = 0; b < batch; ++b) g_ld += gl[b];
  g_ld *= static_cast<double>(spatial);
  Tensor grad_log_scale = at::empty({channels}, log_scale.options()), grad_bias = at::empty_like(grad_log_scale);
  float* gs = grad_log_scale.data_ptr<float>();
  float* gb = grad_bias.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    double sum_g = 0.0, sum_gx = 0.0;
    for (int64_t b = 0; b < batch; ++b) {
      sum_g += sums[2 * (b * channels + c)];
      sum_gx += sums[2 * (b * channels + c) + 1];
    }
    gs[c] = static_cast<float>(inverse ? -sum_gx - g_ld : std::exp(static_cast<double>(s[c])) * sum_gx + g_ld);
    gb[c] = static_cast<float>(inverse ? -std::exp(-static_cast<double>(s[c])) * sum_g : sum_g);
  }
  return {grad_log_scale, grad_bias};
}

void check_weight(const Tensor& weight, const Tensor& x, const char* x_name) {
  FASTGEN_CHECK_TYPE(weight.scalar_type() == at::kFloat, "weight must be float32, got ", weight.scalar_type());
  FASTGEN_CHECK(weight.dim() == 2 && weight.size(0) == x.size(1) && weight.size(1) == x.size(1) &&
                    weight.device() == x.device() && weight.is_contiguous(),
                "weight must be contiguous (", x.size(1), ", ", x.size(1), ") (channels of ", x_name,
                ") on the device of ", x_name, ", got ", weight.sizes(), " on ", weight.device());
}

// The GEMMs of the 1x1 convolution, on either device: batched products with the weight broadcast (stride 0).
Tensor times_each(const Tensor& weight, const Tensor& columns) {  // weight @ columns[b] for every b
  return at::bmm(weight.expand({columns.size(0), weight.size(0), weight.size(1)}), columns);
}

std::tuple<Tensor, Tensor> invconv1x1(const Tensor& x, const Tensor& weight, const Tensor& log_s) {
  check_input(x, "x");
  check_weight(weight, x, "x");
  check_channel_vector(log_s, "log_s", x, "x");
  const int64_t batch = x.size(0), channels = x.size(1), spatial = spatial_of(x);
  Tensor out = times_each(weight, x.reshape({batch, channels, spatial}).to(at::kFloat)).to(x.scalar_type());
  Tensor log_det = (log_s.sum() * static_cast<double>(spatial)).expand({batch}).contiguous();
  return {out.view(x.sizes()), log_det};
}

std::tuple<Tensor, Tensor> invconv1x1_backward(const Tensor& grad_out, const Tensor& x, const Tensor& weight) {
  check_input(grad_out, "grad_out");
  check_like_input(x, grad_out);
  check_weight(weight, grad_out, "grad_out");
  const int64_t batch = x.size(0), channels = x.size(1), spatial = spatial_of(x);
  const Tensor g = grad_out.reshape({batch, channels, spatial}).to(at::kFloat);
  Tensor grad_in = times_each(weight.t().contiguous(), g).to(grad_out.scalar_type()).view(x.sizes());
  Tensor grad_weight = batch ? at::bmm(g, x.reshape({batch, channels, spatial}).to(at::kFloat).transpose(1, 2)).sum(0)
                             : at::zeros({channels, channels}, weight.options());
  return {grad_in, grad_weight};
}

std::vector<int64_t> squeezed_sizes(const Tensor& x, bool inverse) {
  check_state_dtype(x, "x");
  FASTGEN_CHECK(x.is_contiguous(), "x must be contiguous (call .contiguous() first)");
  if (inverse) {
    FASTGEN_CHECK(x.dim() == 4 && x.size(1) % 4 == 0, "x must have shape (B, 4C, H, W) to unsqueeze, got ",
                  x.sizes());
    return {x.size(0), x.size(1) / 4, 2 * x.size(2), 2 * x.size(3)};
  }
  FASTGEN_CHECK(x.dim() == 4 && x.size(2) % 2 == 0 && x.size(3) % 2 == 0,
                "x must have shape (B, C, H, W) with H and W even, got ", x.sizes());
  return {x.size(0), 4 * x.size(1), x.size(2) / 2, x.size(3) / 2};
}

template <typename E>
void squeeze_planes(const E* in, E* out, int64_t batch, int64_t channels, int64_t height, int64_t width,
                    bool inverse) {
  // one plane (b, c) of the unsqueezed tensor, 2 height x 2 width, at a time: its row 2u + i holds rows u of the
  // squeezed channels 4c + 2i (even elements) and 4c + 2i + 1 (odd elements)
  const int64_t plane = 4 * height * width;
  at::parallel_for(0, batch * channels, std::max<int64_t>(1, 16384 / std::max<int64_t>(plane, 1)),
                   [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      for (int64_t i = 0; i < 2; ++i) {
        for (int64_t u = 0; u < height; ++u) {
          const int64_t wide = p * plane + (2 * u + i) * 2 * width;
          const int64_t even = p * plane + (2 * i * height + u) * width, odd = even + height * width;
          if (inverse) {
            for (int64_t v = 0; v < width; ++v) {
              out[wide + 2 * v] = in[even + v];
              out[wide + 2 * v + 1] = in[odd + v];
            }
          } else {
            for (int64_t v = 0; v < width; ++v) {
              out[even + v] = in[wide + 2 * v];
              out[odd + v] = in[wide + 2 * v + 1];
            }
          }
        }
      }
    }
  });
}

void squeeze2d_cpu(const Tensor& x, bool inverse, Tensor& out) {
  const Tensor& big = inverse ? out : x;  // the unsqueezed side
  const int64_t batch = x.size(0), channels = big.size(1), height = big.size(2) / 2, width = big.size(3) / 2;
  if (x.element_size() == 2) {
    squeeze_planes(static_cast<const uint16_t*>(x.data_ptr()), static_cast<uint16_t*>(out.data_ptr()), batch,
                 channels, height, width, inverse);
  } else {
    squeeze_planes(static_cast<const uint32_t*>(x.data_ptr()), static_cast<uint32_t*>(out.data_ptr()), batch,
                 channels, height, width, inverse);
  }
}

#ifdef FASTGEN_WITH_CUDA
// (grad_log_scale, grad_bias) from the per-row (sum g, sum g x), by the rule (fastgen/reference/glow.py).
std::tuple<Tensor, Tensor> finish_actnorm_backward(const Tensor& partial, const Tensor& grad_log_det,
                                                   const Tensor& log_scale, int64_t spatial, bool inverse) {
  const Tensor sums = partial.sum(0);
  const Tensor sum_g = sums.select(1, 0), sum_gx = sums.select(1, 1);
  const Tensor g_ld = grad_log_det.sum() * static_cast<double>(spatial);
  if (inverse) return {(-sum_gx - g_ld).contiguous(), (-(-log_scale).exp() * sum_g).contiguous()};
  return {(log_scale.exp() * sum_gx + g_ld).contiguous(), sum_g.contiguous()};
}

void actnorm_cuda(const Tensor& x, const Tensor& log_scale, const Tensor& bias, bool inverse, Tensor& out,
                  Tensor& log_det) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::ActNormArgs a{x.data_ptr(), log_scale.data_ptr<float>(), bias.data_ptr<float>(), out.data_ptr(),
                      log_det.data_ptr<float>(), nullptr, nullptr, cuda_dtype(x), x.size(0), x.size(1),
                      spatial_of(x), inverse};
  C10_CUDA_CHECK(cuda::actnorm(a, c10::cuda::getCurrentCUDAStream()));
}

std::tuple<Tensor, Tensor> actnorm_backward_cuda(const Tensor& grad_out, const Tensor& grad_log_det, const Tensor& x,
                                                 const Tensor& log_scale, bool inverse, Tensor& grad_in) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t batch = x.size(0), channels = x.size(1), spatial = spatial_of(x);
  Tensor partial = at::zeros({batch, channels, 2}, x.options().dtype(at::kFloat));
  cuda::ActNormArgs a{x.data_ptr(), log_scale.data_ptr<float>(), nullptr, grad_in.data_ptr(), nullptr,
                      grad_out.data_ptr(), partial.data_ptr<float>(), cuda_dtype(x), batch, channels, spatial,
                      inverse};
  C10_CUDA_CHECK(cuda::actnorm_backward(a, c10::cuda::getCurrentCUDAStream()));
  return finish_actnorm_backward(partial, grad_log_det, log_scale, spatial, inverse);
}

void squeeze2d_cuda(const Tensor& x, bool inverse, Tensor& out) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor& big = inverse ? out : x;
  cuda::SqueezeArgs a{x.data_ptr(), out.data_ptr(), x.size(0), big.size(1), big.size(2) / 2, big.size(3) / 2,
                      static_cast<int>(x.element_size()), inverse};
  C10_CUDA_CHECK(cuda::squeeze2d(a, c10::cuda::getCurrentCUDAStream()));
}
#endif

// ---- The ops' entries (registered on every device key; the 1x1 convolution's are ATen's GEMMs on either device).

std::tuple<Tensor, Tensor> actnorm(const Tensor& x, const Tensor& log_scale, const Tensor& bias, bool inverse) {
  check_actnorm(x, log_scale, bias);
  Tensor out = at::empty_like(x);
  Tensor log_det = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  FASTGEN_ON_DEVICE(x, actnorm_cpu(x, log_scale, bias, inverse, out, log_det),
                    actnorm_cuda(x, log_scale, bias, inverse, out, log_det));
  return {out, log_det};
}

std::tuple<Tensor, Tensor, Tensor> actnorm_backward(const Tensor& grad_out, const Tensor& grad_log_det,
                                                    const Tensor& x, const Tensor& log_scale, bool inverse) {
  check_actnorm_backward(grad_out, grad_log_det, x, log_scale);
  Tensor grad_in = at::empty_like(grad_out);
  auto [grad_log_scale, grad_bias] =
      FASTGEN_ON_DEVICE(x, actnorm_backward_cpu(grad_out, grad_log_det, x, log_scale, inverse, grad_in),
                        actnorm_backward_cuda(grad_out, grad_log_det, x, log_scale, inverse, grad_in));
  return {grad_in, grad_log_scale, grad_bias};
}

Tensor squeeze2d(const Tensor& x, bool inverse) {
  Tensor out = at::empty(squeezed_sizes(x, inverse), x.options());
  FASTGEN_ON_DEVICE(x, squeeze2d_cpu(x, inverse, out), squeeze2d_cuda(x, inverse, out));
  return out;
}

}  // namespace

#define GLOW_OPS(X) \
  X(actnorm, actnorm) \
  X(actnorm_backward, actnorm_backward) \
  X(invconv1x1, invconv1x1) \
  X(invconv1x1_backward, invconv1x1_backward) \
  X(squeeze2d, squeeze2d)
FASTGEN_REGISTER_LOOP(GLOW_OPS)

}  // namespace fastgen
