#include "plan.h"

#include <algorithm>
#include <sstream>

namespace gluon_focal {
namespace {

// Chunks of 2^16 elements: with 8192, W1's forward + backward took 6-9%
// longer; per-thread float16 buffers of this size still fit in L2.
const int64_t kChunkElements = 65536;
const int64_t kRowLayoutMinInner = 64;

bool class_axis_matters(const Attributes& a) {
  return a.mode == LabelMode::kSparse || a.alpha_kind == AlphaKind::kPerClass;
}

const char* mode_name(LabelMode m) {
  return m == LabelMode::kSparse ? "sparse" : (m == LabelMode::kBinary ? "binary" : "dense");
}

// pred's shape with a batch axis and a class axis that the plan can use:
// a virtual size-1 batch axis in front when nothing is reduced, and a
// virtual size-1 class axis at the end when the class axis does not matter
// and is not after the batch axis.
void canonical_axes(const Attributes& a, const std::vector<int64_t>& pred_shape,
                    std::vector<int64_t>* shape, int* class_axis, int* batch_axis) {
  const int nd = static_cast<int>(pred_shape.size());
  *shape = pred_shape;
  *class_axis = (a.axis + nd) % nd;
  *batch_axis = (a.batch_axis + nd) % nd;
  if (a.normalization == Normalization::kNone) {
    shape->insert(shape->begin(), 1);
    *class_axis += 1;
    *batch_axis = 0;
    if (!class_axis_matters(a)) {
      *class_axis = static_cast<int>(shape->size());
      shape->push_back(1);
    }
  } else if (*batch_axis >= *class_axis) {   // allowed by layout_problem: axis irrelevant
    *class_axis = static_cast<int>(shape->size());
    shape->push_back(1);
  }
}

}  // namespace

std::string shape_string(const std::vector<int64_t>& s) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  if (s.size() == 1) os << ",";
  os << ")";
  return os.str();
}

std::string position_string(int64_t flat, const std::vector<int64_t>& shape) {
  std::vector<int64_t> index(shape.size());
  for (int i = static_cast<int>(shape.size()) - 1; i >= 0; --i) {
    index[i] = shape[i] ? flat % shape[i] : 0;
    flat = shape[i] ? flat / shape[i] : 0;
  }
  return shape_string(index);
}

std::string layout_problem(int ndim, int axis, int batch_axis, bool class_axis_matters,
                           bool reduced) {
  if (ndim < 1 || axis < -ndim || axis >= ndim || batch_axis < -ndim || batch_axis >= ndim)
    return "";   // check_shapes reports axes out of range
  const int a = (axis + ndim) % ndim, b = (batch_axis + ndim) % ndim;
  if (!reduced || !class_axis_matters || b < a) return "";
  std::ostringstream os;
  os << "batch_axis (" << batch_axis << ") must come before the class axis (" << axis
     << ") to reduce per sample with sparse labels or per-class alpha (or use normalization='none')";
  return os.str();
}

std::string check_shapes(const Attributes& a, const std::vector<int64_t>& ps,
                         const std::vector<int64_t>& ls,
                         std::vector<int64_t>* implied_label_shape) {
  std::ostringstream why;
  const int nd = static_cast<int>(ps.size());
  if (nd < 1) {
    why << "pred must have at least 1 dimension, got shape " << shape_string(ps);
    return why.str();
  }
  if (a.axis < -nd || a.axis >= nd) {
    why << "axis=" << a.axis << " is out of range for pred of shape " << shape_string(ps);
    return why.str();
  }
  if (a.batch_axis < -nd || a.batch_axis >= nd) {
    why << "batch_axis=" << a.batch_axis << " is out of range for pred of shape " << shape_string(ps);
    return why.str();
  }
  const int axis = (a.axis + nd) % nd;
  const int64_t C = ps[axis];
  if (a.alpha_kind == AlphaKind::kPerClass && static_cast<int64_t>(a.alpha.size()) != C) {
    why << "alpha has " << a.alpha.size() << " entries but pred has " << C
        << " classes along axis " << a.axis << " (pred shape " << shape_string(ps) << ")";
    return why.str();
  }
  if (C > 2147483647LL) {
    why << "too many classes along axis: " << C;
    return why.str();
  }
  std::string layout = layout_problem(nd, a.axis, a.batch_axis, class_axis_matters(a),
                                      a.normalization != Normalization::kNone);
  if (!layout.empty()) return layout + "; pred shape " + shape_string(ps);
  std::vector<int64_t> squeezed;
  for (int i = 0; i < nd; ++i) if (i != axis) squeezed.push_back(ps[i]);
  if (implied_label_shape) *implied_label_shape = a.mode == LabelMode::kSparse ? squeezed : ps;
  if (ls.empty()) return "";
  if (a.mode == LabelMode::kSparse) {
    if (ls != squeezed)
      why << "mode='sparse' needs label shape = pred shape without axis " << a.axis << ", i.e. "
          << shape_string(squeezed) << "; got label " << shape_string(ls) << " for pred "
          << shape_string(ps);
  } else if (!(ls == ps || (C == 1 && ls == squeezed))) {
    why << "mode='" << mode_name(a.mode) << "' needs label shape = pred shape " << shape_string(ps)
        << (C == 1 ? " or " + shape_string(squeezed) : std::string("")) << "; got label "
        << shape_string(ls);
  }
  return why.str();
}

