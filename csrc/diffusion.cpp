// Diffusion-sampler ops: diffusion_step_ (every affine update rule; see
// kernels/launchers.h for the coefficient row) and langevin_correct_.
// Checks, CPU kernels, and the calls into kernels/diffusion.cu.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "register.h"
#include "../kernels/diffusion.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace {

using torch::Tensor;
using OptTensor = c10::optional<Tensor>;


struct StepInputs {
  const Tensor& x;
  const Tensor& model_out;
  const Tensor& coef;
  const OptTensor& index;
  int64_t prediction;
  c10::optional<double> clip;
  bool clip_eps;
  const OptTensor& aux;
  int64_t aux_store;
  const OptTensor& noise;
  int64_t seed;
  int64_t offset;
  const OptTensor& rng_state;
  const OptTensor& sample_seeds;
  int64_t sample_offset;
  const OptTensor& uncond_out;  // classifier-free guidance: the step reads u + w (c - u)
  const OptTensor& guidance;    // w, (1,) or (B,) float32
  double guidance_rescale;      // phi: the guided output times phi std(c_b) / std(g_b) + 1 - phi
  const OptTensor& known;       // inpainting: where known_mask, x <- known_keep known + known_std xi
  const OptTensor& known_mask;  // bool, the shape of x or of one sample
  double known_keep;
  double known_std;
};

