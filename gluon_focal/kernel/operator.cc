/*
 * Registers `gluon_focal_loss(pred, label)` with MXNet (lib_api, MXNet >= 1.7)
 * and exports the C functions the Python loader calls (ctypes).
 *
 * Forward reads pred and label once and writes the loss; backward reads them
 * again and writes d pred once (the label gets a zero gradient).  No
 * pred-sized temporaries: float16 is converted per chunk.
 */
#include <cstring>
#include <string>
#include <vector>

#include "mxnet/lib_api.h"

#include "attributes.h"
#include "compute.h"
#include "errors.h"
#include "plan.h"
#include "simd_dispatch.h"
#include "thread_pool.h"

using namespace mxnet::ext;

namespace gluon_focal {
namespace {

MXReturnValue fail(const std::string& message) {
  report_error(message);
  return MX_FAIL;
}

std::vector<int64_t> to_int64(const std::vector<unsigned int>& s) {
  return std::vector<int64_t>(s.begin(), s.end());
}

bool is_float_type(int t) { return t == kFloat32 || t == kFloat16 || t == kFloat64; }
bool is_label_type(int t) {
  return is_float_type(t) || t == kUint8 || t == kInt32 || t == kInt8 || t == kInt64;
}

size_t element_size(int dtype) {
  switch (dtype) {
    case kFloat64: case kInt64: return 8;
    case kFloat16: return 2;
    case kUint8: case kInt8: return 1;
    default: return 4;
  }
}

void fill_zero(MXTensor* t) {
  if (t->data_ptr && t->size() > 0)
    zero_fill(t->data_ptr, element_size(t->dtype) * static_cast<size_t>(t->size()));
}

MXReturnValue parse(const AttributeMap& attrs, Attributes* a) {
  std::string error;
  return parse_attributes(attrs, a, &error) ? MX_SUCCESS : fail(error);
}

MXReturnValue plan_call(const AttributeMap& attrs, const MXTensor& pred, const MXTensor& label,
                        Plan* plan) {
  Attributes a;
  if (parse(attrs, &a) != MX_SUCCESS) return MX_FAIL;
  if (pred.ctx.dev_type != "cpu") return fail("only the CPU implementation is compiled in");
  std::string error = make_plan(a, pred.shape, label.shape, plan);
  return error.empty() ? MX_SUCCESS : fail(error);
}

MXReturnValue parse_attrs(const AttributeMap& attrs, int* num_in, int* num_out) {
  *num_in = 2;
  *num_out = 1;
  Attributes a;
  return parse(attrs, &a);
}

MXReturnValue infer_type(const AttributeMap&, std::vector<int>* in_types, std::vector<int>* out_types) {
  int pred_type = (*in_types)[0], label_type = (*in_types)[1];
  if (pred_type >= 0 && !is_float_type(pred_type))
    return fail("pred must be float16, float32 or float64 (MXNet dtype id " + std::to_string(pred_type) + ")");
  if (label_type >= 0 && !is_label_type(label_type))
    return fail("label dtype (MXNet dtype id " + std::to_string(label_type) +
                ") is not supported; use float16/32/64, uint8, int8, int32 or int64");
  (*out_types)[0] = pred_type;
  return MX_SUCCESS;
}

MXReturnValue infer_shape(const AttributeMap& attrs, std::vector<std::vector<unsigned int>>* in_shapes,
                          std::vector<std::vector<unsigned int>>* out_shapes) {
  Attributes a;
  if (parse(attrs, &a) != MX_SUCCESS) return MX_FAIL;
  const std::vector<unsigned int>& pred_shape = (*in_shapes)[0];
  if (pred_shape.empty()) {   // not known yet
    (*out_shapes)[0] = std::vector<unsigned int>();
    return MX_SUCCESS;
  }
  std::vector<int64_t> implied;
  std::string error = check_shapes(a, to_int64(pred_shape), to_int64((*in_shapes)[1]), &implied);
  if (!error.empty()) return fail(error);
  if ((*in_shapes)[1].empty()) (*in_shapes)[1] = std::vector<unsigned int>(implied.begin(), implied.end());
  if (a.normalization == Normalization::kNone) (*out_shapes)[0] = pred_shape;
  else (*out_shapes)[0] = {pred_shape[(a.batch_axis + pred_shape.size()) % pred_shape.size()]};
  return MX_SUCCESS;
}

ArrayRef array(const MXTensor& t) { return ArrayRef{t.dtype, t.data_ptr}; }

MXReturnValue forward(const AttributeMap& attrs, std::vector<MXTensor>* inputs,
                      std::vector<MXTensor>* outputs, const OpResource&) {
  Plan plan;
  if (plan_call(attrs, (*inputs)[0], (*inputs)[1], &plan) != MX_SUCCESS) return MX_FAIL;
  MXTensor& out = (*outputs)[0];
  if (plan.num_elements == 0) {   // empty pred: reduced outputs are 0
    fill_zero(&out);
    return MX_SUCCESS;
  }
  std::string error = compute_forward(plan, array((*inputs)[0]), array((*inputs)[1]), array(out));
  return error.empty() ? MX_SUCCESS : fail(error);
}

// inputs: out_grad, pred, label, loss; outputs: d pred, d label
MXReturnValue backward(const AttributeMap& attrs, std::vector<MXTensor>* inputs,
                       std::vector<MXTensor>* outputs, const OpResource&) {
  if (inputs->size() < 3 || outputs->size() < 2) return fail("unexpected backward arity");
  const MXTensor& out_grad = (*inputs)[0];
  const MXTensor& pred = (*inputs)[1];
  const MXTensor& label = (*inputs)[2];
  fill_zero(&(*outputs)[1]);
  MXTensor& d_pred = (*outputs)[0];
  if (!d_pred.data_ptr) return MX_SUCCESS;
  Plan plan;
  if (plan_call(attrs, pred, label, &plan) != MX_SUCCESS) return MX_FAIL;
  if (out_grad.dtype != pred.dtype) return fail("out_grad dtype differs from pred dtype");
  std::string error = compute_backward(plan, array(pred), array(label), array(out_grad), array(d_pred));
  return error.empty() ? MX_SUCCESS : fail(error);
}

const char* simd_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kAvx512: return "avx512";
    case SimdLevel::kAvx2: return "avx2";
    default: return "scalar";
  }
}

}  // namespace
}  // namespace gluon_focal

