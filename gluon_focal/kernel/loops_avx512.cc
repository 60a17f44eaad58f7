// The loops for AVX-512 F/BW/DQ/VL (build.py compiles this file alone with
// those flags; compute.cc calls it only on CPUs that have them).
#include "chunk_loop.h"
#include "sparse_labels.h"
#include "simd_avx512.h"

namespace gluon_focal {

const KernelTable& avx512_kernels() {
  static const KernelTable table = {&pick_chunk_kernel<Avx512Float>, scalar_kernels().pick_double,
                                    &classify_sparse_labels<Avx512Float>, &Avx512Float::half_to_float,
                                    &Avx512Float::float_to_half};
  return table;
}

}  // namespace gluon_focal
