// Multi-tensor exponential moving average, ema_update_ (schema: fastgen/ops/ema.py):
//   averages[t] <- averages[t] + weight (values[t] - averages[t]),  arithmetic in float32.
// CPU: large pairs split across threads, small ones spread whole over threads (AVX2 clone for float32);
// CUDA: kernels/ema.cu, up to 48 pairs per launch.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "register.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;

void check_ema(const std::vector<Tensor>& averages, const std::vector<Tensor>& values, double weight) {
  FASTGEN_CHECK(averages.size() == values.size(), "averages and values must have the same length, got ",
                averages.size(), " and ", values.size());
  FASTGEN_CHECK(std::isfinite(weight) && weight >= 0.0 && weight <= 1.0, "weight must be in [0, 1], got ", weight);
  for (size_t t = 0; t < averages.size(); ++t) {
    const Tensor& a = averages[t];
    const Tensor& v = values[t];
    check_state_dtype(a, "averages");
    FASTGEN_CHECK(a.device() == averages[0].device() && a.scalar_type() == averages[0].scalar_type(),
                  "averages must share one device and dtype: averages[", t, "] is ", a.scalar_type(), " on ",
                  a.device(), ", averages[0] ", averages[0].scalar_type(), " on ", averages[0].device());
    FASTGEN_CHECK(v.device() == a.device() && v.scalar_type() == a.scalar_type() && v.sizes() == a.sizes(),
                  "values[", t, "] must have the shape, dtype and device of averages[", t, "] (", a.sizes(), " ",
                  a.scalar_type(), " on ", a.device(), "), got ", v.sizes(), " ", v.scalar_type(), " on ", v.device());
    FASTGEN_CHECK(a.is_contiguous() && v.is_contiguous(), "averages[", t, "] and values[", t,
                  "] must be contiguous");
  }
}

// a <- a + w (v - a) over n float32 values; the AVX2 clone is picked at load time where the CPU has AVX2.
__attribute__((target_clones("avx2", "default"))) void ema_floats(float* a, const float* v, int64_t n, float w) {
  for (int64_t i = 0; i < n; ++i) a[i] += w * (v[i] - a[i]);
}

void ema_pair(const Tensor& average, const Tensor& value, float w, int64_t begin, int64_t end) {
  dispatch_float(average.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* a = average.data_ptr<T>();
    const T* v = value.data_ptr<T>();
    if constexpr (std::is_same_v<T, float>) {
      ema_floats(a + begin, v + begin, end - begin, w);
    } else {
      for (int64_t i = begin; i < end; ++i) {
        const float av = static_cast<float>(a[i]);
        a[i] = static_cast<T>(av + w * (static_cast<float>(v[i]) - av));
      }
    }
  });
}

void ema_update_cpu(const std::vector<Tensor>& averages, const std::vector<Tensor>& values, float w) {
  constexpr int64_t kLarge = 1 << 16;  // elements: a pair this big is split across threads on its own
  std::vector<size_t> small;
  for (size_t t = 0; t < averages.size(); ++t) {
    const int64_t n = averages[t].numel();
    if (n >= kLarge) {
      at::parallel_for(0, n, kLarge / 2,
                       [&](int64_t begin, int64_t end) { ema_pair(averages[t], values[t], w, begin, end); });
    } else if (n > 0) {
      small.push_back(t);
    }
  }
  // Small pairs: whole pairs per thread (many small tensors are the common case for a model's parameters).
  at::parallel_for(0, static_cast<int64_t>(small.size()), 8, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      ema_pair(averages[small[j]], values[small[j]], w, 0, averages[small[j]].numel());
    }
  });
}

#ifdef FASTGEN_WITH_CUDA
void ema_update_cuda(const std::vector<Tensor>& averages, const std::vector<Tensor>& values, float w) {
  const c10::cuda::CUDAGuard guard(averages[0].device());
  std::vector<void*> a(averages.size());
  std::vector<const void*> v(values.size());
  std::vector<int64_t> n(averages.size());
  for (size_t t = 0; t < averages.size(); ++t) {
    a[t] = averages[t].data_ptr();
    v[t] = values[t].data_ptr();
    n[t] = averages[t].numel();
  }
  C10_CUDA_CHECK(cuda::ema_update(a.data(), v.data(), n.data(), static_cast<int>(a.size()), cuda_dtype(averages[0]), w,
                                  c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key).
void ema_update(at::TensorList averages_in, at::TensorList values_in, double weight) {
  const std::vector<Tensor> averages = averages_in.vec(), values = values_in.vec();
  check_ema(averages, values, weight);
  if (averages.empty()) return;
  const float w = static_cast<float>(weight);
  FASTGEN_ON_DEVICE(averages[0], ema_update_cpu(averages, values, w), ema_update_cuda(averages, values, w));
}

}  // namespace

#define EMA_OPS(X) X(ema_update_, ema_update)
FASTGEN_REGISTER_LOOP(EMA_OPS)

}  // namespace fastgen
