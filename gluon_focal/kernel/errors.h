// Reporting an error to MXNet from a lib_api callback.
#ifndef GLUON_FOCAL_ERRORS_H_
#define GLUON_FOCAL_ERRORS_H_

#include <string>

namespace gluon_focal {

// Hands "<op_name>: <message>" to MXNet, which raises it as MXNetError.
void report_error(const std::string& message, const char* op_name = "gluon_focal_loss");

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_ERRORS_H_
