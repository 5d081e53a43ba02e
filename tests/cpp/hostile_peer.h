// What the hostile-peer tests share: datagrams built by hand, receiving one with a deadline, and
// waiting (with a deadline, never a bare sleep) for the process's fd count to settle.
#pragma once

#include <gtest/gtest.h>
#include <sys/socket.h>

#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <span>
#include <thread>
#include <vector>

#include "protocol.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow::hostile {

namespace proto = internal::protocol;

/// Generous: a bug fails the test instead of hanging it; nothing waits this long when all is well.
inline constexpr int kTimeoutMs = 10000;

/// One datagram and the fds that travel with it (borrowed, not owned).
struct Datagram {
  std::vector<uint8_t> bytes;
  std::vector<int> fds;
};

inline Datagram Message(std::span<const uint8_t> bytes, std::vector<int> fds = {}) {
  return Datagram{{bytes.begin(), bytes.end()}, std::move(fds)};
}

/// A header (16 bytes) as a peer might write it: any type, flags and announced payload length.
inline std::vector<uint8_t> RawHeader(uint16_t type, uint16_t flags, uint32_t stream,
                                      uint32_t length, uint32_t magic = proto::kMagic) {
  std::vector<uint8_t> out(proto::kHeaderSize);
  std::memcpy(out.data(), &magic, 4);
  std::memcpy(out.data() + 4, &type, 2);
  std::memcpy(out.data() + 6, &flags, 2);
  std::memcpy(out.data() + 8, &stream, 4);
  std::memcpy(out.data() + 12, &length, 4);
  return out;
}

/// Lets `socket` send datagrams longer than the protocol allows (the default buffer is smaller).
inline void RaiseSendBuffer(internal::UnixSocket& socket) {
  const int size = 4 << 20;
  ::setsockopt(socket.fd(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
}

/// A datagram longer than any peer accepts (send it from a socket given RaiseSendBuffer).
inline Datagram OversizedDatagram(uint16_t type) {
  constexpr uint32_t kPayload = proto::kMaxMessageSize + 4096;
  Datagram out{RawHeader(type, 0, 0, kPayload), {}};
  out.bytes.resize(proto::kHeaderSize + kPayload, 0);
  return out;
}

/// One message received within kTimeoutMs, its header decoded.
struct Incoming {
  proto::Header header;
  std::vector<uint8_t> bytes;
  std::vector<UniqueFd> fds;
  proto::Reader reader() const { return proto::Reader(bytes); }
};

/// Receives one datagram; an error if none arrives in time or the peer closed the connection.
inline arrow::Result<Incoming> Receive(internal::UnixSocket& socket, int max_fds) {
  std::vector<uint8_t> buffer(proto::kMaxMessageSize);
  ARROW_ASSIGN_OR_RAISE(auto received, socket.Receive(buffer, max_fds, kTimeoutMs));
  if (received.bytes < 0) return arrow::Status::IOError("nothing arrived in time");
  if (received.bytes == 0) return arrow::Status::IOError("the peer closed the connection");
  Incoming out;
  out.bytes.assign(buffer.begin(), buffer.begin() + received.bytes);
  out.fds = std::move(received.fds);
  proto::Reader reader(out.bytes);
  ARROW_ASSIGN_OR_RAISE(out.header, reader.ReadHeader());
  return out;
}

/// True once the peer has closed the connection (whatever it sent before is read and dropped).
inline bool ClosedByPeer(internal::UnixSocket& socket) {
  std::vector<uint8_t> buffer(proto::kMaxMessageSize);
  for (;;) {
    auto received = socket.Receive(buffer, internal::kMaxFdsPerMessage, kTimeoutMs);
    if (!received.ok()) return true;  // ECONNRESET: closed too
    if (received->bytes == 0) return true;
    if (received->bytes < 0) return false;
  }
}

/// Polls `done` until it holds or kTimeoutMs passes; its last answer.
template <typename Condition>
bool Eventually(Condition done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  while (!done()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

/// The process's open fds and what they are, for a failure message.
inline std::string DescribeOpenFds() {
  std::string out;
  for (int fd = 0; fd < 1024; ++fd) {
    char target[256] = {};
    const std::string link = "/proc/self/fd/" + std::to_string(fd);
    const ssize_t n = ::readlink(link.c_str(), target, sizeof target - 1);
    if (n > 0) out += " " + std::to_string(fd) + "=" + std::string(target, n);
  }
  return out;
}

/// Expects the process to get back to `baseline` open fds (a peer thread may close its end just
/// after the test's side noticed).
inline void ExpectFdsReturnTo(int baseline) {
  EXPECT_TRUE(Eventually([&] { return test_util::CountOpenFds() == baseline; }))
      << "fd leak: " << test_util::CountOpenFds() << " fds open, " << baseline
      << " before; open now:" << DescribeOpenFds();
}

}  // namespace shmarrow::hostile
