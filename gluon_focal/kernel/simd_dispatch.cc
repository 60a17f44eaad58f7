#include "simd_dispatch.h"

#include <algorithm>
#include <atomic>

namespace gluon_focal {
namespace {

std::atomic<int> g_level_limit{static_cast<int>(SimdLevel::kAvx512)};

SimdLevel detect() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();   // libgcc also checks that the OS saves the vector registers
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return SimdLevel::kAvx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return SimdLevel::kAvx2;
#endif
  return SimdLevel::kScalar;
}

}  // namespace

SimdLevel cpu_simd_level() {
  static const SimdLevel level = detect();
  return level;
}

void limit_simd_level(SimdLevel level) { g_level_limit.store(static_cast<int>(level)); }

SimdLevel active_simd_level() {
  return static_cast<SimdLevel>(std::min(static_cast<int>(cpu_simd_level()), g_level_limit.load()));
}

const KernelTable& active_kernels() {
#if defined(__x86_64__) || defined(__i386__)   // build.py compiles the x86 loops only there
  switch (active_simd_level()) {
    case SimdLevel::kAvx512: return avx512_kernels();
    case SimdLevel::kAvx2: return avx2_kernels();
    default: break;
  }
#endif
  return scalar_kernels();
}

}  // namespace gluon_focal
