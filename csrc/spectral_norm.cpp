// Grouped spectral-norm power iteration, spectral_norm_power (schema: fastgen/ops/spectral_norm.py). For every
// matrix W (h, w) with vectors u (h,), v (w,), in float32:
//   repeat n times:  u <- W v / max(|W v|, eps);  v <- W^T u / max(|W^T u|, eps)
//   sigma = u^T W v  (= |W^T u|^2 / max(|W^T u|, eps) after an iteration: no third pass over W)
// CPU: each matrix in turn, rows split across threads (W v row by row; W^T u as fixed row chunks whose partial
// sums are added in a fixed order, so the result does not depend on the thread count). CUDA: kernels/spectral_norm.cu,
// all matrices of a call in the same few launches.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "register.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;

void check_spectral(const std::vector<Tensor>& weights, const std::vector<Tensor>& us, const std::vector<Tensor>& vs,
                    int64_t n_power_iterations, double eps) {
  FASTGEN_CHECK(us.size() == weights.size() && vs.size() == weights.size(),
                "weights, us and vs must have the same length, got ", weights.size(), ", ", us.size(), " and ",
                vs.size());
  FASTGEN_CHECK(n_power_iterations >= 0, "n_power_iterations must be >= 0, got ", n_power_iterations);
  FASTGEN_CHECK(std::isfinite(eps) && eps > 0, "eps must be finite and > 0, got ", eps);
  for (size_t t = 0; t < weights.size(); ++t) {
    const Tensor& w = weights[t];
    check_state_dtype(w, "weights");
    FASTGEN_CHECK(w.device() == weights[0].device() && w.scalar_type() == weights[0].scalar_type(),
                  "weights must share one device and dtype: weights[", t, "] is ", w.scalar_type(), " on ",
                  w.device(), ", weights[0] ", weights[0].scalar_type(), " on ", weights[0].device());
    FASTGEN_CHECK(w.dim() == 2 && w.is_contiguous(), "weights[", t, "] must be a contiguous matrix (h, w), got shape ",
                  w.sizes());
    const char* names[2] = {"us", "vs"};
    const Tensor* vecs[2] = {&us[t], &vs[t]};
    for (int k = 0; k < 2; ++k) {
      const Tensor& vec = *vecs[k];
      FASTGEN_CHECK(vec.device() == w.device() && vec.scalar_type() == w.scalar_type() && vec.dim() == 1 &&
                        vec.size(0) == w.size(k) && vec.is_contiguous(),
                    names[k], "[", t, "] must be contiguous of shape (", w.size(k), ",) with the dtype and device of weights[",
                    t, "] (", w.scalar_type(), " on ", w.device(), "), got ", vec.scalar_type(), " ", vec.sizes(),
                    " on ", vec.device());
    }
  }
}

// sum_i a[i] b[i] over float32 rows, eight partial sums (vectorized in the AVX2 clone).
__attribute__((target_clones("avx2", "default"))) float dot_floats(const float* a, const float* b, int64_t n) {
  float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += a[i + k] * b[i + k];
  }
  float tail = 0.f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

// y += a x over float32 rows.
__attribute__((target_clones("avx2", "default"))) void axpy_floats(float* y, float a, const float* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

template <typename T>
float row_dot(const T* row, const float* v, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    return dot_floats(row, v, n);
  } else {
    float s = 0.f;
    for (int64_t i = 0; i < n; ++i) s += static_cast<float>(row[i]) * v[i];
    return s;
  }
}

template <typename T>
void row_axpy(float* y, float a, const T* row, int64_t n) {
  if constexpr (std::is_same_v<T, float>) {
    axpy_floats(y, a, row, n);
  } else {
    for (int64_t i = 0; i < n; ++i) y[i] += a * static_cast<float>(row[i]);
  }
}

// out = W v (h values).
template <typename T>
void matvec(const T* w, int64_t h, int64_t cols, const float* v, float* out) {
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(cols, 1));
  at::parallel_for(0, h, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) out[r] = row_dot(w + r * cols, v, cols);
  });
}

// out = W^T u (cols values), as fixed chunks of rows added in order.
template <typename T>
void matvec_t(const T* w, int64_t h, int64_t cols, const float* u, float* out) {
  const int64_t chunks = std::min<int64_t>(16, std::max<int64_t>(1, h / 64));
  std::vector<float> partial(chunks * cols, 0.f);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      float* acc = partial.data() + c * cols;
      for (int64_t r = c * h / chunks; r < (c + 1) * h / chunks; ++r) row_axpy(acc, u[r], w + r * cols, cols);
    }
  });
  for (int64_t j = 0; j < cols; ++j) out[j] = 0.f;
  for (int64_t c = 0; c < chunks; ++c) axpy_floats(out, 1.f, partial.data() + c * cols, cols);
}

// x <- x / max(|x|, eps); returns |x|.
float normalize(float* x, int64_t n, float eps) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
  const float norm = static_cast<float>(std::sqrt(sum));
  const float scale = 1.f / std::max(norm, eps);
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
  return norm;
}

