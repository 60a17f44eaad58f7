/*
 * Registers `gluon_focal_group_norm(data, gamma, beta)`: MXNet 1.x's GroupNorm
 * (data N x C x ..., gamma and beta of shape (num_groups,), one value per
 * group; biased variance; out = (x - mean) / sqrt(var + eps) * gamma + beta).
 *
 * The channels of one group of one sample are a contiguous block, and each
 * (sample, group) block is one unit of work, read while it is in cache:
 * forward sums it once (statistics) and writes it once (normalise + affine);
 * backward sums (dy, x) once and writes dx once.  The blocks' mean and
 * 1 / std are two extra outputs (N x G) that backward reads instead of
 * recomputing them.  d gamma and d beta add the blocks' sums in sample order,
 * so every thread count gives the same bits.  Sums are in double; float16 is
 * computed in float32.  MXNet's extension API passes no `req`: the gradients
 * are always overwritten (the Python front-end handles grad_req='add').
 */
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

#include "attributes.h"
#include "errors.h"
#include "half_float.h"
#include "thread_pool.h"

using namespace mxnet::ext;

namespace gluon_focal {
namespace {

const char kOpName[] = "gluon_focal_group_norm";
const int64_t kSerialBelow = 32768;   // elements: smaller calls run on the calling thread
const int kLanes = 8;                 // independent partial sums, which the compiler vectorises

typedef uint16_t Half;   // float16 storage

// How a value of storage type T is read and written, and the type of its arithmetic.
template <class T> struct Element {
  typedef T Compute;
  static T load(const T* p, int64_t i) { return p[i]; }
  static void store(T* p, int64_t i, T v) { p[i] = v; }
};
template <> struct Element<Half> {
  typedef float Compute;
  static float load(const Half* p, int64_t i) { return half_to_float_soft(p[i]); }
  static void store(Half* p, int64_t i, float v) { p[i] = float_to_half_soft(v); }
};

// The mean and 1 / std outputs: float64 for float64 data, else float32.
template <class T> struct Statistic { typedef float type; };
template <> struct Statistic<double> { typedef double type; };
int statistic_dtype(int data_dtype) { return data_dtype == kFloat64 ? kFloat64 : kFloat32; }

struct Params {
  int num_groups = 1;
  double eps = 1e-5;
};

// The (sample, group) blocks of an N x C x ... array.
struct Blocks {
  int64_t samples, groups, length;   // length: (C / groups) * spatial elements
  int64_t count() const { return samples * groups; }
  int64_t elements() const { return count() * length; }
  int threads() const {
    return threads_for(elements(), count(), kSerialBelow);
  }
};

MXReturnValue fail(const std::string& message) {
  report_error(message, kOpName);
  return MX_FAIL;
}

template <class Int>
std::string shape_text(const std::vector<Int>& shape) {
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

std::string parse_params(const AttributeMap& attrs, Params* p) {
  for (const auto& kv : attrs) {
    const std::string& key = kv.first;
    if (key.size() >= 2 && key[0] == '_' && key[1] == '_') continue;   // MXNet's own
    if (key == "num_groups") {
      if (!parse_int(kv.second, &p->num_groups) || p->num_groups < 1)
        return "attribute num_groups='" + kv.second + "' must be an integer >= 1";
    } else if (key == "eps") {
      if (!parse_double(kv.second, &p->eps) || !(p->eps >= 0.0) || std::isinf(p->eps))
        return "attribute eps='" + kv.second + "' must be a finite number >= 0";
    } else {
      return "unknown attribute '" + key + "' (known: num_groups, eps)";
    }
  }
  return "";
}

// Checks data's shape against num_groups; gamma and beta are checked against
// (num_groups,) when known (non-empty).
template <class Int>
std::string check_shapes(const Params& p, const std::vector<Int>& data, const std::vector<Int>& gamma,
                         const std::vector<Int>& beta, Blocks* blocks) {
  if (data.size() < 3)
    return "data must have at least 3 dimensions (N x C x spatial...), got shape " + shape_text(data);
  const int64_t channels = static_cast<int64_t>(data[1]);
  if (channels % p.num_groups != 0) {
    std::ostringstream s;
    s << "num_groups=" << p.num_groups << " does not divide the " << channels
      << " channels (axis 1) of data of shape " << shape_text(data);
    return s.str();
  }
  const std::vector<Int> per_group{static_cast<Int>(p.num_groups)};
  const char* names[] = {"gamma", "beta"};
  const std::vector<Int>* shapes[] = {&gamma, &beta};
  for (int i = 0; i < 2; ++i) {
    if (!shapes[i]->empty() && *shapes[i] != per_group)
      return std::string(names[i]) + " must have shape " + shape_text(per_group) +
             " (one value per group, as in MXNet 1.x's GroupNorm), got " + shape_text(*shapes[i]);
  }
  int64_t spatial = 1;
  for (size_t i = 2; i < data.size(); ++i) spatial *= static_cast<int64_t>(data[i]);
  *blocks = Blocks{static_cast<int64_t>(data[0]), p.num_groups, channels / p.num_groups * spatial};
  return "";
}

// Sum of (x - shift) and of its square over x[0, n), in double (shifting by a
// value of the block keeps the variance from cancelling when |mean| >> std).
template <class T>
void centred_sums(const T* x, int64_t n, double shift, double* sum, double* sum_sq) {
  double s[kLanes] = {}, q[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double d = static_cast<double>(Element<T>::load(x, i + j)) - shift;
      s[j] += d;
      q[j] += d * d;
    }
  }
  for (; i < n; ++i) {
    const double d = static_cast<double>(Element<T>::load(x, i)) - shift;
    s[0] += d;
    q[0] += d * d;
  }
  *sum = *sum_sq = 0.0;
  for (int j = 0; j < kLanes; ++j) {
    *sum += s[j];
    *sum_sq += q[j];
  }
}

// Sum of dy and of dy * (x - mean) over [0, n), in double.
template <class T>
void gradient_sums(const T* dy, const T* x, int64_t n, double mean, double* sum_dy, double* sum_dy_xc) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) {
      const double g = static_cast<double>(Element<T>::load(dy, i + j));
      a[j] += g;
      b[j] += g * (static_cast<double>(Element<T>::load(x, i + j)) - mean);
    }
  }
  for (; i < n; ++i) {
    const double g = static_cast<double>(Element<T>::load(dy, i));
    a[0] += g;
    b[0] += g * (static_cast<double>(Element<T>::load(x, i)) - mean);
  }
  *sum_dy = *sum_dy_xc = 0.0;
  for (int j = 0; j < kLanes; ++j) {
    *sum_dy += a[j];
    *sum_dy_xc += b[j];
  }
}