std::string make_plan(const Attributes& a, const std::vector<int64_t>& pred_shape,
                      const std::vector<int64_t>& label_shape, Plan* p) {
  std::string problem = check_shapes(a, pred_shape, label_shape, nullptr);
  if (!problem.empty()) return problem;
  p->attrs = a;
  p->pred_shape = pred_shape;
  p->label_shape = label_shape;
  std::vector<int64_t> s;
  int class_axis, batch_axis;
  canonical_axes(a, pred_shape, &s, &class_axis, &batch_axis);
  const int nd = static_cast<int>(s.size());
  p->num_elements = 1;
  for (int64_t d : s) p->num_elements *= d;
  p->num_classes = s[class_axis];
  p->inner = 1;
  for (int i = class_axis + 1; i < nd; ++i) p->inner *= s[i];
  p->super_row = p->num_classes * p->inner;
  p->batch = s[batch_axis];
  p->per_sample = 1;
  for (int i = batch_axis + 1; i < nd; ++i) p->per_sample *= s[i];
  p->super_rows_per_sample = p->super_row > 0 ? p->per_sample / p->super_row : 0;
  p->pattern_layout = p->inner < kRowLayoutMinInner;
  if (p->pattern_layout) {
    p->super_rows_per_chunk = std::max<int64_t>(1, kChunkElements / std::max<int64_t>(1, p->super_row));
    p->chunks_per_sample = p->super_rows_per_sample > 0
        ? (p->super_rows_per_sample + p->super_rows_per_chunk - 1) / p->super_rows_per_chunk : 0;
    p->max_chunk_len = p->super_rows_per_chunk * p->super_row;
  } else {
    p->row_piece = kChunkElements;
    p->pieces_per_row = (p->inner + p->row_piece - 1) / p->row_piece;
    p->chunks_per_sample = p->super_rows_per_sample * p->num_classes * p->pieces_per_row;
    p->max_chunk_len = std::min(p->row_piece, p->inner);
  }
  const int64_t segments = p->batch > 0 && p->per_sample > 0 ? p->num_elements / p->per_sample : 0;
  p->num_chunks = p->num_elements == 0 ? 0 : segments * p->chunks_per_sample;
  if (a.alpha_kind == AlphaKind::kScalar) {
    p->alpha1 = a.alpha[0];
    p->alpha0 = 1.0 - a.alpha[0];
  }
  if (a.alpha_kind == AlphaKind::kPerClass && p->pattern_layout && p->super_row > 0) {
    const int64_t padded = p->super_row + 64;
    p->alpha0_by_offset.resize(padded);
    p->alpha1_by_offset.resize(padded);
    for (int64_t k = 0; k < padded; ++k) {
      p->alpha1_by_offset[k] = a.alpha[(k % p->super_row) / p->inner];
      p->alpha0_by_offset[k] = 1.0 - p->alpha1_by_offset[k];
    }
  }
  return "";
}

ChunkSpan chunk_span(const Plan& p, int64_t id) {
  ChunkSpan c;
  const int64_t segment = id / p.chunks_per_sample, k = id % p.chunks_per_sample;
  c.sample = segment % p.batch;
  if (p.pattern_layout) {
    const int64_t first = k * p.super_rows_per_chunk;
    c.super_rows = std::min(p.super_rows_per_chunk, p.super_rows_per_sample - first);
    c.start = segment * p.per_sample + first * p.super_row;
    c.len = c.super_rows * p.super_row;
    c.label_start = (segment * p.super_rows_per_sample + first) * p.inner;
    c.row_class = -1;
  } else {
    const int64_t row = k / p.pieces_per_row, piece = k % p.pieces_per_row;
    const int64_t super_row = row / p.num_classes;
    const int64_t offset = piece * p.row_piece;
    c.row_class = row % p.num_classes;
    c.len = std::min(p.row_piece, p.inner - offset);
    c.start = segment * p.per_sample + row * p.inner + offset;
    c.label_start = (segment * p.super_rows_per_sample + super_row) * p.inner + offset;
    c.super_rows = 0;
  }
  return c;
}

}  // namespace gluon_focal