void check_step(const StepInputs& in) {
  const Tensor& x = in.x;
  check_state_dtype(x, "x");
  CHECK_CONTIGUOUS(x);
  FASTGEN_CHECK(x.dim() >= 1, "x must have a leading sample dimension, got a 0-d tensor");
  const int64_t batch = x.size(0);
  FASTGEN_CHECK(in.model_out.device() == x.device(), "model_out must be on the device of x (", x.device(), "), got ",
                in.model_out.device());
  FASTGEN_CHECK(in.model_out.sizes() == x.sizes(), "model_out must have the shape of x ", x.sizes(), ", got ",
                in.model_out.sizes());
  FASTGEN_CHECK_TYPE(in.model_out.scalar_type() == x.scalar_type(), "model_out must have the dtype of x (", x.scalar_type(),
                "), got ", in.model_out.scalar_type());
  FASTGEN_CHECK(in.coef.device() == x.device() && in.coef.scalar_type() == torch::kFloat32 && in.coef.is_contiguous() &&
                    in.coef.dim() == 2 && in.coef.size(1) == kCoefWidth && (in.coef.size(0) >= 1 || batch == 0),
                "coef must be contiguous float32 of shape (rows, ", kCoefWidth, ") on the device of x, got ",
                in.coef.scalar_type(), " ", in.coef.sizes(), " on ", in.coef.device());
  if (in.index.has_value()) {
    const Tensor& idx = *in.index;
    FASTGEN_CHECK(idx.device() == x.device() && idx.scalar_type() == torch::kInt64 && idx.is_contiguous() &&
                      (idx.numel() == 1 || idx.numel() == batch),
                  "index must be contiguous int64 with 1 or ", batch, " elements on the device of x");
    if (idx.device().is_cpu()) {  // rows are read through it: every value must name a row (CUDA kernels clamp)
      const int64_t* v = idx.data_ptr<int64_t>();
      const int64_t rows = in.coef.size(0);
      for (int64_t i = 0; i < idx.numel(); ++i) {
        FASTGEN_CHECK_INDEX(v[i] >= 0 && v[i] < rows, "index[", i, "] = ", v[i], " is out of range for coef's ", rows,
                      " rows");
      }
    }
  } else {
    FASTGEN_CHECK(in.coef.size(0) == 1 || in.coef.size(0) == batch, "coef must have 1 or ", batch,
                  " rows without an index, got ", in.coef.size(0));
  }
  FASTGEN_CHECK(in.prediction >= 0 && in.prediction <= 4, "prediction must be 0 (eps), 1 (x0), 2 (v), 3 (score) or 4 (velocity)");
  FASTGEN_CHECK(in.aux_store >= 0 && in.aux_store <= 3, "aux_store must be 0, 1, 2 or 3");
  FASTGEN_CHECK(in.aux_store == 0 || in.aux.has_value(), "aux_store needs an aux tensor");
  for (const OptTensor* t : {&in.aux, &in.noise}) {
    if (!t->has_value()) continue;
    const char* name = t == &in.aux ? "aux" : "noise";
    FASTGEN_CHECK((*t)->device() == x.device() && (*t)->sizes() == x.sizes(), name,
                  " must have the shape of x on its device");
    FASTGEN_CHECK_TYPE((*t)->scalar_type() == torch::kFloat32, name, " must have dtype float32, got ",
                       (*t)->scalar_type());
    FASTGEN_CHECK((*t)->is_contiguous(), name, " must be contiguous");
  }
  if (in.sample_seeds.has_value()) {
    const Tensor& s = *in.sample_seeds;
    FASTGEN_CHECK(s.device() == x.device() && s.scalar_type() == torch::kInt64 && s.is_contiguous() &&
                      s.dim() == 1 && s.size(0) == batch,
                  "sample_seeds must be contiguous int64 of shape (", batch, ",) on the device of x");
  }
  FASTGEN_CHECK(in.uncond_out.has_value() == in.guidance.has_value(),
                "uncond_out and guidance go together (classifier-free guidance needs both)");
  if (in.uncond_out.has_value()) {
    const Tensor& u = *in.uncond_out;
    const Tensor& g = *in.guidance;
    FASTGEN_CHECK(u.device() == x.device() && u.sizes() == x.sizes() && u.is_contiguous(),
                  "uncond_out must be contiguous with the shape of x on its device");
    FASTGEN_CHECK_TYPE(u.scalar_type() == in.model_out.scalar_type(), "uncond_out must have model_out's dtype (",
                       in.model_out.scalar_type(), "), got ", u.scalar_type());
    FASTGEN_CHECK(g.device() == x.device() && g.scalar_type() == torch::kFloat32 && g.is_contiguous() && g.dim() == 1 &&
                      (g.size(0) == 1 || g.size(0) == batch),
                  "guidance must be contiguous float32 of shape (1,) or (", batch, ",) on the device of x");
  }
  FASTGEN_CHECK(std::isfinite(in.guidance_rescale) && in.guidance_rescale >= 0.0 && in.guidance_rescale <= 1.0 &&
                    (in.guidance_rescale == 0.0 || in.uncond_out.has_value()),
                "guidance_rescale must be in [0, 1] and needs uncond_out and guidance, got ", in.guidance_rescale);
  FASTGEN_CHECK(in.known.has_value() == in.known_mask.has_value(),
                "known and known_mask go together (inpainting needs both)");
  if (in.known.has_value()) {
    const Tensor& k = *in.known;
    const Tensor& m = *in.known_mask;
    FASTGEN_CHECK(k.device() == x.device() && k.sizes() == x.sizes() && k.is_contiguous(),
                  "known must be contiguous with the shape of x on its device");
    FASTGEN_CHECK_TYPE(k.scalar_type() == torch::kFloat32, "known must have dtype float32, got ", k.scalar_type());
    FASTGEN_CHECK_TYPE(m.scalar_type() == torch::kBool, "known_mask must have dtype bool, got ", m.scalar_type());
    FASTGEN_CHECK(m.device() == x.device() && m.is_contiguous() &&
                      (m.sizes() == x.sizes() || m.sizes() == x.sizes().slice(1)),
                  "known_mask must be contiguous with the shape of x or of one sample on the device of x, got ",
                  m.sizes());
    FASTGEN_CHECK(std::isfinite(in.known_keep) && std::isfinite(in.known_std) && in.known_std >= 0.0,
                  "known_keep must be finite and known_std finite and >= 0");
  }
  FASTGEN_CHECK(in.seed >= 0 && in.offset >= 0 && in.sample_offset >= 0, "seed and offsets must be non-negative");
  if (in.clip.has_value()) FASTGEN_CHECK(*in.clip > 0.0, "clip must be > 0, got ", *in.clip);
  rng_state_ptr(in.rng_state, x);
}