template <class T>
void forward_blocks(const Blocks& b, double eps, const T* x, const T* gamma, const T* beta, T* y,
                    typename Statistic<T>::type* mean, typename Statistic<T>::type* inv_std) {
  typedef typename Element<T>::Compute C;
  parallel_for_chunks(b.count(), b.threads(), [] { return 0; }, [&](int, int64_t id) {
    const int64_t n = b.length, group = id % b.groups;
    const T* xb = x + id * n;
    T* yb = y + id * n;
    const double shift = n > 0 ? static_cast<double>(Element<T>::load(xb, 0)) : 0.0;
    double sum, sum_sq;
    centred_sums(xb, n, shift, &sum, &sum_sq);
    const double centre = n > 0 ? sum / n : 0.0;
    const double variance = n > 0 ? std::max(0.0, sum_sq / n - centre * centre) : 0.0;
    mean[id] = static_cast<typename Statistic<T>::type>(shift + centre);
    inv_std[id] = static_cast<typename Statistic<T>::type>(1.0 / std::sqrt(variance + eps));
    const C m = static_cast<C>(mean[id]);
    const C scale = static_cast<C>(static_cast<double>(inv_std[id]) *
                                   static_cast<double>(Element<T>::load(gamma, group)));
    const C shift_out = static_cast<C>(Element<T>::load(beta, group));
    for (int64_t i = 0; i < n; ++i)
      Element<T>::store(yb, i, (static_cast<C>(Element<T>::load(xb, i)) - m) * scale + shift_out);
  });
}

