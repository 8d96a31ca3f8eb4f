// Every op schema of fastgen in one place, and the pybind11 module fastgen._C.
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#ifndef FASTGEN_CXX_FLAGS
#define FASTGEN_CXX_FLAGS "unknown"
#endif
#ifndef FASTGEN_CUDA_ARCHS
#define FASTGEN_CUDA_ARCHS ""
#endif

// In-place ops return nothing (torch.compile cannot functionalize aliased outputs).
TORCH_LIBRARY(fastgen, m) {
  // out[i] <- uniform (or normal) at Philox counter offset + i.
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
}

namespace {

std::string simd() {
#if defined(__AVX512F__)
  return "avx512";
#elif defined(__AVX2__)
  return "avx2";
#elif defined(__x86_64__)
  return "sse2 baseline + avx2 clones chosen at load time";
#elif defined(__aarch64__)
  return "neon";
#else
  return "scalar";
#endif
}

std::string cpu_clone_in_use() {
#if defined(__x86_64__)
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") ? "avx2" : "default";
#else
  return "default";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.doc() = "fastgen compiled ops (registered in the torch.ops.fastgen namespace)";
  module.def(
      "build_info",
      []() {
        pybind11::dict info;
#if defined(__clang__)
        info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
        info["compiler"] = std::string("gcc ") + __VERSION__;
#else
        info["compiler"] = "unknown";
#endif
        info["cxx_flags"] = FASTGEN_CXX_FLAGS;
        info["simd"] = simd();
        info["cpu_kernels"] = cpu_clone_in_use();
#if defined(_OPENMP)
        info["openmp"] = true;
#else
        info["openmp"] = false;
#endif
        info["parallel_backend"] = at::get_parallel_info();
#ifdef FASTGEN_WITH_CUDA
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["cuda_archs"] = FASTGEN_CUDA_ARCHS;
        info["torch_version"] = TORCH_VERSION;
        return info;
      },
      "Compiler, flags, SIMD, OpenMP, CUDA on/off and CUDA architectures of this build.");
}
