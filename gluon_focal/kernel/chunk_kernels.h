/*
 * The interface between the chunk driver (compute.cc, plain x86-64 code) and
 * the per-ISA loops (loops_scalar.cc, loops_avx2.cc, loops_avx512.cc, each
 * compiled for its own instruction set).  A chunk is a contiguous run of pred
 * elements, already converted to the compute type; the loops compute the loss
 * (forward) or its gradient (backward) of every element and check the values
 * they read.
 */
#ifndef GLUON_FOCAL_CHUNK_KERNELS_H_
#define GLUON_FOCAL_CHUNK_KERNELS_H_

#include <cstdint>

namespace gluon_focal {

enum class Pass { kForward, kBackward };

// gamma values with a cheaper modulating factor than the general power.
enum class GammaKind { kZero, kOne, kTwo, kAny };

// Where an element's target comes from.
enum class TargetSource {
  kDense,       // targets[i] in [0, 1] (soft targets allowed)
  kBinary,      // targets[i] in {0, 1}
  kSparseRow,   // sparse labels[i] along a row of one class: t = (label == row_class)
  kSparseCode,  // per-element codes built by the driver: 1 positive, 0 negative, -1 ignored
};

// What a sparse label says about its position, besides a class in [0, C).
enum SparseLabelKind : int32_t { kIgnoredLabel = -1, kBackgroundLabel = -2, kNotAClass = -3 };

// Constants of one operator call, in the compute type CT.
template <class CT>
struct CallConstants {
  CT gamma, eps, one_minus_eps;
  CT ignore_label;       // NaN when there is none (never equal to anything)
  CT background_label;   // NaN when there is none
  CT num_classes;
};

// One chunk.  Pointers are already offset to the chunk's first element.
template <class CT>
struct Chunk {
  int64_t len;
  const CT* pred;
  CT* out;                 // loss (forward, elementwise) or gradient (backward); null: sum only
  const CT* out_grad;      // backward, elementwise: head gradient per element; else null
  CT coef;                 // multiplies every written value (scale, or scale * head grad / denominator)
  const CT* labels;        // kDense, kBinary, kSparseRow
  const int8_t* codes;     // kSparseCode
  CT row_class;            // kSparseRow
  CT alpha0, alpha1;       // alpha_t = alpha1 for positives, alpha0 for negatives ...
  const CT* alpha0_by_offset;  // ... or, per class in the pattern layout: alpha0 and
  const CT* alpha1_by_offset;  //     alpha1 of the element at offset k of a super-row
  int64_t alpha_period;        //     (of this period); null otherwise
  bool check_labels;       // validate labels (kSparseCode labels are checked by the driver)
  bool check_pred;         // validate probabilities (from_sigmoid)
};

// What a chunk gives back.  Positions are chunk offsets, -1 when none.
struct ChunkResult {
  double sum = 0.0;              // forward: sum of the (unscaled) valid losses
  int64_t first_bad_label = -1;  // first label outside its mode's range
  int64_t first_bad_pred = -1;   // first probability outside [0, 1]
};

template <class CT>
using ChunkKernel = void (*)(const Chunk<CT>&, const CallConstants<CT>&, ChunkResult*);

// The loops of one instruction set.
struct KernelTable {
  // float compute (float32 and float16 pred)
  ChunkKernel<float> (*pick_float)(Pass, GammaKind, bool from_sigmoid, TargetSource);
  // float64 compute
  ChunkKernel<double> (*pick_double)(Pass, GammaKind, bool from_sigmoid, TargetSource);
  // sparse_labels.h: labels (as float) to class indices or SparseLabelKind
  void (*classify_sparse_labels)(const float* labels, int64_t n, const CallConstants<float>& k,
                                 int32_t* classes);
  void (*half_to_float)(const uint16_t* src, float* dst, int64_t n);
  void (*float_to_half)(const float* src, uint16_t* dst, int64_t n);
};

const KernelTable& scalar_kernels();
const KernelTable& avx2_kernels();     // only on CPUs with AVX2, FMA and F16C
const KernelTable& avx512_kernels();   // only on CPUs with AVX-512 F, BW, DQ and VL

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_CHUNK_KERNELS_H_
