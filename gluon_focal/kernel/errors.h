// Reporting an error to MXNet from a lib_api callback.
#ifndef GLUON_FOCAL_ERRORS_H_
#define GLUON_FOCAL_ERRORS_H_

#include <string>

namespace gluon_focal {

// Hands "<op_name>: <message>" to MXNet, which raises it as MXNetError.
void report_error(const std::string& message, const char* op_name = "gluon_focal_loss");

// Makes lib_api's error list safe for MXNet to read on one thread while another
// reports an error; call once, when the library is loaded (lib_api's initialize).
void prepare_error_list();

}  // namespace gluon_focal

#endif  // GLUON_FOCAL_ERRORS_H_
