/*
 * One-lane "vector" of float or double: the portable instantiation of the
 * loops (any CPU) and the float64 compute path.  The operations mirror the
 * vector types' semantics exactly (min/max operand order included), so that
 * every path runs the same algorithm.
 */
#ifndef GLUON_FOCAL_SIMD_SCALAR_H_
#define GLUON_FOCAL_SIMD_SCALAR_H_

#include <cmath>
#include <cstdint>
#include <cstring>

#include "half_float.h"

namespace gluon_focal {

template <class T>
struct ScalarSimd {
  typedef T Scalar;
  typedef T V;
  typedef bool M;
  static constexpr int kLanes = 1;

  static V splat(T v) { return v; }
  static V load(const T* p) { return *p; }
  static void store(T* p, V v) { *p = v; }
  static void store_int32(int32_t* p, V v) { *p = static_cast<int32_t>(v); }

  static V add(V a, V b) { return a + b; }
  static V sub(V a, V b) { return a - b; }
  static V mul(V a, V b) { return a * b; }
  static V div(V a, V b) { return a / b; }
  static V fma(V a, V b, V c) { return a * b + c; }     // a b + c
  static V fnma(V a, V b, V c) { return c - a * b; }    // c - a b
  static V min(V a, V b) { return a < b ? a : b; }      // b when either is NaN, like minps
  static V max(V a, V b) { return a > b ? a : b; }
  static V abs(V a) { return std::fabs(a); }
  static V reciprocal(V a) { return T(1) / a; }
  static V round(V a) { return std::nearbyint(a); }
  static V select(M m, V a, V b) { return m ? a : b; }
  static V negate_if(M m, V a) { return m ? -a : a; }
  static V zero_unless(M m, V a) { return m ? a : T(0); }

  static M sign_bit(V a) { return std::signbit(a); }
  static M eq(V a, V b) { return a == b; }
  static M ne(V a, V b) { return !(a == b); }
  static M ge(V a, V b) { return a >= b; }
  static M gt(V a, V b) { return a > b; }
  static M le(V a, V b) { return a <= b; }
  static M lt(V a, V b) { return a < b; }
  static M mask_and(M a, M b) { return a && b; }
  static M mask_or(M a, M b) { return a || b; }
  static M mask_andnot(M a, M b) { return !a && b; }   // (not a) and b
  static M mask_not(M a) { return !a; }
  static M first_lanes(int n) { return n > 0; }
  static bool all(M m) { return m; }
  static bool any(M m) { return m; }
  static int first_set(M) { return 0; }

  // 2^n for n in [-126, 0], given k = n + kPow2Magic (n in k's low mantissa bits)
  static V pow2_from_magic(float k) {
    uint32_t bits;
    std::memcpy(&bits, &k, 4);
    bits <<= 23;
    float r;
    std::memcpy(&r, &bits, 4);
    return r;
  }

  // x = (1 + f) 2^e with 1 + f in [sqrt(1/2), sqrt(2)), for normal x > 0
  static void split_log(float x, float* f, float* e) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    float exponent = static_cast<float>(static_cast<int>(u >> 23) - 127);
    uint32_t mant_bits = (u & 0x7fffffu) | 0x3f800000u;   // [1, 2)
    float m;
    std::memcpy(&m, &mant_bits, 4);
    if (m >= 1.41421356f) { m *= 0.5f; exponent += 1.0f; }
    *f = m - 1.0f;
    *e = exponent;
  }

  static void load_codes(const int8_t* c, M* valid, M* positive) {
    *valid = *c >= 0;
    *positive = *c == 1;
  }

  // sums: float lanes folded into double
  typedef double Sum;
  static void sum_zero(Sum* s) { *s = 0.0; }
  static void sum_add(Sum* s, V v) { *s += static_cast<double>(v); }
  static double sum_total(const Sum& s) { return s; }

  static void half_to_float(const uint16_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float_soft(src[i]);
  }
  static void float_to_half(const float* src, uint16_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = float_to_half_soft(src[i]);
  }
};

typedef ScalarSimd<float> ScalarFloat;
typedef ScalarSimd<double> ScalarDouble;

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_SIMD_SCALAR_H_
