// Host launchers of the CUDA kernels in kernels/*.cu. Plain pointers, sizes
// and a stream: no torch types, so nvcc compiles the kernels on its own.
// Every launcher returns early on empty input and launches on `stream`.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "constants.h"
#include "philox.h"
#include "hmc.h"

namespace fastgen {
namespace cuda {

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// rng.cu: out[i] = uniform (or normal) at stream position offset + i.
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
  RngArgs rng;             // noise positions offset .. offset + numel - 1
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
  RngArgs rng;             // uniforms at positions offset .. offset + B - 1
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
  RngArgs rng;             // step t uses positions offset + t * B * D + i
};
cudaError_t gmm_langevin(const GmmLangevinArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgen

namespace fastgen {
namespace cuda {

// diffusion.cu: one generic fused step for every affine diffusion update rule.
// Per sample b the coefficient row r = coef + row(b) * kCoefWidth holds (columns: enum Coef, constants.h)
//   [alpha, sigma, k, c_x, c_x0, c_eps, c_aux, c_noise, alpha', sigma']:
// the model output is read in the model's space x_m = k x (x_m = alpha x0 + sigma eps; a flow path's velocity
// alpha' x0 + sigma' eps for the velocity prediction),
// converted to (x0, eps) by `prediction`, x0 optionally clamped to [-clip, clip]
// (eps then re-derived from it when clip_eps), and
//   x <- c_x x + c_x0 x0 + c_eps eps + c_aux aux + c_noise xi   (terms with a zero coefficient dropped).
// aux_store (enum AuxStore): none, aux <- x0, or aux <- x_new - x (a step's increment).
// Classifier-free guidance reads g = u + w (c - u) for the model output (rescaled per sample when
// guidance_rescale > 0); inpainting replaces the new state by known_keep known + known_std xi where known_mask.

struct DiffusionStepArgs {
  void* x;                        // (B * D,) state, updated in place
  const void* model_out;          // (B * D,)
  DType dtype;                    // dtype of x and model_out
  int64_t numel;                  // B * D
  int64_t sample_size;            // D
  const float* coef;              // (rows, kCoefWidth)
  int64_t coef_rows;              // 1: shared by all samples; B: one per sample; else a table read through index
  const int64_t* index;           // (1,) or (B,) rows into coef, or null
  int64_t index_size;             // 1 or B
  int prediction;                 // Prediction
  float clip;                     // clamp x0 to [-clip, clip] when > 0
  bool clip_eps;                  // then re-derive eps from the clamped x0 (else keep the model's eps)
  float* aux;                     // (B * D,) float32 or null
  int aux_store;                  // 0, 1 or 2
  const float* noise;             // (B * D,) explicit noise instead of the stream, or null
  RngArgs rng;                    // element i draws position offset + i, unless sample_seeds is set
  const int64_t* sample_seeds;    // (B,): sample b draws key sample_seeds[b], position sample_offset + i % D
  uint64_t sample_offset;
  const void* uncond_out;         // (B * D,) of dtype: classifier-free guidance reads u + w (c - u); or null
  const float* guidance;          // (guidance_size,) w, one value or one per sample
  int64_t guidance_size;          // 1 or B
  float guidance_rescale;         // phi > 0: g times phi std(c_b) / std(g_b) + 1 - phi (one block per sample)
  const float* known;             // (B * D,) inpainting: where known_mask, x <- known_keep known + known_std xi
  const bool* known_mask;         // (B * D,) or (D,) when known_mask_shared; null without inpainting
  bool known_mask_shared;
  float known_keep;
  float known_std;
};
cudaError_t diffusion_step(const DiffusionStepArgs& args, cudaStream_t stream);

// diffusion.cu: score-SDE Langevin corrector with a per-sample step from a target signal-to-noise ratio:
//   s = score(model_out), eps_b = min(2 a_b (snr |xi_b| / |s_b|)^2, sigma^2),  x <- x + eps_b s + sqrt(2 eps_b) xi.
// a_b is column 3 of the sample's coefficient row; one block per sample.
cudaError_t langevin_correct(const DiffusionStepArgs& args, float snr, cudaStream_t stream);

// spectral_norm.cu: for every matrix W (rows, cols) with vectors u, v, n power-iteration steps
// u <- W v / max(|W v|, eps), v <- W^T u / max(|W^T u|, eps), then sigma = u^T W v, all in float32.
struct SpectralNormArgs {
  const void* const* weights;  // (count,) host array of device pointers: (rows, cols) row-major matrices
  const void* const* us;       // (count,) (rows,) vectors, the weights' dtype
  const void* const* vs;       // (count,) (cols,) vectors
  void* const* us_out;         // (count,) (rows,) outputs
  void* const* vs_out;         // (count,) (cols,) outputs
  const int64_t* rows;         // (count,) host
  const int64_t* cols;         // (count,) host
  int count;                   // number of matrices
  DType dtype;                 // one dtype for every matrix and vector
  int n_power_iterations;      // >= 0; 0: sigma at the given u, v
  float eps;                   // > 0
  float* sigmas;               // (count,) device output, float32
  float* workspace;            // device float32 scratch: sum over matrices of spectral_norm_workspace(rows, cols)
};
cudaError_t spectral_norm_power(const SpectralNormArgs& args, cudaStream_t stream);

// Row chunks of the W^T u pass (each block sums one chunk; the chunks are added in order).
inline int64_t spectral_norm_row_chunks(int64_t rows) {
  const int64_t chunks = (rows + 127) / 128;
  return chunks < 1 ? 1 : (chunks > 32 ? 32 : chunks);
}
inline int64_t spectral_norm_workspace(int64_t rows, int64_t cols) {
  return rows + cols + spectral_norm_row_chunks(rows) * cols;
}

// vae.cu: z = mean + exp(log_std) eps (eps the normals at offset + i), and per sample
// log_prob = sum (-eps^2 / 2 - log_std) - dim log(2 pi) / 2; one block per sample.
struct GaussianRsampleArgs {
  const void* mean;        // (batch, dim), dtype
  const void* log_std;     // (batch, dim), dtype
  void* z;                 // (batch, dim) output, dtype
  float* log_prob;         // (batch,) output
  DType dtype;             // kFloat32, kFloat16 or kBFloat16
  int64_t batch;
  int64_t dim;
  uint64_t seed;
  uint64_t offset;         // stream position of element 0
  float log_norm;          // dim log(2 pi) / 2
};
cudaError_t gaussian_rsample(const GaussianRsampleArgs& args, cudaStream_t stream);

// flow_matching.cu: x_t = alpha_b x0 + sigma_b eps and target = alpha'_b x0 + sigma'_b eps, eps_bj the normal at
// offset + p_b dim + j (p = pairing, or the identity); grid-stride over the elements.
struct CfmInterpolateArgs {
  const void* x0;          // (batch, dim), dtype
  const float* coef;       // (batch, 4): alpha, sigma, alpha', sigma'
  const int64_t* pairing;  // (batch,) noise rows, or nullptr
  void* x_t;               // (batch, dim) output, dtype
  void* target;            // (batch, dim) output, dtype
  DType dtype;             // kFloat32, kFloat16 or kBFloat16
  int64_t batch;
  int64_t dim;
  uint64_t seed;
  uint64_t offset;         // stream position of row 0's element 0
};
cudaError_t cfm_interpolate(const CfmInterpolateArgs& args, cudaStream_t stream);

// hutchinson.cu: out_b = sum_i vjp[b, i] eps(offset + b dim + i), eps = sign(u - 1/2) of the stream's uniform
// (+1 where u >= 1/2) or its normal; one warp per sample up to 2048 elements, else one block.
struct HutchinsonDotArgs {
  const void* vjp;         // (batch, dim), dtype
  float* out;              // (batch,) output
  DType dtype;             // kFloat32, kFloat16 or kBFloat16
  int64_t batch;
  int64_t dim;
  uint64_t seed;
  uint64_t offset;         // stream position of element 0
  bool rademacher;         // signs instead of normals
};
cudaError_t hutchinson_dot(const HutchinsonDotArgs& args, cudaStream_t stream);

// coupling.cu: affine coupling (fastgen/reference/coupling.py): per sample of dim elements the first split are
// copied, the rest y = x exp(s) + t (inverse: (x - t) exp(-s)) with s from h by scale_mode (0: clamp tanh(h /
// clamp), 1: log sigmoid(h + 2)), and log_det = +-sum s; one warp per sample up to 2048 elements, else one block.
// The backward: grad_in = [g_a, g_b exp(+-s)], grad_h = (g_b x_b exp(s) + g_ld) s' (inverse: -(g_b x_b + g_ld) s').
struct AffineCouplingArgs {
  const void* x;           // (batch, dim): the forward's input, or the backward's data-side tensor
  const void* h;           // (batch, dim - split) log-scale logits, samples h_stride apart
  const void* t;           // (batch, dim - split) shifts (forward only), samples t_stride apart
  void* out;               // (batch, dim) output (the backward: grad_in)
  float* log_det;          // (batch,) output (forward only)
  const void* grad_out;    // (batch, dim) (backward only)
  const float* grad_log_det;  // (batch,) (backward only)
  void* grad_h;            // (batch, dim - split) output (backward only)
  DType dtype;             // of every tensor but log_det and grad_log_det
  int64_t batch;
  int64_t dim;
  int64_t split;
  int64_t h_stride;        // elements between samples of h (and of t): dim - split, or a slice's row stride
  int64_t t_stride;
  bool inverse;
  int scale_mode;
  float clamp;
};
cudaError_t affine_coupling(const AffineCouplingArgs& args, cudaStream_t stream);
cudaError_t affine_coupling_backward(const AffineCouplingArgs& args, cudaStream_t stream);

// Rational-quadratic spline coupling (kernels/coupling.cu; rule in fastgen/reference/coupling.py).
struct SplineCouplingArgs {
  const void* x;           // (batch, dim): the forward's input, or the backward's data-side tensor
  const void* params;      // (batch, dim - split, 3 bins - 1) raw spline parameters
  void* out;               // (batch, dim) output (the backward: grad_in)
  float* log_det;          // (batch,) output (forward only)
  const void* grad_out;    // (batch, dim) (backward only)
  const float* grad_log_det;  // (batch,) (backward only)
  void* grad_params;       // like params, output (backward only)
  DType dtype;             // of every tensor but log_det and grad_log_det
  int64_t batch;
  int64_t dim;
  int64_t split;
  int bins;
  bool inverse;
  float bound;
  float min_width;
  float min_height;
  float min_derivative;
};
cudaError_t spline_coupling(const SplineCouplingArgs& args, cudaStream_t stream);
cudaError_t spline_coupling_backward(const SplineCouplingArgs& args, cudaStream_t stream);

// glow.cu: ActNorm (fastgen/reference/glow.py) on rows = batch * channels rows of `spatial` elements, channel
// row % channels. Forward: out = x exp(s_c) + b_c (inverse: (x - b_c) exp(-s_c)), log_det = +-spatial sum s. The
// backward: grad_in = g exp(+-s_c), and per row (sum g, sum g x) into partial; the caller sums them over the batch.
struct ActNormArgs {
  const void* x;           // (batch, channels, spatial): the forward's input, or the backward's data-side tensor
  const float* log_scale;  // (channels,)
  const float* bias;       // (channels,) (forward only)
  void* out;               // like x, output (the backward: grad_in)
  float* log_det;          // (batch,) output (forward only)
  const void* grad_out;    // like x (backward only)
  float* partial;          // (batch * channels, 2) output (backward only)
  DType dtype;             // of x, out and grad_out
  int64_t batch;
  int64_t channels;
  int64_t spatial;
  bool inverse;
};
cudaError_t actnorm(const ActNormArgs& args, cudaStream_t stream);
cudaError_t actnorm_backward(const ActNormArgs& args, cudaStream_t stream);

// glow.cu: squeeze, (batch, channels, 2 height, 2 width) -> (batch, 4 channels, height, width) with out[b, 4c + 2i
// + j, u, v] = x[b, c, 2u + i, 2v + j]; inverse: back. Moves elements of `element_size` bytes (2 or 4).
struct SqueezeArgs {
  const void* x;
  void* out;
  int64_t batch;
  int64_t channels;        // of the unsqueezed tensor
  int64_t height;          // of the squeezed tensor
  int64_t width;
  int element_size;
  bool inverse;
};
cudaError_t squeeze2d(const SqueezeArgs& args, cudaStream_t stream);

// ema.cu: averages[t] <- averages[t] + weight (values[t] - averages[t]) for each of `count` pairs (device pointers).
cudaError_t ema_update(void* const* averages, const void* const* values, const int64_t* numels, int count,
                       DType dtype, float weight, cudaStream_t stream);

// hmc.cu: p <- p + kick eps_b grad, then (drift) q <- q + eps_b M^-1 p, per chain b of `size` elements.
struct LeapfrogArgs {
  void* q;                    // (numel,) updated in place
  void* p;                    // (numel,) updated in place
  const void* grad;           // (numel,) the state dtype
  const float* step_sizes;    // (numel / size,)
  const float* inverse_mass;  // (size,) when mass_shared, else (numel,); or null (the identity)
  int64_t numel;
  int64_t size;               // elements per chain
  bool mass_shared;
  float kick;
  bool drift;
};
cudaError_t leapfrog(const LeapfrogArgs& args, DType dtype, cudaStream_t stream);

// hmc.cu: whole HMC chains on a diagonal Gaussian mixture, a chain per thread (the maths: hmc.h).
struct GmmHmcArgs {
  void* q;                     // (B, D) updated in place
  int64_t chains;              // B
  mixture_hmc::Mixture mixture;    // device pointers, K and D
  const float* step_sizes;     // (B,)
  int64_t n_transitions;
  int64_t n_leapfrog;
  uint64_t seed;
  uint64_t offset;
  mixture_hmc::Layout layout; // a transition's positions (stream_layout)
  float* accepted;             // (B,) out: summed acceptance probabilities
  int* divergences;            // (B,) out
};
cudaError_t gmm_hmc(const GmmHmcArgs& args, DType dtype, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastgen
