// Every op schema of fastgen in one place (the CPU and CUDA kernels register
// their implementations in csrc/<loop>.cpp).
#include <torch/library.h>

// In-place ops return nothing (torch.compile cannot functionalize aliased outputs).
TORCH_LIBRARY(fastgen, m) {
  // out[i] <- uniform (or normal) at stream position offset + i.
  m.def("philox_fill_(Tensor(a!) out, int seed, int offset, Tensor? rng_state, bool normal) -> ()");
  // x <- x + h c s + sqrt(2h) xi, optionally clamped; c clips the per-chain norm of s.
  m.def(
      "ula_step_(Tensor(a!) x, Tensor score, float step_size, Tensor? step_sizes, int seed, int offset, "
      "Tensor? rng_state, float? clamp_lo, float? clamp_hi, float? grad_clip) -> ()");
  // y = x + h grad + sqrt(2h) xi.
  m.def(
      "mala_propose(Tensor x, Tensor grad_log_prob, float step_size, Tensor? step_sizes, int seed, int offset, "
      "Tensor? rng_state) -> Tensor");
  // Metropolis-Hastings accept/reject of y per chain; returns (accepted, accept_prob).
  m.def(
      "mala_accept_(Tensor(a!) x, Tensor(b!) log_prob, Tensor(c!) grad_log_prob, Tensor y, Tensor log_prob_y, "
      "Tensor grad_log_prob_y, float step_size, Tensor? step_sizes, int seed, int offset, Tensor? rng_state) "
      "-> (Tensor, Tensor)");
  // n_steps ULA steps on a diagonal Gaussian mixture.
  m.def(
      "gmm_langevin_(Tensor(a!) x, Tensor means, Tensor inv_vars, Tensor log_coef, int n_steps, float step_size, "
      "Tensor? step_sizes, int seed, int offset, Tensor? rng_state) -> ()");
  // One step of an affine diffusion update rule (coefficient rows: see kernels/launchers.h).
  m.def(
      "diffusion_step_(Tensor(a!) x, Tensor model_out, Tensor coef, Tensor? index, int prediction, float? clip, "
      "bool clip_eps, Tensor(b!)? aux, int aux_store, Tensor? noise, int seed, int offset, Tensor? rng_state, Tensor? sample_seeds, "
      "int sample_offset) -> ()");
  // Score-SDE Langevin corrector with a per-sample step from a target signal-to-noise ratio.
  m.def(
      "langevin_correct_(Tensor(a!) x, Tensor model_out, Tensor coef, Tensor? index, int prediction, float snr, "
      "int seed, int offset, Tensor? rng_state, Tensor? sample_seeds, int sample_offset) -> ()");
}
