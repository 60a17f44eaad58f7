// Forward and backward of one call: type dispatch, threads, chunks, checks.
#ifndef GLUON_FOCAL_COMPUTE_H_
#define GLUON_FOCAL_COMPUTE_H_

#include <string>

#include "plan.h"

namespace gluon_focal {

// An array as MXNet hands it over: dtype is MXNet's id (mxnet::ext::MXDType).
struct ArrayRef {
  int dtype;
  void* data;
};

// forward: `out` gets the loss (pred's shape, or one value per sample).
// backward: `out` gets d loss / d pred from `out_grad` (the loss's gradient).
// Return "" or the error (e.g. a label outside its mode's range).
std::string compute_forward(const Plan& plan, ArrayRef pred, ArrayRef label, ArrayRef out);
std::string compute_backward(const Plan& plan, ArrayRef pred, ArrayRef label, ArrayRef out_grad,
                             ArrayRef out);

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_COMPUTE_H_
