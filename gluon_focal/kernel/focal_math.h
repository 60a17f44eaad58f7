/*
 * gluon-focal: per-element sigmoid focal loss math.
 *
 * Everything in this header is pure per-element arithmetic written against a
 * tiny set of primitives (vexp, vlog, vlog1p01, vselect, ...).  The CPU
 * kernel instantiates it with V = float / double (scalar) and with an AVX2
 * 8-lane wrapper; a CUDA twin would instantiate it with V = float and
 * GF_HD = __host__ __device__ (the scalar primitives below use only
 * arithmetic and bit casts, no libc calls for float).
 *
 * Semantics follow tests/reference.py (Lin et al. 2017, eq. 5, generalised to
 * soft targets):
 *   p = sigmoid(x) (or clip(x, eps, 1-eps) when from_sigmoid), q = 1 - p
 *   ce = -(t log p + (1-t) log q),  m = 1 - p_t = t q + (1-t) p
 *   FL = a_t m^gamma ce,            a_t = a t + (1-a)(1-t)
 * Logits are handled in the overflow-free log-sigmoid form; q is sigmoid(-x),
 * never 1 - sigmoid(x).  Gradients are the exact derivatives, written in the
 * log domain where powers could overflow.
 */
#ifndef GLUON_FOCAL_FOCAL_MATH_H_
#define GLUON_FOCAL_FOCAL_MATH_H_

#include <cstdint>
#include <cstring>
#include <cmath>

#ifndef GF_HD
#define GF_HD
#endif
#define GF_INLINE GF_HD inline __attribute__((always_inline))

namespace gluon_focal {

// gamma specialisations: 0 (plain BCE), 1, 2 (RetinaNet default), general.
enum GammaMode { kGamma0 = 0, kGamma1 = 1, kGamma2 = 2, kGammaAny = 3 };

/* ------------------------------------------------------------------ */
/* scalar primitives                                                   */
/* ------------------------------------------------------------------ */
GF_INLINE float gf_bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
GF_INLINE uint32_t gf_float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// exp(x) for float, ~1 ulp on [-104, 88.7], gradual underflow, NaN propagates.
GF_INLINE float gf_expf(float x) {
  if (!(x == x)) return x;
  float xc = x < -104.0f ? -104.0f : x;
  xc = xc > 88.7228f ? 88.7228f : xc;
  float n = std::nearbyint(xc * 1.44269504088896341f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500E-4f;
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * (r * r) + r + 1.0f;
  int ni = static_cast<int>(n);
  int n1 = ni >> 1;         // floor(n/2)
  int n2 = ni - n1;
  y = y * gf_bits_to_float(static_cast<uint32_t>(n1 + 127) << 23);
  return y * gf_bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
}

// Cephes logf polynomial: log(1+f) - f + f^2/2 for f in [sqrt(.5)-1, sqrt(2)-1]
GF_INLINE float gf_log_poly(float f) {
  float z = f * f;
  float y = 7.0376836292E-2f;
  y = y * f + -1.1514610310E-1f;
  y = y * f + 1.1676998740E-1f;
  y = y * f + -1.2420140846E-1f;
  y = y * f + 1.4249322787E-1f;
  y = y * f + -1.6668057665E-1f;
  y = y * f + 2.0000714765E-1f;
  y = y * f + -2.4999993993E-1f;
  y = y * f + 3.3333331174E-1f;
  y = y * f * z;
  return y - 0.5f * z;
}

// natural log for float x >= 0 (denormals handled), log(0) = -inf.
GF_INLINE float gf_logf(float x) {
  if (!(x > 0.0f)) return x == 0.0f ? -INFINITY : NAN;
  if (x == INFINITY) return x;
  float e_adj = 0.0f;
  if (x < 1.17549435e-38f) { x *= 8388608.0f; e_adj = -23.0f; }
  uint32_t u = gf_float_to_bits(x);
  float e = static_cast<float>(static_cast<int>((u >> 23) & 0xff) - 126) + e_adj;
  float m = gf_bits_to_float((u & 0x7fffffu) | 0x3f000000u);  // [0.5, 1)
  if (m < 0.707106781186547524f) { e -= 1.0f; m = m + m - 1.0f; } else { m = m - 1.0f; }
  float y = gf_log_poly(m);
  y = y + e * -2.12194440e-4f;
  return m + y + e * 0.693359375f;
}

// log(1 + e) for e in [0, 1] (the softplus tail), accurate for tiny e.
GF_INLINE float gf_log1p01f(float e) {
  bool hi = e >= 0.414213562373095f;
  float f = hi ? (e - 1.0f) * 0.5f : e;   // 1+e = 2 (1+f)
  float k = hi ? 1.0f : 0.0f;
  float y = f + gf_log_poly(f);
  return y + k * -2.12194440e-4f + k * 0.693359375f;
}

/* primitives overloaded per vector type.  scalar float / double: */
GF_INLINE float vexp(float x) { return gf_expf(x); }
GF_INLINE float vlog(float x) { return gf_logf(x); }
GF_INLINE float vlog1p01(float x) { return gf_log1p01f(x); }
GF_INLINE float vmax(float a, float b) { return a > b ? a : b; }
GF_INLINE float vmin(float a, float b) { return a < b ? a : b; }
GF_INLINE float vabs(float a) { return std::fabs(a); }
GF_INLINE float vselect(bool m, float a, float b) { return m ? a : b; }
template <class V> GF_INLINE V vconst(float f) { return static_cast<V>(f); }

GF_INLINE double vexp(double x) { return std::exp(x); }
GF_INLINE double vlog(double x) { return std::log(x); }
GF_INLINE double vlog1p01(double x) { return std::log1p(x); }
GF_INLINE double vmax(double a, double b) { return a > b ? a : b; }
GF_INLINE double vmin(double a, double b) { return a < b ? a : b; }
GF_INLINE double vabs(double a) { return std::fabs(a); }
GF_INLINE double vselect(bool m, double a, double b) { return m ? a : b; }

GF_INLINE bool mask_ge(float a, float b) { return a >= b; }
GF_INLINE bool mask_eq(float a, float b) { return a == b; }
GF_INLINE bool mask_ge(double a, double b) { return a >= b; }
GF_INLINE bool mask_eq(double a, double b) { return a == b; }
GF_INLINE bool mask_and(bool a, bool b) { return a && b; }

/* ------------------------------------------------------------------ */
/* IEEE half <-> float in software (no F16C needed)                     */
/* ------------------------------------------------------------------ */
GF_INLINE float gf_half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t ex = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (ex == 0) {
    float v = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -v : v;
  }
  if (ex == 31) return gf_bits_to_float(sign | 0x7f800000u | (mant << 13));
  return gf_bits_to_float(sign | ((ex + 112u) << 23) | (mant << 13));
}

GF_INLINE uint16_t gf_float_to_half(float x) {
  uint32_t f = gf_float_to_bits(x);
  uint32_t sign = (f >> 16) & 0x8000u;
  f &= 0x7fffffffu;
  if (f >= 0x7f800000u) return static_cast<uint16_t>(sign | (f > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (f >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);   // rounds to inf
  if (f < 0x38800000u) {  // half subnormal / zero: let the FPU round to 2^-24
    float t = gf_bits_to_float(f) + 0.5f;
    return static_cast<uint16_t>(sign | (gf_float_to_bits(t) - 0x3f000000u));
  }
  uint32_t odd = (f >> 13) & 1u;
  f += 0xc8000fffu + odd;  // rebias exponent, round to nearest even
  return static_cast<uint16_t>(sign | (f >> 13));
}

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_FOCAL_MATH_H_
