// The CPU kernels' noise fills and block size. Their float32 maths (log, sin/cos, exp, the coupling's log-scale) is
// kernels/fastmath.h, shared with CUDA, written so that GCC vectorizes the loops that call it (AVX2 clone chosen at
// run time).
#pragma once

#include <cstdint>

#include "../kernels/philox.h"

namespace fastgen {
namespace cpu {

// out[i] = normal (or uniform) at stream position first + i, for i < count. Defined
// in rng.cpp: hand-written AVX2 Philox where the CPU has it, else portable code.
void fill_normals(uint64_t seed, uint64_t first, int64_t count, float* out);
void fill_uniforms(uint64_t seed, uint64_t first, int64_t count, float* out);

// Elements per stack buffer of noise in the elementwise CPU kernels.
constexpr int64_t kBlock = 512;

}  // namespace cpu
}  // namespace fastgen
