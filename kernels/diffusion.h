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

// The numbers of a coefficient row the conversion reads, with its reciprocals computed once per row (alpha, sigma;
// det = alpha sigma' - sigma alpha' for the velocity prediction).
struct Scales {
  float alpha, sigma, inv_alpha, inv_sigma, d_alpha, d_sigma, inv_det;
};

FASTGEN_HD Scales scales_of(const float* c) {
  const float alpha = c[kAlpha], sigma = c[kSigma], d_alpha = c[kDAlpha], d_sigma = c[kDSigma];
  return Scales{alpha, sigma, 1.0f / alpha, 1.0f / sigma, d_alpha, d_sigma, 1.0f / (alpha * d_sigma - sigma * d_alpha)};
}

// (x0, eps) of one element before clipping, for prediction P (kEps, kX0, kV, kScore, kVelocity), returned by value so
// that the CPU loops vectorize. A flow path's velocity u = alpha' x0 + sigma' eps inverts, with x_m = alpha x0 +
// sigma eps, to x0 = (sigma' x_m - sigma u) / det and eps = (alpha u - alpha' x_m) / det.
template <int P>
FASTGEN_HD Conversion convert(float out, float xm, const Scales& s) {
  Conversion r;
  if (P == kEps) {
    r.eps = out;
    r.x0 = (xm - s.sigma * out) * s.inv_alpha;
  } else if (P == kX0) {
    r.x0 = out;
    r.eps = (xm - s.alpha * out) * s.inv_sigma;
  } else if (P == kV) {
    r.x0 = s.alpha * xm - s.sigma * out;
    r.eps = s.sigma * xm + s.alpha * out;
  } else if (P == kVelocity) {
    r.x0 = (s.d_sigma * xm - s.sigma * out) * s.inv_det;
    r.eps = (s.alpha * out - s.d_alpha * xm) * s.inv_det;
  } else {
    r.eps = -s.sigma * out;
    r.x0 = (xm + s.sigma * s.sigma * out) * s.inv_alpha;
  }
  return r;
}

}  // namespace diffusion
}  // namespace fastgen
