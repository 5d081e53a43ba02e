#include "unix_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>
#include <utility>

#include "deadline.h"
#include "errno_status.h"

namespace shmarrow::internal {

bool UidAllowed(unsigned uid, std::span<const unsigned> allowed, bool allow_any) {
  return allow_any || uid == ::geteuid() ||
         std::find(allowed.begin(), allowed.end(), uid) != allowed.end();
}

namespace {

arrow::Result<std::pair<sockaddr_un, socklen_t>> MakeAddress(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty()) return arrow::Status::Invalid("empty socket path");
  if (path.size() >= sizeof(addr.sun_path)) {
    return arrow::Status::Invalid("socket path '", path, "' is longer than ",
                                  sizeof(addr.sun_path) - 1, " bytes");
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';  // abstract namespace: no file, no trailing NUL
  const auto length = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() +
                                             (path[0] == '@' ? 0 : 1));
  return std::make_pair(addr, length);
}

arrow::Result<UniqueFd> NewSocket(int type) {
  UniqueFd fd(::socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd) return ErrnoStatus(errno, "socket(AF_UNIX)");
  return fd;
}

/// Puts `fds` in one SCM_RIGHTS control message of `msg`, using `control` (room for 253 fds).
void AttachFds(msghdr* msg, char* control, std::span<const int> fds) {
  if (fds.empty()) return;
  msg->msg_control = control;
  msg->msg_controllen = CMSG_SPACE(sizeof(int) * fds.size());
  cmsghdr* cmsg = CMSG_FIRSTHDR(msg);
  cmsg->cmsg_level = SOL_SOCKET;
  cmsg->cmsg_type = SCM_RIGHTS;
  cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fds.size());
  std::memcpy(CMSG_DATA(cmsg), fds.data(), sizeof(int) * fds.size());
}

/// poll() for `events`; false on timeout. EINTR restarts the wait with the time that is left.
arrow::Result<bool> WaitFor(int fd, short events, int timeout_ms) {
  const Deadline deadline(timeout_ms);
  for (;;) {
    pollfd pfd{fd, events, 0};
    const int rc = ::poll(&pfd, 1, deadline.remaining_ms());
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) return ErrnoStatus(errno, "poll(fd ", fd, ")");
  }
}

}  // namespace

UnixSocket::~UnixSocket() { RemoveOwnFile(); }

UnixSocket& UnixSocket::operator=(UnixSocket&& other) noexcept {
  if (this != &other) {
    RemoveOwnFile();
    fd_ = std::move(other.fd_);
    unlink_path_ = std::exchange(other.unlink_path_, {});
    unlink_device_ = other.unlink_device_;
    unlink_inode_ = other.unlink_inode_;
  }
  return *this;
}

void UnixSocket::RemoveOwnFile() noexcept {
  if (unlink_path_.empty()) return;
  struct stat st{};
  if (::lstat(unlink_path_.c_str(), &st) == 0 && st.st_dev == unlink_device_ &&
      st.st_ino == unlink_inode_) {
    // Unchecked: called while closing, with nobody to tell; a file left behind is replaced by the
    // next Listen() there, which finds nobody listening.
    ::unlink(unlink_path_.c_str());
  }
  unlink_path_.clear();
}

