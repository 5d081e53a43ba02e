// The receiving half of the single hand-over, over a connection already made.
#pragma once

#include <arrow/result.h>

#include <string>

#include "shmarrow/unique_fd.h"
#include "unix_socket.h"

namespace shmarrow::internal {

/// Receives the one fd a hand-over producer sends on `socket` (a connected SOCK_STREAM socket to
/// `address`, named in errors).
[[nodiscard]] arrow::Result<UniqueFd> ReceiveHandedOverFd(UnixSocket& socket,
                                                          const std::string& address);

}  // namespace shmarrow::internal
