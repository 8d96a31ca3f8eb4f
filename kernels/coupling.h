// The coupling loop's per-element maths, written once for both compiled backends: the rational-quadratic spline of
// one element (Durkan et al. 2019; the rule: fastgen/reference/coupling.py), which csrc/coupling.cpp instantiates
// in double and kernels/coupling.cu in float. Each backend supplies how it reads the parameters: Widths / Heights
// give the softmax of the width and height logits at bin j, Params the raw logit j (the interior derivative logits
// start at 2 bins).
#pragma once

#include <cmath>
#include <cstdint>

#include "constants.h"


namespace fastgen {
namespace spline {

template <typename F>
struct Options {
  int64_t bins;
  F bound, min_width, min_height, min_derivative;
};

template <typename F>
FASTGEN_HD F max0(F v) {  // max(v, 0), NaN kept
  return v < F(0) ? F(0) : v;
}

template <typename F>
FASTGEN_HD F softplus(F u) {
  return max0(u) + std::log1p(std::exp(-std::fabs(u)));
}

template <typename F>
FASTGEN_HD F sigmoid(F v) {
  return F(1) / (F(1) + std::exp(-v));
}

// The bin holding v (on the x knots, or on the y knots for the inverse): its knot, sizes and end derivatives, and
// the width / height softmaxes at it and summed over the bins before it.
template <typename F>
struct Bin {
  int64_t k;
  F x0, w, y0, h, d0, d1;
  F smw, smh, smw_before, smh_before;
};

template <typename F, typename Widths, typename Heights, typename Params>
FASTGEN_HD Bin<F> find_bin(const Widths& sw, const Heights& sh, const Params& p, F v, const Options<F>& o, bool on_y) {
  const int64_t K = o.bins;
  const F cw = F(1) - K * o.min_width, ch = F(1) - K * o.min_height, span = F(2) * o.bound;
  Bin<F> b;
  F sx = F(0), sy = F(0);
  b.smw_before = b.smh_before = F(0);
  for (b.k = 0;; ++b.k) {
    b.smw = sw(b.k);
    b.smh = sh(b.k);
    b.w = span * (o.min_width + cw * b.smw);
    b.h = span * (o.min_height + ch * b.smh);
    if (b.k == K - 1 || (on_y ? v < sy + b.h - o.bound : v < sx + b.w - o.bound)) break;
    sx += b.w;
    sy += b.h;
    b.smw_before += b.smw;
    b.smh_before += b.smh;
  }
  b.x0 = sx - o.bound;
  b.y0 = sy - o.bound;
  b.d0 = b.k == 0 ? F(1) : o.min_derivative + softplus(p(2 * K + b.k - 1));
  b.d1 = b.k == K - 1 ? F(1) : o.min_derivative + softplus(p(2 * K + b.k));
  return b;
}

// The spline at v inside [-bound, bound] (its inverse with inverse=true); log_slope = log dy/dx at the point.
template <typename F>
FASTGEN_HD F value(const Bin<F>& b, F v, bool inverse, F& log_slope) {
  const F s = b.h / b.w, bend = b.d0 + b.d1 - F(2) * s;
  F theta, out;
  if (inverse) {
    const F r = v - b.y0;
    const F qa = r * bend + b.h * (s - b.d0), qb = b.h * b.d0 - r * bend, qc = -s * r;
    theta = F(2) * qc / (-qb - std::sqrt(max0(qb * qb - F(4) * qa * qc)));
    out = theta * b.w + b.x0;
  } else {
    theta = (v - b.x0) / b.w;
    const F u = theta * (F(1) - theta);
    out = b.y0 + b.h * (s * theta * theta + b.d0 * u) / (s + bend * u);
  }
  const F u = theta * (F(1) - theta);
  const F m = b.d1 * theta * theta + F(2) * s * u + b.d0 * (F(1) - theta) * (F(1) - theta);
  log_slope = F(2) * std::log(s) + std::log(m) - F(2) * std::log(s + bend * u);
  return out;
}

// Backward of one element at its data-side value x (inside the bound), g the output's gradient (of y forward, of x
// inverse), gl the log-det's: the input gradient, and the parameters' through the knots (g_x0, g_w, g_y0, g_h) and
// the end derivatives (g_d0, g_d1; before softplus').
template <typename F>
struct Grads {
  F grad_in, g_x0, g_w, g_y0, g_h, g_d0, g_d1;
};

template <typename F>
FASTGEN_HD Grads<F> backward(const Bin<F>& b, F x, F g, F gl, bool inverse) {
  const F s = b.h / b.w, theta = (x - b.x0) / b.w, u = theta * (F(1) - theta);
  const F bend = b.d0 + b.d1 - F(2) * s, den = s + bend * u, num = s * theta * theta + b.d0 * u;
  const F m = b.d1 * theta * theta + F(2) * s * u + b.d0 * (F(1) - theta) * (F(1) - theta);
  const F dden = bend * (F(1) - F(2) * theta), inv2 = F(1) / (den * den);
  // y = y0 + h R, R = num / den; L = log dy/dx = 2 log s + log m - 2 log den: partials in theta, s, d0, d1
  const F r_theta = ((F(2) * s * theta + b.d0 * (F(1) - F(2) * theta)) * den - num * dden) * inv2;
  const F r_s = (theta * theta * den - num * (F(1) - F(2) * u)) * inv2;
  const F r_d0 = u * (den - num) * inv2, r_d1 = -num * u * inv2;
  const F l_theta =
      (F(2) * b.d1 * theta - F(2) * b.d0 * (F(1) - theta) + F(2) * s * (F(1) - F(2) * theta)) / m - F(2) * dden / den;
  const F l_s = F(2) / s + F(2) * u / m - F(2) * (F(1) - F(2) * u) / den;
  const F l_d0 = (F(1) - theta) * (F(1) - theta) / m - F(2) * u / den, l_d1 = theta * theta / m - F(2) * u / den;
  const F slope = s * s * m * inv2, l_x = l_theta / b.w;
  F a_f, a_l;
  Grads<F> r;
  if (inverse) {  // g: gradient of x = f^-1(y); gl: of -log f'(x)
    r.grad_in = (g - gl * l_x) / slope;
    a_f = -r.grad_in;
    a_l = -gl;
  } else {
    a_f = g;
    a_l = gl;
    r.grad_in = g * slope + gl * l_x;
  }
  const F g_theta = a_f * b.h * r_theta + a_l * l_theta, g_s = a_f * b.h * r_s + a_l * l_s;
  r.g_x0 = -g_theta / b.w;
  r.g_w = -(g_theta * theta + g_s * s) / b.w;
  r.g_y0 = a_f;
  r.g_h = a_f * num / den + g_s / b.w;
  r.g_d0 = a_f * b.h * r_d0 + a_l * l_d0;
  r.g_d1 = a_f * b.h * r_d1 + a_l * l_d1;
  return r;
}

// The 3 bins - 1 parameter gradients from Grads: through size_j = 2 bound (min + (1 - K min) softmax_j) and
// knot_k = sum_{j<k} size_j - bound for the width and height logits, through softplus for the derivative logits.
// store(j, value) writes gradient j.
template <typename F, typename Widths, typename Heights, typename Params, typename Store>
FASTGEN_HD void param_grads(const Bin<F>& b, const Grads<F>& r, const Options<F>& o, const Widths& sw,
                            const Heights& sh, const Params& p, const Store& store) {
  const int64_t K = o.bins;
  const F cw = F(2) * o.bound * (F(1) - K * o.min_width), ch = F(2) * o.bound * (F(1) - K * o.min_height);
  const F dot_w = cw * (r.g_w * b.smw + r.g_x0 * b.smw_before);
  const F dot_h = ch * (r.g_h * b.smh + r.g_y0 * b.smh_before);
  for (int64_t j = 0; j < K; ++j) {
    const F gw = j < b.k ? cw * r.g_x0 : (j == b.k ? cw * r.g_w : F(0));
    const F gh = j < b.k ? ch * r.g_y0 : (j == b.k ? ch * r.g_h : F(0));
    store(j, sw(j) * (gw - dot_w));
    store(K + j, sh(j) * (gh - dot_h));
  }
  for (int64_t j = 0; j < K - 1; ++j) {  // only the bin's two end derivatives move
    const F gd = j == b.k - 1 ? r.g_d0 : r.g_d1;
    store(2 * K + j, j == b.k - 1 || j == b.k ? gd * sigmoid(p(2 * K + j)) : F(0));
  }
}

}  // namespace spline
}  // namespace fastgen