struct View {
  const float* coef;
  int64_t coef_rows;
  const int64_t* index;
  int64_t index_size;
  int64_t sample_size;
  const float* row(int64_t sample) const {
    int64_t r = coef_rows == 1 ? 0 : sample;
    if (index != nullptr) r = index[index_size == 1 ? 0 : sample];
    return coef + r * kCoefWidth;
  }
};

using diffusion::Conversion;
using diffusion::convert;

// c * v, or exactly 0 where c == 0 (an infinite x0 with c_x0 == 0 adds nothing): a bit mask made
// once per row, since GCC does not vectorize a select on a loop-invariant condition.
inline uint32_t term_mask(float c) { return c != 0.0f ? 0xFFFFFFFFu : 0u; }
inline float term(float c, float v, uint32_t mask) { return bits_to_float(float_to_bits(c * v) & mask); }

// clip = +inf clips nothing (NaN stays NaN); ClipEps recomputes eps from the clipped x0; kept_out receives x0, or eps
// with StoreEps.
// Inlined always, so the AVX2 clone of step_block vectorizes this loop with 32-byte vectors.
template <int P, bool ClipEps, bool StoreEps>
__attribute__((always_inline)) inline void step_floats(const float* x, const float* out, const float* noise,
                                                       const float* aux, const float* row, float clip, int64_t n,
                                                       float* next, float* kept_out) {
  // Scalars, not loads through `row`: the loop's stores could alias it, which stops vectorization.
  const diffusion::Scales s = diffusion::scales_of(row);
  const float k = row[kK], c_x = row[kCX], c_x0 = row[kCX0], c_eps = row[kCEps], c_aux = row[kCAux],
              c_noise = row[kCNoise];
  const uint32_t m_x = term_mask(c_x), m_x0 = term_mask(c_x0), m_eps = term_mask(c_eps), m_aux = term_mask(c_aux),
                 m_noise = term_mask(c_noise);
  for (int64_t j = 0; j < n; ++j) {
    const float xm = k * x[j];
    const Conversion r = convert<P>(out[j], xm, s);
    const float x0 = std::min(std::max(r.x0, -clip), clip);
    const float eps = ClipEps ? (xm - s.alpha * x0) * s.inv_sigma : r.eps;
    next[j] = term(c_x, x[j], m_x) + term(c_x0, x0, m_x0) + term(c_eps, eps, m_eps) + term(c_aux, aux[j], m_aux) +
              term(c_noise, noise[j], m_noise);
    kept_out[j] = StoreEps ? eps : x0;
  }
}

template <bool ClipEps, bool StoreEps>
__attribute__((always_inline)) inline void step_prediction(int prediction, const float* x, const float* out,
                                                           const float* noise, const float* aux, const float* c,
                                                           float clip, int64_t n, float* next, float* kept) {
  switch (prediction) {
    case kEps:
      return step_floats<kEps, ClipEps, StoreEps>(x, out, noise, aux, c, clip, n, next, kept);
    case kX0:
      return step_floats<kX0, ClipEps, StoreEps>(x, out, noise, aux, c, clip, n, next, kept);
    case kV:
      return step_floats<kV, ClipEps, StoreEps>(x, out, noise, aux, c, clip, n, next, kept);
    case kVelocity:
      return step_floats<kVelocity, ClipEps, StoreEps>(x, out, noise, aux, c, clip, n, next, kept);
    default:
      return step_floats<kScore, ClipEps, StoreEps>(x, out, noise, aux, c, clip, n, next, kept);
  }
}

// next = c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi on float buffers of one row (AVX2 clone when present);
// x0 (eps with store_eps) into kept.
__attribute__((target_clones("avx2", "default"))) void step_block(int prediction, const float* x, const float* out,
                                                                  const float* noise, const float* aux, const float* c,
                                                                  float clip, bool clip_eps, bool store_eps, int64_t n,
                                                                  float* next, float* kept) {
  if (store_eps) {
    if (clip_eps) return step_prediction<true, true>(prediction, x, out, noise, aux, c, clip, n, next, kept);
    return step_prediction<false, true>(prediction, x, out, noise, aux, c, clip, n, next, kept);
  }
  if (clip_eps) return step_prediction<true, false>(prediction, x, out, noise, aux, c, clip, n, next, kept);
  step_prediction<false, false>(prediction, x, out, noise, aux, c, clip, n, next, kept);
}

