// The diffusion loop's per-element maths, written once for both compiled backends (csrc/diffusion.cpp,
// kernels/diffusion.cu): the model output converted to (x0, eps) at x_m = k x = alpha x0 + sigma eps.
#pragma once

#include "constants.h"


namespace fastgen {
namespace diffusion {

struct Conversion {
  float x0;
  float eps;
};

// (x0, eps) of one element before clipping, for prediction P (kEps, kX0, kV, kScore). Divisions by alpha and sigma
// are multiplications by their reciprocals, which the caller computes once per row (returned by value, so the CPU
// loops vectorize).
template <int P>
FASTGEN_HD Conversion convert(float out, float xm, float alpha, float sigma, float inv_alpha, float inv_sigma) {
  Conversion r;
  if (P == kEps) {
    r.eps = out;
    r.x0 = (xm - sigma * out) * inv_alpha;
  } else if (P == kX0) {
    r.x0 = out;
    r.eps = (xm - alpha * out) * inv_sigma;
  } else if (P == kV) {
    r.x0 = alpha * xm - sigma * out;
    r.eps = sigma * xm + alpha * out;
  } else {
    r.eps = -sigma * out;
    r.x0 = (xm + sigma * sigma * out) * inv_alpha;
  }
  return r;
}

}  // namespace diffusion
}  // namespace fastgen
