// Langevin-family ops: ula_step_, mala_propose, mala_accept_, gmm_langevin_.
// Checks, CPU kernels (at::parallel_for, AVX2 clones), and the calls into the
// CUDA launchers of kernels/langevin.cu when built with CUDA.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#include "checks.h"
#include "register.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;
using OptTensor = c10::optional<Tensor>;

int64_t chains_of(const Tensor& x) { return x.dim() == 0 ? 1 : x.size(0); }

void check_rng(int64_t seed, int64_t offset) {
  FASTGEN_CHECK(seed >= 0, "seed must be a non-negative 63-bit integer, got ", seed);
  FASTGEN_CHECK(offset >= 0, "offset must be non-negative, got ", offset);
}

void check_step(double step_size) {
  FASTGEN_CHECK(std::isfinite(step_size) && step_size > 0.0, "step_size must be finite and > 0, got ", step_size);
}

// The step and noise options of every Langevin op (the clamps and grad_clip are ula_step_'s alone).
struct StepOptions {
  double step_size;
  OptTensor step_sizes;
  int64_t seed;
  int64_t offset;
  OptTensor rng_state;
  c10::optional<double> clamp_lo;
  c10::optional<double> clamp_hi;
  c10::optional<double> grad_clip;
};

// `name`: the score argument's name in the op (score, or grad_log_prob for mala_propose).
void check_ula(const Tensor& x, const Tensor& score, const StepOptions& o, const char* name = "score") {
  check_state_dtype(x, "x");
  CHECK_CONTIGUOUS(x);
  FASTGEN_CHECK(x.dim() >= 1, "x must have a leading chain dimension, got a 0-d tensor");
  FASTGEN_CHECK(score.device() == x.device(), name, " must be on the device of x (", x.device(), "), got ",
                score.device());
  FASTGEN_CHECK(score.sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ", score.sizes());
  FASTGEN_CHECK_TYPE(score.scalar_type() == x.scalar_type() || score.scalar_type() == torch::kFloat32, name,
                " must have the dtype of x (", x.scalar_type(), ") or float32, got ", score.scalar_type());
  check_step(o.step_size);
  check_rng(o.seed, o.offset);
  if (o.grad_clip.has_value()) {
    FASTGEN_CHECK(std::isfinite(*o.grad_clip) && *o.grad_clip > 0.0, "grad_clip must be finite and > 0, got ",
                  *o.grad_clip);
  }
  if (o.clamp_lo.has_value() && o.clamp_hi.has_value()) {
    FASTGEN_CHECK(*o.clamp_lo <= *o.clamp_hi, "clamp must satisfy lo <= hi, got (", *o.clamp_lo, ", ", *o.clamp_hi,
                  ")");
  }
  step_sizes_ptr(o.step_sizes, x, chains_of(x));
  rng_state_ptr(o.rng_state, x);
}

// The noise stream of a call on the chains x.
RngArgs stream_args(const StepOptions& o, const Tensor& x) {
  return RngArgs{static_cast<uint64_t>(o.seed), static_cast<uint64_t>(o.offset), rng_state_ptr(o.rng_state, x)};
}

float clamp_bound(const c10::optional<double>& v, float fallback) {
  return v.has_value() ? static_cast<float>(*v) : fallback;
}

// ---------------------------------------------------------------- CPU ULA

template <typename T, typename S>
void ula_block(const T* x, T* y, const S* score, const float* noise, int64_t n, float drift, float noise_scale,
               bool has_clamp, float lo, float hi) {
  for (int64_t j = 0; j < n; ++j) {
    float v = static_cast<float>(x[j]) + drift * static_cast<float>(score[j]) + noise_scale * noise[j];
    v = has_clamp ? std::min(std::max(v, lo), hi) : v;
    y[j] = static_cast<T>(v);
  }
}

template <typename S>
Tensor clip_scales_cpu(const S* score, int64_t chains, int64_t chain_size, double grad_clip) {
  Tensor scale = torch::empty({chains}, torch::kFloat32);
  float* out = scale.data_ptr<float>();
  at::parallel_for(0, chains, 64, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      double ss = 0.0;
      const S* row = score + b * chain_size;
      for (int64_t d = 0; d < chain_size; ++d) {
        const double v = static_cast<float>(row[d]);
        ss += v * v;
      }
      out[b] = static_cast<float>(std::min(1.0, grad_clip / (std::sqrt(ss) + 1e-6)));
    }
  });
  return scale;
}

