/*
 * The per-element sigmoid focal loss and its gradient, written once over the
 * vector type S and instantiated by every instruction set's loops.
 *
 * Lin et al. 2017, eq. 5, generalised to soft targets t (as tests/reference.py):
 *   p = sigmoid(x) (logits) or clip(x, eps, 1 - eps) (from_sigmoid), q = 1 - p
 *   ce = -(t log p + (1 - t) log q)      cross entropy
 *   m  = t q + (1 - t) p = 1 - p_t       the modulating base
 *   FL = alpha_t m^gamma ce
 * Logits never form 1 - sigmoid(x): with e = exp(-|x|), sigmoid(|x|) =
 * 1/(1+e), sigmoid(-|x|) = e/(1+e) and log sigmoid(x) = -(max(-x, 0) + log1p(e)).
 * Every value below is the exact loss or derivative, written so that nothing
 * overflows for finite x.
 */
#ifndef GLUON_FOCAL_FOCAL_MATH_H_
#define GLUON_FOCAL_FOCAL_MATH_H_

#include "chunk_kernels.h"
#include "fast_math.h"

namespace gluon_focal {

// What every logit term is made of, with e = exp(-|x|): the loops compute
// the three in separate passes over a block of vectors (short, independent
// dependency chains instead of one long one per vector).
template <class S>
struct SigmoidParts {
  typename S::V e;             // exp(-|x|)
  typename S::V sigmoid_abs;   // sigmoid(|x|) = 1 / (1 + e)
  typename S::V log1p_e;       // log(1 + e)
};

template <class S>
inline typename S::V exp_neg_abs(typename S::V x) { return exp_neg<S>(S::abs(x)); }

template <class S>
inline SigmoidParts<S> sigmoid_parts(typename S::V e) {
  return SigmoidParts<S>{e, S::reciprocal(S::add(S::splat(1), e)), log1p_unit<S>(e)};
}

// Logits with targets in {0, 1}.  The loss of a positive at x is the loss of
// a negative at z = -x, so everything is computed for z and the gradient's
// sign flipped back:
//   m = sigmoid(z), ce = softplus(z), FL = alpha_t m^gamma ce,
//   dFL/dz = alpha_t m^gamma (gamma (1 - m) ce + m),  dFL/dx = +-dFL/dz.
// m^gamma is exp(-gamma softplus(-z)) for a general gamma (one more exp, no log).
template <class S, Pass kPass, GammaKind kGamma>
inline typename S::V focal_logits_hard_targets(typename S::V x, const SigmoidParts<S>& parts,
                                               typename S::M positive, typename S::V alpha_t,
                                               typename S::V gamma) {
  typedef typename S::V V;
  typedef typename S::M M;
  const V zero = S::splat(0);
  const V sigmoid_abs = parts.sigmoid_abs, log1p_e = parts.log1p_e;
  const V sigmoid_neg_abs = S::mul(parts.e, sigmoid_abs);
  V z = S::negate_if(positive, x);
  M z_negative = S::sign_bit(z);
  V m = S::select(z_negative, sigmoid_neg_abs, sigmoid_abs);
  V ce = S::add(S::max(z, zero), log1p_e);
  V modulator;
  if (kGamma == GammaKind::kOne) modulator = m;
  else if (kGamma == GammaKind::kTwo) modulator = S::mul(m, m);
  else if (kGamma == GammaKind::kAny)
    modulator = exp_neg<S>(S::mul(gamma, S::add(S::max(S::sub(zero, z), zero), log1p_e)));
  if (kPass == Pass::kForward) {
    if (kGamma == GammaKind::kZero) return S::mul(alpha_t, ce);
    return S::mul(S::mul(alpha_t, modulator), ce);
  }
  V d_dz;
  if (kGamma == GammaKind::kZero) {
    d_dz = S::mul(alpha_t, m);
  } else {
    V one_minus_m = S::select(z_negative, sigmoid_abs, sigmoid_neg_abs);
    V gamma_one_minus_m;
    if (kGamma == GammaKind::kOne) gamma_one_minus_m = one_minus_m;
    else if (kGamma == GammaKind::kTwo) gamma_one_minus_m = S::add(one_minus_m, one_minus_m);
    else gamma_one_minus_m = S::mul(gamma, one_minus_m);
    d_dz = S::mul(S::mul(alpha_t, modulator), S::fma(gamma_one_minus_m, ce, m));
  }
  return S::negate_if(positive, d_dz);
}

// log m where m = t q + (1 - t) p, exact (log p, log q) where t is 0 or 1.
template <class S>
inline typename S::V log_modulating_base(typename S::V t, typename S::V m, typename S::V log_p,
                                         typename S::V log_q) {
  return S::select(S::eq(t, S::splat(0)), log_p,
                   S::select(S::eq(t, S::splat(1)), log_q, log_nonnegative<S>(m)));
}

// m^gamma for soft targets; for a general gamma also sets *log_m (the gradient
// needs m^(gamma - 1)).
template <class S, GammaKind kGamma>
inline typename S::V modulating_factor(typename S::V t, typename S::V m, typename S::V log_p,
                                       typename S::V log_q, typename S::V gamma,
                                       typename S::V* log_m) {
  if (kGamma == GammaKind::kOne) return m;
  if (kGamma == GammaKind::kTwo) return S::mul(m, m);
  if (kGamma == GammaKind::kZero) return S::splat(1);
  *log_m = log_modulating_base<S>(t, m, log_p, log_q);
  return exp_neg<S>(S::sub(S::splat(0), S::mul(gamma, *log_m)));
}

// Logits with soft targets t in [0, 1].
template <class S, Pass kPass, GammaKind kGamma>
inline typename S::V focal_logits_soft_targets(typename S::V x, const SigmoidParts<S>& parts,
                                               typename S::V t, typename S::V alpha_t,
                                               typename S::V gamma) {
  typedef typename S::V V;
  const V zero = S::splat(0), one = S::splat(1);
  const V sigmoid_abs = parts.sigmoid_abs, log1p_e = parts.log1p_e;
  const V sigmoid_neg_abs = S::mul(parts.e, sigmoid_abs);
  typename S::M x_negative = S::sign_bit(x);
  V p = S::select(x_negative, sigmoid_neg_abs, sigmoid_abs);
  V q = S::select(x_negative, sigmoid_abs, sigmoid_neg_abs);
  V relu = S::max(x, zero), neg_relu = S::max(S::sub(zero, x), zero);
  V one_minus_t = S::sub(one, t);
  V ce = S::fma(t, neg_relu, S::fma(one_minus_t, relu, log1p_e));
  V m = S::fma(t, q, S::mul(one_minus_t, p));
  V log_p = S::sub(zero, S::add(neg_relu, log1p_e));
  V log_q = S::sub(zero, S::add(relu, log1p_e));
  V log_m = zero;
  V modulator = modulating_factor<S, kGamma>(t, m, log_p, log_q, gamma, &log_m);
  if (kPass == Pass::kForward) return S::mul(S::mul(alpha_t, ce), modulator);
  V p_minus_t = S::fnma(t, q, S::mul(p, one_minus_t));   // p - t without cancellation
  if (kGamma == GammaKind::kZero) return S::mul(alpha_t, p_minus_t);
  V one_minus_2t = S::sub(one_minus_t, t);
  V ce_slope = S::mul(ce, one_minus_2t);                  // ce (1 - 2t)
  V g;
  if (kGamma == GammaKind::kOne) {
    g = S::fma(p_minus_t, m, S::mul(ce_slope, S::mul(p, q)));
  } else if (kGamma == GammaKind::kTwo) {
    V two_m_pq = S::mul(S::add(m, m), S::mul(p, q));
    g = S::fma(p_minus_t, S::mul(m, m), S::mul(ce_slope, two_m_pq));
  } else {
    // gamma m^(gamma-1) p q, <= gamma by construction: never overflows
    V m_pow_pq = exp_neg<S>(S::sub(zero, S::fma(S::sub(gamma, one), log_m, S::add(log_p, log_q))));
    g = S::fma(p_minus_t, modulator, S::mul(S::mul(gamma, ce_slope), m_pow_pq));
  }
  return S::mul(alpha_t, g);
}

// Probabilities (from_sigmoid) with targets in [0, 1]; zero gradient where
// the clip is active.
template <class S, Pass kPass, GammaKind kGamma>
inline typename S::V focal_probabilities(typename S::V x, typename S::V t, typename S::V alpha_t,
                                         typename S::V gamma, typename S::V eps,
                                         typename S::V one_minus_eps) {
  typedef typename S::V V;
  const V zero = S::splat(0), one = S::splat(1);
  V one_minus_x = S::sub(one, x);
  V p = S::min(S::max(x, eps), one_minus_eps);
  V q = S::min(S::max(one_minus_x, eps), one_minus_eps);
  V log_p = log_nonnegative<S>(p), log_q = log_nonnegative<S>(q);
  V one_minus_t = S::sub(one, t);
  V ce = S::sub(zero, S::fma(t, log_p, S::mul(one_minus_t, log_q)));
  V m = S::fma(t, q, S::mul(one_minus_t, p));
  V log_m = zero;
  V modulator = modulating_factor<S, kGamma>(t, m, log_p, log_q, gamma, &log_m);
  if (kPass == Pass::kForward) return S::mul(S::mul(alpha_t, ce), modulator);
  V d_ce = S::sub(S::div(one_minus_t, q), S::div(t, p));
  V one_minus_2t = S::sub(one_minus_t, t);
  V g = d_ce;
  if (kGamma == GammaKind::kOne) {
    g = S::fma(d_ce, m, S::mul(ce, one_minus_2t));
  } else if (kGamma == GammaKind::kTwo) {
    g = S::fma(d_ce, S::mul(m, m), S::mul(S::add(ce, ce), S::mul(m, one_minus_2t)));
  } else if (kGamma == GammaKind::kAny) {
    // m^(gamma-1) >= 1 when gamma < 1; the clip keeps it finite unless eps = 0
    V m_pow = exp_neg<S>(S::max(S::splat(-87.0f), S::mul(S::sub(one, gamma), log_m)));
    g = S::fma(d_ce, modulator, S::mul(S::mul(gamma, S::mul(ce, one_minus_2t)), m_pow));
  }
  typename S::M inside = S::mask_and(S::ge(x, eps), S::ge(one_minus_x, eps));
  return S::zero_unless(inside, S::mul(alpha_t, g));
}

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_FOCAL_MATH_H_
