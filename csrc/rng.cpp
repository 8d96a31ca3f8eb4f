// philox_fill_: out[i] = uniform or normal at position offset + i of the
// shared Philox stream, on CPU and CUDA. The parity tests and the samplers'
// accept/reject draws use it.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "checks.h"
#include "register.h"
#include "cpu_math.h"

#include "cuda_host.h"

namespace fastgen {
namespace cpu {
namespace {

// Philox counters per block: 4 values each; lanes and values kept on the stack (4 KiB each).
constexpr int64_t kCounterBlock = 256;

struct Lanes {
  uint32_t l[4][kCounterBlock];
};

// Lanes of counters first .. first + count - 1, portable.
void philox_portable(uint64_t seed, uint64_t first, int64_t count, Lanes* out, int64_t at) {
  for (int64_t i = 0; i < count; ++i) {
    const Philox4 r = philox4x32(seed, first + static_cast<uint64_t>(i));
    for (int j = 0; j < 4; ++j) out->l[j][at + i] = r.lane[j];
  }
}

#if defined(__x86_64__)
// High and low 32 bits of a * m in each of 8 lanes (m a broadcast constant).
__attribute__((target("avx2"))) inline __m256i mulhilo(__m256i a, __m256i m, __m256i* lo) {
  const __m256i even = _mm256_mul_epu32(a, m);
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
  *lo = _mm256_mullo_epi32(a, m);
  return _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

// philox4x32() of 16 counters at a time: two independent groups of 8 interleaved,
// since one round's mul -> shift -> blend -> xor chain is latency-bound.
// NOTE: 2^24 counters on the 2-core EPYC dev box: 64 ms auto-vectorized by GCC,
// 26 ms with one group of 8, 24 ms with two.
__attribute__((target("avx2"))) void philox_avx2(uint64_t seed, uint64_t first, int64_t count, Lanes* out) {
  const __m256i round_a = _mm256_set1_epi32(static_cast<int>(0xD2511F53u));
  const __m256i round_b = _mm256_set1_epi32(static_cast<int>(0xCD9E8D57u));
  const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i eight = _mm256_set1_epi32(8);
  __m256i key0[10], key1[10];
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round, k0 += 0x9E3779B9u, k1 += 0xBB67AE85u) {
    key0[round] = _mm256_set1_epi32(static_cast<int>(k0));
    key1[round] = _mm256_set1_epi32(static_cast<int>(k1));
  }
  int64_t i = 0;
  for (; i + 16 <= count; i += 16) {
    const uint64_t n = first + static_cast<uint64_t>(i);
    const uint32_t lo = static_cast<uint32_t>(n);
    if (lo > 0xFFFFFFF0u) {  // the 16 counters cross a 2^32 boundary: portable path
      philox_portable(seed, n, 16, out, i);
      continue;
    }
    __m256i a0 = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int>(lo)), iota);
    __m256i b0 = _mm256_add_epi32(a0, eight);
    __m256i a1 = _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(n >> 32)));
    __m256i b1 = a1;
    __m256i a2 = _mm256_setzero_si256(), b2 = a2, a3 = a2, b3 = a2;
#pragma GCC unroll 10
    for (int round = 0; round < 10; ++round) {
      __m256i alo0, alo2, blo0, blo2;
      const __m256i ahi0 = mulhilo(a0, round_a, &alo0);
      const __m256i bhi0 = mulhilo(b0, round_a, &blo0);
      const __m256i ahi2 = mulhilo(a2, round_b, &alo2);
      const __m256i bhi2 = mulhilo(b2, round_b, &blo2);
      a0 = _mm256_xor_si256(_mm256_xor_si256(ahi2, a1), key0[round]);
      b0 = _mm256_xor_si256(_mm256_xor_si256(bhi2, b1), key0[round]);
      a2 = _mm256_xor_si256(_mm256_xor_si256(ahi0, a3), key1[round]);
      b2 = _mm256_xor_si256(_mm256_xor_si256(bhi0, b3), key1[round]);
      a1 = alo2;
      b1 = blo2;
      a3 = alo0;
      b3 = blo0;
    }
    const __m256i lanes[4][2] = {{a0, b0}, {a1, b1}, {a2, b2}, {a3, b3}};
    for (int j = 0; j < 4; ++j) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->l[j] + i), lanes[j][0]);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out->l[j] + i + 8), lanes[j][1]);
    }
  }
  philox_portable(seed, first + static_cast<uint64_t>(i), count - i, out, i);
}

