// The flow-matching interpolation, cfm_interpolate (schema: fastgen/ops/flow_matching.py; rule:
// fastgen/reference/flow_matching.py): x_t = alpha_b x0 + sigma_b eps, target = alpha'_b x0 + sigma'_b eps, eps_bj
// the stream's normal at offset + p_b D + j. CPU: samples split across threads, each sample's noise drawn in
// blocks of cpu::kBlock; CUDA: kernels/flow_matching.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "checks.h"
#include "register.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;
using OptTensor = c10::optional<Tensor>;

void check_interpolate(const Tensor& x0, const Tensor& coef, const OptTensor& pairing, int64_t seed, int64_t offset) {
  check_state_dtype(x0, "x0");
  FASTGEN_CHECK(x0.dim() >= 1 && x0.is_contiguous(), "x0 must be contiguous with a leading batch dimension");
  const int64_t batch = x0.size(0);
  FASTGEN_CHECK_TYPE(coef.scalar_type() == at::kFloat, "coef must be float32, got ", coef.scalar_type());
  FASTGEN_CHECK(coef.device() == x0.device() && coef.dim() == 2 && coef.size(0) == batch && coef.size(1) == 4 &&
                    coef.is_contiguous(),
                "coef must be contiguous (", batch, ", 4) (alpha, sigma, alpha', sigma' per sample) on x0's device, "
                "got ", coef.sizes(), " on ", coef.device());
  if (pairing.has_value()) {
    const Tensor& p = *pairing;
    FASTGEN_CHECK_TYPE(p.scalar_type() == at::kLong, "pairing must be int64, got ", p.scalar_type());
    FASTGEN_CHECK(p.device() == x0.device() && p.dim() == 1 && p.size(0) == batch && p.is_contiguous(),
                  "pairing must be contiguous (", batch, ",) on x0's device, got ", p.sizes(), " on ", p.device());
  }
  FASTGEN_CHECK(seed >= 0, "seed must be an int in [0, 2**63 - 1], got ", seed);
  FASTGEN_CHECK(offset >= 0, "offset must be an int in [0, 2**63 - 1], got ", offset);
}

// The noise rows, their stream and the outputs of one call.
struct Interpolation {
  const int64_t* pairing;  // (batch,) or nullptr: the identity
  uint64_t seed;
  uint64_t offset;
};

// Elements [i, stop) of one row: x_t and target from x0, the row's coefficients and its noise.
template <typename T>
void interpolate_row(const T* x0, const float* c, const float* eps, int64_t n, T* x_t, T* target) {
  const float alpha = c[0], sigma = c[1], d_alpha = c[2], d_sigma = c[3];
  for (int64_t j = 0; j < n; ++j) {
    const float x = static_cast<float>(x0[j]);
    x_t[j] = static_cast<T>(alpha * x + sigma * eps[j]);
    target[j] = static_cast<T>(d_alpha * x + d_sigma * eps[j]);
  }
}

// Unpaired, the noise positions follow the elements: one fill per block of elements, whatever the rows.
template <typename T>
void interpolate_unpaired(const T* xp, const float* c, const Interpolation& in, int64_t numel, int64_t dim, T* xt,
                          T* tg) {
  at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
    float eps[cpu::kBlock];
    for (int64_t i0 = begin; i0 < end; i0 += cpu::kBlock) {
      const int64_t n = std::min(cpu::kBlock, end - i0);
      cpu::fill_normals(in.seed, in.offset + static_cast<uint64_t>(i0), n, eps);
      for (int64_t i = i0; i < i0 + n;) {  // the block's rows, one segment each
        const int64_t row = i / dim, stop = std::min(i0 + n, (row + 1) * dim);
        interpolate_row(xp + i, c + 4 * row, eps + (i - i0), stop - i, xt + i, tg + i);
        i = stop;
      }
    }
  });
}

// Paired, each row's noise is drawn at its noise row's positions.
template <typename T>
void interpolate_paired(const T* xp, const float* c, const Interpolation& in, int64_t batch, int64_t dim, T* xt,
                        T* tg) {
  at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1)), [&](int64_t b0, int64_t b1) {
    float eps[cpu::kBlock];
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t j0 = 0; j0 < dim; j0 += cpu::kBlock) {
        const int64_t n = std::min(cpu::kBlock, dim - j0), i = b * dim + j0;
        cpu::fill_normals(in.seed, in.offset + static_cast<uint64_t>(in.pairing[b] * dim + j0), n, eps);
        interpolate_row(xp + i, c + 4 * b, eps, n, xt + i, tg + i);
      }
    }
  });
}

void cfm_interpolate_cpu(const Tensor& x0, const Tensor& coef, const Interpolation& in, Tensor& x_t,
                         Tensor& target) {
  const int64_t batch = x0.size(0);
  if (x0.numel() == 0) return;
  const int64_t dim = x0.numel() / batch;
  dispatch_float(x0.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x0.data_ptr<T>();
    const float* c = coef.data_ptr<float>();
    if (in.pairing == nullptr) {
      interpolate_unpaired(xp, c, in, x0.numel(), dim, x_t.data_ptr<T>(), target.data_ptr<T>());
    } else {
      interpolate_paired(xp, c, in, batch, dim, x_t.data_ptr<T>(), target.data_ptr<T>());
    }
  });
}

#ifdef FASTGEN_WITH_CUDA
void cfm_interpolate_cuda(const Tensor& x0, const Tensor& coef, const Interpolation& in, Tensor& x_t,
                          Tensor& target) {
  const c10::cuda::CUDAGuard guard(x0.device());
  const int64_t batch = x0.size(0);
  cuda::CfmInterpolateArgs a{x0.data_ptr(), coef.data_ptr<float>(), in.pairing, x_t.data_ptr(), target.data_ptr(),
                             cuda_dtype(x0), batch, batch ? x0.numel() / batch : 0, in.seed, in.offset};
  C10_CUDA_CHECK(cuda::cfm_interpolate(a, c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key).
std::tuple<Tensor, Tensor> cfm_interpolate(const Tensor& x0, const Tensor& coef, const OptTensor& pairing,
                                           int64_t seed, int64_t offset) {
  check_interpolate(x0, coef, pairing, seed, offset);
  if (pairing.has_value() && !pairing->is_cuda() && pairing->numel() > 0) {
    const int64_t* p = pairing->data_ptr<int64_t>();
    const int64_t lo = *std::min_element(p, p + pairing->numel());
    FASTGEN_CHECK_INDEX(lo >= 0, "pairing must hold stream rows >= 0, got ", lo);
  }
  const Interpolation in{pairing.has_value() ? pairing->data_ptr<int64_t>() : nullptr, static_cast<uint64_t>(seed),
                         static_cast<uint64_t>(offset)};
  Tensor x_t = at::empty_like(x0), target = at::empty_like(x0);
  FASTGEN_ON_DEVICE(x0, cfm_interpolate_cpu(x0, coef, in, x_t, target),
                    cfm_interpolate_cuda(x0, coef, in, x_t, target));
  return {x_t, target};
}

}  // namespace

#define FLOW_MATCHING_OPS(X) X(cfm_interpolate, cfm_interpolate)
FASTGEN_REGISTER_LOOP(FLOW_MATCHING_OPS)

}  // namespace fastgen
