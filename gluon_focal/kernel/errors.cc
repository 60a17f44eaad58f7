#include "errors.h"

#include <mutex>
#include <sstream>
#include <vector>

#include "mxnet/lib_api.h"

namespace gluon_focal {
namespace {

// lib_api keeps every error message of the process in a private list and
// MXNet reports the whole list with each new failure, so a second bad call
// would repeat the first one's message; lib_api offers no way to clear it.
// An explicit instantiation may name a private member, which gives us the list.
template <typename Tag, typename Tag::type Member>
struct PrivateAccess {
  friend typename Tag::type member_of(Tag) { return Member; }
};
struct ErrorListTag {
  typedef std::vector<std::stringstream*> mxnet::ext::MXerrorMsgs::*type;
  friend type member_of(ErrorListTag);
};
template struct PrivateAccess<ErrorListTag, &mxnet::ext::MXerrorMsgs::messages>;

}  // namespace

void report_error(const std::string& message, const char* op_name) {
  static std::mutex lock;
  static size_t retired = 0;
  std::lock_guard<std::mutex> guard(lock);
  std::vector<std::stringstream*>& earlier =
      mxnet::ext::MXerrorMsgs::get()->*member_of(ErrorListTag());
  // Earlier messages are swapped for empty ones, not removed or deleted: MXNet may
  // still be reading the list for another thread's failure (a shorter list made
  // its read throw out_of_range). The swapped-out messages stay allocated.
  for (; retired < earlier.size(); ++retired) earlier[retired] = new std::stringstream();
  MX_ERROR_MSG << op_name << ": " << message;
}

}  // namespace gluon_focal
