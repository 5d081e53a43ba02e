// Handing a sealed memfd from one process to another over a UNIX domain socket (SCM_RIGHTS).
//
// The hand-over is the simplest mode: the producer listens on a SOCK_STREAM socket; to each client
// it sends one data byte carrying one fd, then closes the connection. A client that connects and
// does a single recvmsg with room for one fd gets the stream.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <functional>
#include <string>

#include "shmarrow/unique_fd.h"

namespace shmarrow {

/// Documented default socket path of `shmarrow send` / `shmarrow recv`.
inline constexpr const char* kDefaultSocketPath = "/tmp/shmarrow.sock";

struct ServeOptions {
  /// Clients to serve before returning.
  int clients = 1;
  /// Give up waiting for the next client after this long (-1: wait forever).
  int accept_timeout_ms = -1;
  /// Mode of the socket file (ignored for abstract names, which start with '@').
  unsigned socket_mode = 0600;
  /// Only peers with the producer's uid get the fd (SO_PEERCRED); others are disconnected.
  bool same_uid_only = true;
  /// Called once the socket listens: the moment a consumer can connect (e.g. to announce it).
  std::function<void()> on_listening;
};

/// Listens on `socket_path` ("@name" for the abstract namespace), serves `fd` to each client, and
/// removes the socket file when done.
[[nodiscard]] arrow::Status ServeFd(const std::string& socket_path, int fd,
                                    const ServeOptions& options = {});

/// Connects to `socket_path`, retrying for up to `connect_timeout_ms` while no producer listens
/// yet, and receives exactly one fd (CLOEXEC). A message without an fd, with several fds or with
/// unexpected control data is an error; any fds it carried are closed.
[[nodiscard]] arrow::Result<UniqueFd> ReceiveFd(const std::string& socket_path,
                                                int connect_timeout_ms = 0);

}  // namespace shmarrow
