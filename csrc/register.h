// One registration per loop: each csrc/<loop>.cpp lists its ops once, as an X-macro of (schema name, entry), and
// registers each entry on the CPU key and, when built with CUDA, on the CUDA key:
//
//   #define EMA_OPS(X) X(ema_update_, ema_update)
//   FASTGEN_REGISTER_LOOP(EMA_OPS)
//
// An entry checks its arguments and allocates its outputs once, then runs the device's body:
//
//   FASTGEN_ON_DEVICE(x, ema_cpu(...), ema_cuda(...));
//
// (a build without CUDA compiles only the CPU body, and registers the entry on no CUDA key).
#pragma once

#include <torch/library.h>

#define FASTGEN_IMPL_(name, entry) m.impl(#name, &entry);

#ifdef FASTGEN_WITH_CUDA
#define FASTGEN_REGISTER_LOOP(OPS)                            \
  TORCH_LIBRARY_IMPL(fastgen, CPU, m) { OPS(FASTGEN_IMPL_) } \
  TORCH_LIBRARY_IMPL(fastgen, CUDA, m) { OPS(FASTGEN_IMPL_) }
#define FASTGEN_ON_DEVICE(t, cpu_body, cuda_body) ((t).is_cuda() ? (cuda_body) : (cpu_body))
#else
#define FASTGEN_REGISTER_LOOP(OPS) \
  TORCH_LIBRARY_IMPL(fastgen, CPU, m) { OPS(FASTGEN_IMPL_) }
#define FASTGEN_ON_DEVICE(t, cpu_body, cuda_body) (cpu_body)
#endif
