// CUDA kernels of the Langevin family: ULA step (also the MALA proposal),
// MALA accept/reject, and many ULA steps on a Gaussian mixture in registers.
// Arithmetic is float32 whatever the storage dtype; noise from philox.h.
#include "common.cuh"

namespace fastgen {
namespace cuda {
namespace {

// clip_scale[b] = min(1, grad_clip / (||score_b|| + 1e-6)); one block per chain.
template <typename S>
__global__ void clip_scale_kernel(const S* __restrict__ score,  // (B, D)
                                  int64_t chain_size,           // D
                                  float grad_clip,              // max norm
                                  float* __restrict__ clip_scale) {
  __shared__ float partial[kThreads / 32];
  const int64_t chain = blockIdx.x;
  const S* row = score + chain * chain_size;
  float ss = 0.0f;
  for (int64_t d = threadIdx.x; d < chain_size; d += kThreads) {
    const float v = load(row, d);
    ss += v * v;
  }
  ss = block_sum(ss, partial);
  if (threadIdx.x == 0) clip_scale[chain] = fminf(1.0f, grad_clip / (sqrtf(ss) + 1e-6f));
}

template <typename T, typename S>
__global__ void ula_kernel(const T* x,                       // (numel,) state in (may alias y)
                           T* y,                             // (numel,) state out, may alias x
                           const S* __restrict__ score,      // (numel,)
                           int64_t numel,                    // B * D
                           int64_t chain_size,               // D
                           float step_size,                  // scalar h
                           const float* __restrict__ steps,  // (B,) or null
                           const float* __restrict__ clip,   // (B,) or null
                           bool has_clamp, float lo, float hi,
                           RngArgs rng) {
  uint64_t seed, offset;
  resolve_rng(rng, &seed, &offset);
  const bool per_chain = steps != nullptr || clip != nullptr;
  const int64_t tile = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const int64_t base = static_cast<int64_t>(blockIdx.x) * tile + threadIdx.x;
#pragma unroll
  for (int k = 0; k < kItemsPerThread; ++k) {
    const int64_t i = base + static_cast<int64_t>(k) * kThreads;
    if (i >= numel) break;
    float h = step_size;
    float c = 1.0f;
    if (per_chain) {
      const int64_t chain = i / chain_size;
      if (steps != nullptr) h = steps[chain];
      if (clip != nullptr) c = clip[chain];
    }
    const float xi = normal_at(seed, offset + static_cast<uint64_t>(i));
    float v = load(x, i) + h * c * load(score, i) + sqrtf(2.0f * h) * xi;
    if (has_clamp) v = fminf(fmaxf(v, lo), hi);
    store(y, i, v);
  }
}

template <typename T, typename S>
cudaError_t launch_ula(const UlaArgs& a, cudaStream_t stream) {
  const S* score = static_cast<const S*>(a.score);
  const float* clip = nullptr;
  if (a.grad_clip > 0.0f) {
    const int64_t chains = a.numel / a.chain_size;
    clip_scale_kernel<S><<<static_cast<unsigned>(chains), kThreads, 0, stream>>>(score, a.chain_size, a.grad_clip,
                                                                                a.clip_scale);
    clip = a.clip_scale;
  }
  const int64_t tile = static_cast<int64_t>(kThreads) * kItemsPerThread;
  const int64_t blocks = (a.numel + tile - 1) / tile;
  ula_kernel<T, S><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      static_cast<const T*>(a.x), static_cast<T*>(a.y), score, a.numel, a.chain_size, a.step_size, a.step_sizes, clip,
      a.has_clamp, a.clamp_lo, a.clamp_hi, a.rng);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_ula_score(const UlaArgs& a, cudaStream_t stream) {
  return a.score_dtype == kFloat32 ? launch_ula<T, float>(a, stream) : launch_ula<T, T>(a, stream);
}

// One block per chain: log alpha = lp_y - lp_x + (|y - x - h g_x|^2 - |x - y - h g_y|^2) / (4h).
template <typename T>
__global__ void mala_accept_kernel(MalaAcceptArgs a) {
  __shared__ float partial[kThreads / 32];
  __shared__ bool accept_shared;
  const int64_t chain = blockIdx.x;
  const int64_t row = chain * a.chain_size;
  T* x = static_cast<T*>(a.x) + row;
  T* g = static_cast<T*>(a.grad) + row;
  const T* y = static_cast<const T*>(a.y) + row;
  const T* gy = static_cast<const T*>(a.grad_y) + row;
  const float h = a.step_sizes != nullptr ? a.step_sizes[chain] : a.step_size;
  float forward = 0.0f;
  float backward = 0.0f;
  for (int64_t d = threadIdx.x; d < a.chain_size; d += kThreads) {
    const float xd = load(x, d);
    const float yd = load(y, d);
    const float f = yd - xd - h * load(g, d);
    const float b = xd - yd - h * load(gy, d);
    forward += f * f;
    backward += b * b;
  }
  forward = block_sum(forward, partial);
  backward = block_sum(backward, partial);
  if (threadIdx.x == 0) {
    uint64_t seed, offset;
    resolve_rng(a.rng, &seed, &offset);
    const float u = uniform_at(seed, offset + static_cast<uint64_t>(chain));
    const float log_alpha = a.log_prob_y[chain] - a.log_prob[chain] + (forward - backward) / (4.0f * h);
    const float prob = log_alpha >= 0.0f ? 1.0f : (log_alpha < 0.0f ? expf(log_alpha) : 0.0f);  // NaN -> 0
    const bool accept = u < prob;
    a.accept_prob[chain] = prob;
    a.accepted[chain] = accept;
    if (accept) a.log_prob[chain] = a.log_prob_y[chain];
    accept_shared = accept;
  }
  __syncthreads();
  if (!accept_shared) return;
  for (int64_t d = threadIdx.x; d < a.chain_size; d += kThreads) {
    x[d] = y[d];
    g[d] = gy[d];
  }
}

// LANES threads per chain (a power of two dividing 32), each holding the coordinates d = lane + j * LANES
// (j < PER_LANE) in registers: with one thread per chain a 64-D chain needed 128 live floats and 4,096 chains
// filled 32 blocks. Per component the lanes sum their parts of the quadratic form with butterfly shuffles inside
// the group, so every lane holds the same logit and runs the same online softmax. The mixture lives in shared
// memory. Threads past the last chain compute on zeros and store nothing (the shuffles need every lane).
template <typename T, int LANES, int PER_LANE>
__global__ void gmm_langevin_kernel(GmmLangevinArgs a) {
  extern __shared__ float mixture[];  // means (K*D), inv_vars (K*D), log_coef (K)
  const int K = a.components;
  const int D = a.dim;
  float* means = mixture;
  float* inv_vars = mixture + K * D;
  float* log_coef = mixture + 2 * K * D;
  for (int i = threadIdx.x; i < K * D; i += blockDim.x) {
    means[i] = a.means[i];
    inv_vars[i] = a.inv_vars[i];
  }
  for (int i = threadIdx.x; i < K; i += blockDim.x) log_coef[i] = a.log_coef[i];
  __syncthreads();
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t chain = thread / LANES;
  const int lane = static_cast<int>(thread % LANES);
  const bool valid = chain < a.chains;

  T* xp = static_cast<T*>(a.x) + (valid ? chain : 0) * D;
  float x[PER_LANE];
#pragma unroll
  for (int j = 0; j < PER_LANE; ++j) {
    const int d = lane + j * LANES;
    x[j] = valid && d < D ? load(xp, d) : 0.0f;
  }
  const float h = a.step_sizes != nullptr && valid ? a.step_sizes[chain] : a.step_size;
  const float noise_scale = sqrtf(2.0f * h);
  uint64_t seed, offset;
  resolve_rng(a.rng, &seed, &offset);
  const uint64_t numel = static_cast<uint64_t>(a.chains) * D;

  for (int64_t step = 0; step < a.n_steps; ++step) {
    // Online softmax over components: score = sum_k r_k (mu_k - x) / sigma_k^2.
    float running_max = -INFINITY;
    float total = 0.0f;
    float acc[PER_LANE];
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) acc[j] = 0.0f;
    for (int k = 0; k < K; ++k) {
      const float* mu = means + k * D;
      const float* iv = inv_vars + k * D;
      float diff[PER_LANE];
      float q = 0.0f;
#pragma unroll
      for (int j = 0; j < PER_LANE; ++j) {
        const int d = lane + j * LANES;
        diff[j] = d < D ? (mu[d] - x[j]) * iv[d] : 0.0f;  // (mu - x) / sigma^2
        if (d < D) q += diff[j] * (mu[d] - x[j]);
      }
#pragma unroll
      for (int width = LANES / 2; width > 0; width /= 2) q += __shfl_xor_sync(0xffffffffu, q, width, LANES);
      const float logit = log_coef[k] - 0.5f * q;
      const float new_max = fmaxf(running_max, logit);
      const float rescale = expf(running_max - new_max);
      const float w = expf(logit - new_max);
      total = total * rescale + w;
#pragma unroll
      for (int j = 0; j < PER_LANE; ++j) acc[j] = acc[j] * rescale + w * diff[j];
      running_max = new_max;
    }
    const uint64_t first = offset + static_cast<uint64_t>(step) * numel + static_cast<uint64_t>(chain) * D;
    const float inv_total = 1.0f / total;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
      const int d = lane + j * LANES;
      if (d < D) x[j] += h * acc[j] * inv_total + noise_scale * normal_at(seed, first + d);
    }
  }
#pragma unroll
  for (int j = 0; j < PER_LANE; ++j) {
    const int d = lane + j * LANES;
    if (valid && d < D) store(xp, d, x[j]);
  }
}

// Lanes per chain by dimension: up to 4 coordinates per lane (one lane for D <= 4, 16 lanes for D <= 64).
template <typename T>
cudaError_t launch_gmm(const GmmLangevinArgs& a, cudaStream_t stream) {
  const int threads = 128;
  const size_t shared = sizeof(float) * (2 * a.components * a.dim + a.components);
  auto launch = [&](auto kernel, int lanes) {
    const int64_t total = a.chains * lanes;
    const unsigned blocks = static_cast<unsigned>((total + threads - 1) / threads);
    kernel<<<blocks, threads, shared, stream>>>(a);
    return cudaGetLastError();
  };
  if (a.dim <= 2) return launch(gmm_langevin_kernel<T, 1, 2>, 1);
  if (a.dim <= 4) return launch(gmm_langevin_kernel<T, 1, 4>, 1);
  if (a.dim <= 8) return launch(gmm_langevin_kernel<T, 2, 4>, 2);
  if (a.dim <= 16) return launch(gmm_langevin_kernel<T, 4, 4>, 4);
  if (a.dim <= 32) return launch(gmm_langevin_kernel<T, 8, 4>, 8);
  static_assert(kMaxGmmDim <= 16 * 4, "gmm_langevin_kernel: 16 lanes of 4 coordinates cover kMaxGmmDim");
  return launch(gmm_langevin_kernel<T, 16, 4>, 16);
}

}  // namespace

