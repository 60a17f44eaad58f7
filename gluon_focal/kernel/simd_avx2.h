/*
 * gluon-focal: 8-lane AVX2/FMA float wrapper with the primitive set used by
 * focal_math.h.  Must be included inside a region compiled for
 * avx2,fma,f16c (see focal_loss_op.cc); the caller checks the CPU at runtime.
 * The algorithms mirror the scalar gf_expf / gf_logf / gf_log1p01f exactly.
 */
#ifndef GLUON_FOCAL_SIMD_AVX2_H_
#define GLUON_FOCAL_SIMD_AVX2_H_

#include <immintrin.h>
#include "focal_math.h"

namespace gluon_focal {
namespace avx2 {

struct VF8 { __m256 v; };
struct MF8 { __m256 m; };

#define GF_AI static inline __attribute__((always_inline))

GF_AI VF8 mk(__m256 v) { VF8 r; r.v = v; return r; }
GF_AI MF8 mkm(__m256 v) { MF8 r; r.m = v; return r; }
GF_AI VF8 operator+(VF8 a, VF8 b) { return mk(_mm256_add_ps(a.v, b.v)); }
GF_AI VF8 operator-(VF8 a, VF8 b) { return mk(_mm256_sub_ps(a.v, b.v)); }
GF_AI VF8 operator*(VF8 a, VF8 b) { return mk(_mm256_mul_ps(a.v, b.v)); }
GF_AI VF8 operator/(VF8 a, VF8 b) { return mk(_mm256_div_ps(a.v, b.v)); }
GF_AI VF8 splat(float f) { return mk(_mm256_set1_ps(f)); }
GF_AI VF8 vmax(VF8 a, VF8 b) { return mk(_mm256_max_ps(a.v, b.v)); }
GF_AI VF8 vmin(VF8 a, VF8 b) { return mk(_mm256_min_ps(a.v, b.v)); }
GF_AI VF8 vabs(VF8 a) {
  return mk(_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v));
}
GF_AI VF8 vselect(MF8 m, VF8 a, VF8 b) { return mk(_mm256_blendv_ps(b.v, a.v, m.m)); }
GF_AI MF8 mask_ge(VF8 a, VF8 b) { return mkm(_mm256_cmp_ps(a.v, b.v, _CMP_GE_OQ)); }
GF_AI MF8 mask_eq(VF8 a, VF8 b) { return mkm(_mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ)); }
GF_AI MF8 mask_ne(VF8 a, VF8 b) { return mkm(_mm256_cmp_ps(a.v, b.v, _CMP_NEQ_UQ)); }
GF_AI MF8 mask_and(MF8 a, MF8 b) { return mkm(_mm256_and_ps(a.m, b.m)); }
GF_AI VF8 fmadd(VF8 a, VF8 b, VF8 c) { return mk(_mm256_fmadd_ps(a.v, b.v, c.v)); }

GF_AI VF8 vexp(VF8 x) {
  // operand order keeps NaN: max/min return the second operand on NaN
  __m256 xc = _mm256_max_ps(_mm256_set1_ps(-104.0f), x.v);
  xc = _mm256_min_ps(_mm256_set1_ps(88.7228f), xc);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  // same rounding sequence as the scalar version (mul then sub, no fma) so
  // that scalar tails and vector bodies agree bit for bit
  __m256 r = _mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(0.693359375f)));
  r = _mm256_sub_ps(r, _mm256_mul_ps(n, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, r), _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(y, _mm256_mul_ps(r, r)), r),
                    _mm256_set1_ps(1.0f));
  __m256i ni = _mm256_cvtps_epi32(n);
  __m256i n1 = _mm256_srai_epi32(ni, 1);
  __m256i n2 = _mm256_sub_epi32(ni, n1);
  __m256i b127 = _mm256_set1_epi32(127);
  __m256 s1 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n1, b127), 23));
  __m256 s2 = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n2, b127), 23));
  return mk(_mm256_mul_ps(_mm256_mul_ps(y, s1), s2));
}