// dx = r g (dy - mean(dy)) - r^3 g (x - mean) mean(dy (x - mean)) per block
// (r = 1 / std, g = gamma); d gamma = sum of r dy (x - mean), d beta = sum of dy.
template <class T>
void backward_blocks(const Blocks& b, const T* dy, const T* x, const T* gamma,
                     const typename Statistic<T>::type* mean, const typename Statistic<T>::type* inv_std,
                     T* dx, T* d_gamma, T* d_beta) {
  typedef typename Element<T>::Compute C;
  std::vector<double> block_d_gamma(b.count()), block_d_beta(b.count());
  parallel_for_chunks(b.count(), b.threads(), [] { return 0; }, [&](int, int64_t id) {
    const int64_t n = b.length;
    const T* dyb = dy + id * n;
    const T* xb = x + id * n;
    const double m = static_cast<double>(mean[id]), r = static_cast<double>(inv_std[id]);
    double sum_dy, sum_dy_xc;
    gradient_sums(dyb, xb, n, m, &sum_dy, &sum_dy_xc);
    block_d_beta[id] = sum_dy;
    block_d_gamma[id] = r * sum_dy_xc;
    if (!dx || n == 0) return;
    const double gr = static_cast<double>(Element<T>::load(gamma, id % b.groups)) * r;
    // both differences before their (possibly large, r ~ 1 / sqrt(eps)) coefficients
    const C dy_coef = static_cast<C>(gr), mean_dy = static_cast<C>(sum_dy / n);
    const C xc_coef = static_cast<C>(-gr * r * r * sum_dy_xc / n), mc = static_cast<C>(m);
    T* dxb = dx + id * n;
    for (int64_t i = 0; i < n; ++i)
      Element<T>::store(dxb, i, dy_coef * (static_cast<C>(Element<T>::load(dyb, i)) - mean_dy) +
                                xc_coef * (static_cast<C>(Element<T>::load(xb, i)) - mc));
  });
  for (int64_t g = 0; g < b.groups; ++g) {
    double sum_gamma = 0.0, sum_beta = 0.0;
    for (int64_t s = 0; s < b.samples; ++s) {
      sum_gamma += block_d_gamma[s * b.groups + g];
      sum_beta += block_d_beta[s * b.groups + g];
    }
    if (d_gamma) Element<T>::store(d_gamma, g, static_cast<typename Element<T>::Compute>(sum_gamma));
    if (d_beta) Element<T>::store(d_beta, g, static_cast<typename Element<T>::Compute>(sum_beta));
  }
}

template <class T> T* data_of(const MXTensor& t) { return static_cast<T*>(t.data_ptr); }

template <class T>
void run_forward(const Blocks& b, const Params& p, const std::vector<MXTensor>& in,
                 std::vector<MXTensor>* out) {
  typedef typename Statistic<T>::type S;
  forward_blocks<T>(b, p.eps, data_of<T>(in[0]), data_of<T>(in[1]), data_of<T>(in[2]),
                    data_of<T>((*out)[0]), data_of<S>((*out)[1]), data_of<S>((*out)[2]));
}

// in: d out, d mean, d inv_std, data, gamma, beta, out, mean, inv_std
template <class T>
void run_backward(const Blocks& b, const std::vector<MXTensor>& in, std::vector<MXTensor>* out) {
  typedef typename Statistic<T>::type S;
  backward_blocks<T>(b, data_of<T>(in[0]), data_of<T>(in[3]), data_of<T>(in[4]), data_of<S>(in[7]),
                     data_of<S>(in[8]), data_of<T>((*out)[0]), data_of<T>((*out)[1]),
                     data_of<T>((*out)[2]));
}

bool is_float_type(int t) { return t == kFloat32 || t == kFloat16 || t == kFloat64; }

std::string check_call(const AttributeMap& attrs, const MXTensor& data, const MXTensor& gamma,
                       const MXTensor& beta, Params* p, Blocks* b) {
  std::string error = parse_params(attrs, p);
  if (!error.empty()) return error;
  if (data.ctx.dev_type != "cpu") return "only the CPU implementation is compiled in";
  if (!is_float_type(data.dtype) || gamma.dtype != data.dtype || beta.dtype != data.dtype)
    return "data, gamma and beta must share one dtype of float16, float32 or float64";
  return check_shapes(*p, data.shape, gamma.shape, beta.shape, b);
}

