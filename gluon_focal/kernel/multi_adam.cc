/*
 * Registers `gluon_focal_multi_adam(w0, g0, m0, v0, w1, g1, m1, v1, ...)`: MXNet
 * 1.9's `adam_update` for N float32 parameters in one call (MXNet aggregates
 * only SGD).  Each parameter i has its own lrs[i] and wds[i] (the Python side
 * folds Adam's bias correction into lrs, as mx.optimizer.Adam does); the
 * other attributes are shared.  Per element, in float32 and in this order,
 * as MXNet's AdamUpdateKernel:
 *
 *   g = grad * rescale_grad + weight * wd, clipped to +-clip_gradient if >= 0
 *   m = beta1 m + (1 - beta1) g;  v = beta2 v + (1 - beta2) g g
 *   weight = weight - lr m / (sqrt(v) + epsilon)
 *
 * Outputs: the N new weights (called with out=weights, in place); the means
 * and variances are updated in place (mutated inputs).  Every element is
 * independent, so any thread count gives the same bits; the file is built
 * with -ffp-contract=off so that no multiply-add is fused either.
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
#include "thread_pool.h"

using namespace mxnet::ext;

namespace gluon_focal {
namespace {

const char kOpName[] = "gluon_focal_multi_adam";
const int kArraysPerWeight = 4;          // weight, grad, mean, var
const int64_t kChunk = 16384;            // elements per unit of work
const int64_t kSerialBelow = 65536;      // elements: smaller calls run on the calling thread
const char* const kArrayNames[kArraysPerWeight] = {"weight", "grad", "mean", "var"};

struct Params {
  int num_weights = 0;
  std::vector<float> lrs, wds;
  float beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f, rescale_grad = 1.f, clip_gradient = -1.f;
};

MXReturnValue fail(const std::string& message) {
  report_error(message, kOpName);
  return MX_FAIL;
}

// The float MXNet 1.9's operators read from `text`: their float parameters go
// through dmlc-core's fast strtof, which is not correctly rounded (the integer
// digits and the fraction are added in float, then an exponent is applied as one
// float multiplication or division by a power of ten: '2.6041666666666665e-05'
// is 1 ulp off the nearest float).  Parsing lrs and wds the same way gives
// adam_update's numbers.  `text` is a number already checked by strtod.
float mxnet_parameter_float(const std::string& text) {
  const int kMaxFractionDigits = 19;
  const char* p = text.c_str();
  while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '[' || *p == '(') ++p;   // as parse_double
  const bool negative = *p == '-';
  if (*p == '-' || *p == '+') ++p;
  float value = 0.f;
  for (; *p >= '0' && *p <= '9'; ++p) value = value * 10.0f + static_cast<float>(*p - '0');
  if (*p == '.') {
    uint64_t digits = 0, power = 1;
    int count = 0;
    for (++p; *p >= '0' && *p <= '9'; ++p, ++count) {
      if (count < kMaxFractionDigits) {
        digits = digits * 10 + static_cast<uint64_t>(*p - '0');
        power *= 10;
      }
    }
    value += static_cast<float>(static_cast<double>(digits) / static_cast<double>(power));
  }
  if (*p == 'e' || *p == 'E') {
    ++p;
    const bool divide = *p == '-';
    if (*p == '-' || *p == '+') ++p;
    unsigned exponent = 0;
    for (; *p >= '0' && *p <= '9'; ++p) exponent = exponent * 10 + static_cast<unsigned>(*p - '0');
    exponent = std::min(exponent, 38u);
    float scale = 1.0f;
    for (; exponent >= 8; exponent -= 8) scale *= 1E8f;
    for (; exponent > 0; --exponent) scale *= 10.0f;
    value = divide ? value / scale : value * scale;
  }
  return negative ? -value : value;
}

std::string parse_float(const std::string& key, const std::string& text, float* out) {
  double v;
  if (!parse_double(text, &v) || !std::isfinite(v))
    return "attribute " + key + "='" + text + "' must be a finite number";
  *out = mxnet_parameter_float(text);
  return "";
}

std::string parse_list(const std::string& key, const std::string& text, std::vector<float>* out) {
  out->clear();
  std::stringstream items(text);
  std::string item;
  while (std::getline(items, item, ',')) {
    float v;
    if (!parse_float(key, item, &v).empty())
      return "attribute " + key + ": '" + item + "' is not a finite number";
    out->push_back(v);
  }
  return "";
}

std::string parse_params(const AttributeMap& attrs, Params* p) {
  bool has_lrs = false, has_wds = false;
  for (const auto& kv : attrs) {
    const std::string& key = kv.first;
    std::string error;
    if (key.size() >= 2 && key[0] == '_' && key[1] == '_') continue;   // MXNet's own
    if (key == "num_weights") {
      if (!parse_int(kv.second, &p->num_weights) || p->num_weights < 1)
        error = "attribute num_weights='" + kv.second + "' must be an integer >= 1";
    } else if (key == "lrs") {
      error = parse_list(key, kv.second, &p->lrs);
      has_lrs = true;
    } else if (key == "wds") {
      error = parse_list(key, kv.second, &p->wds);
      has_wds = true;
    } else if (key == "beta1") {
      error = parse_float(key, kv.second, &p->beta1);
    } else if (key == "beta2") {
      error = parse_float(key, kv.second, &p->beta2);
    } else if (key == "epsilon") {
      error = parse_float(key, kv.second, &p->epsilon);
    } else if (key == "rescale_grad") {
      error = parse_float(key, kv.second, &p->rescale_grad);
    } else if (key == "clip_gradient") {
      error = parse_float(key, kv.second, &p->clip_gradient);
    } else {
      error = "unknown attribute '" + key + "' (known: num_weights, lrs, wds, beta1, beta2, "
              "epsilon, rescale_grad, clip_gradient)";
    }
    if (!error.empty()) return error;
  }
  if (p->num_weights < 1) return "attribute num_weights (an integer >= 1) is required";
  if (!has_lrs || !has_wds) return "attributes lrs and wds (one value per weight) are required";
  const size_t n = static_cast<size_t>(p->num_weights);
  if (p->lrs.size() != n || p->wds.size() != n) {
    std::ostringstream s;
    s << "lrs and wds must have num_weights=" << n << " values each, got " << p->lrs.size()
      << " and " << p->wds.size();
    return s.str();
  }
  return "";
}

template <class Int>
std::string shape_text(const std::vector<Int>& shape) {
  std::ostringstream s;
  s << '(';
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

// "grad 3 has shape (2, 5) but weight 3 has (5, 2)", or "" when each
// parameter's four arrays share one shape (unknown shapes, empty, pass).
template <class Int>
std::string check_shapes(const std::vector<std::vector<Int>>& shapes) {
  for (size_t i = 0; i + kArraysPerWeight <= shapes.size(); i += kArraysPerWeight) {
    for (int k = 1; k < kArraysPerWeight; ++k) {
      const std::vector<Int>& weight = shapes[i], &other = shapes[i + k];
      if (!weight.empty() && !other.empty() && other != weight) {
        std::ostringstream s;
        s << kArrayNames[k] << ' ' << i / kArraysPerWeight << " has shape " << shape_text(other)
          << " but weight " << i / kArraysPerWeight << " has " << shape_text(weight)
          << "; they must match";
        return s.str();
      }
    }
  }
  return "";
}

// One parameter's elements [begin, end).
void adam_range(const Params& p, float lr, float wd, float* weight, const float* grad, float* mean,
                float* var, int64_t begin, int64_t end) {
  const float beta1 = p.beta1, beta2 = p.beta2, one_minus_beta1 = 1.f - p.beta1,
              one_minus_beta2 = 1.f - p.beta2, epsilon = p.epsilon, rescale = p.rescale_grad,
              clip = p.clip_gradient;
  if (clip >= 0.f) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = std::min(clip, std::max(-clip, grad[i] * rescale + weight[i] * wd));
      mean[i] = beta1 * mean[i] + one_minus_beta1 * g;
      var[i] = beta2 * var[i] + one_minus_beta2 * g * g;
      weight[i] = weight[i] - lr * mean[i] / (std::sqrt(var[i]) + epsilon);
    }
  } else {
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i] * rescale + weight[i] * wd;
      mean[i] = beta1 * mean[i] + one_minus_beta1 * g;
      var[i] = beta2 * var[i] + one_minus_beta2 * g * g;
      weight[i] = weight[i] - lr * mean[i] / (std::sqrt(var[i]) + epsilon);
    }
  }
}

struct Chunk {
  int weight;
  int64_t begin, end;
};

MXReturnValue parse_attrs(const AttributeMap& attrs, int* num_in, int* num_out) {
  Params p;
  std::string error = parse_params(attrs, &p);
  if (!error.empty()) return fail(error);
  *num_in = kArraysPerWeight * p.num_weights;
  *num_out = p.num_weights;
  return MX_SUCCESS;
}

MXReturnValue infer_type(const AttributeMap&, std::vector<int>* in_types, std::vector<int>* out_types) {
  for (size_t i = 0; i < in_types->size(); ++i) {
    int& t = (*in_types)[i];
    if (t < 0) t = kFloat32;
    if (t != kFloat32)
      return fail(std::string(kArrayNames[i % kArraysPerWeight]) + ' ' +
                  std::to_string(i / kArraysPerWeight) + " has MXNet dtype id " + std::to_string(t) +
                  "; only float32 is supported (other dtypes: mx.optimizer.Adam)");
  }
  for (int& t : *out_types) t = kFloat32;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const AttributeMap&, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  std::string error = check_shapes(*in_shapes);
  if (!error.empty()) return fail(error);
  for (size_t i = 0; i < out_shapes->size(); ++i)
    (*out_shapes)[i] = (*in_shapes)[kArraysPerWeight * i];
  return MX_SUCCESS;
}

// mean and var of every parameter are updated in place.
MXReturnValue mutate_inputs(const AttributeMap& attrs, std::vector<int>* input_indices) {
  Params p;
  std::string error = parse_params(attrs, &p);
  if (!error.empty()) return fail(error);
  for (int i = 0; i < p.num_weights; ++i) {
    input_indices->push_back(kArraysPerWeight * i + 2);
    input_indices->push_back(kArraysPerWeight * i + 3);
  }
  return MX_SUCCESS;
}

MXReturnValue forward(const AttributeMap& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  Params p;
  std::string error = parse_params(attrs, &p);
  if (!error.empty()) return fail(error);
  const std::vector<MXTensor>& in = *inputs;
  if (in.size() != static_cast<size_t>(kArraysPerWeight * p.num_weights) ||
      outputs->size() != static_cast<size_t>(p.num_weights))
    return fail("unexpected forward arity");
  std::vector<std::vector<int64_t>> shapes;
  for (const MXTensor& t : in) {
    if (t.ctx.dev_type != "cpu") return fail("only the CPU implementation is compiled in");
    if (t.dtype != kFloat32) return fail("every array must be float32");
    shapes.push_back(t.shape);
  }
  error = check_shapes(shapes);
  if (!error.empty()) return fail(error);
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int w = 0; w < p.num_weights; ++w) {
    const int64_t size = in[kArraysPerWeight * w].size();
    if ((*outputs)[w].size() != size) return fail("output " + std::to_string(w) + " has the wrong size");
    for (int64_t begin = 0; begin < size; begin += kChunk)
      chunks.push_back(Chunk{w, begin, std::min(size, begin + kChunk)});
    total += size;
  }
  const int threads = threads_for(total, static_cast<int64_t>(chunks.size()), kSerialBelow);
  parallel_for_chunks(static_cast<int64_t>(chunks.size()), threads, [] { return 0; },
                      [&](int, int64_t id) {
    const Chunk& c = chunks[id];
    const MXTensor* a = &in[kArraysPerWeight * c.weight];
    float* out = static_cast<float*>((*outputs)[c.weight].data_ptr);
    const float* weight = static_cast<const float*>(a[0].data_ptr);
    if (out != weight)   // out= another array: start from a copy of the weight
      std::copy(weight + c.begin, weight + c.end, out + c.begin);
    adam_range(p, p.lrs[c.weight], p.wds[c.weight], out, static_cast<const float*>(a[1].data_ptr),
               static_cast<float*>(a[2].data_ptr), static_cast<float*>(a[3].data_ptr), c.begin, c.end);
  });
  return MX_SUCCESS;
}

}  // namespace
}  // namespace gluon_focal

REGISTER_OP(gluon_focal_multi_adam)
    .setParseAttrs(gluon_focal::parse_attrs)
    .setInferType(gluon_focal::infer_type)
    .setInferShape(gluon_focal::infer_shape)
    .setMutateInputs(gluon_focal::mutate_inputs)
    .setForward(gluon_focal::forward, "cpu");
