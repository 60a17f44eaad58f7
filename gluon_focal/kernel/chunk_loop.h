/*
 * The loop over one chunk, written once over the vector type S and
 * instantiated by loops_scalar.cc, loops_avx2.cc and loops_avx512.cc: reads
 * the targets, checks the values it reads, evaluates focal_math.h and writes
 * (or sums) the result.  A partial last vector runs the same code on a padded
 * copy, with the lanes past the end switched off.
 */
#ifndef GLUON_FOCAL_CHUNK_LOOP_H_
#define GLUON_FOCAL_CHUNK_LOOP_H_

#include <cstdint>

#include "chunk_kernels.h"
#include "focal_math.h"

namespace gluon_focal {

template <class S, Pass kPass, GammaKind kGamma, bool kFromSigmoid, TargetSource kSource>
struct ChunkLoop {
  typedef typename S::V V;
  typedef typename S::M M;
  typedef typename S::Scalar T;
  static constexpr int kLanes = S::kLanes;

  // Where one vector's inputs are (the chunk, or the padded copy of its end).
  struct VectorInputs {
    const T* pred;
    const T* labels;
    const int8_t* codes;
    const T* alpha1;    // null: the chunk's constant alpha
  };

  // Loss or gradient of one vector, zero in lanes that are ignored or off.
  // Lanes whose label or prediction fails the checks are flagged in *bad_*.
  static V vector_value(const VectorInputs& in, const Chunk<T>& chunk, const CallConstants<T>& k,
                        M lanes, M* bad_label, M* bad_pred) {
    const V zero = S::splat(0), one = S::splat(1);
    V x = S::load(in.pred);
    M valid, positive = M();
    V t = zero, label = zero;
    if (kSource == TargetSource::kSparseCode) {
      S::load_codes(in.codes, &valid, &positive);
    } else {
      label = S::load(in.labels);
      valid = S::ne(label, S::splat(k.ignore_label));
    }
    if (kSource == TargetSource::kSparseRow) {
      positive = S::mask_and(S::eq(label, S::splat(chunk.row_class)),
                             S::ne(label, S::splat(k.background_label)));
      if (chunk.check_labels) {
        M is_class = S::mask_and(S::mask_and(S::eq(label, S::round(label)), S::ge(label, zero)),
                                 S::lt(label, S::splat(k.num_classes)));
        M ok = S::mask_or(S::mask_or(is_class, S::eq(label, S::splat(k.background_label))),
                          S::mask_not(valid));
        *bad_label = S::mask_andnot(ok, lanes);
      }
    } else if (kSource == TargetSource::kBinary) {
      positive = S::eq(label, one);
      if (chunk.check_labels) {
        M ok = S::mask_or(S::mask_or(positive, S::eq(label, zero)), S::mask_not(valid));
        *bad_label = S::mask_andnot(ok, lanes);
      }
    } else if (kSource == TargetSource::kDense) {
      t = S::zero_unless(valid, label);
      positive = S::eq(t, one);
      if (chunk.check_labels) {
        M ok = S::mask_or(S::mask_and(S::ge(label, zero), S::le(label, one)), S::mask_not(valid));
        *bad_label = S::mask_andnot(ok, lanes);
      }
    }
    valid = S::mask_and(valid, lanes);
    V alpha1 = in.alpha1 ? S::load(in.alpha1) : S::splat(chunk.alpha1);
    V alpha0 = in.alpha1 ? S::sub(one, alpha1) : S::splat(chunk.alpha0);
    const V gamma = S::splat(k.gamma);
    V value;
    if (kFromSigmoid) {
      if (chunk.check_pred) {
        M ok = S::mask_and(S::ge(x, zero), S::le(x, one));
        *bad_pred = S::mask_andnot(ok, valid);
      }
      if (kSource != TargetSource::kDense) t = S::select(positive, one, zero);
      V alpha_t = S::fma(t, S::sub(alpha1, alpha0), alpha0);
      value = focal_probabilities<S, kPass, kGamma>(x, t, alpha_t, gamma, S::splat(k.eps),
                                                    S::splat(k.one_minus_eps));
    } else if (kSource == TargetSource::kDense &&
               !S::all(S::mask_or(positive, S::eq(t, zero)))) {
      V alpha_t = S::fma(t, S::sub(alpha1, alpha0), alpha0);
      value = focal_logits_soft_targets<S, kPass, kGamma>(x, t, alpha_t, gamma);
    } else {
      V alpha_t = S::select(positive, alpha1, alpha0);
      value = focal_logits_hard_targets<S, kPass, kGamma>(x, positive, alpha_t, gamma);
    }
    return S::zero_unless(valid, value);
  }

  static void note_bad(M bad, int64_t offset, int64_t* first) {
    if (__builtin_expect(S::any(bad), 0) && *first < 0) *first = offset + S::first_set(bad);
  }

