/*
 * IEEE half <-> float in software, for CPUs without F16C and for single
 * values (labels quoted in error messages, reduced float16 outputs).
 * static: every translation unit, whatever its instruction set, has its own copy.
 */
#ifndef GLUON_FOCAL_HALF_FLOAT_H_
#define GLUON_FOCAL_HALF_FLOAT_H_

#include <cstdint>
#include <cstring>

namespace gluon_focal {

static inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

static inline float half_to_float_soft(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    float v = static_cast<float>(mantissa) * 5.9604644775390625e-8f;  // 2^-24
    return sign ? -v : v;
  }
  if (exponent == 31) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_to_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

static inline uint16_t float_to_half_soft(float x) {
  uint32_t f = float_to_bits(x);
  uint32_t sign = (f >> 16) & 0x8000u;
  f &= 0x7fffffffu;
  if (f >= 0x7f800000u) return static_cast<uint16_t>(sign | (f > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (f >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);   // rounds to inf
  if (f < 0x38800000u) {  // half subnormal or zero: let the FPU round to 2^-24
    float t = bits_to_float(f) + 0.5f;
    return static_cast<uint16_t>(sign | (float_to_bits(t) - 0x3f000000u));
  }
  uint32_t odd = (f >> 13) & 1u;
  f += 0xc8000fffu + odd;  // rebias the exponent, round to nearest even
  return static_cast<uint16_t>(sign | (f >> 13));
}

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_HALF_FLOAT_H_
