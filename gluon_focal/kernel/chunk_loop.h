/*
 * The loop over one chunk, written once over the vector type S and
 * instantiated by loops_scalar.cc, loops_avx2.cc and loops_avx512.cc: reads
 * the targets, checks the values it reads, evaluates focal_math.h and writes
 * (or sums) the result, a block of vectors at a time.  A partial last vector
 * runs the same code on a padded copy, with the lanes past the end off.
 * run_block and vector_value are forced inline: as calls they kept every
 * constant in memory (20% slower loops).
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

  static constexpr int kBlock = 8;   // vectors per block
  typedef T BlockBuffer[kBlock * kLanes];

  // Where a block's inputs and outputs are (in the chunk, or in the padded
  // copy of its end).
  struct BlockIO {
    const T* pred;
    const T* labels;
    const int8_t* codes;
    const T* out_grad;
    T* out;                  // null: forward sums only
    int64_t first;           // chunk offset of the block's first element
  };

  // Loss or gradient of one vector, zero in lanes that are ignored or off.
  // Lanes whose label or prediction fails the checks are flagged in *bad_*.
  __attribute__((always_inline)) static V vector_value(
      const BlockIO& io, int64_t j, const SigmoidParts<S>& parts, const T* alpha0_by_offset,
      const T* alpha1_by_offset, const Chunk<T>& chunk, const CallConstants<T>& k, M lanes,
      M* bad_label, M* bad_pred) {
    const V zero = S::splat(0), one = S::splat(1);
    V x = S::load(io.pred + j);
    M valid, positive = M();
    V t = zero, label = zero;
    if (kSource == TargetSource::kSparseCode) {
      S::load_codes(io.codes + j, &valid, &positive);
    } else {
      label = S::load(io.labels + j);
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
      // 0 and 1 are the roots of t (1 - t); NaN compares unequal
      if (chunk.check_labels)
        *bad_label = S::mask_and(S::mask_and(valid, lanes), S::ne(S::mul(label, S::sub(one, label)), zero));
    } else if (kSource == TargetSource::kDense) {
      t = S::zero_unless(valid, label);
      positive = S::eq(t, one);
      if (chunk.check_labels) *bad_label = outside_unit_interval(label, S::mask_and(valid, lanes));
    }
    valid = S::mask_and(valid, lanes);
    V alpha1 = alpha1_by_offset ? S::load(alpha1_by_offset) : S::splat(chunk.alpha1);
    V alpha0 = alpha0_by_offset ? S::load(alpha0_by_offset) : S::splat(chunk.alpha0);
    const V gamma = S::splat(k.gamma);
    V value;
    if (kFromSigmoid) {
      if (chunk.check_pred) *bad_pred = outside_unit_interval(x, valid);
      if (kSource != TargetSource::kDense) t = S::select(positive, one, zero);
      V alpha_t = S::fma(t, S::sub(alpha1, alpha0), alpha0);
      value = focal_probabilities<S, kPass, kGamma>(x, t, alpha_t, gamma, S::splat(k.eps),
                                                    S::splat(k.one_minus_eps));
    } else if (kSource == TargetSource::kDense &&
               !S::all(S::mask_or(positive, S::eq(t, zero)))) {
      V alpha_t = S::fma(t, S::sub(alpha1, alpha0), alpha0);
      value = focal_logits_soft_targets<S, kPass, kGamma>(x, parts, t, alpha_t, gamma);
    } else {
      V alpha_t = S::select(positive, alpha1, alpha0);
      value = focal_logits_hard_targets<S, kPass, kGamma>(x, parts, positive, alpha_t, gamma);
    }
    return S::zero_unless(valid, value);
  }

  // Lanes of `among` whose v is not in [0, 1]: v (1 - v) >= 0 exactly there
  // (NaN and +-inf give NaN or -inf).
  static M outside_unit_interval(V v, M among) {
    return S::mask_andnot(S::ge(S::mul(v, S::sub(S::splat(1), v)), S::splat(0)), among);
  }

  static void note_bad(M bad, int64_t offset, int64_t* first) {
    if (__builtin_expect(S::any(bad), 0) && *first < 0) *first = offset + S::first_set(bad);
  }

  // `vectors` vectors from io; the last one's lanes are last_lanes.  The
  // sigmoid parts of the whole block are computed first, in two passes.
  __attribute__((always_inline)) static void run_block(
      const BlockIO& io, int vectors, M last_lanes, const Chunk<T>& chunk, const CallConstants<T>& k,
      int64_t* alpha_offset, V* sum, ChunkResult* result) {
    alignas(64) BlockBuffer e, sigmoid_abs, log1p_e;
    if (!kFromSigmoid) {
      for (int v = 0; v < vectors; ++v)
        S::store(e + v * kLanes, exp_neg_abs<S>(S::load(io.pred + v * kLanes)));
      for (int v = 0; v < vectors; ++v) {
        SigmoidParts<S> parts = sigmoid_parts<S>(S::load(e + v * kLanes));
        S::store(sigmoid_abs + v * kLanes, parts.sigmoid_abs);
        S::store(log1p_e + v * kLanes, parts.log1p_e);
      }
    }
    const V coef = S::splat(chunk.coef);
    const V zero = S::splat(0);
    for (int v = 0; v < vectors; ++v) {
      const int64_t j = v * kLanes;
      SigmoidParts<S> parts = {zero, zero, zero};
      if (!kFromSigmoid)
        parts = SigmoidParts<S>{S::load(e + j), S::load(sigmoid_abs + j), S::load(log1p_e + j)};
      const T *alpha0 = nullptr, *alpha1 = nullptr;
      if (chunk.alpha1_by_offset) {
        alpha0 = chunk.alpha0_by_offset + *alpha_offset;
        alpha1 = chunk.alpha1_by_offset + *alpha_offset;
        *alpha_offset += kLanes;
        if (*alpha_offset >= chunk.alpha_period) *alpha_offset %= chunk.alpha_period;
      }
      M lanes = v + 1 < vectors ? S::first_lanes(kLanes) : last_lanes;
      M bad_label = M(), bad_pred = M();
      V value = vector_value(io, j, parts, alpha0, alpha1, chunk, k, lanes, &bad_label, &bad_pred);
      if (chunk.check_labels) note_bad(bad_label, io.first + j, &result->first_bad_label);
      if (chunk.check_pred) note_bad(bad_pred, io.first + j, &result->first_bad_pred);
      if (!io.out) {
        *sum = S::add(*sum, value);
        continue;
      }
      V scaled = S::mul(value, coef);
      if (io.out_grad) scaled = S::mul(scaled, S::load(io.out_grad + j));
      S::store(io.out + j, scaled);
    }
  }

  // Asks for the block kPrefetchBytes ahead of element i (pred and labels):
  // the hardware prefetcher alone restarts cold at every chunk and left the
  // loops waiting for memory (W4 forward at 2 threads 0.38 -> 0.21 ns).
  static constexpr int64_t kPrefetchBytes = 4096;
  static void prefetch_ahead(const Chunk<T>& chunk, int64_t i) {
    // addresses as integers: they may lie past the chunk (prefetches never fault)
    const uintptr_t offset = static_cast<uintptr_t>(i) * sizeof(T) + kPrefetchBytes;
    const uintptr_t pred = reinterpret_cast<uintptr_t>(chunk.pred) + offset;
    const uintptr_t labels = reinterpret_cast<uintptr_t>(chunk.labels) + offset;
    for (uintptr_t b = 0; b < kBlock * kLanes * sizeof(T); b += 64) {
      __builtin_prefetch(reinterpret_cast<const void*>(pred + b));
      if (chunk.labels) __builtin_prefetch(reinterpret_cast<const void*>(labels + b));
    }
  }

  // The elements [i, i + count) of the chunk, count < kLanes, through the
  // same code on a padded copy.
  static void run_padded(const Chunk<T>& chunk, const CallConstants<T>& k, int64_t i, int count,
                         int64_t* alpha_offset, typename S::Sum* sum, ChunkResult* result) {
    const bool sum_only = kPass == Pass::kForward && chunk.out == nullptr;
    alignas(64) T pred[kLanes] = {}, labels[kLanes] = {}, out_grad[kLanes] = {}, out[kLanes];
    alignas(64) int8_t codes[kLanes < 16 ? 16 : kLanes] = {};
    for (int j = 0; j < count; ++j) {
      pred[j] = chunk.pred[i + j];
      if (chunk.labels) labels[j] = chunk.labels[i + j];
      if (chunk.codes) codes[j] = chunk.codes[i + j];
      if (chunk.out_grad) out_grad[j] = chunk.out_grad[i + j];
    }
    BlockIO io = {pred, chunk.labels ? labels : nullptr, chunk.codes ? codes : nullptr,
                  chunk.out_grad ? out_grad : nullptr, sum_only ? nullptr : out, i};
    const int64_t alpha_start = *alpha_offset;
    V block_sum = S::splat(0);
    run_block(io, 1, S::first_lanes(count), chunk, k, alpha_offset, &block_sum, result);
    if (chunk.alpha1_by_offset) *alpha_offset = (alpha_start + count) % chunk.alpha_period;
    S::sum_add(sum, block_sum);
    if (!sum_only)
      for (int j = 0; j < count; ++j) chunk.out[i + j] = out[j];
  }

  static void run(const Chunk<T>& chunk, const CallConstants<T>& k, ChunkResult* result) {
    const bool sum_only = kPass == Pass::kForward && chunk.out == nullptr;
    typename S::Sum sum;
    S::sum_zero(&sum);
    int64_t alpha_offset = 0, i = 0;
    const int64_t full_vectors = chunk.len / kLanes;
    for (int64_t first_vector = 0; first_vector < full_vectors; first_vector += kBlock) {
      const int64_t left = full_vectors - first_vector;
      const int vectors = static_cast<int>(left < kBlock ? left : kBlock);
      prefetch_ahead(chunk, i);
      BlockIO io = {chunk.pred + i, chunk.labels ? chunk.labels + i : nullptr,
                    chunk.codes ? chunk.codes + i : nullptr,
                    chunk.out_grad ? chunk.out_grad + i : nullptr,
                    sum_only ? nullptr : chunk.out + i, i};
      V block_sum = S::splat(0);   // float partial sum of one block
      run_block(io, vectors, S::first_lanes(kLanes), chunk, k, &alpha_offset, &block_sum, result);
      S::sum_add(&sum, block_sum);
      i += vectors * kLanes;
    }
    if (i < chunk.len)
      run_padded(chunk, k, i, static_cast<int>(chunk.len - i), &alpha_offset, &sum, result);
    result->sum = S::sum_total(sum);
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
