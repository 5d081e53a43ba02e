// The receiving half of the single hand-over, over a connection already made.
#pragma once

#include <arrow/result.h>

#include <string>

#include "shmarrow/unique_fd.h"
#include "unix_socket.h"

namespace shmarrow::internal {

/// The longest a receiver waits for the producer's one message unless told otherwise: a silent
/// peer must not hang it forever.
inline constexpr int kHandoverReplyTimeoutMs = 30000;

/// Receives the one fd a hand-over producer sends on `socket` (a connected SOCK_STREAM socket to
/// `address`, named in errors), waiting at most `timeout_ms`.
[[nodiscard]] arrow::Result<UniqueFd> ReceiveHandedOverFd(UnixSocket& socket,
                                                          const std::string& address,
                                                          int timeout_ms);

}  // namespace shmarrow::internal
