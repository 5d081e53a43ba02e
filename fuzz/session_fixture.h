// What the session fuzz targets (ring_fuzz, session_fuzz) give the real consumer session
// (src/consumer_session.h) in place of a producer: an outbox that goes nowhere, a ring memfd
// (sealed as a producer seals it, still writable here through the mapping made before the seal)
// and a sealed memfd holding a valid stream; each attached to a datagram as a fresh fd.
#pragma once

#include <fcntl.h>

#include <cstring>
#include <memory>
#include <vector>

#include "consumer_channel.h"
#include "consumer_session.h"
#include "fixtures.h"
#include "mapping.h"
#include "memfd.h"
#include "ring_queue.h"

namespace shmarrow::fuzz {

/// Messages to the producer go nowhere (a producer that reads nothing).
class NullOutbox final : public internal::Outbox {
 public:
  arrow::Result<bool> TrySend(std::span<const uint8_t>) override { return true; }
  arrow::Result<bool> TrySendWithFd(std::span<const uint8_t>, int) override { return true; }
};

/// A new fd for the same file, as a datagram would bring.
inline UniqueFd Dup(int fd) {
  const int copy = ::fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (copy < 0) {
    std::perror("fuzz fixture: F_DUPFD_CLOEXEC");
    std::abort();
  }
  return UniqueFd(copy);
}

struct SessionFixture {
  SessionFixture() {
    auto ring_memfd = Unwrap(internal::Memfd::Create("fuzz-ring"), "ring memfd");
    Check(ring_memfd.Resize(kFixtureRingSize), "ring size");
    ring = Unwrap(internal::Mapping::MapWritable(ring_memfd.fd(), kFixtureRingSize), "map ring");
    auto body = RingBody();
    std::memcpy(ring.data(), body->data(), static_cast<size_t>(body->size()));
    auto metadata = Encode(*CanonicalBatch()).metadata;
    std::memcpy(ring.data() + kMetadataOffset, metadata->data(),
                static_cast<size_t>(metadata->size()));
    Check(ring_memfd.AddSeals(F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE), "ring seals");
    ring_fd = std::move(ring_memfd).TakeFd();

    auto sink = Unwrap(arrow::io::BufferOutputStream::Create(), "sink");
    auto writer = Unwrap(arrow::ipc::MakeStreamWriter(sink, RingSchema()), "writer");
    Check(writer->WriteRecordBatch(*CanonicalBatch()), "write");
    Check(writer->Close(), "close");
    auto stream = Unwrap(sink->Finish(), "finish");
    auto sealed_memfd = Unwrap(internal::Memfd::Create("fuzz-sealed"), "sealed memfd");
    Check(sealed_memfd.Resize(stream->size()), "sealed size");
    {
      auto view = Unwrap(internal::Mapping::MapWritable(sealed_memfd.fd(), stream->size()), "map");
      std::memcpy(view.data(), stream->data(), static_cast<size_t>(stream->size()));
    }
    Check(sealed_memfd.AddSeals(internal::kImmutableSeals), "sealed seals");
    sealed_fd = std::move(sealed_memfd).TakeFd();
  }

  /// A session as Consumer::Connect makes one, before its Hello.
  static std::unique_ptr<internal::ConsumerSession> NewSession(const ConsumerOptions& options) {
    auto channel = std::make_shared<internal::Channel>(std::make_shared<NullOutbox>());
    auto session =
        std::make_unique<internal::ConsumerSession>(options, std::move(channel), "@fuzz");
    return session;
  }

  internal::Mapping ring;  // writable: the producer's view
  UniqueFd ring_fd;
  UniqueFd sealed_fd;
};

inline SessionFixture& Fixture() {
  static auto* fixture = new SessionFixture();
  return *fixture;
}

}  // namespace shmarrow::fuzz
