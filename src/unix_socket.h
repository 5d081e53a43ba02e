// AF_UNIX sockets and SCM_RIGHTS fd passing, with every edge of sendmsg/recvmsg handled.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

/// Linux caps one SCM_RIGHTS message at 253 fds (SCM_MAX_FD).
inline constexpr int kMaxFdsPerMessage = 253;

struct PeerCredentials {
  int pid = 0;
  unsigned uid = 0;
  unsigned gid = 0;
};

/// Whether a peer of `uid` may be talked to: this process's effective uid, one of `allowed`, or
/// any when `allow_any` (the rule of ProducerOptions and ConsumerOptions alike).
[[nodiscard]] bool UidAllowed(unsigned uid, std::span<const unsigned> allowed, bool allow_any);

/// What one recvmsg returned: the bytes and the fds that came with them (already owned).
struct Received {
  /// -1: nothing arrived in time; 0: the peer closed the connection.
  int64_t bytes = -1;
  std::vector<UniqueFd> fds;
};

class UnixSocket {
 public:
  /// Binds and listens. `path` starting with '@' names the abstract namespace. A stale socket
  /// file left by a dead producer is replaced; any other existing file is an error.
  [[nodiscard]] static arrow::Result<UnixSocket> Listen(const std::string& path, int type,
                                                        unsigned mode);
  /// Connects, retrying for up to `wait_ms` while nobody listens yet (ENOENT, ECONNREFUSED).
  [[nodiscard]] static arrow::Result<UnixSocket> Connect(const std::string& path, int type,
                                                         int wait_ms);

  /// Wraps an already connected socket (accepted elsewhere, or one end of a socketpair).
  explicit UnixSocket(UniqueFd fd) : fd_(std::move(fd)) {}
  UnixSocket(UnixSocket&& other) noexcept
      : fd_(std::move(other.fd_)),
        unlink_path_(std::exchange(other.unlink_path_, {})),
        unlink_device_(other.unlink_device_),
        unlink_inode_(other.unlink_inode_) {}
  /// Closes this socket first, as the destructor would (its socket file included).
  UnixSocket& operator=(UnixSocket&& other) noexcept;
  ~UnixSocket();

  [[nodiscard]] int fd() const { return fd_.get(); }

  /// Waits up to `timeout_ms` (-1: forever) for a connection. Returns an empty socket on timeout.
  [[nodiscard]] arrow::Result<UnixSocket> Accept(int timeout_ms);
  [[nodiscard]] arrow::Result<PeerCredentials> Peer() const;

  /// Sends all of `data` with `fds` attached to its first byte; partial sends and EINTR continue.
  [[nodiscard]] arrow::Status Send(std::span<const uint8_t> data, std::span<const int> fds);
  /// One sendmsg of a whole datagram (SOCK_SEQPACKET) with `fds`, never blocking: false when the
  /// socket buffer is full (EAGAIN), an error when the peer is gone.
  [[nodiscard]] arrow::Result<bool> TrySendDatagram(std::span<const uint8_t> data,
                                                    std::span<const int> fds);
  /// One recvmsg with room for `max_fds` fds (MSG_CMSG_CLOEXEC). Truncated control data, unknown
  /// control messages, more fds than expected or a datagram longer than `data` (MSG_TRUNC) are
  /// errors, and every fd received is closed. `timeout_ms` 0 polls, -1 waits forever.
  [[nodiscard]] arrow::Result<Received> Receive(std::span<uint8_t> data, int max_fds,
                                                int timeout_ms);
  /// Waits up to `timeout_ms` (-1: forever) until a message (or the peer's close) can be received.
  [[nodiscard]] arrow::Result<bool> WaitReadable(int timeout_ms) const;

 private:
  UnixSocket(UniqueFd fd, std::string unlink_path)
      : fd_(std::move(fd)), unlink_path_(std::move(unlink_path)) {}
  /// Removes the listening socket's file, unless another producer has replaced it since.
  void RemoveOwnFile() noexcept;

  UniqueFd fd_;
  std::string unlink_path_;  // the listening socket's file, removed with it
  // The identity of that file when it was bound: a file bound at the same path by a later
  // producer (which replaced ours) is not ours to remove.
  uint64_t unlink_device_ = 0;
  uint64_t unlink_inode_ = 0;
};

}  // namespace shmarrow::internal
