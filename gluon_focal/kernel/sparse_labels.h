/*
 * Sparse labels to class indices, a vector of labels at a time, written once
 * over the vector type S and instantiated by each instruction set's loops.
 * The driver (compute.cc) turns the indices into per-element codes.
 */
#ifndef GLUON_FOCAL_SPARSE_LABELS_H_
#define GLUON_FOCAL_SPARSE_LABELS_H_

#include <cstdint>

#include "chunk_kernels.h"

namespace gluon_focal {

// classes[i] = the class of labels[i] (an integer in [0, C)), or
// kIgnoredLabel / kBackgroundLabel (these win, in that order, even inside
// [0, C)), or kNotAClass (anything else, NaN included).
template <class S>
void classify_sparse_labels(const float* labels, int64_t n, const CallConstants<float>& k,
                            int32_t* classes) {
  typedef typename S::V V;
  typedef typename S::M M;
  const V zero = S::splat(0), num_classes = S::splat(k.num_classes);
  const V ignore_label = S::splat(k.ignore_label), background_label = S::splat(k.background_label);
  auto classify = [&](V label) {
    M is_class = S::mask_and(S::mask_and(S::eq(label, S::round(label)), S::ge(label, zero)),
                             S::lt(label, num_classes));
    V c = S::select(is_class, label, S::splat(static_cast<float>(kNotAClass)));
    c = S::select(S::eq(label, background_label), S::splat(static_cast<float>(kBackgroundLabel)), c);
    return S::select(S::eq(label, ignore_label), S::splat(static_cast<float>(kIgnoredLabel)), c);
  };
  int64_t i = 0;
  for (; i + S::kLanes <= n; i += S::kLanes) S::store_int32(classes + i, classify(S::load(labels + i)));
  if (i < n) {   // the same code on a padded copy
    alignas(64) float rest[S::kLanes] = {};
    alignas(64) int32_t rest_classes[S::kLanes];
    for (int64_t j = i; j < n; ++j) rest[j - i] = labels[j];
    S::store_int32(rest_classes, classify(S::load(rest)));
    for (int64_t j = i; j < n; ++j) classes[j] = rest_classes[j - i];
  }
}

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_SPARSE_LABELS_H_