template <typename T, typename S>
void ula_cpu_typed(const Tensor& x, Tensor& y, const Tensor& score, const StepOptions& o) {
  const int64_t numel = x.numel();
  if (numel == 0) return;
  const int64_t chains = chains_of(x);
  const int64_t chain_size = numel / chains;
  const T* xp = x.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const S* sp = score.data_ptr<S>();
  const float* steps = step_sizes_ptr(o.step_sizes, x, chains);
  Tensor clip_tensor;
  const float* clip = nullptr;
  if (o.grad_clip.has_value()) {
    clip_tensor = clip_scales_cpu(sp, chains, chain_size, *o.grad_clip);
    clip = clip_tensor.data_ptr<float>();
  }
  uint64_t seed, offset;
  resolve_rng(stream_args(o, x), &seed, &offset);
  const bool has_clamp = o.clamp_lo.has_value() || o.clamp_hi.has_value();
  const float lo = clamp_bound(o.clamp_lo, -INFINITY);
  const float hi = clamp_bound(o.clamp_hi, INFINITY);
  const float h = static_cast<float>(o.step_size);

  at::parallel_for(0, numel, 1 << 14, [&](int64_t begin, int64_t end) {
    float noise[cpu::kBlock];
    for (int64_t i0 = begin; i0 < end; i0 += cpu::kBlock) {
      const int64_t n = std::min(cpu::kBlock, end - i0);
      cpu::fill_normals(seed, offset + static_cast<uint64_t>(i0), n, noise);
      if (steps == nullptr && clip == nullptr) {
        ula_block(xp + i0, yp + i0, sp + i0, noise, n, h, std::sqrt(2.0f * h), has_clamp, lo, hi);
        continue;
      }
      for (int64_t j = 0; j < n;) {  // one segment per chain inside the block
        const int64_t chain = (i0 + j) / chain_size;
        const int64_t stop = std::min(n, (chain + 1) * chain_size - i0);
        const float hc = steps != nullptr ? steps[chain] : h;
        const float c = clip != nullptr ? clip[chain] : 1.0f;
        ula_block(xp + i0 + j, yp + i0 + j, sp + i0 + j, noise + j, stop - j, hc * c, std::sqrt(2.0f * hc), has_clamp,
                  lo, hi);
        j = stop;
      }
    }
  });
}

void ula_cpu(const Tensor& x, Tensor& y, const Tensor& score_in, const StepOptions& o) {
  const Tensor score = score_in.contiguous();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    if (score.scalar_type() == x.scalar_type()) {
      ula_cpu_typed<T, T>(x, y, score, o);
    } else {
      ula_cpu_typed<T, float>(x, y, score, o);
    }
  });
}

void check_mala_propose(const Tensor& x, const Tensor& grad_log_prob, const StepOptions& o) {
  FASTGEN_CHECK_TYPE(grad_log_prob.scalar_type() == x.scalar_type(), "grad_log_prob must have the dtype of x (",
                x.scalar_type(), "), got ", grad_log_prob.scalar_type());
  check_ula(x, grad_log_prob, o, "grad_log_prob");
}

// ---------------------------------------------------------------- MALA accept

// A MALA state: the chains, their log-density and its gradient (the current state, updated in place, or the
// proposal).
struct MalaState {
  Tensor x;
  Tensor log_prob;
  Tensor grad;
};

