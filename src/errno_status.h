// One place that turns errno into an arrow::Status naming the call and its subject.
#pragma once

#include <arrow/status.h>
#include <arrow/util/io_util.h>

#include <cerrno>
#include <utility>

namespace shmarrow::internal {

/// IOError whose message is the concatenated `what` and whose detail carries errno (Arrow prints it
/// as "[errno N] <strerror>"; pyarrow maps it to the matching OSError subclass).
template <typename... Args>
[[nodiscard]] arrow::Status ErrnoStatus(int err, Args&&... what) {
  return arrow::internal::IOErrorFromErrno(err, std::forward<Args>(what)...);
}

/// Runs a syscall again while it fails with EINTR.
template <typename Call>
auto RetryOnEintr(Call&& call) {
  for (;;) {
    auto rc = call();
    if (rc == -1 && errno == EINTR) continue;
    return rc;
  }
}

}  // namespace shmarrow::internal
