// CUDA kernels of the diffusion samplers: the generic fused step (every affine
// update rule, see launchers.h) and the score-SDE Langevin corrector.
#include "common.cuh"
#include "diffusion.h"

namespace fastgen {
namespace cuda {
namespace {

using diffusion::Conversion;

// The coefficients of a sample whose index is out of range: its state becomes NaN, an error flag that costs no
// host sync (a loop's check_finite reads it once, after the loop); nothing is read outside coef.
__device__ const float kNanRow[kCoefWidth] = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};

__device__ __forceinline__ const float* coef_row(const DiffusionStepArgs& a, int64_t sample) {
  int64_t row = a.coef_rows == 1 ? 0 : sample;
  if (a.index != nullptr) row = a.index[a.index_size == 1 ? 0 : sample];
  if (row < 0 || row >= a.coef_rows) return kNanRow;
  return a.coef + row * kCoefWidth;
}

// (x0, eps) from the model output, read at x_m = k x where x_m = alpha x0 + sigma eps.
__device__ __forceinline__ Conversion convert(float out, float x, const float* c, int prediction, float clip,
                                              bool clip_eps) {
  const diffusion::Scales s = diffusion::scales_of(c);
  const float xm = c[kK] * x;
  Conversion r;
  switch (prediction) {
    case kEps:
      r = diffusion::convert<kEps>(out, xm, s);
      break;
    case kX0:
      r = diffusion::convert<kX0>(out, xm, s);
      break;
    case kV:
      r = diffusion::convert<kV>(out, xm, s);
      break;
    case kVelocity:
      r = diffusion::convert<kVelocity>(out, xm, s);
      break;
    default:
      r = diffusion::convert<kScore>(out, xm, s);
  }
  if (clip > 0.0f) {
    r.x0 = fminf(fmaxf(r.x0, -clip), clip);
    if (clip_eps) r.eps = (xm - s.alpha * r.x0) * s.inv_sigma;
  }
  return r;
}

// c * v, and 0 when c is 0 (v may then be inf: eps at sigma = 0, x0 at alpha = 0, or an unset x).
__device__ __forceinline__ float term(float c, float v) { return c != 0.0f ? c * v : 0.0f; }

__device__ __forceinline__ float noise_at(const DiffusionStepArgs& a, int64_t i, int64_t sample, uint64_t seed,
                                          uint64_t offset) {
  if (a.noise != nullptr) return a.noise[i];
  if (a.sample_seeds != nullptr) {
    const uint64_t within = static_cast<uint64_t>(i - sample * a.sample_size);
    return normal_at(static_cast<uint64_t>(a.sample_seeds[sample]), a.sample_offset + within);
  }
  return normal_at(seed, offset + static_cast<uint64_t>(i));
}

template <typename T>
__device__ __forceinline__ float guided(const DiffusionStepArgs& a, int64_t i, int64_t sample) {
  const float c = load(static_cast<const T*>(a.model_out), i), u = load(static_cast<const T*>(a.uncond_out), i);
  return u + a.guidance[a.guidance_size == 1 ? 0 : sample] * (c - u);
}

// The step on element i of `sample`; a guided output is multiplied by `scale` (guidance rescale).
template <typename T>
__device__ __forceinline__ void step_element(const DiffusionStepArgs& a, int64_t i, int64_t sample, uint64_t seed,
                                             uint64_t offset, float scale) {
  T* x = static_cast<T*>(a.x);
  const float* c = coef_row(a, sample);
  const float xv = load(x, i);
  // classifier-free guidance: (u + w (c - u)) scale
  const float o = a.uncond_out != nullptr ? guided<T>(a, i, sample) * scale : load(static_cast<const T*>(a.model_out), i);
  const Conversion r = convert(o, xv, c, a.prediction, a.clip, a.clip_eps);
  float next = term(c[kCX], xv) + term(c[kCX0], r.x0) + term(c[kCEps], r.eps);
  if (a.aux != nullptr) next += term(c[kCAux], a.aux[i]);
  const bool known = a.known != nullptr && a.known_mask[a.known_mask_shared ? i - sample * a.sample_size : i];
  const float xi = c[kCNoise] != 0.0f || known ? noise_at(a, i, sample, seed, offset) : 0.0f;
  if (c[kCNoise] != 0.0f) next += c[kCNoise] * xi;
  if (a.aux_store == kAuxX0) a.aux[i] = r.x0;
  if (a.aux_store == kAuxIncrement) a.aux[i] = next - xv;
  if (a.aux_store == kAuxEps) a.aux[i] = r.eps;
  // inpainting: the known region re-noised to the level the step lands on
  if (known) next = a.known_keep * a.known[i] + a.known_std * xi;
  store(x, i, next);
}

template <typename T>
__global__ void diffusion_step_kernel(DiffusionStepArgs a) {
  uint64_t seed, offset;
  resolve_rng(a.rng, &seed, &offset);
  const int64_t tile = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * tile + threadIdx.x;
#pragma unroll
  for (int it = 0; it < kItemsPerThread; ++it) {
    const int64_t i = base + static_cast<int64_t>(it) * kThreads;
    if (i >= a.numel) break;
    step_element<T>(a, i, i / a.sample_size, seed, offset, 1.0f);
  }
}

// Guidance rescale: one block per sample; the sums of c, c^2, g, g^2 (shifted by the sample's first element),
// then the step with g scaled by phi std(c) / std(g) + 1 - phi (1 where g is constant).
template <typename T>
__global__ void rescaled_step_kernel(DiffusionStepArgs a) {
  __shared__ float partial[kThreads / 32];
  __shared__ float scale;
  uint64_t seed, offset;
  resolve_rng(a.rng, &seed, &offset);
  const int64_t sample = blockIdx.x;
  const int64_t first = sample * a.sample_size;
  const T* out = static_cast<const T*>(a.model_out);
  const float c0 = load(out, first), g0 = guided<T>(a, first, sample);
  float sum_c = 0.0f, sq_c = 0.0f, sum_g = 0.0f, sq_g = 0.0f;
  for (int64_t d = threadIdx.x; d < a.sample_size; d += kThreads) {
    const float dc = load(out, first + d) - c0, dg = guided<T>(a, first + d, sample) - g0;
    sum_c += dc;
    sq_c += dc * dc;
    sum_g += dg;
    sq_g += dg * dg;
  }
  sum_c = block_sum(sum_c, partial);
  sq_c = block_sum(sq_c, partial);
  sum_g = block_sum(sum_g, partial);
  sq_g = block_sum(sq_g, partial);
  if (threadIdx.x == 0) {
    const float n = static_cast<float>(a.sample_size);
    const float ss_c = fmaxf(sq_c - sum_c * sum_c / n, 0.0f), ss_g = fmaxf(sq_g - sum_g * sum_g / n, 0.0f);
    const float ratio = ss_g > 0.0f ? sqrtf(ss_c / ss_g) : 1.0f;
    scale = a.guidance_rescale * ratio + 1.0f - a.guidance_rescale;
  }
  __syncthreads();
  for (int64_t d = threadIdx.x; d < a.sample_size; d += kThreads) step_element<T>(a, first + d, sample, seed, offset, scale);
}

// One block per sample: |s_b| and |xi_b|, then the corrector update.
template <typename T>
__global__ void langevin_correct_kernel(DiffusionStepArgs a, float snr) {
  __shared__ float partial[kThreads / 32];
  uint64_t seed, offset;
  resolve_rng(a.rng, &seed, &offset);
  const int64_t sample = blockIdx.x;
  const int64_t first = sample * a.sample_size;
  T* x = static_cast<T*>(a.x);
  const T* out = static_cast<const T*>(a.model_out);
  const float* c = coef_row(a, sample);
  const float sigma = c[kSigma];
  float score_sq = 0.0f, noise_sq = 0.0f;
  for (int64_t d = threadIdx.x; d < a.sample_size; d += kThreads) {
    const int64_t i = first + d;
    const float s = -convert(load(out, i), load(x, i), c, a.prediction, 0.0f, false).eps / sigma;
    const float xi = noise_at(a, i, sample, seed, offset);
    score_sq += s * s;
    noise_sq += xi * xi;
  }
  score_sq = block_sum(score_sq, partial);
  noise_sq = block_sum(noise_sq, partial);
  const float ratio = snr * sqrtf(noise_sq) / sqrtf(score_sq);
  const float step = fminf(2.0f * c[kCX] * ratio * ratio, sigma * sigma);
  const float noise_scale = sqrtf(2.0f * step);
  for (int64_t d = threadIdx.x; d < a.sample_size; d += kThreads) {
    const int64_t i = first + d;
    const float xv = load(x, i);
    const float s = -convert(load(out, i), xv, c, a.prediction, 0.0f, false).eps / sigma;
    store(x, i, xv + step * s + noise_scale * noise_at(a, i, sample, seed, offset));
  }
}

}  // namespace

cudaError_t diffusion_step(const DiffusionStepArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  if (a.guidance_rescale > 0.0f && a.uncond_out != nullptr) {
    const unsigned samples = static_cast<unsigned>(a.numel / a.sample_size);
    switch (a.dtype) {
      case kFloat16:
        rescaled_step_kernel<__half><<<samples, kThreads, 0, stream>>>(a);
        break;
      case kBFloat16:
        rescaled_step_kernel<__nv_bfloat16><<<samples, kThreads, 0, stream>>>(a);
        break;
      default:
        rescaled_step_kernel<float><<<samples, kThreads, 0, stream>>>(a);
    }
    return cudaGetLastError();
  }
  const int64_t tile = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const unsigned blocks = static_cast<unsigned>((a.numel + tile - 1) / tile);
  switch (a.dtype) {
    case kFloat16:
      diffusion_step_kernel<__half><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case kBFloat16:
      diffusion_step_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(a);
      break;
    default:
      diffusion_step_kernel<float><<<blocks, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t langevin_correct(const DiffusionStepArgs& a, float snr, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(a.numel / a.sample_size);
  switch (a.dtype) {
    case kFloat16:
      langevin_correct_kernel<__half><<<blocks, kThreads, 0, stream>>>(a, snr);
      break;
    case kBFloat16:
      langevin_correct_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(a, snr);
      break;
    default:
      langevin_correct_kernel<float><<<blocks, kThreads, 0, stream>>>(a, snr);
  }
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace fastgen
