// The consumer of the single hand-over (`shmarrow send` without --mode, ServeFd): one sealed
// memfd received over a SOCK_STREAM connection, read as an Arrow IPC stream in place.
#pragma once

#include <memory>
#include <string>

#include "shmarrow/consumer.h"
#include "unix_socket.h"

namespace shmarrow::internal {

/// Receives the hand-over from the producer at `address`, through `connected` (a SOCK_STREAM
/// connection already made) or a new connection when it is null.
[[nodiscard]] arrow::Result<std::shared_ptr<Consumer>> OpenHandoverConsumer(
    const std::string& address, const ConsumerOptions& options, UnixSocket* connected);

}  // namespace shmarrow::internal
