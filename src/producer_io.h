// The producer's kernel objects for socket I/O: the listening socket, an epoll set over it and
// the consumers' sockets, an eventfd that wakes the I/O thread, and a spare fd that lets it refuse
// a connection when the process is out of fds. The loop that uses them is ProducerImpl's
// (producer_io.cc).
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "shmarrow/unique_fd.h"
#include "unix_socket.h"

namespace shmarrow::internal {

class Poller {
 public:
  // epoll tags: the listener, the eventfd, and each session (its id plus kSessionTagOffset).
  static constexpr uint64_t kListenerTag = 0;
  static constexpr uint64_t kWakeTag = 1;
  static constexpr uint64_t kSessionTagOffset = 1;  // session ids start at 1

  [[nodiscard]] arrow::Status Open(const std::string& address, unsigned socket_mode);
  bool opened() const { return static_cast<bool>(epoll_); }

  [[nodiscard]] arrow::Status Add(int fd, uint64_t tag, uint32_t events);
  [[nodiscard]] arrow::Status Modify(int fd, uint64_t tag, uint32_t events);
  /// Takes `fd` out of the set. A failure (already out) leaves nothing to undo: closing the fd
  /// removes it in any case.
  void Remove(int fd);
  /// epoll_wait: the number of events (0 on timeout or EINTR), or -1 when the set failed.
  int Wait(std::span<epoll_event> events, int timeout_ms);
  /// Makes Wait return (from any thread); Drain consumes that.
  void Wake();
  void Drain();

  /// The next queued connection (fd -1: none).
  [[nodiscard]] arrow::Result<UnixSocket> Accept() { return listener_->Accept(0); }
  /// accept() failed with EMFILE or ENFILE: the connection stays queued, so the listener stays
  /// readable (the I/O thread would spin) and its consumer would wait for a Welcome. Gives up the
  /// spare fd to take the connection and hands it, with the errno, to `refuse` (which tells the
  /// peer why); true if it did.
  bool RefuseForWantOfFds(const arrow::Status& failure,
                          const std::function<void(UnixSocket& socket, int err)>& refuse);
  /// Removes the socket file.
  void CloseListener() { listener_.reset(); }

 private:
  arrow::Status Control(int op, const char* name, int fd, uint64_t tag, uint32_t events);

  std::unique_ptr<UnixSocket> listener_;
  UniqueFd epoll_;
  UniqueFd wake_;
  UniqueFd spare_fd_;
};

}  // namespace shmarrow::internal
