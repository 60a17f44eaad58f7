/*
 * exp, log and log1p for float lanes, written once over the vector type S
 * (simd_scalar.h, simd_avx2.h, simd_avx512.h) from its basic operations, so
 * that every instruction set runs the same algorithm.  Accurate to about
 * 2e-7 relative.  The float64 path uses libm.
 */
#ifndef GLUON_FOCAL_FAST_MATH_H_
#define GLUON_FOCAL_FAST_MATH_H_

#include <cmath>

#include "simd_scalar.h"

namespace gluon_focal {

// k = x + kPow2Magic puts round(x) + 127 in k's low mantissa bits (|x| < 2^22).
static constexpr float kPow2Magic = 12582912.0f + 127.0f;

// exp(-a) for a >= -87 (NaN propagates).  a is clamped at 88, where the
// scale 2^n reaches n = -127: its exponent field is then 0 and the result
// exactly 0, so exp(-a) is 0 instead of a subnormal from a = 87.7 on.
template <class S>
inline typename S::V exp_neg(typename S::V a) {
  typedef typename S::V V;
  V clamped = S::min(S::splat(88.0f), a);   // operand order keeps NaN
  V k = S::fma(clamped, S::splat(-1.44269504088896341f), S::splat(kPow2Magic));
  V n = S::sub(k, S::splat(kPow2Magic));    // round(-a / ln 2)
  // u = a + n ln 2 in [-ln2/2, ln2/2] (one rounding: |n| <= 126 keeps the
  // error of ln 2 in float below 2.4e-7 of e, and below 5e-8 where e > 1e-8);
  // exp(-a) = 2^n exp(-u), exp(-u) = 1 - u + u^2 P(u) fitted for relative
  // error (8e-8 in float)
  V u = S::fma(n, S::splat(0.693147182f), clamped);
  V y = S::splat(1.3814662816e-03f);
  y = S::fma(y, u, S::splat(-8.3687109873e-03f));
  y = S::fma(y, u, S::splat(4.1668385267e-02f));
  y = S::fma(y, u, S::splat(-1.6666521132e-01f));
  y = S::fma(y, u, S::splat(4.9999994040e-01f));
  y = S::fma(y, u, S::splat(-1.0f));
  y = S::fma(y, u, S::splat(1.0f));
  return S::mul(y, S::pow2_from_magic(k));
}

// log(1 + e) for e in [0, 1] (NaN propagates): e + e^2 Q(e), Q a degree-7
// least-maximum-error fit (relative error ~1.7e-7), exact for tiny e.
template <class S>
inline typename S::V log1p_unit(typename S::V e) {
  typedef typename S::V V;
  V q = S::splat(0.005384152289479971f);
  q = S::fma(q, e, S::splat(-0.03011130355298519f));
  q = S::fma(q, e, S::splat(0.07921124994754791f));
  q = S::fma(q, e, S::splat(-0.13746662437915802f));
  q = S::fma(q, e, S::splat(0.19145134091377258f));
  q = S::fma(q, e, S::splat(-0.24852949380874634f));
  q = S::fma(q, e, S::splat(0.33320343494415283f));
  q = S::fma(q, e, S::splat(-0.49999552965164185f));
  return S::fma(S::mul(e, e), q, e);
}

// log(x) for x >= 0 (log 0 = -inf, subnormals included): Cephes' logf.
template <class S>
inline typename S::V log_nonnegative(typename S::V x) {
  typedef typename S::V V;
  typedef typename S::M M;
  M subnormal = S::lt(x, S::splat(1.17549435e-38f));
  V scaled = S::select(subnormal, S::mul(x, S::splat(8388608.0f)), x);   // * 2^23
  V f, e;
  S::split_log(scaled, &f, &e);
  e = S::sub(e, S::select(subnormal, S::splat(23.0f), S::splat(0.0f)));
  V z = S::mul(f, f);
  V y = S::splat(7.0376836292e-2f);
  y = S::fma(y, f, S::splat(-1.1514610310e-1f));
  y = S::fma(y, f, S::splat(1.1676998740e-1f));
  y = S::fma(y, f, S::splat(-1.2420140846e-1f));
  y = S::fma(y, f, S::splat(1.4249322787e-1f));
  y = S::fma(y, f, S::splat(-1.6668057665e-1f));
  y = S::fma(y, f, S::splat(2.0000714765e-1f));
  y = S::fma(y, f, S::splat(-2.4999993993e-1f));
  y = S::fma(y, f, S::splat(3.3333331174e-1f));
  y = S::mul(S::mul(y, f), z);
  y = S::fma(e, S::splat(-2.12194440e-4f), y);
  y = S::fnma(S::splat(0.5f), z, y);
  V result = S::fma(e, S::splat(0.693359375f), S::add(f, y));
  return S::select(S::eq(x, S::splat(0.0f)), S::splat(-INFINITY), result);
}

template <>
inline double exp_neg<ScalarDouble>(double a) { return std::exp(-a); }
template <>
inline double log1p_unit<ScalarDouble>(double e) { return std::log1p(e); }
template <>
inline double log_nonnegative<ScalarDouble>(double x) { return std::log(x); }

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_FAST_MATH_H_
