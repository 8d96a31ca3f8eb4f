// Philox4x32-10 counter-based generator shared by the CPU (csrc/) and CUDA
// (kernels/*.cu) backends. Value n of the stream (n = offset + flat element
// index) is element n % 4 of triton.language.rand4x / randn4x at counter n / 4:
//   key     = (lo32(seed), hi32(seed))
//   counter = (lo32(c), hi32(c), 0, 0), c = n >> 2; lanes l0 l1 l2 l3
//   uniform = lane n & 3 as int32, negatives mapped by ~x, times 4.6566127342e-10f
//   normal  = Box-Muller of the lane pair (l0, l1) for n & 3 in {0, 1}, (l2, l3)
//             for {2, 3}: r cos(theta) for even n, r sin(theta) for odd n.
// One Philox call thus serves four values.
// No torch header here: nvcc compiles this without PyTorch.
#pragma once

#include <stdint.h>

#include "constants.h"
#include "fastmath.h"

namespace fastgen {

struct Philox4 {
  uint32_t lane[4];
};

FASTGEN_HD uint32_t mulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Philox4x32-10 at counter (lo32(c), hi32(c), 0, 0).
FASTGEN_HD Philox4 philox4x32(uint64_t seed, uint64_t c) {
  uint32_t c0 = static_cast<uint32_t>(c);
  uint32_t c1 = static_cast<uint32_t>(c >> 32);
  uint32_t c2 = 0u;
  uint32_t c3 = 0u;
  uint32_t k0 = static_cast<uint32_t>(seed);
  uint32_t k1 = static_cast<uint32_t>(seed >> 32);
#if defined(__CUDA_ARCH__)
#pragma unroll
#elif defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC unroll 10  // fully unrolled, so the CPU loops around it vectorize
#endif
  for (int round = 0; round < 10; ++round) {
    const uint32_t hi0 = mulhi32(0xD2511F53u, c0);
    const uint32_t lo0 = 0xD2511F53u * c0;
    const uint32_t hi2 = mulhi32(0xCD9E8D57u, c2);
    const uint32_t lo2 = 0xCD9E8D57u * c2;
    c0 = hi2 ^ c1 ^ k0;
    c2 = hi0 ^ c3 ^ k1;
    c1 = lo2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// Uniform in [0, 1) from one 32-bit lane, as triton.language.rand maps it.
FASTGEN_HD float uint_to_uniform(uint32_t bits) {
  int32_t v = static_cast<int32_t>(bits);
  v = v < 0 ? ~v : v;
  return static_cast<float>(v) * 4.6566127342e-10f;
}

constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;

}  // namespace fastgen

namespace fastgen {

// Where a call's noise comes from: (seed, offset) given by value, or, when
// `state` is set, read on the device from state[0] (seed) and state[1]
// (base offset, to which `offset` is added) so captured graphs replay fresh noise.
struct RngArgs {
  uint64_t seed;
  uint64_t offset;
  const int64_t* state;
};

FASTGEN_HD void resolve_rng(const RngArgs& rng, uint64_t* seed, uint64_t* offset) {
  if (rng.state != nullptr) {
    *seed = static_cast<uint64_t>(rng.state[0]);
    *offset = static_cast<uint64_t>(rng.state[1]) + rng.offset;
  } else {
    *seed = rng.seed;
    *offset = rng.offset;
  }
}

}  // namespace fastgen

namespace fastgen {

// Constant lane indices under selects, so CUDA keeps the lanes in registers.
FASTGEN_HD float uniform_at(uint64_t seed, uint64_t n) {
  const Philox4 p = philox4x32(seed, n >> 2);
  const uint32_t even = (n & 2) ? p.lane[2] : p.lane[0];
  const uint32_t odd = (n & 2) ? p.lane[3] : p.lane[1];
  return uint_to_uniform((n & 1) ? odd : even);
}

// The two normals of one lane pair: r cos(theta), r sin(theta) with r = sqrt(-2 log u1), theta = 2 pi u2, through
// fastmath.h's log and sin/cos (the same polynomials on the CPU, whose loops vectorize them, and on CUDA).
FASTGEN_HD SinCos box_muller(uint32_t lane_u, uint32_t lane_theta) {
  float u1 = uint_to_uniform(lane_u);
  const float u2 = uint_to_uniform(lane_theta);
  u1 = u1 < kMinUniform ? kMinUniform : u1;
  const float r = sqrt_float(-2.0f * log_unit(u1));
  const SinCos t = sincos_twopi_range(kTwoPi * u2);
  return SinCos{r * t.cos, r * t.sin};
}

FASTGEN_HD float normal_at(uint64_t seed, uint64_t n) {
  const Philox4 p = philox4x32(seed, n >> 2);
  const SinCos z = box_muller((n & 2) ? p.lane[2] : p.lane[0], (n & 2) ? p.lane[3] : p.lane[1]);
  return (n & 1) ? z.sin : z.cos;
}

}  // namespace fastgen