void check_mala_accept(const MalaState& cur, const MalaState& prop, const StepOptions& o) {
  const Tensor &x = cur.x, &log_prob = cur.log_prob, &grad = cur.grad;
  const Tensor &y = prop.x, &log_prob_y = prop.log_prob, &grad_y = prop.grad;
  check_state_dtype(x, "x");
  FASTGEN_CHECK(x.dim() >= 1, "x must have a leading chain dimension, got a 0-d tensor");
  const int64_t chains = x.size(0);
  for (const Tensor* t : {&grad, &y, &grad_y}) {
    const char* name = t == &grad ? "grad_log_prob" : (t == &y ? "y" : "grad_log_prob_y");
    FASTGEN_CHECK(t->device() == x.device(), name, " must be on the device of x (", x.device(), "), got ",
                  t->device());
    FASTGEN_CHECK(t->sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ", t->sizes());
    FASTGEN_CHECK_TYPE(t->scalar_type() == x.scalar_type(), name, " must have the dtype of x (", x.scalar_type(),
                  "), got ", t->scalar_type());
    FASTGEN_CHECK(t->is_contiguous(), name, " must be contiguous");
  }
  CHECK_CONTIGUOUS(x);
  for (const Tensor* t : {&log_prob, &log_prob_y}) {
    const char* name = t == &log_prob ? "log_prob" : "log_prob_y";
    FASTGEN_CHECK(t->device() == x.device(), name, " must be on the device of x (", x.device(), "), got ",
                  t->device());
    FASTGEN_CHECK(t->scalar_type() == torch::kFloat32 && t->dim() == 1 && t->size(0) == chains && t->is_contiguous(),
                  name, " must be contiguous float32 of shape (", chains, ",), got ", t->scalar_type(), " ",
                  t->sizes());
  }
  check_step(o.step_size);
  check_rng(o.seed, o.offset);
  step_sizes_ptr(o.step_sizes, x, chains);
  rng_state_ptr(o.rng_state, x);
}

void mala_accept_cpu(const MalaState& cur, const MalaState& prop, const StepOptions& opt, Tensor& accepted,
                     Tensor& accept_prob) {
  const Tensor &x = cur.x, &log_prob = cur.log_prob, &grad = cur.grad;
  const Tensor &y = prop.x, &log_prob_y = prop.log_prob, &grad_y = prop.grad;
  const int64_t chains = x.size(0);
  if (chains == 0) return;
  const int64_t chain_size = x.numel() / chains;
  const float* steps = step_sizes_ptr(opt.step_sizes, x, chains);
  const double step_size = opt.step_size;
  uint64_t s, o;
  resolve_rng(stream_args(opt, x), &s, &o);
  float* lp = log_prob.data_ptr<float>();
  const float* lpy = log_prob_y.data_ptr<float>();
  bool* acc = accepted.data_ptr<bool>();
  float* prob_out = accept_prob.data_ptr<float>();
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* xp = x.data_ptr<T>();
    T* gp = grad.data_ptr<T>();
    const T* yp = y.data_ptr<T>();
    const T* gyp = grad_y.data_ptr<T>();
    at::parallel_for(0, chains, 16, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const int64_t row = b * chain_size;
        const double h = steps != nullptr ? steps[b] : step_size;
        double forward = 0.0, backward = 0.0;
        for (int64_t d = row; d < row + chain_size; ++d) {
          const double xd = static_cast<float>(xp[d]);
          const double yd = static_cast<float>(yp[d]);
          const double f = yd - xd - h * static_cast<float>(gp[d]);
          const double r = xd - yd - h * static_cast<float>(gyp[d]);
          forward += f * f;
          backward += r * r;
        }
        const double log_alpha = static_cast<double>(lpy[b]) - lp[b] + (forward - backward) / (4.0 * h);
        const float prob = log_alpha >= 0.0 ? 1.0f : (log_alpha < 0.0 ? static_cast<float>(std::exp(log_alpha)) : 0.0f);
        const bool accept = uniform_at(s, o + static_cast<uint64_t>(b)) < prob;
        prob_out[b] = prob;
        acc[b] = accept;
        if (accept) {
          lp[b] = lpy[b];
          std::copy(yp + row, yp + row + chain_size, xp + row);
          std::copy(gyp + row, gyp + row + chain_size, gp + row);
        }
      }
    });
  });
}

// ---------------------------------------------------------------- GMM Langevin

void check_gmm(const Tensor& x, const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef, int64_t n_steps,
               const StepOptions& o) {
  check_state_dtype(x, "x");
  CHECK_CONTIGUOUS(x);
  FASTGEN_CHECK(x.dim() == 2, "x must have shape (chains, dim), got ", x.sizes());
  FASTGEN_CHECK(means.dim() == 2, "means must have shape (components, dim), got ", means.sizes());
  const int64_t K = means.size(0);
  const int64_t D = means.size(1);
  FASTGEN_CHECK(x.size(1) == D, "x must have the mixture's dimension ", D, ", got shape ", x.sizes());
  FASTGEN_CHECK(D >= 1 && D <= kMaxGmmDim, "the fused mixture kernel takes dimension 1..", kMaxGmmDim, ", got ", D);
  FASTGEN_CHECK(K >= 1 && K <= kMaxGmmComponents, "the fused mixture kernel takes 1..", kMaxGmmComponents,
                " components, got ", K);
  for (const Tensor* t : {&means, &inv_vars, &log_coef}) {
    const char* name = t == &means ? "means" : (t == &inv_vars ? "inv_vars" : "log_coef");
    FASTGEN_CHECK(t->device() == x.device(), name, " must be on the device of x (", x.device(), "), got ",
                  t->device());
    FASTGEN_CHECK(t->scalar_type() == torch::kFloat32 && t->is_contiguous(), name, " must be contiguous float32");
  }
  CHECK_SAME_SHAPE(inv_vars, means);
  CHECK_SHAPE(log_coef, K);
  FASTGEN_CHECK(n_steps >= 0, "n_steps must be >= 0, got ", n_steps);
  check_step(o.step_size);
  check_rng(o.seed, o.offset);
  step_sizes_ptr(o.step_sizes, x, x.size(0));
  rng_state_ptr(o.rng_state, x);
}

