/*
 * 8 float lanes with AVX2, FMA and F16C: the loops' vector type in
 * loops_avx2.cc, the only file compiled for that instruction set.
 * Operations have the semantics of ScalarSimd<float> (simd_scalar.h) lane by
 * lane; masks are all-ones/all-zeros lanes of a __m256.
 */
#ifndef GLUON_FOCAL_SIMD_AVX2_H_
#define GLUON_FOCAL_SIMD_AVX2_H_

#include <immintrin.h>
#include <cstdint>

#include "half_float.h"

namespace gluon_focal {

struct Avx2Float {
  typedef float Scalar;
  typedef __m256 V;
  typedef __m256 M;
  static constexpr int kLanes = 8;

  static V splat(float v) { return _mm256_set1_ps(v); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void store_int32(int32_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm256_cvttps_epi32(v));
  }

  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V abs(V a) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), a); }
  static V reciprocal(V a) {   // 12-bit estimate and one Newton step
    V r = _mm256_rcp_ps(a);
    return _mm256_fmadd_ps(r, _mm256_fnmadd_ps(a, r, _mm256_set1_ps(1.0f)), r);
  }
  static V round(V a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static V select(M m, V a, V b) { return _mm256_blendv_ps(b, a, m); }
  static V negate_if(M m, V a) { return _mm256_xor_ps(a, _mm256_and_ps(m, _mm256_set1_ps(-0.0f))); }
  static V zero_unless(M m, V a) { return _mm256_and_ps(m, a); }

  static M sign_bit(V a) { return _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_castps_si256(a), 31)); }
  static M eq(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
  static M ne(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_NEQ_UQ); }
  static M ge(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GE_OQ); }
  static M gt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_GT_OQ); }
  static M le(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
  static M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static M mask_and(M a, M b) { return _mm256_and_ps(a, b); }
  static M mask_or(M a, M b) { return _mm256_or_ps(a, b); }
  static M mask_andnot(M a, M b) { return _mm256_andnot_ps(a, b); }
  static M mask_not(M a) { return _mm256_xor_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(-1))); }
  static M first_lanes(int n) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  }
  static bool all(M m) { return _mm256_movemask_ps(m) == 0xff; }
  static bool any(M m) { return _mm256_movemask_ps(m) != 0; }
  static int first_set(M m) { return __builtin_ctz(_mm256_movemask_ps(m)); }

  static V pow2_from_magic(V k) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(k), 23));
  }

  static void split_log(V x, V* f, V* e) {
    __m256i u = _mm256_castps_si256(x);
    V exponent = _mm256_cvtepi32_ps(
        _mm256_sub_epi32(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(127)));
    V m = _mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffff)),
                                              _mm256_set1_epi32(0x3f800000)));
    V big = _mm256_cmp_ps(m, _mm256_set1_ps(1.41421356f), _CMP_GE_OQ);
    m = _mm256_blendv_ps(m, _mm256_mul_ps(m, _mm256_set1_ps(0.5f)), big);
    *e = _mm256_add_ps(exponent, _mm256_and_ps(big, _mm256_set1_ps(1.0f)));
    *f = _mm256_sub_ps(m, _mm256_set1_ps(1.0f));
  }

  static void load_codes(const int8_t* c, M* valid, M* positive) {
    __m256i v = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(c)));
    *valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(v, _mm256_set1_epi32(-1)));
    *positive = _mm256_castsi256_ps(_mm256_cmpeq_epi32(v, _mm256_set1_epi32(1)));
  }

  struct Sum { __m256d lo, hi; };
  static void sum_zero(Sum* s) { s->lo = s->hi = _mm256_setzero_pd(); }
  static void sum_add(Sum* s, V v) {
    s->lo = _mm256_add_pd(s->lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    s->hi = _mm256_add_pd(s->hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  static double sum_total(const Sum& s) {
    alignas(32) double t[4];
    _mm256_store_pd(t, _mm256_add_pd(s.lo, s.hi));
    return (t[0] + t[1]) + (t[2] + t[3]);
  }

  static void half_to_float(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = half_to_float_soft(src[i]);
  }
  static void float_to_half(const float* src, uint16_t* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; ++i) dst[i] = float_to_half_soft(src[i]);
  }
};

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_SIMD_AVX2_H_
