// CUDA kernels of the diffusion samplers: the generic fused step (every affine
// update rule, see launchers.h) and the score-SDE Langevin corrector.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

struct Conversion {
  float x0;
  float eps;
};

// The coefficients of a sample whose index is out of range: its state becomes NaN, an error flag that costs no
// host sync (a loop's check_finite reads it once, after the loop); nothing is read outside coef.
__device__ const float kNanRow[kCoefWidth] = {NAN, NAN, NAN, NAN, NAN, NAN, NAN, NAN};

__device__ __forceinline__ const float* coef_row(const DiffusionStepArgs& a, int64_t sample) {
  int64_t row = a.coef_rows == 1 ? 0 : sample;
  if (a.index != nullptr) row = a.index[a.index_size == 1 ? 0 : sample];
  if (row < 0 || row >= a.coef_rows) return kNanRow;
  return a.coef + row * kCoefWidth;
}

// (x0, eps) from the model output, read at x_m = k x where x_m = alpha x0 + sigma eps.
__device__ __forceinline__ Conversion convert(float out, float x, const float* c, int prediction, float clip,
                                              bool clip_eps) {
  const float alpha = c[kAlpha], sigma = c[kSigma], xm = c[kK] * x;
  Conversion r;
  switch (prediction) {
    case kEps:
      r.eps = out;
      r.x0 = (xm - sigma * out) / alpha;
      break;
    case kX0:
      r.x0 = out;
      r.eps = (xm - alpha * out) / sigma;
      break;
    case kV:
      r.x0 = alpha * xm - sigma * out;
      r.eps = sigma * xm + alpha * out;
      break;
    default:  // score
      r.eps = -sigma * out;
      r.x0 = (xm + sigma * sigma * out) / alpha;
  }
  if (clip > 0.0f) {
    r.x0 = fminf(fmaxf(r.x0, -clip), clip);
    if (clip_eps) r.eps = (xm - alpha * r.x0) / sigma;
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
__global__ void diffusion_step_kernel(DiffusionStepArgs a) {
  uint64_t seed, offset;
  resolve_rng(a.rng, &seed, &offset);
  T* x = static_cast<T*>(a.x);
  const T* out = static_cast<const T*>(a.model_out);
  const int64_t tile = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * tile + threadIdx.x;
#pragma unroll
  for (int it = 0; it < kItemsPerThread; ++it) {
    const int64_t i = base + static_cast<int64_t>(it) * kThreads;
    if (i >= a.numel) break;
    const int64_t sample = i / a.sample_size;
    const float* c = coef_row(a, sample);
    const float xv = load(x, i);
    float o = load(out, i);
    if (a.uncond_out != nullptr) {  // classifier-free guidance: u + w (c - u)
      const float u = load(static_cast<const T*>(a.uncond_out), i);
      o = u + a.guidance[a.guidance_size == 1 ? 0 : sample] * (o - u);
    }
    const Conversion r = convert(o, xv, c, a.prediction, a.clip, a.clip_eps);
    float next = term(c[kCX], xv) + term(c[kCX0], r.x0) + term(c[kCEps], r.eps);
    if (a.aux != nullptr) next += term(c[kCAux], a.aux[i]);
    if (c[kCNoise] != 0.0f) next += c[kCNoise] * noise_at(a, i, sample, seed, offset);
    if (a.aux_store == kAuxX0) a.aux[i] = r.x0;
    if (a.aux_store == kAuxIncrement) a.aux[i] = next - xv;
    store(x, i, next);
  }
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