// Noise for flat elements [first, first + n) into buf: any range with the call's stream or explicit
// noise, a range inside sample `sample` with per-sample seeds.
struct NoiseSource {
  const float* explicit_noise;
  const int64_t* sample_seeds;
  uint64_t sample_offset;
  uint64_t seed;
  uint64_t offset;
  int64_t sample_size;
  void fill(int64_t sample, int64_t first, int64_t n, float* buf) const {
    if (explicit_noise != nullptr) {
      std::copy(explicit_noise + first, explicit_noise + first + n, buf);
    } else if (sample_seeds != nullptr) {
      cpu::fill_normals(static_cast<uint64_t>(sample_seeds[sample]),
                        sample_offset + static_cast<uint64_t>(first - sample * sample_size), n, buf);
    } else {
      cpu::fill_normals(seed, offset + static_cast<uint64_t>(first), n, buf);
    }
  }
};

NoiseSource noise_source(const StepInputs& in) {
  uint64_t s, o;
  resolve_rng(RngArgs{static_cast<uint64_t>(in.seed), static_cast<uint64_t>(in.offset),
                      rng_state_ptr(in.rng_state, in.x)},
              &s, &o);
  return NoiseSource{in.noise.has_value() ? in.noise->data_ptr<float>() : nullptr,
                     in.sample_seeds.has_value() ? in.sample_seeds->data_ptr<int64_t>() : nullptr,
                     static_cast<uint64_t>(in.sample_offset), s, o, in.x.numel() / in.x.size(0)};
}

View view_of(const StepInputs& in) {
  return View{in.coef.data_ptr<float>(), in.coef.size(0),
              in.index.has_value() ? in.index->data_ptr<int64_t>() : nullptr,
              in.index.has_value() ? in.index->numel() : 0, in.x.numel() / in.x.size(0)};
}

// Calls f(T{}, std::integral_constant<int, P>{}) for x's dtype and the prediction.
template <typename F>
void dispatch(at::ScalarType dtype, int64_t prediction, F&& f) {
  dispatch_float(dtype, [&](auto tag) {
    switch (prediction) {
      case kEps:
        return f(tag, std::integral_constant<int, kEps>{});
      case kX0:
        return f(tag, std::integral_constant<int, kX0>{});
      case kV:
        return f(tag, std::integral_constant<int, kV>{});
      case kVelocity:
        return f(tag, std::integral_constant<int, kVelocity>{});
      default:
        return f(tag, std::integral_constant<int, kScore>{});
    }
  });
}

// next <- keep known + scale noise where mask, else next: an exact select by bit masks, which the AVX2 clone
// vectorizes (GCC leaves a conditional on a bool load scalar).
__attribute__((target_clones("avx2", "default"))) void replace_known(float* __restrict next,
                                                                     const float* __restrict known,
                                                                     const float* __restrict noise,
                                                                     const bool* __restrict mask, float keep,
                                                                     float scale, int64_t n) {
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask);
  for (int64_t j = 0; j < n; ++j) {
    const uint32_t on = 0u - static_cast<uint32_t>(m[j]);
    const uint32_t data = float_to_bits(keep * known[j] + scale * noise[j]);
    next[j] = bits_to_float((data & on) | (float_to_bits(next[j]) & ~on));
  }
}