GF_AI __m256 log_poly(__m256 f) {
  __m256 z = _mm256_mul_ps(f, f);
  __m256 y = _mm256_set1_ps(7.0376836292E-2f);
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(-1.1514610310E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(1.1676998740E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(-1.2420140846E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(1.4249322787E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(-1.6668057665E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(2.0000714765E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(-2.4999993993E-1f));
  y = _mm256_add_ps(_mm256_mul_ps(y, f), _mm256_set1_ps(3.3333331174E-1f));
  y = _mm256_mul_ps(_mm256_mul_ps(y, f), z);
  return _mm256_sub_ps(y, _mm256_mul_ps(_mm256_set1_ps(0.5f), z));
}

GF_AI VF8 vlog(VF8 xv) {
  __m256 x = xv.v;
  __m256 zero = _mm256_setzero_ps();
  __m256 is_zero = _mm256_cmp_ps(x, zero, _CMP_EQ_OQ);
  __m256 not_pos = _mm256_cmp_ps(x, zero, _CMP_NGT_UQ);   // x <= 0 or NaN
  __m256 is_inf = _mm256_cmp_ps(x, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ);
  __m256 den = _mm256_cmp_ps(x, _mm256_set1_ps(1.17549435e-38f), _CMP_LT_OQ);
  x = _mm256_blendv_ps(x, _mm256_mul_ps(x, _mm256_set1_ps(8388608.0f)), den);
  __m256 eadj = _mm256_and_ps(den, _mm256_set1_ps(-23.0f));
  __m256i u = _mm256_castps_si256(x);
  __m256i ei = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(0xff)),
                                _mm256_set1_epi32(126));
  __m256 e = _mm256_add_ps(_mm256_cvtepi32_ps(ei), eadj);
  __m256 m = _mm256_castsi256_ps(_mm256_or_si256(
      _mm256_and_si256(u, _mm256_set1_epi32(0x7fffff)), _mm256_set1_epi32(0x3f000000)));
  __m256 small = _mm256_cmp_ps(m, _mm256_set1_ps(0.707106781186547524f), _CMP_LT_OQ);
  e = _mm256_sub_ps(e, _mm256_and_ps(small, _mm256_set1_ps(1.0f)));
  __m256 one = _mm256_set1_ps(1.0f);
  m = _mm256_blendv_ps(_mm256_sub_ps(m, one), _mm256_sub_ps(_mm256_add_ps(m, m), one), small);
  __m256 y = log_poly(m);
  y = _mm256_add_ps(y, _mm256_mul_ps(e, _mm256_set1_ps(-2.12194440e-4f)));
  __m256 res = _mm256_add_ps(_mm256_add_ps(m, y), _mm256_mul_ps(e, _mm256_set1_ps(0.693359375f)));
  res = _mm256_blendv_ps(res, _mm256_set1_ps(NAN), not_pos);
  res = _mm256_blendv_ps(res, _mm256_set1_ps(-INFINITY), is_zero);
  res = _mm256_blendv_ps(res, x, is_inf);
  return mk(res);
}

GF_AI VF8 vlog1p01(VF8 ev) {
  __m256 e = ev.v;
  __m256 hi = _mm256_cmp_ps(e, _mm256_set1_ps(0.414213562373095f), _CMP_GE_OQ);
  __m256 f = _mm256_blendv_ps(
      e, _mm256_mul_ps(_mm256_sub_ps(e, _mm256_set1_ps(1.0f)), _mm256_set1_ps(0.5f)), hi);
  __m256 k = _mm256_and_ps(hi, _mm256_set1_ps(1.0f));
  __m256 y = _mm256_add_ps(f, log_poly(f));
  y = _mm256_add_ps(y, _mm256_mul_ps(k, _mm256_set1_ps(-2.12194440e-4f)));
  return mk(_mm256_add_ps(y, _mm256_mul_ps(k, _mm256_set1_ps(0.693359375f))));
}

}  // namespace avx2

template <> inline __attribute__((always_inline)) avx2::VF8 vconst<avx2::VF8>(float f) {
  return avx2::mk(_mm256_set1_ps(f));
}
}  // namespace gluon_focal

#endif  // GLUON_FOCAL_SIMD_AVX2_H_
