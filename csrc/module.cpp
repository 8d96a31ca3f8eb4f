// The pybind11 module fastgen._C: loading it registers the ops; it also says how it was built.
#include <torch/extension.h>

#include <string>

#ifndef FASTGEN_CXX_FLAGS
#define FASTGEN_CXX_FLAGS "unknown"
#endif
#ifndef FASTGEN_CUDA_ARCHS
#define FASTGEN_CUDA_ARCHS ""
#endif

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