// Guidance rescale: per sample, phi std(c) / std(g) + 1 - phi with g = u + w (c - u) (1 where g is constant);
// sums in double, shifted by the sample's first element.
template <typename T>
std::vector<float> rescale_factors(const T* c, const T* u, const float* guide, bool guide_shared, double phi,
                                   int64_t batch, int64_t size) {
  std::vector<float> scales(batch);
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const double w = guide[guide_shared ? 0 : b];
      const T* cb = c + b * size;
      const T* ub = u + b * size;
      auto guided = [&](int64_t j) {
        const double cv = static_cast<float>(cb[j]), uv = static_cast<float>(ub[j]);
        return uv + w * (cv - uv);
      };
      const double c0 = static_cast<float>(cb[0]), g0 = guided(0);
      double sum_c = 0.0, sq_c = 0.0, sum_g = 0.0, sq_g = 0.0;
      for (int64_t j = 0; j < size; ++j) {
        const double dc = static_cast<float>(cb[j]) - c0, dg = guided(j) - g0;
        sum_c += dc;
        sq_c += dc * dc;
        sum_g += dg;
        sq_g += dg * dg;
      }
      const double ss_c = std::max(sq_c - sum_c * sum_c / size, 0.0), ss_g = std::max(sq_g - sum_g * sum_g / size, 0.0);
      const double ratio = ss_g > 0.0 ? std::sqrt(ss_c / ss_g) : 1.0;
      scales[b] = static_cast<float>(phi * ratio + 1.0 - phi);
    }
  });
  return scales;
}

