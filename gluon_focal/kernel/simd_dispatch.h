// Which loops run: the best instruction set of this CPU, or a lower one for tests.
#ifndef GLUON_FOCAL_SIMD_DISPATCH_H_
#define GLUON_FOCAL_SIMD_DISPATCH_H_

#include "chunk_kernels.h"

namespace gluon_focal {

enum class SimdLevel { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };

SimdLevel cpu_simd_level();              // what this CPU (and OS) supports
void limit_simd_level(SimdLevel level);  // use at most this level (kAvx512: no limit)
SimdLevel active_simd_level();
const KernelTable& active_kernels();

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_SIMD_DISPATCH_H_