constexpr int kChainBlock = 64;

struct GmmView {
  const float* means;     // (K, D)
  const float* inv_vars;  // (K, D)
  const float* log_coef;  // (K,)
  int K;
  int D;
};

// n_steps ULA steps for C <= kChainBlock chains held transposed in xs[d * C + c].
// Noise of step t, chain c, coordinate d sits at stream position first + t * numel + c * D + d.
__attribute__((target_clones("avx2", "default"))) void gmm_block_steps(float* xs, int C, const GmmView& g,
                                                                       const float* h, const float* noise_scale,
                                                                       uint64_t seed, uint64_t first, uint64_t numel,
                                                                       int64_t n_steps) {
  const int K = g.K;
  const int D = g.D;
  float weights[kMaxGmmComponents * kChainBlock];
  float noise[kMaxGmmDim * kChainBlock];
  float top[kChainBlock], total[kChainBlock], acc[kChainBlock];
  for (int64_t step = 0; step < n_steps; ++step) {
    cpu::fill_normals(seed, first + static_cast<uint64_t>(step) * numel, static_cast<int64_t>(C) * D, noise);
    for (int k = 0; k < K; ++k) {  // weights[k] = log w_k - |x - mu_k|^2_{Sigma_k^-1} / 2
      float* wk = weights + k * C;
      for (int c = 0; c < C; ++c) wk[c] = 0.0f;
      for (int d = 0; d < D; ++d) {
        const float mu = g.means[k * D + d];
        const float iv = g.inv_vars[k * D + d];
        const float* xd = xs + d * C;
        for (int c = 0; c < C; ++c) {
          const float diff = xd[c] - mu;
          wk[c] += diff * diff * iv;
        }
      }
      for (int c = 0; c < C; ++c) wk[c] = g.log_coef[k] - 0.5f * wk[c];
    }
    for (int c = 0; c < C; ++c) top[c] = weights[c];
    for (int k = 1; k < K; ++k) {
      for (int c = 0; c < C; ++c) top[c] = std::max(top[c], weights[k * C + c]);
    }
    for (int c = 0; c < C; ++c) total[c] = 0.0f;
    for (int k = 0; k < K; ++k) {  // responsibilities, unnormalized
      float* wk = weights + k * C;
      for (int c = 0; c < C; ++c) {
        wk[c] = exp_nonpositive(wk[c] - top[c]);
        total[c] += wk[c];
      }
    }
    for (int d = 0; d < D; ++d) {  // score_d = sum_k r_k (mu_kd - x_d) / sigma_kd^2
      float* xd = xs + d * C;
      for (int c = 0; c < C; ++c) acc[c] = 0.0f;
      for (int k = 0; k < K; ++k) {
        const float mu = g.means[k * D + d];
        const float iv = g.inv_vars[k * D + d];
        const float* wk = weights + k * C;
        for (int c = 0; c < C; ++c) acc[c] += wk[c] * (mu - xd[c]) * iv;
      }
      for (int c = 0; c < C; ++c) xd[c] += h[c] * acc[c] / total[c] + noise_scale[c] * noise[c * D + d];
    }
  }
}

