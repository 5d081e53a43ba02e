// What a consumer tells its producer: the batches it holds and releases (from any thread, even
// after the Consumer is gone), and its other messages, through an Outbox (the socket in the I/O
// loop; nothing, in the fuzzers).
#pragma once

#include <arrow/buffer.h>
#include <arrow/result.h>
#include <arrow/status.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "block_cache.h"
#include "futex.h"
#include "protocol.h"

namespace shmarrow::internal {

/// Where a consumer's messages to its producer go.
class Outbox {
 public:
  virtual ~Outbox() = default;
  /// One message, without blocking: false when there is no room now (try again later); an
  /// error when the producer cannot be reached.
  [[nodiscard]] virtual arrow::Result<bool> TrySend(std::span<const uint8_t> message) = 0;
  /// The same with one fd (the Region message's); an outbox that cannot pass fds says so.
  [[nodiscard]] virtual arrow::Result<bool> TrySendWithFd(std::span<const uint8_t> message,
                                                          int fd) {
    (void)message;
    (void)fd;
    return arrow::Status::NotImplemented("this outbox passes no fds");
  }
};

/// Shared by the consumer and every batch it handed out: a batch dying on any thread tells the
/// producer through it.
class Channel {
 public:
  explicit Channel(std::shared_ptr<Outbox> outbox) : outbox_(std::move(outbox)) {}

  /// Where the leases of this consumer's batches are made (one per batch, reused).
  const std::shared_ptr<BlockCache>& lease_cache() const { return lease_cache_; }

  /// Notes that a batch arrived. A producer may not send a sequence this consumer still holds
  /// (its Release would be ambiguous), nor more batches than the credits of their stream (the
  /// published stream, or the answers to requests): each would cost memory, and in sealed mode a
  /// mapping and an fd, without bound.
  [[nodiscard]] arrow::Status Hold(uint64_t sequence, bool response, uint32_t credits);
  /// Protocol 1.3: releases are written into the consumer's region from now on (a Release
  /// message when its ring is full).
  void AttachReleases(ReleaseWriter releases);
  /// Tells the producer at once (in the region, or a message) — or, while deferring messages,
  /// with the next `flush_at` releases, or when the consumer catches up. If the outbox is full
  /// it waits for the next Flush.
  void Release(uint64_t sequence);
  /// Deferring is for a consumer that is behind (batches wait to be read): one Release message
  /// then answers several batches. Stopping sends what waits. (A consumer that keeps up stops
  /// deferring at every look at its queue: with nothing waiting, that takes no lock; nor does
  /// deferring as already.) For the consumer's thread only, unlike Release.
  void SetDeferring(bool deferring, size_t flush_at);
  /// A message other than Release (with `fd` if not -1); an error if there is no room for it.
  [[nodiscard]] arrow::Status Send(std::span<const uint8_t> message, int fd = -1);
  int64_t released() const;

 private:
  struct Held {
    uint64_t sequence;
    bool response;  // answers a request
  };
  // A flat list: at most the credits of both streams, and nothing allocated per batch.
  std::vector<Held>::iterator FindHeld(uint64_t sequence);
  void FlushLocked();
  /// Tells the producer of the releases written into the region since the last time.
  void AnnounceLocked();
  /// Notes in idle_ whether anything waits (under mutex_, after a change).
  void NoteIdleLocked();

  const std::shared_ptr<Outbox> outbox_;
  const std::shared_ptr<BlockCache> lease_cache_ = std::make_shared<BlockCache>();
  mutable std::mutex mutex_;
  protocol::Writer writer_;
  ReleaseWriter releases_;
  size_t unannounced_ = 0;  // releases in the region the producer was not told of yet
  std::vector<uint64_t> unsent_;
  bool deferring_ = false;  // with flush_at_: written by SetDeferring only
  size_t flush_at_ = 1;
  // Not deferring, no release unsent nor unannounced: SetDeferring(false) has nothing to do.
  std::atomic<bool> idle_{true};
  int64_t released_ = 0;
  std::vector<Held> held_;
  size_t held_published_ = 0;
  size_t held_responses_ = 0;
};

/// The memory of one received batch, as seen by Arrow: the ring (or the batch's memfd) as a
/// buffer whose last reference tells the producer the batch is released.
class LeaseBuffer final : public arrow::Buffer {
 public:
  LeaseBuffer(const std::shared_ptr<arrow::Buffer>& region, uint64_t sequence,
              std::shared_ptr<Channel> channel)
      : arrow::Buffer(region, 0, region->size()),
        sequence_(sequence),
        channel_(std::move(channel)) {}
  ~LeaseBuffer() override { channel_->Release(sequence_); }

  /// `region` lent as batch `sequence`, allocated from the channel's cache.
  static std::shared_ptr<LeaseBuffer> Make(const std::shared_ptr<arrow::Buffer>& region,
                                           uint64_t sequence,
                                           const std::shared_ptr<Channel>& channel) {
    return std::allocate_shared<LeaseBuffer>(
        RecyclingAllocator<LeaseBuffer>(channel->lease_cache()), region, sequence, channel);
  }

 private:
  uint64_t sequence_;
  std::shared_ptr<Channel> channel_;
};

}  // namespace shmarrow::internal
