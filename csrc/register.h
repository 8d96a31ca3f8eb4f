// One registration per loop: each csrc/<loop>.cpp lists its ops once, as an X-macro of (schema name, function
// stem), and registers STEM_cpu on the CPU key (and, when built with CUDA, STEM_cuda on the CUDA key):
//
//   #define EMA_OPS(X) X(ema_update_, ema_update)
//   FASTGEN_REGISTER_LOOP(EMA_OPS)
#pragma once

#include <torch/library.h>

#define FASTGEN_IMPL_CPU_(name, stem) m.impl(#name, &stem##_cpu);
#define FASTGEN_IMPL_CUDA_(name, stem) m.impl(#name, &stem##_cuda);

#ifdef FASTGEN_WITH_CUDA
#define FASTGEN_REGISTER_LOOP(OPS)                               \
  TORCH_LIBRARY_IMPL(fastgen, CPU, m) { OPS(FASTGEN_IMPL_CPU_) } \
  TORCH_LIBRARY_IMPL(fastgen, CUDA, m) { OPS(FASTGEN_IMPL_CUDA_) }
#else
#define FASTGEN_REGISTER_LOOP(OPS) \
  TORCH_LIBRARY_IMPL(fastgen, CPU, m) { OPS(FASTGEN_IMPL_CPU_) }
#endif