  static void run(const Chunk<T>& chunk, const CallConstants<T>& k, ChunkResult* result) {
    const V coef = S::splat(chunk.coef);
    const M all_lanes = S::first_lanes(kLanes);
    typename S::Sum sum;
    S::sum_zero(&sum);
    V block_sum = S::splat(0);   // float partial sum of up to kBlock vectors
    const int kBlock = 8;
    int in_block = 0;
    int64_t alpha_offset = 0;
    const bool sum_only = kPass == Pass::kForward && chunk.out == nullptr;
    int64_t i = 0;
    for (; i + kLanes <= chunk.len; i += kLanes) {
      VectorInputs in = {chunk.pred + i, chunk.labels + (chunk.labels ? i : 0),
                         chunk.codes + (chunk.codes ? i : 0),
                         chunk.alpha1_by_offset ? chunk.alpha1_by_offset + alpha_offset : nullptr};
      if (chunk.alpha1_by_offset) {
        alpha_offset += kLanes;
        if (alpha_offset >= chunk.alpha_period) alpha_offset %= chunk.alpha_period;
      }
      M bad_label = M(), bad_pred = M();
      V v = vector_value(in, chunk, k, all_lanes, &bad_label, &bad_pred);
      if (chunk.check_labels) note_bad(bad_label, i, &result->first_bad_label);
      if (chunk.check_pred) note_bad(bad_pred, i, &result->first_bad_pred);
      if (sum_only) {
        block_sum = S::add(block_sum, v);
        if (++in_block == kBlock) {
          S::sum_add(&sum, block_sum);
          block_sum = S::splat(0);
          in_block = 0;
        }
      } else if (chunk.out_grad) {
        S::store(chunk.out + i, S::mul(S::mul(v, coef), S::load(chunk.out_grad + i)));
      } else {
        S::store(chunk.out + i, S::mul(v, coef));
      }
    }
    if (i < chunk.len) run_tail(chunk, k, i, alpha_offset, coef, &block_sum, result);
    S::sum_add(&sum, block_sum);
    result->sum = S::sum_total(sum);
  }

  static void run_tail(const Chunk<T>& chunk, const CallConstants<T>& k, int64_t i,
                       int64_t alpha_offset, V coef, V* block_sum, ChunkResult* result) {
    const int rest = static_cast<int>(chunk.len - i);
    alignas(64) T pred[kLanes] = {}, labels[kLanes] = {}, out_grad[kLanes] = {}, out[kLanes];
    alignas(64) int8_t codes[kLanes < 16 ? 16 : kLanes] = {};
    for (int j = 0; j < rest; ++j) {
      pred[j] = chunk.pred[i + j];
      if (chunk.labels) labels[j] = chunk.labels[i + j];
      if (chunk.codes) codes[j] = chunk.codes[i + j];
      if (chunk.out_grad) out_grad[j] = chunk.out_grad[i + j];
    }
    VectorInputs in = {pred, labels, codes,
                       chunk.alpha1_by_offset ? chunk.alpha1_by_offset + alpha_offset : nullptr};
    M bad_label = M(), bad_pred = M();
    V v = vector_value(in, chunk, k, S::first_lanes(rest), &bad_label, &bad_pred);
    if (chunk.check_labels) note_bad(bad_label, i, &result->first_bad_label);
    if (chunk.check_pred) note_bad(bad_pred, i, &result->first_bad_pred);
    if (kPass == Pass::kForward && chunk.out == nullptr) {
      *block_sum = S::add(*block_sum, v);
      return;
    }
    v = S::mul(v, coef);
    if (chunk.out_grad) v = S::mul(v, S::load(out_grad));
    S::store(out, v);
    for (int j = 0; j < rest; ++j) chunk.out[i + j] = out[j];
  }
};

// The loop for one combination of run-time choices (templates, not macros).
template <class S, Pass kPass, GammaKind kGamma, bool kFromSigmoid>
ChunkKernel<typename S::Scalar> pick_for_source(TargetSource source) {
  switch (source) {
    case TargetSource::kDense: return &ChunkLoop<S, kPass, kGamma, kFromSigmoid, TargetSource::kDense>::run;
    case TargetSource::kBinary: return &ChunkLoop<S, kPass, kGamma, kFromSigmoid, TargetSource::kBinary>::run;
    case TargetSource::kSparseRow: return &ChunkLoop<S, kPass, kGamma, kFromSigmoid, TargetSource::kSparseRow>::run;
    default: return &ChunkLoop<S, kPass, kGamma, kFromSigmoid, TargetSource::kSparseCode>::run;
  }
}

template <class S, Pass kPass, GammaKind kGamma>
ChunkKernel<typename S::Scalar> pick_for_input(bool from_sigmoid, TargetSource source) {
  return from_sigmoid ? pick_for_source<S, kPass, kGamma, true>(source)
                      : pick_for_source<S, kPass, kGamma, false>(source);
}

template <class S, Pass kPass>
ChunkKernel<typename S::Scalar> pick_for_gamma(GammaKind gamma, bool from_sigmoid, TargetSource source) {
  switch (gamma) {
    case GammaKind::kZero: return pick_for_input<S, kPass, GammaKind::kZero>(from_sigmoid, source);
    case GammaKind::kOne: return pick_for_input<S, kPass, GammaKind::kOne>(from_sigmoid, source);
    case GammaKind::kTwo: return pick_for_input<S, kPass, GammaKind::kTwo>(from_sigmoid, source);
    default: return pick_for_input<S, kPass, GammaKind::kAny>(from_sigmoid, source);
  }
}

template <class S>
ChunkKernel<typename S::Scalar> pick_chunk_kernel(Pass pass, GammaKind gamma, bool from_sigmoid,
                                                  TargetSource source) {
  return pass == Pass::kForward ? pick_for_gamma<S, Pass::kForward>(gamma, from_sigmoid, source)
                                : pick_for_gamma<S, Pass::kBackward>(gamma, from_sigmoid, source);
}

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_CHUNK_LOOP_H_