cudaError_t ula_step(const UlaArgs& a, cudaStream_t stream) {
  if (a.numel == 0) return cudaSuccess;
  switch (a.x_dtype) {
    case kFloat16:
      return launch_ula_score<__half>(a, stream);
    case kBFloat16:
      return launch_ula_score<__nv_bfloat16>(a, stream);
    default:
      return launch_ula_score<float>(a, stream);
  }
}

cudaError_t mala_accept(const MalaAcceptArgs& a, cudaStream_t stream) {
  if (a.chains == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>(a.chains);
  switch (a.dtype) {
    case kFloat16:
      mala_accept_kernel<__half><<<blocks, kThreads, 0, stream>>>(a);
      break;
    case kBFloat16:
      mala_accept_kernel<__nv_bfloat16><<<blocks, kThreads, 0, stream>>>(a);
      break;
    default:
      mala_accept_kernel<float><<<blocks, kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

cudaError_t gmm_langevin(const GmmLangevinArgs& a, cudaStream_t stream) {
  if (a.chains == 0 || a.n_steps == 0) return cudaSuccess;
  switch (a.dtype) {
    case kFloat16:
      return launch_gmm<__half>(a, stream);
    case kBFloat16:
      return launch_gmm<__nv_bfloat16>(a, stream);
    default:
      return launch_gmm<float>(a, stream);
  }
}

}  // namespace cuda
}  // namespace fastgen