void gmm_langevin_cpu(Tensor& x, const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef, int64_t n_steps,
                      const StepOptions& opt) {
  const int64_t chains = x.size(0);
  if (chains == 0 || n_steps == 0) return;
  const int D = static_cast<int>(means.size(1));
  const GmmView g{means.data_ptr<float>(), inv_vars.data_ptr<float>(), log_coef.data_ptr<float>(),
                  static_cast<int>(means.size(0)), D};
  const float* steps = step_sizes_ptr(opt.step_sizes, x, chains);
  const double step_size = opt.step_size;
  uint64_t s, o;
  resolve_rng(stream_args(opt, x), &s, &o);
  const uint64_t numel = static_cast<uint64_t>(x.numel());
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* xp = x.data_ptr<T>();
    const int64_t blocks = (chains + kChainBlock - 1) / kChainBlock;
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      float xs[kMaxGmmDim * kChainBlock];
      float h[kChainBlock], noise_scale[kChainBlock];
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t c0 = blk * kChainBlock;
        const int C = static_cast<int>(std::min<int64_t>(kChainBlock, chains - c0));
        for (int c = 0; c < C; ++c) {
          h[c] = steps != nullptr ? steps[c0 + c] : static_cast<float>(step_size);
          noise_scale[c] = std::sqrt(2.0f * h[c]);
          for (int d = 0; d < D; ++d) xs[d * C + c] = static_cast<float>(xp[(c0 + c) * D + d]);
        }
        gmm_block_steps(xs, C, g, h, noise_scale, s, o + static_cast<uint64_t>(c0) * D, numel, n_steps);
        for (int c = 0; c < C; ++c) {
          for (int d = 0; d < D; ++d) xp[(c0 + c) * D + d] = static_cast<T>(xs[d * C + c]);
        }
      }
    });
  });
}

// ---------------------------------------------------------------- CUDA

#ifdef FASTGEN_WITH_CUDA

void ula_cuda(const Tensor& x, Tensor& y, const Tensor& score_in, const StepOptions& o) {
  const c10::cuda::CUDAGuard guard(x.device());
  const Tensor score = score_in.contiguous();
  const int64_t chains = chains_of(x);
  Tensor clip_scale;
  if (o.grad_clip.has_value()) clip_scale = torch::empty({chains}, x.options().dtype(torch::kFloat32));
  cuda::UlaArgs a;
  a.x = x.data_ptr();
  a.y = y.data_ptr();
  a.x_dtype = cuda_dtype(x);
  a.score = score.data_ptr();
  a.score_dtype = cuda_dtype(score);
  a.numel = x.numel();
  a.chain_size = chains == 0 ? 1 : std::max<int64_t>(1, x.numel() / chains);
  a.step_size = static_cast<float>(o.step_size);
  a.step_sizes = step_sizes_ptr(o.step_sizes, x, chains);
  a.grad_clip = o.grad_clip.has_value() ? static_cast<float>(*o.grad_clip) : 0.0f;
  a.clip_scale = o.grad_clip.has_value() ? clip_scale.data_ptr<float>() : nullptr;
  a.has_clamp = o.clamp_lo.has_value() || o.clamp_hi.has_value();
  a.clamp_lo = clamp_bound(o.clamp_lo, -INFINITY);
  a.clamp_hi = clamp_bound(o.clamp_hi, INFINITY);
  a.rng = stream_args(o, x);
  C10_CUDA_CHECK(cuda::ula_step(a, c10::cuda::getCurrentCUDAStream()));
}

void mala_accept_cuda(const MalaState& cur, const MalaState& prop, const StepOptions& o, Tensor& accepted,
                      Tensor& accept_prob) {
  const c10::cuda::CUDAGuard guard(cur.x.device());
  const int64_t chains = cur.x.size(0);
  cuda::MalaAcceptArgs a;
  a.x = cur.x.data_ptr();
  a.log_prob = cur.log_prob.data_ptr<float>();
  a.grad = cur.grad.data_ptr();
  a.y = prop.x.data_ptr();
  a.log_prob_y = prop.log_prob.data_ptr<float>();
  a.grad_y = prop.grad.data_ptr();
  a.dtype = cuda_dtype(cur.x);
  a.chains = chains;
  a.chain_size = chains == 0 ? 0 : cur.x.numel() / chains;
  a.step_size = static_cast<float>(o.step_size);
  a.step_sizes = step_sizes_ptr(o.step_sizes, cur.x, chains);
  a.accepted = accepted.data_ptr<bool>();
  a.accept_prob = accept_prob.data_ptr<float>();
  a.rng = stream_args(o, cur.x);
  C10_CUDA_CHECK(cuda::mala_accept(a, c10::cuda::getCurrentCUDAStream()));
}