arrow::Result<UnixSocket> UnixSocket::Listen(const std::string& path, int type, unsigned mode) {
  ARROW_ASSIGN_OR_RAISE(auto address, MakeAddress(path));
  ARROW_ASSIGN_OR_RAISE(UniqueFd fd, NewSocket(type));
  const bool abstract = path[0] == '@';
  if (!abstract) {
    struct stat st{};
    if (::lstat(path.c_str(), &st) == 0) {
      if (!S_ISSOCK(st.st_mode)) {
        return arrow::Status::IOError("refusing to replace '", path, "': it is not a socket");
      }
      // Only a dead producer's socket is replaced. The probe uses SOCK_SEQPACKET: a live stream
      // socket answers EPROTOTYPE without accepting (and so without spending one of its clients).
      ARROW_ASSIGN_OR_RAISE(UniqueFd probe, NewSocket(SOCK_SEQPACKET));
      const int rc = RetryOnEintr([&] {
        return ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&address.first),
                         address.second);
      });
      if (rc == 0 || errno != ECONNREFUSED) {
        return arrow::Status::IOError("address '", path, "' is in use: a producer listens there");
      }
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) {  // ENOENT: someone else removed it
        return ErrnoStatus(errno, "unlink of the dead producer's socket '", path, "'");
      }
    }
  }
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&address.first), address.second) != 0) {
    // An abstract name stays taken for as long as any process holds a socket bound to it.
    if (errno == EADDRINUSE) {
      return ErrnoStatus(errno, "address ", path, " is in use by another process");
    }
    return ErrnoStatus(errno, "bind('", path, "')");
  }
  UnixSocket socket(std::move(fd), abstract ? "" : path);
  if (!abstract) {
    struct stat bound{};
    if (::lstat(path.c_str(), &bound) != 0) return ErrnoStatus(errno, "lstat('", path, "')");
    socket.unlink_device_ = bound.st_dev;
    socket.unlink_inode_ = bound.st_ino;
  }
  if (!abstract && ::chmod(path.c_str(), mode) != 0) {
    return ErrnoStatus(errno, "chmod('", path, "', 0", std::oct, mode, ")");
  }
  if (::listen(socket.fd(), 64) != 0) return ErrnoStatus(errno, "listen('", path, "')");
  return socket;
}