REGISTER_OP(gluon_focal_loss)
    .setParseAttrs(gluon_focal::parse_attrs)
    .setInferType(gluon_focal::infer_type)
    .setInferShape(gluon_focal::infer_shape)
    .setForward(gluon_focal::forward, "cpu")
    .setBackward(gluon_focal::backward, "cpu");

MXReturnValue initialize(int version) {
  gluon_focal::prepare_error_list();
  if (version >= 10700) return MX_SUCCESS;
  gluon_focal::report_error("needs MXNet >= 1.7 (lib_api v11), got version " + std::to_string(version));
  return MX_FAIL;
}

// C entry points for the Python loader (gluon_focal/kernel/__init__.py).
extern "C" {
__attribute__((visibility("default"))) int gluon_focal_set_num_threads(int n) {
  gluon_focal::set_num_threads(n);
  return gluon_focal::num_threads();
}
__attribute__((visibility("default"))) int gluon_focal_get_num_threads() {
  return gluon_focal::num_threads();
}
__attribute__((visibility("default"))) int gluon_focal_default_num_threads() {
  return gluon_focal::default_num_threads();
}
// "scalar", "avx2" or "avx512": the loops in use, and the best this CPU has
__attribute__((visibility("default"))) const char* gluon_focal_simd_level() {
  return gluon_focal::simd_name(gluon_focal::active_simd_level());
}
__attribute__((visibility("default"))) const char* gluon_focal_cpu_simd_level() {
  return gluon_focal::simd_name(gluon_focal::cpu_simd_level());
}
// Testing hook: use loops of at most this level (0 scalar, 1 AVX2, 2 AVX-512).
__attribute__((visibility("default"))) const char* gluon_focal_limit_simd_level(int level) {
  gluon_focal::limit_simd_level(static_cast<gluon_focal::SimdLevel>(level < 0 ? 0 : (level > 2 ? 2 : level)));
  return gluon_focal::simd_name(gluon_focal::active_simd_level());
}
// Writes why the kernel cannot take this layout into `why` (size n) and
// returns 1, or returns 0 when it can.
__attribute__((visibility("default"))) int gluon_focal_layout_problem(int ndim, int axis, int batch_axis,
                                                                    int class_axis_matters, int reduced,
                                                                    char* why, int n) {
  std::string problem = gluon_focal::layout_problem(ndim, axis, batch_axis, class_axis_matters != 0, reduced != 0);
  if (why && n > 0) {
    std::strncpy(why, problem.c_str(), static_cast<size_t>(n - 1));
    why[n - 1] = '\0';
  }
  return problem.empty() ? 0 : 1;
}
}