void diffusion_step_cpu(const StepInputs& in) {
  const Tensor &x = in.x, &model_out = in.model_out;
  const OptTensor &aux = in.aux, &uncond_out = in.uncond_out, &guidance = in.guidance, &known = in.known,
                  &known_mask = in.known_mask;
  const c10::optional<double> clip = in.clip;
  const bool clip_eps = in.clip_eps;
  const int64_t prediction = in.prediction, aux_store = in.aux_store;
  const double guidance_rescale = in.guidance_rescale, known_keep = in.known_keep, known_std = in.known_std;
  if (x.numel() == 0) return;
  const float* guide = guidance.has_value() ? guidance->data_ptr<float>() : nullptr;
  const bool guide_shared = guidance.has_value() && guidance->numel() == 1;
  const float* known_p = known.has_value() ? known->data_ptr<float>() : nullptr;
  const bool* mask_p = known.has_value() ? known_mask->data_ptr<bool>() : nullptr;
  const bool mask_shared = known.has_value() && known_mask->numel() != x.numel();
  const float keep = static_cast<float>(known_keep), known_scale = static_cast<float>(known_std);
  const View v = view_of(in);
  const NoiseSource src = noise_source(in);
  const bool shared_row = v.index == nullptr ? v.coef_rows == 1 : v.index_size == 1;
  const float clip_value = clip.has_value() ? static_cast<float>(*clip) : std::numeric_limits<float>::infinity();
  const bool clip_eps_on = clip.has_value() && clip_eps;
  float* aux_ptr = aux.has_value() ? aux->data_ptr<float>() : nullptr;
  const int64_t size = v.sample_size;
  dispatch_float(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    T* xp = x.data_ptr<T>();
    const T* op = model_out.data_ptr<T>();
    const T* up = uncond_out.has_value() ? uncond_out->data_ptr<T>() : nullptr;
    const std::vector<float> scales = guidance_rescale > 0.0 ? rescale_factors(op, up, guide, guide_shared,
                                                                               guidance_rescale, x.size(0), size)
                                                             : std::vector<float>();
    at::parallel_for(0, x.numel(), 1 << 13, [&](int64_t begin, int64_t end) {
      float xs[cpu::kBlock], outs[cpu::kBlock], noise_buf[cpu::kBlock], aux_buf[cpu::kBlock], next[cpu::kBlock],
          x0[cpu::kBlock];
      for (int64_t i = begin; i < end; i += cpu::kBlock) {
        const int64_t n = std::min(cpu::kBlock, end - i);
        const int64_t first_sample = i / size, last_sample = (i + n - 1) / size;
        bool noisy = false;
        for (int64_t b = first_sample; b <= last_sample && !noisy; ++b) noisy = v.row(b)[kCNoise] != 0.0f;
        noisy = noisy || known_p != nullptr;  // the known region is re-noised from the element's noise
        if (!noisy) {
          std::fill(noise_buf, noise_buf + n, 0.0f);
        } else if (src.sample_seeds == nullptr) {
          src.fill(first_sample, i, n, noise_buf);  // the stream is contiguous in the element index
        } else {
          for (int64_t j = 0; j < n;) {
            const int64_t b = (i + j) / size, stop = std::min(n, (b + 1) * size - i);
            src.fill(b, i + j, stop - j, noise_buf + j);
            j = stop;
          }
        }
        // float32 state is read and written in place (no staging); other dtypes go through float buffers.
        constexpr bool direct = std::is_same<T, float>::value;
        const float* x_in = xs;
        const float* out_in = outs;
        if constexpr (direct) {
          x_in = reinterpret_cast<const float*>(xp + i);
          out_in = reinterpret_cast<const float*>(op + i);
        } else {
          for (int64_t j = 0; j < n; ++j) {
            xs[j] = static_cast<float>(xp[i + j]);
            outs[j] = static_cast<float>(op[i + j]);
          }
        }
        if (up != nullptr) {  // classifier-free guidance: the output read is u + w (c - u), one w per run of a sample
          for (int64_t j = 0; j < n;) {
            const int64_t b = (i + j) / size;
            const int64_t stop = guide_shared && scales.empty() ? n : std::min(n, (b + 1) * size - i);
            const float w = guide[guide_shared ? 0 : b], scale = scales.empty() ? 1.0f : scales[b];
            for (int64_t k = j; k < stop; ++k) {
              const float c = static_cast<float>(op[i + k]), u = static_cast<float>(up[i + k]);
              outs[k] = (u + w * (c - u)) * scale;
            }
            j = stop;
          }
          out_in = outs;
        }
        const float* aux_in = aux_buf;
        if (aux_ptr != nullptr) {
          aux_in = aux_ptr + i;
        } else {
          std::fill(aux_buf, aux_buf + n, 0.0f);
        }
        float* next_out = next;
        if constexpr (direct) {
          if (aux_store != kAuxIncrement) next_out = reinterpret_cast<float*>(xp + i);
        }
        float* kept_out = aux_store == kAuxX0 || aux_store == kAuxEps ? aux_ptr + i : x0;
        for (int64_t j = 0; j < n;) {  // one call per row: the whole block when the row is shared
          const int64_t b = (i + j) / size;
          const int64_t stop = shared_row ? n : std::min(n, (b + 1) * size - i);
          step_block(static_cast<int>(prediction), x_in + j, out_in + j, noise_buf + j, aux_in + j, v.row(b),
                     clip_value, clip_eps_on, aux_store == kAuxEps, stop - j, next_out + j, kept_out + j);
          j = stop;
        }
        if (aux_store == kAuxIncrement) {
          for (int64_t j = 0; j < n; ++j) aux_ptr[i + j] = next[j] - x_in[j];
        }
        if (known_p != nullptr) {  // inpainting: the known region re-noised to the level the step lands on
          for (int64_t j = 0; j < n;) {  // one call per run of a sample when the mask is shared
            const int64_t b = (i + j) / size;
            const int64_t stop = mask_shared ? std::min(n, (b + 1) * size - i) : n;
            replace_known(next_out + j, known_p + i + j, noise_buf + j,
                          mask_p + (mask_shared ? i + j - b * size : i + j), keep, known_scale, stop - j);
            j = stop;
          }
        }
        if (!direct || aux_store == kAuxIncrement) {
          for (int64_t j = 0; j < n; ++j) xp[i + j] = static_cast<T>(next[j]);
        }
      }
    });
  });
}

const OptTensor kNone;

// The corrector's inputs (no clip, aux or explicit noise), checked.
StepInputs corrector_inputs(const Tensor& x, const Tensor& model_out, const Tensor& coef, const OptTensor& index,
                            int64_t prediction, double snr, int64_t seed, int64_t offset, const OptTensor& rng_state,
                            const OptTensor& sample_seeds, int64_t sample_offset) {
  const StepInputs in{x,         model_out,    coef,          index, prediction, c10::nullopt, false,
                      kNone,     0,            kNone,         seed,  offset,     rng_state,    sample_seeds,
                      sample_offset, kNone, kNone,         0.0,   kNone,      kNone,        1.0,
                      0.0};
  check_step(in);
  FASTGEN_CHECK(std::isfinite(snr) && snr > 0.0, "snr must be finite and > 0, got ", snr);
  return in;
}

