#include "shmarrow/unique_fd.h"

#include <unistd.h>

namespace shmarrow {

void UniqueFd::reset(int fd) noexcept {
  if (fd_ >= 0 && fd_ != fd) {
    // close() releases the descriptor even when it reports EINTR on Linux: never retry it.
    ::close(fd_);
  }
  fd_ = fd;
}

}  // namespace shmarrow
