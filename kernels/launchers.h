// Host launchers of the CUDA kernels in kernels/*.cu. Plain pointers, sizes
// and a stream: no torch types, so nvcc compiles the kernels on its own.
// Every launcher returns early on empty input and launches on `stream`.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "philox.h"

namespace fastgen {
namespace cuda {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// rng.cu: out[i] = uniform (or normal) at counter offset + i.
cudaError_t philox_fill(float* out,        // (n,) float32
                        int64_t n,         // number of elements
                        bool normal,       // normals instead of uniforms
                        RngArgs rng,       // seed, offset, optional device state
                        cudaStream_t stream);

// langevin.cu: y = x + h_b * c_b * s + sqrt(2 h_b) * xi, optionally clamped.
struct UlaArgs {
  const void* x;           // (B * chain_size,) state, dtype x_dtype
  void* y;                 // output, same dtype; may alias x (in place)
  DType x_dtype;           // kFloat32, kFloat16 or kBFloat16
  const void* score;       // same shape as x; dtype x_dtype or float32
  DType score_dtype;       // dtype of score
  int64_t numel;           // B * chain_size
  int64_t chain_size;      // elements per chain (D)
  float step_size;         // h when step_sizes is null
  const float* step_sizes; // (B,) per-chain h, or null
  float grad_clip;         // max per-chain norm of the score; <= 0: no clipping
  float* clip_scale;       // (B,) scratch for c_b, needed when grad_clip > 0
  bool has_clamp;          // clamp the result to [clamp_lo, clamp_hi]
  float clamp_lo;
  float clamp_hi;
  RngArgs rng;             // noise counters offset .. offset + numel - 1
};
cudaError_t ula_step(const UlaArgs& args, cudaStream_t stream);

// langevin.cu: Metropolis-Hastings correction of one MALA transition per chain.
struct MalaAcceptArgs {
  void* x;                 // (B, D) current state, updated where accepted
  float* log_prob;         // (B,) log p(x), updated where accepted
  void* grad;              // (B, D) grad log p(x), updated where accepted
  const void* y;           // (B, D) proposal
  const float* log_prob_y; // (B,)
  const void* grad_y;      // (B, D)
  DType dtype;             // dtype of x, grad, y, grad_y
  int64_t chains;          // B
  int64_t chain_size;      // D
  float step_size;         // h when step_sizes is null
  const float* step_sizes; // (B,) or null
  bool* accepted;          // (B,) output mask
  float* accept_prob;      // (B,) output min(1, alpha)
  RngArgs rng;             // uniforms at counters offset .. offset + B - 1
};
cudaError_t mala_accept(const MalaAcceptArgs& args, cudaStream_t stream);

// langevin.cu: n_steps ULA steps on a diagonal Gaussian mixture, state in registers.
struct GmmLangevinArgs {
  void* x;                 // (B, D) state, updated in place
  DType dtype;             // dtype of x
  int64_t chains;          // B
  int dim;                 // D <= 64
  int components;          // K <= 64
  const float* means;      // (K, D)
  const float* inv_vars;   // (K, D) 1 / sigma^2
  const float* log_coef;   // (K,) log w_k - sum_d log sigma_kd
  int64_t n_steps;
  float step_size;         // h when step_sizes is null
  const float* step_sizes; // (B,) or null
  RngArgs rng;             // step t uses counters offset + t * B * D + i
};
cudaError_t gmm_langevin(const GmmLangevinArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgen
