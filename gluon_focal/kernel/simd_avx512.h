/*
 * 16 float lanes with AVX-512 (F, BW, DQ, VL): the loops' vector type in
 * loops_avx512.cc, the only file compiled for that instruction set.
 * Operations have the semantics of ScalarSimd<float> (simd_scalar.h) lane by lane.
 */
#ifndef GLUON_FOCAL_SIMD_AVX512_H_
#define GLUON_FOCAL_SIMD_AVX512_H_

#include <immintrin.h>
#include <cstdint>

#include "half_float.h"

namespace gluon_focal {

struct Avx512Float {
  typedef float Scalar;
  typedef __m512 V;
  typedef __mmask16 M;
  static constexpr int kLanes = 16;

  static V splat(float v) { return _mm512_set1_ps(v); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static void store_int32(int32_t* p, V v) {
    _mm512_storeu_si512(reinterpret_cast<__m512i*>(p), _mm512_cvttps_epi32(v));
  }

  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V abs(V a) { return _mm512_abs_ps(a); }
  static V reciprocal(V a) {   // 14-bit estimate and one Newton step
    V r = _mm512_rcp14_ps(a);
    return _mm512_fmadd_ps(r, _mm512_fnmadd_ps(a, r, _mm512_set1_ps(1.0f)), r);
  }
  static V round(V a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V select(M m, V a, V b) { return _mm512_mask_blend_ps(m, b, a); }
  static V negate_if(M m, V a) { return _mm512_mask_xor_ps(a, m, a, _mm512_set1_ps(-0.0f)); }
  static V zero_unless(M m, V a) { return _mm512_maskz_mov_ps(m, a); }

  static M sign_bit(V a) { return _mm512_movepi32_mask(_mm512_castps_si512(a)); }
  static M eq(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
  static M ne(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_NEQ_UQ); }
  static M ge(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GE_OQ); }
  static M gt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static M le(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
  static M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static M mask_and(M a, M b) { return _kand_mask16(a, b); }
  static M mask_or(M a, M b) { return _kor_mask16(a, b); }
  static M mask_andnot(M a, M b) { return _kandn_mask16(a, b); }
  static M mask_not(M a) { return _knot_mask16(a); }
  static M first_lanes(int n) { return static_cast<M>((1u << n) - 1u); }
  static bool all(M m) { return m == 0xffff; }
  static bool any(M m) { return m != 0; }
  static int first_set(M m) { return __builtin_ctz(m); }

  static V pow2_from_magic(V k) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(k), 23));
  }

  static void split_log(V x, V* f, V* e) {
    __m512i u = _mm512_castps_si512(x);
    V exponent = _mm512_cvtepi32_ps(
        _mm512_sub_epi32(_mm512_srli_epi32(u, 23), _mm512_set1_epi32(127)));
    V m = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffff)),
                                              _mm512_set1_epi32(0x3f800000)));
    M big = _mm512_cmp_ps_mask(m, _mm512_set1_ps(1.41421356f), _CMP_GE_OQ);
    m = _mm512_mask_mul_ps(m, big, m, _mm512_set1_ps(0.5f));
    *e = _mm512_mask_add_ps(exponent, big, exponent, _mm512_set1_ps(1.0f));
    *f = _mm512_sub_ps(m, _mm512_set1_ps(1.0f));
  }

  static void load_codes(const int8_t* c, M* valid, M* positive) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(c));
    *valid = _knot_mask16(_mm_movepi8_mask(v));
    *positive = _mm_cmpeq_epi8_mask(v, _mm_set1_epi8(1));
  }

  struct Sum { __m512d lo, hi; };
  static void sum_zero(Sum* s) { s->lo = s->hi = _mm512_setzero_pd(); }
  static void sum_add(Sum* s, V v) {
    s->lo = _mm512_add_pd(s->lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    s->hi = _mm512_add_pd(s->hi, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
  }
  static double sum_total(const Sum& s) { return _mm512_reduce_add_pd(_mm512_add_pd(s.lo, s.hi)); }

  static void half_to_float(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
    for (; i < n; ++i) dst[i] = half_to_float_soft(src[i]);
  }
  static void float_to_half(const float* src, uint16_t* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                          _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) dst[i] = float_to_half_soft(src[i]);
  }
};

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_SIMD_AVX512_H_
