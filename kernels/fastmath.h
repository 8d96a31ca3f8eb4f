// Branch-free float32 maths shared by the CPU kernels (csrc/, where GCC vectorizes the loops that call it) and the
// CUDA kernels: the Box-Muller log and sin/cos of the noise stream (philox.h) and the affine coupling's log-scale.
// Accuracy: log and cos within ~1 ulp (Cephes polynomials), exp within ~2 ulp. No torch header here.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "constants.h"

namespace fastgen {

FASTGEN_HD float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  memcpy(&f, &b, sizeof(f));
  return f;
#endif
}

FASTGEN_HD uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  memcpy(&b, &f, sizeof(b));
  return b;
#endif
}

FASTGEN_HD float sqrt_float(float x) {
#if defined(__CUDA_ARCH__)
  return sqrtf(x);
#else
  return __builtin_sqrtf(x);
#endif
}

// Natural log for x in [1e-7, 1] (the Box-Muller range): no special cases.
FASTGEN_HD float log_unit(float x) {
  const uint32_t bits = float_to_bits(x);
  float e = static_cast<float>(static_cast<int32_t>(bits >> 23) - 126);
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F000000u);  // [0.5, 1)
  const float small = m < 0.70710678118654752f ? 1.0f : 0.0f;  // exact arithmetic select
  e -= small;
  m = m + small * m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e;
  y += -0.5f * z;
  return (m + y) + 0.693359375f * e;
}

struct SinCos {
  float cos;
  float sin;
};

// cos(x) and sin(x) for x in [0, 2*pi], sharing one range reduction.
FASTGEN_HD SinCos sincos_twopi_range(float x) {
  const float j = static_cast<float>((static_cast<int32_t>(x * 1.27323954473516f) + 1) & ~1);  // 4/pi
  const float r = ((x - j * 0.78515625f) - j * 2.4187564849853515625e-4f) - j * 3.77489497744594108e-8f;
  // x = q pi/4 + r with q even and |r| <= pi/4; for q in {2, 6} cos and sin swap polynomials,
  // cos is negated for q in {2, 4} and sin for q in {4, 6}.
  const int32_t q = static_cast<int32_t>(j) & 7;
  const float cos_sign = static_cast<float>(1 - 2 * (((q + 2) >> 2) & 1));
  const float sin_sign = static_cast<float>(1 - 2 * ((q >> 2) & 1));
  const int32_t swap = ((q + 1) >> 1) & 1;
  const float z = r * r;
  float c = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z;
  c = c - 0.5f * z + 1.0f;
  const float s = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  return SinCos{cos_sign * (swap ? s : c), sin_sign * (swap ? c : s)};
}

// exp(x) for x <= 0 (softmax weights); inputs below -87 flush to exp(-87).
FASTGEN_HD float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = static_cast<float>(static_cast<int32_t>(x * 1.44269504088896341f - 0.5f));  // floor for x<=0
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  const float z = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * z + r + 1.0f;
  const uint32_t scale = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  return p * bits_to_float(scale);
}

// An affine coupling's log-scale s of one logit h (rule: fastgen/reference/coupling.py), ds/dh, exp(s), exp(-s).
struct Scale {
  float s;
  float ds;    // ds / dh
  float up;    // exp(s)
  float down;  // exp(-s)
};

// tanh and log-sigmoid through exp of a non-positive argument, so the CPU loops vectorize.
template <int Mode>
FASTGEN_HD Scale scale_of(float h, float clamp) {
  Scale r;
  if (Mode == kSoftClamp) {  // s = clamp tanh(h / clamp), tanh(|u|) = (1 - e) / (1 + e) with e = exp(-2 |u|)
    const float e = exp_nonpositive(-2.0f * fabsf(h) / clamp);
    const float th = copysignf((1.0f - e) / (1.0f + e), h);
    r.s = clamp * th;
    r.ds = 1.0f - th * th;
  } else {  // s = log sigmoid(a) = min(a, 0) + log(1 / (1 + e)), e = exp(-|a|); ds/da = sigmoid(-a)
    const float a = h + 2.0f;
    const float e = exp_nonpositive(-fabsf(a));
    const float inv = 1.0f / (1.0f + e);
    r.s = (0.0f < a ? 0.0f : a) + log_unit(inv);  // std::min(a, 0.0f)
    r.ds = a >= 0.0f ? e * inv : inv;
  }
  const float e = exp_nonpositive(-fabsf(r.s)), big = 1.0f / e;  // exp(-|s|) and exp(|s|)
  r.up = r.s > 0.0f ? big : e;
  r.down = r.s > 0.0f ? e : big;
  return r;
}

}  // namespace fastgen
