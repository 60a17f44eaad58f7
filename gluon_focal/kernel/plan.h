/*
 * Shapes and work split of one call.
 *
 * Geometry: pred is viewed as [outer, batch, per_sample] where per_sample is
 * super_rows_per_sample super-rows of C x inner elements (C classes, inner =
 * the size of the axes after the class axis).  Chunks never straddle a
 * sample; their split does not depend on the thread count, and per-sample
 * sums add chunk results in chunk order, so results are bit-identical for
 * any number of threads.
 *   pattern layout (inner < kRowLayoutMinInner): a chunk is whole super-rows;
 *       the class of an element follows a pattern of period C x inner.
 *   row layout: a chunk is a piece of one class row of `inner` elements.
 */
#ifndef GLUON_FOCAL_PLAN_H_
#define GLUON_FOCAL_PLAN_H_

#include <cstdint>
#include <string>
#include <vector>

#include "attributes.h"

namespace gluon_focal {

// Which layouts the kernel takes (the one place that decides; Python asks it
// through gluon_focal_layout_problem): it reduces per sample only when the
// batch axis comes before the class axis, unless the class axis does not
// matter (dense labels with one alpha).  Returns "" or why not.
std::string layout_problem(int ndim, int axis, int batch_axis, bool class_axis_matters,
                           bool reduced);

// Checks axes and the label shape against pred (label_shape empty: not known
// yet).  On success returns "" and, when wanted, the label shape implied by
// pred (*implied_label_shape) for shape inference.
std::string check_shapes(const Attributes& a, const std::vector<int64_t>& pred_shape,
                         const std::vector<int64_t>& label_shape,
                         std::vector<int64_t>* implied_label_shape);

struct Plan {
  Attributes attrs;
  std::vector<int64_t> pred_shape, label_shape;
  int64_t num_elements = 0;
  int64_t num_classes = 1, inner = 1, super_row = 1;   // super_row = num_classes * inner
  int64_t batch = 1, per_sample = 1, super_rows_per_sample = 1;
  bool pattern_layout = true;
  int64_t super_rows_per_chunk = 1;                   // pattern layout
  int64_t row_piece = 1, pieces_per_row = 1;          // row layout
  int64_t chunks_per_sample = 0, num_chunks = 0, max_chunk_len = 0;
  double alpha0 = 1.0, alpha1 = 1.0;                  // one alpha for every class
  // per-class alpha in the pattern layout: alpha0 (1 - alpha, in double) and
  // alpha1 at each offset of a super-row (period super_row, padded so that a
  // vector load never wraps)
  std::vector<double> alpha0_by_offset, alpha1_by_offset;
};

// Where chunk `id` is: pred elements [start, start + len), its labels from
// label_start, its sample, and its class (row layout) or super-rows (pattern).
struct ChunkSpan {
  int64_t start, len, label_start, sample, row_class, super_rows;
};

std::string make_plan(const Attributes& a, const std::vector<int64_t>& pred_shape,
                      const std::vector<int64_t>& label_shape, Plan* plan);
ChunkSpan chunk_span(const Plan& plan, int64_t id);

std::string shape_string(const std::vector<int64_t>& shape);
// The multi-index of flat position `flat` in `shape`, e.g. "(0, 3, 4)".
std::string position_string(int64_t flat, const std::vector<int64_t>& shape);

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_PLAN_H_
