#include "shmarrow/handover.h"

#include <sys/socket.h>
#include <unistd.h>

#include <array>

#include "handover_internal.h"
#include "shmarrow/error.h"
#include "unix_socket.h"

namespace shmarrow {

arrow::Status ServeFd(const std::string& socket_path, int fd, const ServeOptions& options) {
  ARROW_ASSIGN_OR_RAISE(
      auto listener, internal::UnixSocket::Listen(socket_path, SOCK_STREAM, options.socket_mode));
  if (options.on_listening) options.on_listening();
  const std::array<uint8_t, 1> byte{'F'};
  const std::array<int, 1> fds{fd};
  for (int served = 0; served < options.clients;) {
    ARROW_ASSIGN_OR_RAISE(auto client, listener.Accept(options.accept_timeout_ms));
    if (client.fd() < 0) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout,
                       "no consumer connected to '", socket_path, "' within ",
                       options.accept_timeout_ms, " ms (", served, " of ", options.clients,
                       " served)");
    }
    if (options.same_uid_only) {
      ARROW_ASSIGN_OR_RAISE(auto peer, client.Peer());
      if (peer.uid != ::geteuid()) continue;  // refused: the connection closes without an fd
    }
    // A consumer that hangs up early only loses its own copy; the others are still served.
    if (client.Send(byte, fds).ok()) ++served;
  }
  return arrow::Status::OK();
}

arrow::Result<UniqueFd> internal::ReceiveHandedOverFd(internal::UnixSocket& socket,
                                                      const std::string& socket_path,
                                                      int timeout_ms) {
  std::array<uint8_t, 1> byte{};
  // The producer sends right after accepting.
  ARROW_ASSIGN_OR_RAISE(auto received, socket.Receive(byte, 1, timeout_ms));
  if (received.bytes < 0) {
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "producer at '", socket_path,
                     "' sent nothing within ", timeout_ms, " ms");
  }
  if (received.bytes == 0) {
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kProducerGone, "producer at '",
                     socket_path, "' closed the connection before sending an fd");
  }
  if (received.fds.empty()) {
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kProtocol, "message from '",
                     socket_path, "' carried no fd");
  }
  return std::move(received.fds.front());
}

arrow::Result<UniqueFd> ReceiveFd(const std::string& socket_path, int connect_timeout_ms) {
  ARROW_ASSIGN_OR_RAISE(
      auto socket, internal::UnixSocket::Connect(socket_path, SOCK_STREAM, connect_timeout_ms));
  return internal::ReceiveHandedOverFd(socket, socket_path, internal::kHandoverReplyTimeoutMs);
}

}  // namespace shmarrow
