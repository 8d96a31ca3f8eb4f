// Fused Gaussian reparameterization, gaussian_rsample (schema: fastgen/ops/vae.py):
//   eps_i = normal at stream position offset + i,  z = mean + exp(log_std) eps,
//   log_prob_b = sum_i (-eps_i^2 / 2 - log_std_i) - D log(2 pi) / 2,   float32 arithmetic.
// The backward (fastgen/ops/vae.py) redraws eps. CPU: samples split across threads; CUDA: kernels/vae.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"
#include "register.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;

void check_rsample(const Tensor& mean, const Tensor& log_std, int64_t seed, int64_t offset) {
  check_state_dtype(mean, "mean");
  FASTGEN_CHECK(mean.dim() >= 1, "mean must have a leading batch dimension (shape (B, ...)), got a 0-d tensor");
  FASTGEN_CHECK(mean.is_contiguous(), "mean must be contiguous (call .contiguous() first)");
  FASTGEN_CHECK(log_std.device() == mean.device(), "log_std must be on the device of mean (", mean.device(),
                "), got ", log_std.device());
  FASTGEN_CHECK(log_std.sizes() == mean.sizes(), "log_std must have the shape of mean ", mean.sizes(), ", got ",
                log_std.sizes());
  FASTGEN_CHECK_TYPE(log_std.scalar_type() == mean.scalar_type(), "log_std must have dtype ", mean.scalar_type(),
                     ", got ", log_std.scalar_type());
  FASTGEN_CHECK(log_std.is_contiguous(), "log_std must be contiguous");
  FASTGEN_CHECK(seed >= 0, "seed must be an int in [0, 2**63 - 1], got ", seed);
  FASTGEN_CHECK(offset >= 0, "offset must be an int in [0, 2**63 - 1], got ", offset);
}

// D log(2 pi) / 2, for the log-density of D standard normals.
float log_norm_of(int64_t dim) { return static_cast<float>(0.5 * static_cast<double>(dim) * std::log(2.0 * M_PI)); }

void gaussian_rsample_cpu(const Tensor& mean, const Tensor& log_std, int64_t seed, int64_t offset, Tensor& z,
                          Tensor& log_prob) {
  const int64_t batch = mean.size(0);
  const int64_t dim = batch ? mean.numel() / batch : 0;
  const float log_norm = log_norm_of(dim);
  float* lp = log_prob.data_ptr<float>();
  dispatch_float(mean.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* m = mean.data_ptr<T>();
    const T* s = log_std.data_ptr<T>();
    T* out = z.data_ptr<T>();
    at::parallel_for(0, batch, std::max<int64_t>(1, 4096 / std::max<int64_t>(dim, 1)), [&](int64_t b0, int64_t b1) {
      std::vector<float> eps(static_cast<size_t>(dim));
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t first = b * dim;
        cpu::fill_normals(static_cast<uint64_t>(seed), static_cast<uint64_t>(offset + first), dim, eps.data());
        float total = 0.0f;
        for (int64_t d = 0; d < dim; ++d) {
          const float sd = static_cast<float>(s[first + d]);
          out[first + d] = static_cast<T>(static_cast<float>(m[first + d]) + std::exp(sd) * eps[d]);
          total += -0.5f * eps[d] * eps[d] - sd;
        }
        lp[b] = total - log_norm;
      }
    });
  });
}

#ifdef FASTGEN_WITH_CUDA
void gaussian_rsample_cuda(const Tensor& mean, const Tensor& log_std, int64_t seed, int64_t offset, Tensor& z,
                           Tensor& log_prob) {
  const c10::cuda::CUDAGuard guard(mean.device());
  const int64_t batch = mean.size(0);
  const int64_t dim = batch ? mean.numel() / batch : 0;
  cuda::GaussianRsampleArgs args{mean.data_ptr(), log_std.data_ptr(), z.data_ptr(), log_prob.data_ptr<float>(),
                                 cuda_dtype(mean), batch, dim, static_cast<uint64_t>(seed),
                                 static_cast<uint64_t>(offset), log_norm_of(dim)};
  C10_CUDA_CHECK(cuda::gaussian_rsample(args, c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key); path_derivative matters to its autograd formula alone.
std::tuple<Tensor, Tensor> gaussian_rsample(const Tensor& mean, const Tensor& log_std, int64_t seed, int64_t offset,
                                            bool path_derivative) {
  check_rsample(mean, log_std, seed, offset);
  Tensor z = at::empty_like(mean);
  Tensor log_prob = at::empty({mean.size(0)}, mean.options().dtype(at::kFloat));
  FASTGEN_ON_DEVICE(mean, gaussian_rsample_cpu(mean, log_std, seed, offset, z, log_prob),
                    gaussian_rsample_cuda(mean, log_std, seed, offset, z, log_prob));
  return {z, log_prob};
}

}  // namespace

#define VAE_OPS(X) X(gaussian_rsample, gaussian_rsample)
FASTGEN_REGISTER_LOOP(VAE_OPS)

}  // namespace fastgen