template <typename T>
float power_iteration(const Tensor& weight, const Tensor& u_in, const Tensor& v_in, const Tensor& u_out,
                      const Tensor& v_out, int64_t iterations, float eps) {
  const int64_t h = weight.size(0), cols = weight.size(1);
  const T* w = weight.data_ptr<T>();
  std::vector<float> u(h), v(cols), t(h);
  for (int64_t i = 0; i < h; ++i) u[i] = static_cast<float>(u_in.data_ptr<T>()[i]);
  for (int64_t j = 0; j < cols; ++j) v[j] = static_cast<float>(v_in.data_ptr<T>()[j]);
  float sigma;
  if (iterations == 0) {
    matvec(w, h, cols, v.data(), t.data());
    double dot = 0.0;
    for (int64_t i = 0; i < h; ++i) dot += static_cast<double>(u[i]) * t[i];
    sigma = static_cast<float>(dot);
  } else {
    float norm = 0.f;
    for (int64_t it = 0; it < iterations; ++it) {
      matvec(w, h, cols, v.data(), u.data());
      normalize(u.data(), h, eps);
      matvec_t(w, h, cols, u.data(), v.data());
      norm = normalize(v.data(), cols, eps);
    }
    sigma = norm * norm / std::max(norm, eps);
  }
  for (int64_t i = 0; i < h; ++i) u_out.data_ptr<T>()[i] = static_cast<T>(u[i]);
  for (int64_t j = 0; j < cols; ++j) v_out.data_ptr<T>()[j] = static_cast<T>(v[j]);
  return sigma;
}

// The op's outputs: sigmas, and the updated u and v of each weight.
using PowerOutputs = std::tuple<Tensor, std::vector<Tensor>, std::vector<Tensor>>;

PowerOutputs outputs_like(const std::vector<Tensor>& weights, const std::vector<Tensor>& us,
                          const std::vector<Tensor>& vs) {
  const auto device = weights.empty() ? at::Device(at::kCPU) : weights[0].device();
  Tensor sigmas = at::empty({static_cast<int64_t>(weights.size())}, at::TensorOptions().dtype(at::kFloat).device(device));
  std::vector<Tensor> us_out, vs_out;
  for (size_t t = 0; t < weights.size(); ++t) {
    us_out.push_back(at::empty_like(us[t]));
    vs_out.push_back(at::empty_like(vs[t]));
  }
  return {sigmas, us_out, vs_out};
}

void spectral_norm_power_cpu(const std::vector<Tensor>& weights, const std::vector<Tensor>& us,
                             const std::vector<Tensor>& vs, int64_t n_power_iterations, double eps,
                             PowerOutputs& out) {
  auto& [sigmas, us_out, vs_out] = out;
  float* sigma = sigmas.data_ptr<float>();
  for (size_t t = 0; t < weights.size(); ++t) {
    dispatch_float(weights[t].scalar_type(), [&](auto tag) {
      using T = decltype(tag);
      sigma[t] = power_iteration<T>(weights[t], us[t], vs[t], us_out[t], vs_out[t], n_power_iterations,
                                    static_cast<float>(eps));
    });
  }
}

#ifdef FASTGEN_WITH_CUDA
void spectral_norm_power_cuda(const std::vector<Tensor>& weights, const std::vector<Tensor>& us,
                              const std::vector<Tensor>& vs, int64_t n_power_iterations, double eps,
                              PowerOutputs& out) {
  auto& [sigmas, us_out, vs_out] = out;
  const c10::cuda::CUDAGuard guard(weights[0].device());
  const size_t count = weights.size();
  std::vector<const void*> w(count), u(count), v(count);
  std::vector<void*> u_out(count), v_out(count);
  std::vector<int64_t> rows(count), cols(count);
  int64_t workspace = 0;
  for (size_t t = 0; t < count; ++t) {
    w[t] = weights[t].data_ptr();
    u[t] = us[t].data_ptr();
    v[t] = vs[t].data_ptr();
    u_out[t] = us_out[t].data_ptr();
    v_out[t] = vs_out[t].data_ptr();
    rows[t] = weights[t].size(0);
    cols[t] = weights[t].size(1);
    workspace += cuda::spectral_norm_workspace(rows[t], cols[t]);
  }
  Tensor scratch = at::empty({workspace}, weights[0].options().dtype(at::kFloat));
  cuda::SpectralNormArgs args{w.data(), u.data(), v.data(), u_out.data(), v_out.data(), rows.data(), cols.data(),
                              static_cast<int>(count), cuda_dtype(weights[0]), static_cast<int>(n_power_iterations),
                              static_cast<float>(eps), sigmas.data_ptr<float>(), scratch.data_ptr<float>()};
  C10_CUDA_CHECK(cuda::spectral_norm_power(args, c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key).
PowerOutputs spectral_norm_power(at::TensorList weights_in, at::TensorList us_in, at::TensorList vs_in,
                                 int64_t n_power_iterations, double eps) {
  const std::vector<Tensor> weights = weights_in.vec(), us = us_in.vec(), vs = vs_in.vec();
  check_spectral(weights, us, vs, n_power_iterations, eps);
  PowerOutputs out = outputs_like(weights, us, vs);
  if (weights.empty()) return out;
  FASTGEN_ON_DEVICE(weights[0], spectral_norm_power_cpu(weights, us, vs, n_power_iterations, eps, out),
                    spectral_norm_power_cuda(weights, us, vs, n_power_iterations, eps, out));
  return out;
}

}  // namespace

#define SPECTRAL_NORM_OPS(X) X(spectral_norm_power, spectral_norm_power)
FASTGEN_REGISTER_LOOP(SPECTRAL_NORM_OPS)

}  // namespace fastgen
