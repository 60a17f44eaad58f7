// The loops for any CPU (compiled without instruction-set flags); also the
// float64 loops of every instruction set.
#include "chunk_loop.h"
#include "sparse_labels.h"
#include "simd_scalar.h"

namespace gluon_focal {

const KernelTable& scalar_kernels() {
  static const KernelTable table = {&pick_chunk_kernel<ScalarFloat>, &pick_chunk_kernel<ScalarDouble>,
                                    &classify_sparse_labels<ScalarFloat>, &ScalarFloat::half_to_float,
                                    &ScalarFloat::float_to_half};
  return table;
}

}  // namespace gluon_focal
