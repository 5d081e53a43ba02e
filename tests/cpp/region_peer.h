// What the region tests share: a protocol 1.3 consumer by hand, for tests of the producer's
// region handling (it says Hello, maps the ring and its queue from the Welcome, passes a region,
// its own or any fd, in a Region message, and then does with its queue and its region whatever
// the test says), a ring producer's options, and a good consumer's reading.
#pragma once

#include <arrow/result.h>
#include <sys/socket.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "futex.h"
#include "hostile_peer.h"
#include "mapping.h"
#include "protocol.h"
#include "ring_queue.h"
#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow::hostile {

/// A 4 MiB ring, whose waits fail the test rather than hang it.
inline ProducerOptions RingOptions() {
  ProducerOptions options;
  options.block_timeout_ms = kTimeoutMs;
  options.ring_size = int64_t{4} << 20;
  options.mode = MemoryMode::kRing;
  return options;
}

inline ConsumerOptions Blocking() {
  ConsumerOptions options;
  options.read_timeout_ms = kTimeoutMs;
  return options;
}

/// Reads to the end with ReadNext: the values in order, or why it stopped.
inline arrow::Result<std::vector<int64_t>> ReadToEnd(Consumer& consumer) {
  std::vector<int64_t> values;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ARROW_RETURN_NOT_OK(consumer.ReadNext(&batch));
    if (batch == nullptr) return values;
    values.push_back(test_util::ValueOf(*batch));
  }
}

class RegionPeer {
 public:
  /// Connected and welcomed (ring mode, with the queue and the region agreed), region not sent.
  static arrow::Result<RegionPeer> Welcomed(const std::string& address, uint32_t flags = 0,
                                            uint32_t max_in_flight = 0) {
    ARROW_ASSIGN_OR_RAISE(auto socket,
                          internal::UnixSocket::Connect(address, SOCK_SEQPACKET, kTimeoutMs));
    RegionPeer peer(std::move(socket));
    proto::Hello hello;
    hello.flags = flags;
    hello.max_in_flight = max_in_flight;
    ARROW_RETURN_NOT_OK(peer.socket_.Send(proto::Encode(peer.writer_, hello), {}));
    ARROW_ASSIGN_OR_RAISE(auto answer, Receive(peer.socket_, 1));
    if (answer.header.type != proto::Type::kWelcome || answer.fds.size() != 1) {
      return arrow::Status::Invalid("expected a Welcome with the ring, got ",
                                    proto::TypeName(answer.header.type));
    }
    auto reader = answer.reader();
    ARROW_RETURN_NOT_OK(reader.ReadHeader().status());
    ARROW_ASSIGN_OR_RAISE(peer.welcome_, proto::DecodeWelcome(reader));
    if ((peer.welcome_.features & proto::kFeatureWakeRegion) == 0) {
      return arrow::Status::Invalid("the region was not agreed");
    }
    ARROW_ASSIGN_OR_RAISE(
        peer.ring_, internal::Mapping::MapReadOnly(answer.fds[0].get(),
                                                   static_cast<int64_t>(peer.welcome_.ring_size)));
    ARROW_ASSIGN_OR_RAISE(
        peer.queue_,
        proto::QueueReader::Attach(peer.ring_.data(), peer.welcome_.ring_size,
                                   peer.welcome_.queue_offset, peer.welcome_.queue_capacity));
    ARROW_ASSIGN_OR_RAISE(peer.region_, internal::RegionWriter::Create());
    return peer;
  }

  /// The Region message with `fd` (by default its own region).
  arrow::Status SendRegion(int fd = -1) {
    if (fd < 0) fd = region_.fd();
    return socket_.Send(proto::EncodeRegion(writer_), {&fd, 1});
  }
  /// The next queue entry's sequence, if one was written (entries without a batch skipped).
  arrow::Result<bool> NextSequence(uint64_t* sequence) {
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(uint64_t unread, queue_.Unread());
      if (unread == 0) return false;
      const proto::QueueEntry entry = queue_.Next();
      if (entry.kind != proto::EntryKind::kBatch) continue;
      *sequence = entry.sequence;
      return true;
    }
  }
  /// Writes `sequence` as release number `count - 1` and publishes `count`, whatever they are.
  void WriteRelease(uint64_t slot_index, uint64_t sequence, uint64_t count) {
    uint8_t* region = region_.mapping()->data();
    std::atomic_ref<uint64_t>(
        *reinterpret_cast<uint64_t*>(region + internal::kRegionSlotsOffset +
                                     (slot_index % internal::kRegionSlots) * 8))
        .store(sequence);
    std::atomic_ref<uint64_t>(
        *reinterpret_cast<uint64_t*>(region + internal::kRegionReleasesOffset))
        .store(count);
  }
  /// The producer's count of releases read (queue header).
  uint64_t ReleasesRead() const {
    return std::atomic_ref<uint64_t>(*const_cast<uint64_t*>(reinterpret_cast<const uint64_t*>(
                                         queue_.header() + proto::kQueueReleasesReadOffset)))
        .load();
  }

  /// The producer's count of the datagrams it sent (queue header).
  uint64_t Messages() const { return queue_.messages(); }
  /// The queue header's wake word: the producer adds one for each wake-up it makes.
  uint32_t Wakes() const { return queue_.wake(); }
  internal::UnixSocket& socket() { return socket_; }
  internal::RegionWriter& region() { return region_; }
  const proto::Welcome& welcome() const { return welcome_; }

 private:
  explicit RegionPeer(internal::UnixSocket socket) : socket_(std::move(socket)) {}

  internal::UnixSocket socket_;
  proto::Writer writer_;
  proto::Welcome welcome_;
  internal::Mapping ring_;
  proto::QueueReader queue_;
  internal::RegionWriter region_;
};

/// The Error the producer sent before closing `socket` (other messages skipped), or why none.
inline arrow::Result<proto::Error> ErrorBeforeClose(internal::UnixSocket& socket) {
  for (;;) {
    ARROW_ASSIGN_OR_RAISE(auto message, Receive(socket, internal::kMaxFdsPerMessage));
    if (message.header.type != proto::Type::kError || message.header.stream != 0) continue;
    auto reader = message.reader();
    ARROW_RETURN_NOT_OK(reader.ReadHeader().status());
    return proto::DecodeError(reader);
  }
}

}  // namespace shmarrow::hostile
