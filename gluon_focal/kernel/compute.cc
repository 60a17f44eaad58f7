#include "compute.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>
#include <type_traits>
#include <vector>

#include "chunk_kernels.h"
#include "half_float.h"
#include "mxnet/lib_api.h"
#include "simd_dispatch.h"
#include "thread_pool.h"

namespace gluon_focal {
namespace {

using mxnet::ext::kFloat16;
using mxnet::ext::kFloat32;
using mxnet::ext::kFloat64;
using mxnet::ext::kInt32;
using mxnet::ext::kInt64;
using mxnet::ext::kInt8;
using mxnet::ext::kUint8;

typedef uint16_t Half;   // float16 storage (MXNet has no uint16 labels)

const int64_t kSerialBelow = 32768;   // smaller calls run on the calling thread

template <class T> double as_double(T v) { return static_cast<double>(v); }
template <> double as_double<Half>(Half v) { return half_to_float_soft(v); }

template <class T> void store_double(T* p, int64_t i, double v) { p[i] = static_cast<T>(v); }
template <> void store_double<Half>(Half* p, int64_t i, double v) {
  p[i] = float_to_half_soft(static_cast<float>(v));
}

bool reduced(const Plan& p) { return p.attrs.normalization != Normalization::kNone; }

// n values of type From as compute type CT: the array itself when the types
// agree, else converted into buf.  With exact_only (labels of the sparse and
// binary modes), a value that CT cannot hold exactly becomes NaN, which the
// checks refuse (the message quotes the original value).
template <class From, class CT>
const CT* as_compute(const From* src, int64_t n, CT* buf, const KernelTable& isa, bool exact_only) {
  if (std::is_same<From, CT>::value) return reinterpret_cast<const CT*>(src);
  if (std::is_same<From, Half>::value && std::is_same<CT, float>::value) {
    isa.half_to_float(reinterpret_cast<const Half*>(src), reinterpret_cast<float*>(buf), n);
    return buf;
  }
  for (int64_t i = 0; i < n; ++i) {
    double v = as_double(src[i]);
    CT c = static_cast<CT>(v);
    buf[i] = (exact_only && static_cast<double>(c) != v) ? std::numeric_limits<CT>::quiet_NaN() : c;
  }
  return buf;
}

template <class CT, class To>
void store_compute(const CT* src, To* dst, int64_t n, const KernelTable& isa) {
  if (std::is_same<To, Half>::value && std::is_same<CT, float>::value) {
    isa.float_to_half(reinterpret_cast<const float*>(src), reinterpret_cast<Half*>(dst), n);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<To>(src[i]);
}

// Per-element codes of a pattern-layout chunk with sparse labels (1: the
// label's class, 0: another class, -1: ignored position), from the labels'
// classes (one vector of labels at a time: classify_sparse_labels).  Returns
// the label position of the first invalid label, or -1.
template <class LabT>
int64_t build_codes(const Plan& p, const ChunkSpan& span, const LabT* labels, const KernelTable& isa,
                    const CallConstants<float>& k, float* label_buf, int32_t* classes, int8_t* codes) {
  const int64_t inner = p.inner, C = p.num_classes, positions = span.super_rows * inner;
  const float* l = as_compute(labels + span.label_start, positions, label_buf, isa, true);
  isa.classify_sparse_labels(l, positions, k, classes);
  std::memset(codes, 0, static_cast<size_t>(span.len));
  int64_t first_bad = -1;
  for (int64_t q = 0, row = 0, j = 0; q < positions; ++q) {
    // position q is at (row, j): its codes are row_codes[class * inner]
    int8_t* row_codes = codes + row * C * inner + j;
    const int32_t c = classes[q];
    if (c >= 0) {
      row_codes[c * inner] = 1;
    } else if (c != kBackgroundLabel) {
      if (c == kNotAClass && first_bad < 0) first_bad = span.label_start + q;
      for (int64_t m = 0; m < C; ++m) row_codes[m * inner] = -1;
    }
    if (++j == inner) { j = 0; ++row; }
  }
  return first_bad;
}

// Per chunk: how many elements count (valid) and the sum of their targets.
// Sparse labels are classified as build_codes does (classify_sparse_labels).
template <class LabT>
void count_labels(const Plan& p, const LabT* labels, int threads, const KernelTable& isa,
                  const CallConstants<float>& k, std::vector<double>* valid,
                  std::vector<double>* positive) {
  valid->assign(p.num_chunks, 0.0);
  positive->assign(p.num_chunks, 0.0);
  const Attributes& a = p.attrs;
  struct LabelBuffers { std::vector<float> labels; std::vector<int32_t> classes; };
  auto make_buffers = [&] {
    const size_t n = a.mode == LabelMode::kSparse ? static_cast<size_t>(p.max_chunk_len) : 0;
    return LabelBuffers{std::vector<float>(std::is_same<LabT, float>::value ? 0 : n),
                        std::vector<int32_t>(n)};
  };
  parallel_for_chunks(p.num_chunks, threads, make_buffers, [&](LabelBuffers& buf, int64_t id) {
    ChunkSpan span = chunk_span(p, id);
    double n_valid = 0.0, n_positive = 0.0;
    if (a.mode == LabelMode::kSparse) {
      // each label once: the super-rows of a pattern chunk, the class-0 rows
      const int64_t n = p.pattern_layout ? span.super_rows * p.inner : (span.row_class == 0 ? span.len : 0);
      const float* l = as_compute(labels + span.label_start, n, buf.labels.data(), isa, true);
      isa.classify_sparse_labels(l, n, k, buf.classes.data());
      for (int64_t j = 0; j < n; ++j) {
        const int32_t c = buf.classes[j];
        if (c == kIgnoredLabel || c == kNotAClass) continue;
        n_valid += static_cast<double>(p.num_classes);
        if (c >= 0) n_positive += 1.0;
      }
    } else {
      for (int64_t j = 0; j < span.len; ++j) {
        double v = as_double(labels[span.start + j]);
        if (a.has_ignore_label && v == a.ignore_label) continue;
        n_valid += 1.0;
        n_positive += v;
      }
    }
    (*valid)[id] = n_valid;
    (*positive)[id] = n_positive;
  });
}

// The number each sample's sum is divided by.
template <class LabT>
std::vector<double> denominators(const Plan& p, const LabT* labels, int threads,
                                 const KernelTable& isa, const CallConstants<float>& k) {
  const Normalization norm = p.attrs.normalization;
  std::vector<double> den(p.batch, 1.0);
  const double per_sample = static_cast<double>(p.num_elements / std::max<int64_t>(1, p.batch));
  if (norm == Normalization::kMean ||
      (norm == Normalization::kValid && !p.attrs.has_ignore_label)) {
    std::fill(den.begin(), den.end(), per_sample);
  } else if (norm == Normalization::kValid || norm == Normalization::kPositive) {
    std::vector<double> valid, positive;
    count_labels(p, labels, threads, isa, k, &valid, &positive);
    if (norm == Normalization::kValid) {
      std::vector<double> per(p.batch, 0.0);
      for (int64_t id = 0; id < p.num_chunks; ++id) per[(id / p.chunks_per_sample) % p.batch] += valid[id];
      for (int64_t b = 0; b < p.batch; ++b) den[b] = std::max(1.0, per[b]);
    } else {
      double total = 0.0;
      for (int64_t id = 0; id < p.num_chunks; ++id) total += positive[id];
      std::fill(den.begin(), den.end(), std::max(1.0, total));
    }
  }
  return den;
}

std::string format_value(double v, bool single_precision) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  char buf[40];
  if (v == std::floor(v) && std::fabs(v) < 1e15) {
    std::snprintf(buf, sizeof(buf), "%.0f", v);
    return buf;
  }
  for (int digits = 6; digits <= 17; ++digits) {   // the shortest text that reads back
    std::snprintf(buf, sizeof(buf), "%.*g", digits, v);
    double back = std::strtod(buf, nullptr);
    if (single_precision ? static_cast<float>(back) == static_cast<float>(v) : back == v) break;
  }
  return buf;
}

std::string bad_label_message(const Plan& p, double value, bool single_precision, int64_t position) {
  const Attributes& a = p.attrs;
  std::ostringstream os;
  os << (a.mode == LabelMode::kSparse ? "sparse label value " : "label value ")
     << format_value(value, single_precision) << " at position " << position_string(position, p.label_shape);
  std::vector<std::string> others;
  if (a.has_ignore_label) others.push_back("ignore_label=" + format_value(a.ignore_label, false));
  if (a.has_background_label) others.push_back("background_label=" + format_value(a.background_label, false));
  if (a.mode == LabelMode::kSparse)
    os << " is not a valid class index; expected an integer in [0, " << p.num_classes << ")";
  else if (a.mode == LabelMode::kBinary)
    os << " is outside the binary label mode; expected 0 or 1";
  else
    os << " is outside the dense label mode; expected a target in [0, 1]";
  if (others.empty()) {
    os << " (or ignore_label)";
  } else {
    os << " (or ";
    for (size_t i = 0; i < others.size(); ++i) os << (i ? ", " : "") << others[i];
    os << ")";
  }
  return os.str();
}

std::string bad_pred_message(const Plan& p, double value, bool single_precision, int64_t position) {
  std::ostringstream os;
  os << "pred value " << format_value(value, single_precision) << " at position "
     << position_string(position, p.pred_shape)
     << " is not a probability; expected a value in [0, 1] with from_sigmoid=1";
  return os.str();
}

GammaKind gamma_kind(double gamma) {
  if (gamma == 0.0) return GammaKind::kZero;
  if (gamma == 1.0) return GammaKind::kOne;
  if (gamma == 2.0) return GammaKind::kTwo;
  return GammaKind::kAny;
}

TargetSource target_source(const Plan& p) {
  switch (p.attrs.mode) {
    case LabelMode::kSparse: return p.pattern_layout ? TargetSource::kSparseCode : TargetSource::kSparseRow;
    case LabelMode::kBinary: return TargetSource::kBinary;
    default: return TargetSource::kDense;
  }
}

template <class CT>
ChunkKernel<CT> pick(const KernelTable& isa, Pass pass, GammaKind g, bool fs, TargetSource s);
template <>
ChunkKernel<float> pick<float>(const KernelTable& isa, Pass pass, GammaKind g, bool fs, TargetSource s) {
  return isa.pick_float(pass, g, fs, s);
}
template <>
ChunkKernel<double> pick<double>(const KernelTable& isa, Pass pass, GammaKind g, bool fs, TargetSource s) {
  return isa.pick_double(pass, g, fs, s);
}

template <class CT>
CallConstants<CT> call_constants(const Plan& p) {
  const Attributes& a = p.attrs;
  const double nan = std::numeric_limits<double>::quiet_NaN();   // never equal
  CallConstants<CT> k;
  k.gamma = static_cast<CT>(a.gamma);
  k.eps = static_cast<CT>(a.eps);
  k.one_minus_eps = static_cast<CT>(1.0 - a.eps);
  k.ignore_label = static_cast<CT>(a.has_ignore_label ? a.ignore_label : nan);
  k.background_label = static_cast<CT>(a.has_background_label ? a.background_label : nan);
  k.num_classes = static_cast<CT>(p.num_classes);
  return k;
}

// Per-thread buffers, only those a call needs (filled per chunk before use).
template <class CT>
struct Scratch {
  std::unique_ptr<CT[]> pred, labels, out, out_grad;
  std::unique_ptr<float[]> sparse_labels;   // kSparseCode: labels as float, and their classes
  std::unique_ptr<int32_t[]> classes;
  std::unique_ptr<int8_t[]> codes;
};

template <class PredT, class LabT, class CT>
std::string run(const Plan& p, Pass pass, const PredT* pred, const LabT* labels, const PredT* out_grad,
                PredT* out) {
  const Attributes& a = p.attrs;
  const KernelTable& isa = active_kernels();
  const bool forward = pass == Pass::kForward;
  const int threads = threads_for(p.num_elements, p.num_chunks, kSerialBelow);
  const TargetSource source = target_source(p);
  const ChunkKernel<CT> kernel = pick<CT>(isa, pass, gamma_kind(a.gamma), a.from_sigmoid, source);
  const CallConstants<CT> constants = call_constants<CT>(p);
  const CallConstants<float> float_constants = call_constants<float>(p);   // sparse labels
  const std::vector<CT> alpha0_by_offset(p.alpha0_by_offset.begin(), p.alpha0_by_offset.end());
  const std::vector<CT> alpha1_by_offset(p.alpha1_by_offset.begin(), p.alpha1_by_offset.end());

  std::vector<double> den, coef;
  if (reduced(p)) den = denominators(p, labels, threads, isa, float_constants);
  if (!forward && reduced(p)) {
    coef.resize(p.batch);
    for (int64_t b = 0; b < p.batch; ++b) coef[b] = a.scale * as_double(out_grad[b]) / den[b];
  }
  const bool sum_only = forward && reduced(p);
  const bool pred_direct = std::is_same<PredT, CT>::value;
  const bool labels_direct = std::is_same<LabT, CT>::value;
  const bool exact_labels = a.mode != LabelMode::kDense;
  std::vector<double> sums(p.num_chunks, 0.0);
  std::vector<int64_t> bad_label(p.num_chunks, -1), bad_pred(p.num_chunks, -1);

  auto make_scratch = [&] {
    std::unique_ptr<Scratch<CT>> s(new Scratch<CT>());
    const int64_t n = p.max_chunk_len;
    if (!pred_direct) {
      s->pred.reset(new CT[n]);
      s->out.reset(new CT[n]);
      if (!forward && !reduced(p)) s->out_grad.reset(new CT[n]);
    }
    if (source == TargetSource::kSparseCode) {
      s->codes.reset(new int8_t[n]);
      s->classes.reset(new int32_t[n]);
      if (!std::is_same<LabT, float>::value) s->sparse_labels.reset(new float[n]);
    } else if (!labels_direct) {
      s->labels.reset(new CT[n]);
    }
    return s;
  };
  parallel_for_chunks(p.num_chunks, threads, make_scratch, [&](std::unique_ptr<Scratch<CT>>& s, int64_t id) {
    const ChunkSpan span = chunk_span(p, id);
    Chunk<CT> c;
    c.len = span.len;
    c.pred = as_compute(pred + span.start, span.len, s->pred.get(), isa, false);
    c.out = sum_only ? nullptr : (pred_direct ? reinterpret_cast<CT*>(out + span.start) : s->out.get());
    c.out_grad = (!forward && !reduced(p))
        ? as_compute(out_grad + span.start, span.len, s->out_grad.get(), isa, false) : nullptr;
    c.coef = static_cast<CT>(forward || !reduced(p) ? a.scale : coef[span.sample]);
    c.labels = nullptr;
    c.codes = nullptr;
    c.row_class = static_cast<CT>(span.row_class);
    c.check_labels = false;
    c.check_pred = a.validate && a.from_sigmoid;
    int64_t label_base = span.start;   // label position of the chunk's first element
    if (source == TargetSource::kSparseCode) {
      int64_t first_bad = build_codes(p, span, labels, isa, float_constants, s->sparse_labels.get(),
                                      s->classes.get(), s->codes.get());
      if (a.validate) bad_label[id] = first_bad;
      c.codes = s->codes.get();
    } else {
      if (source == TargetSource::kSparseRow) label_base = span.label_start;
      c.labels = as_compute(labels + label_base, span.len, s->labels.get(), isa, exact_labels);
      // sparse rows: each label is checked in the class-0 row only
      c.check_labels = a.validate && (source != TargetSource::kSparseRow || span.row_class == 0);
    }
    c.alpha0 = static_cast<CT>(p.alpha0);
    c.alpha1 = static_cast<CT>(p.alpha1);
    c.alpha0_by_offset = c.alpha1_by_offset = nullptr;
    c.alpha_period = p.super_row;
    if (a.alpha_kind == AlphaKind::kPerClass) {
      if (p.pattern_layout) {
        c.alpha0_by_offset = alpha0_by_offset.data();
        c.alpha1_by_offset = alpha1_by_offset.data();
      } else {
        c.alpha1 = static_cast<CT>(a.alpha[span.row_class]);
        c.alpha0 = static_cast<CT>(1.0 - a.alpha[span.row_class]);
      }
    }
    ChunkResult result;
    kernel(c, constants, &result);
    sums[id] = result.sum;
    if (result.first_bad_label >= 0) bad_label[id] = label_base + result.first_bad_label;
    if (result.first_bad_pred >= 0) bad_pred[id] = span.start + result.first_bad_pred;
    if (!sum_only && !pred_direct) store_compute(c.out, out + span.start, span.len, isa);
  });

  // the first invalid value in array order, whichever thread found it
  int64_t first_label = -1, first_pred = -1;
  for (int64_t id = 0; id < p.num_chunks; ++id) {
    if (bad_label[id] >= 0 && (first_label < 0 || bad_label[id] < first_label)) first_label = bad_label[id];
    if (bad_pred[id] >= 0 && (first_pred < 0 || bad_pred[id] < first_pred)) first_pred = bad_pred[id];
  }
  if (first_label >= 0)
    return bad_label_message(p, as_double(labels[first_label]), !std::is_same<LabT, double>::value,
                             first_label);
  if (first_pred >= 0)
    return bad_pred_message(p, as_double(pred[first_pred]), !std::is_same<PredT, double>::value,
                            first_pred);
  if (sum_only) {
    std::vector<double> per(p.batch, 0.0);
    for (int64_t id = 0; id < p.num_chunks; ++id) per[(id / p.chunks_per_sample) % p.batch] += sums[id];
    for (int64_t b = 0; b < p.batch; ++b) store_double(out, b, a.scale * per[b] / den[b]);
  }
  return "";
}

template <class PredT, class CT>
std::string run_for_label(const Plan& p, Pass pass, const PredT* pred, ArrayRef label,
                          const PredT* out_grad, PredT* out) {
  switch (label.dtype) {
    case kFloat32: return run<PredT, float, CT>(p, pass, pred, static_cast<const float*>(label.data), out_grad, out);
    case kFloat64: return run<PredT, double, CT>(p, pass, pred, static_cast<const double*>(label.data), out_grad, out);
    case kFloat16: return run<PredT, Half, CT>(p, pass, pred, static_cast<const Half*>(label.data), out_grad, out);
    case kUint8: return run<PredT, uint8_t, CT>(p, pass, pred, static_cast<const uint8_t*>(label.data), out_grad, out);
    case kInt8: return run<PredT, int8_t, CT>(p, pass, pred, static_cast<const int8_t*>(label.data), out_grad, out);
    case kInt32: return run<PredT, int32_t, CT>(p, pass, pred, static_cast<const int32_t*>(label.data), out_grad, out);
    case kInt64: return run<PredT, int64_t, CT>(p, pass, pred, static_cast<const int64_t*>(label.data), out_grad, out);
    default: return "unsupported label dtype id " + std::to_string(label.dtype);
  }
}

std::string dispatch(const Plan& p, Pass pass, ArrayRef pred, ArrayRef label, ArrayRef out_grad,
                     ArrayRef out) {
  if (p.num_elements == 0) return "";
  switch (pred.dtype) {
    case kFloat32:
      return run_for_label<float, float>(p, pass, static_cast<const float*>(pred.data), label,
                                         static_cast<const float*>(out_grad.data), static_cast<float*>(out.data));
    case kFloat64:
      return run_for_label<double, double>(p, pass, static_cast<const double*>(pred.data), label,
                                           static_cast<const double*>(out_grad.data), static_cast<double*>(out.data));
    case kFloat16:
      return run_for_label<Half, float>(p, pass, static_cast<const Half*>(pred.data), label,
                                        static_cast<const Half*>(out_grad.data), static_cast<Half*>(out.data));
    default: return "pred must be float16, float32 or float64";
  }
}

}  // namespace

std::string compute_forward(const Plan& plan, ArrayRef pred, ArrayRef label, ArrayRef out) {
  return dispatch(plan, Pass::kForward, pred, label, ArrayRef{pred.dtype, nullptr}, out);
}

std::string compute_backward(const Plan& plan, ArrayRef pred, ArrayRef label, ArrayRef out_grad,
                             ArrayRef out) {
  return dispatch(plan, Pass::kBackward, pred, label, out_grad, out);
}

}  // namespace gluon_focal