arrow::Result<UnixSocket> UnixSocket::Connect(const std::string& path, int type, int wait_ms) {
  ARROW_ASSIGN_OR_RAISE(auto address, MakeAddress(path));
  const Deadline deadline(wait_ms);
  for (;;) {
    ARROW_ASSIGN_OR_RAISE(UniqueFd fd, NewSocket(type));
    if (RetryOnEintr([&] {
          return ::connect(fd.get(), reinterpret_cast<const sockaddr*>(&address.first),
                           address.second);
        }) == 0) {
      return UnixSocket(std::move(fd), "");
    }
    const int err = errno;
    const bool nobody_listens = err == ENOENT || err == ECONNREFUSED;
    if (!nobody_listens || deadline.expired()) {
      return ErrnoStatus(err, "connect('", path, "')",
                         nobody_listens ? ": no producer is listening" : "");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

arrow::Result<UnixSocket> UnixSocket::Accept(int timeout_ms) {
  ARROW_ASSIGN_OR_RAISE(bool ready, WaitFor(fd(), POLLIN, timeout_ms));
  if (!ready) return UnixSocket(UniqueFd(), "");
  UniqueFd client(RetryOnEintr([&] { return ::accept4(fd(), nullptr, nullptr, SOCK_CLOEXEC); }));
  if (!client) return ErrnoStatus(errno, "accept(fd ", fd(), ")");
  return UnixSocket(std::move(client), "");
}

arrow::Result<PeerCredentials> UnixSocket::Peer() const {
  ucred cred{};
  socklen_t length = sizeof(cred);
  if (::getsockopt(fd(), SOL_SOCKET, SO_PEERCRED, &cred, &length) != 0) {
    return ErrnoStatus(errno, "getsockopt(fd ", fd(), ", SO_PEERCRED)");
  }
  return PeerCredentials{cred.pid, cred.uid, cred.gid};
}

arrow::Status UnixSocket::Send(std::span<const uint8_t> data, std::span<const int> fds) {
  if (fds.size() > static_cast<size_t>(kMaxFdsPerMessage)) {
    return arrow::Status::Invalid("cannot send ", fds.size(), " fds in one message (max ",
                                  kMaxFdsPerMessage, ")");
  }
  if (!fds.empty() && data.empty()) {
    return arrow::Status::Invalid("fds must travel with at least one data byte");
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  size_t sent = 0;
  while (sent < data.size() || (data.empty() && sent == 0)) {
    iovec iov{const_cast<uint8_t*>(data.data() + sent), data.size() - sent};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (sent == 0) AttachFds(&msg, control, fds);  // the fds ride on the first byte only
    const ssize_t n = RetryOnEintr([&] { return ::sendmsg(fd(), &msg, MSG_NOSIGNAL); });
    if (n < 0) {
      return ErrnoStatus(errno, "sendmsg(fd ", fd(), ", ", data.size() - sent, " bytes, ",
                         sent == 0 ? fds.size() : 0, " fds)");
    }
    if (data.empty()) break;
    sent += static_cast<size_t>(n);
  }
  return arrow::Status::OK();
}

arrow::Result<bool> UnixSocket::TrySendDatagram(std::span<const uint8_t> data,
                                                std::span<const int> fds) {
  if (fds.size() > static_cast<size_t>(kMaxFdsPerMessage)) {
    return arrow::Status::Invalid("cannot send ", fds.size(), " fds in one message");
  }
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxFdsPerMessage)] = {};
  iovec iov{const_cast<uint8_t*>(data.data()), data.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  AttachFds(&msg, control, fds);
  const ssize_t n =
      RetryOnEintr([&] { return ::sendmsg(fd(), &msg, MSG_DONTWAIT | MSG_NOSIGNAL); });
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return false;
  if (n < 0) return ErrnoStatus(errno, "sendmsg(fd ", fd(), ", ", data.size(), " bytes)");
  if (static_cast<size_t>(n) != data.size()) {
    return arrow::Status::IOError("datagram of ", data.size(), " bytes sent as ", n);
  }
  return true;
}

arrow::Result<bool> UnixSocket::WaitReadable(int timeout_ms) const {
  return WaitFor(fd(), POLLIN, timeout_ms);
}

arrow::Result<Received> UnixSocket::Receive(std::span<uint8_t> data, int max_fds, int timeout_ms) {
  if (max_fds < 0 || max_fds > kMaxFdsPerMessage) {
    return arrow::Status::Invalid("cannot receive ", max_fds, " fds in one message");
  }
  // Room for one more fd than allowed, so that a peer sending too many is detected, not truncated.
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * (kMaxFdsPerMessage + 1))];
  const size_t control_size = CMSG_SPACE(sizeof(int) * (max_fds + 1));
  std::memset(control, 0, control_size);
  iovec iov{data.data(), data.size()};
  msghdr msg{};
  auto receive = [&] {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = control_size;
    return RetryOnEintr([&] { return ::recvmsg(fd(), &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT); });
  };
  // Receive first and wait only when nothing is there: a busy reader makes one syscall a message.
  ssize_t n = receive();
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    if (timeout_ms == 0) return Received{};
    ARROW_ASSIGN_OR_RAISE(bool ready, WaitFor(fd(), POLLIN, timeout_ms));
    if (!ready) return Received{};
    n = receive();
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return Received{};
  }
  if (n < 0) return ErrnoStatus(errno, "recvmsg(fd ", fd(), ")");

  Received out;
  out.bytes = std::min<ssize_t>(n, static_cast<ssize_t>(data.size()));
  bool unexpected_control = false;
  for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
    if (cmsg->cmsg_level == SOL_SOCKET && cmsg->cmsg_type == SCM_RIGHTS) {
      const size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int received;
        std::memcpy(&received, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        out.fds.emplace_back(received);  // owned before any check can fail
      }
    } else {
      unexpected_control = true;
    }
  }
  if (msg.msg_flags & MSG_TRUNC) {
    return arrow::Status::IOError("message on fd ", fd(), " is longer than ", data.size(),
                                  " bytes (MSG_TRUNC)");
  }
  if (msg.msg_flags & MSG_CTRUNC) {
    // The kernel drops the fds that did not fit: a peer sending too many (up to SCM_MAX_FD)
    // looks the same as a receiver out of fds.
    return arrow::Status::IOError("control data truncated (MSG_CTRUNC) on fd ", fd(),
                                  ": the peer sent more fds than expected (", max_fds,
                                  "), or RLIMIT_NOFILE was reached; fds were lost");
  }
  if (unexpected_control) {
    return arrow::Status::IOError("unexpected control message (not SCM_RIGHTS) on fd ", fd());
  }
  if (out.fds.size() > static_cast<size_t>(max_fds)) {
    return arrow::Status::IOError("peer sent ", out.fds.size(), " fds, expected at most ", max_fds);
  }
  return out;
}

}  // namespace shmarrow::internal