MXReturnValue parse_attrs(const AttributeMap& attrs, int* num_in, int* num_out) {
  *num_in = 3;    // data, gamma, beta
  *num_out = 3;   // out, mean, inv_std
  Params p;
  std::string error = parse_params(attrs, &p);
  return error.empty() ? MX_SUCCESS : fail(error);
}

MXReturnValue infer_type(const AttributeMap&, std::vector<int>* in_types, std::vector<int>* out_types) {
  const int data_type = (*in_types)[0];
  if (data_type < 0) return MX_SUCCESS;   // not known yet
  if (!is_float_type(data_type))
    return fail("data must be float16, float32 or float64 (MXNet dtype id " +
                std::to_string(data_type) + ")");
  const char* names[] = {"data", "gamma", "beta"};
  for (int i = 1; i < 3; ++i) {
    int& t = (*in_types)[i];
    if (t < 0) t = data_type;
    if (t != data_type)
      return fail(std::string(names[i]) + " has MXNet dtype id " + std::to_string(t) +
                  " but data has " + std::to_string(data_type) + "; they must match");
  }
  (*out_types)[0] = data_type;
  (*out_types)[1] = (*out_types)[2] = statistic_dtype(data_type);
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const AttributeMap& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  Params p;
  std::string error = parse_params(attrs, &p);
  if (!error.empty()) return fail(error);
  std::vector<std::vector<unsigned int>>& in = *in_shapes;
  if (in[0].empty()) return MX_SUCCESS;   // not known yet
  Blocks b;
  error = check_shapes(p, in[0], in[1], in[2], &b);
  if (!error.empty()) return fail(error);
  const std::vector<unsigned int> per_group{static_cast<unsigned int>(p.num_groups)};
  in[1] = in[2] = per_group;
  const std::vector<unsigned int> per_block{in[0][0], static_cast<unsigned int>(p.num_groups)};
  (*out_shapes)[0] = in[0];
  (*out_shapes)[1] = (*out_shapes)[2] = per_block;
  return MX_SUCCESS;
}

MXReturnValue forward(const AttributeMap& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  if (inputs->size() != 3 || outputs->size() != 3) return fail("unexpected forward arity");
  Params p;
  Blocks b;
  std::string error = check_call(attrs, (*inputs)[0], (*inputs)[1], (*inputs)[2], &p, &b);
  if (!error.empty()) return fail(error);
  switch ((*inputs)[0].dtype) {
    case kFloat64: run_forward<double>(b, p, *inputs, outputs); break;
    case kFloat16: run_forward<Half>(b, p, *inputs, outputs); break;
    default: run_forward<float>(b, p, *inputs, outputs); break;
  }
  return MX_SUCCESS;
}

MXReturnValue backward(const AttributeMap& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource&) {
  if (inputs->size() != 9 || outputs->size() != 3) return fail("unexpected backward arity");
  const std::vector<MXTensor>& in = *inputs;
  Params p;
  Blocks b;
  std::string error = check_call(attrs, in[3], in[4], in[5], &p, &b);
  if (!error.empty()) return fail(error);
  if (in[0].dtype != in[3].dtype || in[0].shape != in[3].shape)
    return fail("the output gradient's dtype or shape differs from data's");
  switch (in[3].dtype) {
    case kFloat64: run_backward<double>(b, in, outputs); break;
    case kFloat16: run_backward<Half>(b, in, outputs); break;
    default: run_backward<float>(b, in, outputs); break;
  }
  return MX_SUCCESS;
}

}  // namespace
}  // namespace gluon_focal

REGISTER_OP(gluon_focal_group_norm)
    .setParseAttrs(gluon_focal::parse_attrs)
    .setInferType(gluon_focal::infer_type)
    .setInferShape(gluon_focal::infer_shape)
    .setForward(gluon_focal::forward, "cpu")
    .setBackward(gluon_focal::backward, "cpu");