void langevin_correct_cpu(const StepInputs& in, double snr) {
  const Tensor &x = in.x, &model_out = in.model_out;
  const int64_t prediction = in.prediction;
  if (x.numel() == 0) return;
  const View v = view_of(in);
  const NoiseSource src = noise_source(in);
  const int64_t batch = x.size(0);
  const int64_t size = v.sample_size;
  dispatch(x.scalar_type(), prediction, [&](auto tag, auto p) {
    using T = decltype(tag);
    T* xp = x.data_ptr<T>();
    const T* op = model_out.data_ptr<T>();
    // Samples in groups of about kGroup elements: small samples (2-D points) draw their noise in one
    // call per group rather than one per sample.
    constexpr int64_t kGroup = 4 * cpu::kBlock;
    const int64_t per_group = std::max<int64_t>(1, kGroup / size);
    at::parallel_for(0, batch, per_group, [&](int64_t begin, int64_t end) {
      std::vector<float> score, noise;
      for (int64_t g0 = begin; g0 < end; g0 += per_group) {
        const int64_t g1 = std::min(end, g0 + per_group);
        noise.resize((g1 - g0) * size);
        score.resize((g1 - g0) * size);
        if (src.sample_seeds == nullptr) {
          src.fill(g0, g0 * size, (g1 - g0) * size, noise.data());  // the stream is contiguous in the element index
        } else {
          for (int64_t b = g0; b < g1; ++b) src.fill(b, b * size, size, noise.data() + (b - g0) * size);
        }
        for (int64_t b = g0; b < g1; ++b) {
          const float* c = v.row(b);
          const diffusion::Scales row = diffusion::scales_of(c);
          const float sigma = row.sigma, k = c[kK];
          const int64_t first = b * size;
          float* sc = score.data() + (b - g0) * size;
          const float* nz = noise.data() + (b - g0) * size;
          double score_sq = 0.0, noise_sq = 0.0;
          for (int64_t j = 0; j < size; ++j) {
            const Conversion r = convert<decltype(p)::value>(static_cast<float>(op[first + j]),
                                                             k * static_cast<float>(xp[first + j]), row);
            sc[j] = -r.eps / sigma;
            score_sq += static_cast<double>(sc[j]) * sc[j];
            noise_sq += static_cast<double>(nz[j]) * nz[j];
          }
          const double ratio = snr * std::sqrt(noise_sq) / std::sqrt(score_sq);
          const float step =
              static_cast<float>(std::min(2.0 * c[kCX] * ratio * ratio, static_cast<double>(sigma) * sigma));
          const float noise_scale = std::sqrt(2.0f * step);
          for (int64_t j = 0; j < size; ++j) {
            xp[first + j] = static_cast<T>(static_cast<float>(xp[first + j]) + step * sc[j] + noise_scale * nz[j]);
          }
        }
      }
    });
  });
}

