// The loops for AVX2 + FMA + F16C (build.py compiles this file alone with
// -mavx2 -mfma -mf16c; compute.cc calls it only on CPUs that have them).
#include "chunk_loop.h"
#include "sparse_labels.h"
#include "simd_avx2.h"

namespace gluon_focal {

const KernelTable& avx2_kernels() {
  static const KernelTable table = {&pick_chunk_kernel<Avx2Float>, scalar_kernels().pick_double,
                                    &classify_sparse_labels<Avx2Float>, &Avx2Float::half_to_float,
                                    &Avx2Float::float_to_half};
  return table;
}

}  // namespace gluon_focal