void gmm_langevin_cuda(Tensor& x, const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef,
                       int64_t n_steps, const StepOptions& o) {
  const c10::cuda::CUDAGuard guard(x.device());
  cuda::GmmLangevinArgs a;
  a.x = x.data_ptr();
  a.dtype = cuda_dtype(x);
  a.chains = x.size(0);
  a.dim = static_cast<int>(means.size(1));
  a.components = static_cast<int>(means.size(0));
  a.means = means.data_ptr<float>();
  a.inv_vars = inv_vars.data_ptr<float>();
  a.log_coef = log_coef.data_ptr<float>();
  a.n_steps = n_steps;
  a.step_size = static_cast<float>(o.step_size);
  a.step_sizes = step_sizes_ptr(o.step_sizes, x, x.size(0));
  a.rng = stream_args(o, x);
  C10_CUDA_CHECK(cuda::gmm_langevin(a, c10::cuda::getCurrentCUDAStream()));
}
#endif

// ---------------------------------------------------------------- The ops' entries (registered on every device key)

void ula_step(Tensor x, const Tensor& score, double step_size, const OptTensor& step_sizes, int64_t seed,
              int64_t offset, const OptTensor& rng_state, c10::optional<double> clamp_lo,
              c10::optional<double> clamp_hi, c10::optional<double> grad_clip) {
  const StepOptions o{step_size, step_sizes, seed, offset, rng_state, clamp_lo, clamp_hi, grad_clip};
  check_ula(x, score, o);
  FASTGEN_ON_DEVICE(x, ula_cpu(x, x, score, o), ula_cuda(x, x, score, o));
}

Tensor mala_propose(const Tensor& x, const Tensor& grad_log_prob, double step_size, const OptTensor& step_sizes,
                    int64_t seed, int64_t offset, const OptTensor& rng_state) {
  const StepOptions o{step_size, step_sizes, seed, offset, rng_state, c10::nullopt, c10::nullopt, c10::nullopt};
  check_mala_propose(x, grad_log_prob, o);
  Tensor y = torch::empty_like(x);
  FASTGEN_ON_DEVICE(x, ula_cpu(x, y, grad_log_prob, o), ula_cuda(x, y, grad_log_prob, o));
  return y;
}

std::tuple<Tensor, Tensor> mala_accept(Tensor x, Tensor log_prob, Tensor grad, const Tensor& y,
                                       const Tensor& log_prob_y, const Tensor& grad_y, double step_size,
                                       const OptTensor& step_sizes, int64_t seed, int64_t offset,
                                       const OptTensor& rng_state) {
  const MalaState cur{x, log_prob, grad}, prop{y, log_prob_y, grad_y};
  const StepOptions o{step_size, step_sizes, seed, offset, rng_state, c10::nullopt, c10::nullopt, c10::nullopt};
  check_mala_accept(cur, prop, o);
  const int64_t chains = x.size(0);
  Tensor accepted = torch::empty({chains}, x.options().dtype(torch::kBool));
  Tensor accept_prob = torch::empty({chains}, x.options().dtype(torch::kFloat32));
  FASTGEN_ON_DEVICE(x, mala_accept_cpu(cur, prop, o, accepted, accept_prob),
                    mala_accept_cuda(cur, prop, o, accepted, accept_prob));
  return {accepted, accept_prob};
}

void gmm_langevin(Tensor x, const Tensor& means, const Tensor& inv_vars, const Tensor& log_coef, int64_t n_steps,
                  double step_size, const OptTensor& step_sizes, int64_t seed, int64_t offset,
                  const OptTensor& rng_state) {
  const StepOptions o{step_size, step_sizes, seed, offset, rng_state, c10::nullopt, c10::nullopt, c10::nullopt};
  check_gmm(x, means, inv_vars, log_coef, n_steps, o);
  FASTGEN_ON_DEVICE(x, gmm_langevin_cpu(x, means, inv_vars, log_coef, n_steps, o),
                    gmm_langevin_cuda(x, means, inv_vars, log_coef, n_steps, o));
}


}  // namespace

#define LANGEVIN_OPS(X) \
  X(ula_step_, ula_step) \
  X(mala_propose, mala_propose) \
  X(mala_accept_, mala_accept) \
  X(gmm_langevin_, gmm_langevin)
FASTGEN_REGISTER_LOOP(LANGEVIN_OPS)

}  // namespace fastgen