const bool kHaveAvx2 = __builtin_cpu_supports("avx2");
#endif

void philox(uint64_t seed, uint64_t first, int64_t count, Lanes* out) {
#if defined(__x86_64__)
  if (kHaveAvx2) return philox_avx2(seed, first, count, out);
#endif
  philox_portable(seed, first, count, out, 0);
}

// out[4k + j] = value j of counter k: Box-Muller of lane pairs (0, 1) and (2, 3).
__attribute__((target_clones("avx2", "default"))) void normals_block(const Lanes& lanes, int64_t count, float* out) {
  for (int64_t k = 0; k < count; ++k) {
    const SinCos a = box_muller(lanes.l[0][k], lanes.l[1][k]);
    const SinCos b = box_muller(lanes.l[2][k], lanes.l[3][k]);
    out[4 * k] = a.cos;
    out[4 * k + 1] = a.sin;
    out[4 * k + 2] = b.cos;
    out[4 * k + 3] = b.sin;
  }
}

__attribute__((target_clones("avx2", "default"))) void uniforms_block(const Lanes& lanes, int64_t count, float* out) {
  for (int64_t k = 0; k < count; ++k) {
    for (int j = 0; j < 4; ++j) out[4 * k + j] = uint_to_uniform(lanes.l[j][k]);
  }
}

// Values first .. first + count - 1: whole counters at a time, through a buffer
// where the range starts or ends inside a counter's four values.
template <typename Block>
void fill(uint64_t seed, uint64_t first, int64_t count, float* out, Block block) {
  Lanes lanes;
  float buf[4 * kCounterBlock];
  while (count > 0) {
    const int64_t skip = static_cast<int64_t>(first & 3);
    const int64_t take = std::min(count, 4 * kCounterBlock - skip);
    const int64_t counters = (skip + take + 3) / 4;
    philox(seed, first >> 2, counters, &lanes);
    if (skip == 0 && take == 4 * counters) {
      block(lanes, counters, out);
    } else {
      block(lanes, counters, buf);
      std::copy(buf + skip, buf + skip + take, out);
    }
    first += static_cast<uint64_t>(take);
    out += take;
    count -= take;
  }
}

}  // namespace

void fill_normals(uint64_t seed, uint64_t first, int64_t count, float* out) {
  fill(seed, first, count, out, normals_block);
}

void fill_uniforms(uint64_t seed, uint64_t first, int64_t count, float* out) {
  fill(seed, first, count, out, uniforms_block);
}

}  // namespace cpu

namespace {

void check_fill(const torch::Tensor& out, int64_t seed, int64_t offset) {
  CHECK_DTYPE(out, torch::kFloat32);
  CHECK_CONTIGUOUS(out);
  FASTGEN_CHECK(seed >= 0, "seed must be a non-negative 63-bit integer, got ", seed);
  FASTGEN_CHECK(offset >= 0, "offset must be non-negative, got ", offset);
}

void philox_fill_cpu(torch::Tensor& out, const RngArgs& rng, bool normal) {
  uint64_t s, o;
  resolve_rng(rng, &s, &o);
  float* data = out.data_ptr<float>();
  at::parallel_for(0, out.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
    if (normal) {
      cpu::fill_normals(s, o + static_cast<uint64_t>(begin), end - begin, data + begin);
    } else {
      cpu::fill_uniforms(s, o + static_cast<uint64_t>(begin), end - begin, data + begin);
    }
  });
}

#ifdef FASTGEN_WITH_CUDA
void philox_fill_cuda(torch::Tensor& out, const RngArgs& rng, bool normal) {
  const c10::cuda::CUDAGuard guard(out.device());
  C10_CUDA_CHECK(cuda::philox_fill(out.data_ptr<float>(), out.numel(), normal, rng,
                                   c10::cuda::getCurrentCUDAStream()));
}
#endif

// The op's entry (registered on every device key).
void philox_fill(torch::Tensor out, int64_t seed, int64_t offset, const c10::optional<torch::Tensor>& rng_state,
                 bool normal) {
  check_fill(out, seed, offset);
  const RngArgs rng{static_cast<uint64_t>(seed), static_cast<uint64_t>(offset), rng_state_ptr(rng_state, out)};
  FASTGEN_ON_DEVICE(out, philox_fill_cpu(out, rng, normal), philox_fill_cuda(out, rng, normal));
}

}  // namespace

#define RNG_OPS(X) X(philox_fill_, philox_fill)
FASTGEN_REGISTER_LOOP(RNG_OPS)

}  // namespace fastgen