#ifdef FASTGEN_WITH_CUDA
cuda::DiffusionStepArgs cuda_args(const StepInputs& in) {
  cuda::DiffusionStepArgs a;
  a.x = in.x.data_ptr();
  a.model_out = in.model_out.data_ptr();
  a.dtype = cuda_dtype(in.x);
  a.numel = in.x.numel();
  a.sample_size = in.x.size(0) == 0 ? 1 : std::max<int64_t>(1, in.x.numel() / in.x.size(0));
  a.coef = in.coef.data_ptr<float>();
  a.coef_rows = in.coef.size(0);
  a.index = in.index.has_value() ? in.index->data_ptr<int64_t>() : nullptr;
  a.index_size = in.index.has_value() ? in.index->numel() : 0;
  a.prediction = static_cast<int>(in.prediction);
  a.clip = in.clip.has_value() ? static_cast<float>(*in.clip) : 0.0f;
  a.clip_eps = in.clip_eps;
  a.aux = in.aux.has_value() ? in.aux->data_ptr<float>() : nullptr;
  a.aux_store = static_cast<int>(in.aux_store);
  a.noise = in.noise.has_value() ? in.noise->data_ptr<float>() : nullptr;
  a.rng = RngArgs{static_cast<uint64_t>(in.seed), static_cast<uint64_t>(in.offset), rng_state_ptr(in.rng_state, in.x)};
  a.sample_seeds = in.sample_seeds.has_value() ? in.sample_seeds->data_ptr<int64_t>() : nullptr;
  a.sample_offset = static_cast<uint64_t>(in.sample_offset);
  a.uncond_out = in.uncond_out.has_value() ? in.uncond_out->data_ptr() : nullptr;
  a.guidance = in.guidance.has_value() ? in.guidance->data_ptr<float>() : nullptr;
  a.guidance_size = in.guidance.has_value() ? in.guidance->numel() : 0;
  a.guidance_rescale = static_cast<float>(in.guidance_rescale);
  a.known = in.known.has_value() ? in.known->data_ptr<float>() : nullptr;
  a.known_mask = in.known.has_value() ? in.known_mask->data_ptr<bool>() : nullptr;
  a.known_mask_shared = in.known.has_value() && in.known_mask->numel() != in.x.numel();
  a.known_keep = static_cast<float>(in.known_keep);
  a.known_std = static_cast<float>(in.known_std);
  return a;
}

void diffusion_step_cuda(const StepInputs& in) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  C10_CUDA_CHECK(cuda::diffusion_step(cuda_args(in), c10::cuda::getCurrentCUDAStream()));
}

void langevin_correct_cuda(const StepInputs& in, double snr) {
  const c10::cuda::CUDAGuard guard(in.x.device());
  C10_CUDA_CHECK(cuda::langevin_correct(cuda_args(in), static_cast<float>(snr), c10::cuda::getCurrentCUDAStream()));
}
#endif

// ---------------------------------------------------------------- The ops' entries (registered on every device key)

void diffusion_step(Tensor x, const Tensor& model_out, const Tensor& coef, const OptTensor& index, int64_t prediction,
                    c10::optional<double> clip, bool clip_eps, const OptTensor& aux, int64_t aux_store,
                    const OptTensor& noise, int64_t seed, int64_t offset, const OptTensor& rng_state,
                    const OptTensor& sample_seeds, int64_t sample_offset, const OptTensor& uncond_out,
                    const OptTensor& guidance, double guidance_rescale, const OptTensor& known,
                    const OptTensor& known_mask, double known_keep, double known_std) {
  const StepInputs in{x,      model_out,    coef,          index,    prediction,       clip,  clip_eps,
                      aux,    aux_store,    noise,         seed,     offset,           rng_state,
                      sample_seeds, sample_offset, uncond_out, guidance, guidance_rescale, known, known_mask,
                      known_keep, known_std};
  check_step(in);
  FASTGEN_ON_DEVICE(x, diffusion_step_cpu(in), diffusion_step_cuda(in));
}

void langevin_correct(Tensor x, const Tensor& model_out, const Tensor& coef, const OptTensor& index,
                      int64_t prediction, double snr, int64_t seed, int64_t offset, const OptTensor& rng_state,
                      const OptTensor& sample_seeds, int64_t sample_offset) {
  const StepInputs in = corrector_inputs(x, model_out, coef, index, prediction, snr, seed, offset, rng_state,
                                         sample_seeds, sample_offset);
  FASTGEN_ON_DEVICE(x, langevin_correct_cpu(in, snr), langevin_correct_cuda(in, snr));
}

}  // namespace

#define DIFFUSION_OPS(X) X(diffusion_step_, diffusion_step) X(langevin_correct_, langevin_correct)
FASTGEN_REGISTER_LOOP(DIFFUSION_OPS)

}  // namespace fastgen
