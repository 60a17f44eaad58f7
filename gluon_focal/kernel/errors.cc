#include "errors.h"

#include <mutex>
#include <sstream>
#include <vector>

#include "mxnet/lib_api.h"

namespace gluon_focal {
namespace {

// lib_api keeps the library's error messages in a private list, which MXNet 1.9
// reads (c_api.cc, getExtensionMsgs) after *every* call into the library -- on the
// thread making the call, without a lock -- and prints whole with each failure.
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

std::vector<std::stringstream*>& error_list() {
  return mxnet::ext::MXerrorMsgs::get()->*member_of(ErrorListTag());
}

}  // namespace

void prepare_error_list() {
  std::vector<std::stringstream*>& list = error_list();
  if (list.capacity() > 0) return;
  // One slot, allocated now, while no other thread calls the library: a later
  // push_back must not reallocate under a reader on another thread (MXNet
  // building a graph on the main thread while an op fails on an engine thread
  // read freed memory: a segfault). The slot keeps a valid (empty) message even
  // before the first error, in case a reader sees the size before the pointer.
  list.reserve(1);
  list.push_back(new std::stringstream());
  list.pop_back();
}

void report_error(const std::string& message, const char* op_name) {
  static std::mutex lock;
  std::lock_guard<std::mutex> guard(lock);
  std::vector<std::stringstream*>& list = error_list();
  // The message is complete before a reader can see it. It takes the one slot, so
  // a later failure does not repeat an earlier call's message, and the reads
  // after every call copy one message, not all of them. Replaced messages stay
  // allocated: a reader on another thread may still be copying one.
  std::stringstream* fresh = new std::stringstream();
  *fresh << op_name << ": " << message;
  if (list.empty()) list.push_back(fresh);   // into the slot made at load: no reallocation
  else __atomic_store_n(&list.back(), fresh, __ATOMIC_RELEASE);
}

}  // namespace gluon_focal
