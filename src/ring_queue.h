// The in-ring queue of one ring-mode consumer (protocol 1.1, kFeatureQueue): its layout and the
// only code that reads or writes it, one side each, so that both ends agree by construction.
#pragma once

#include <arrow/result.h>
#include <arrow/util/bit_util.h>

#include <atomic>
#include <cstdint>
#include <cstring>

#include "protocol.h"

namespace shmarrow::internal::protocol {

/// The queue, written by the producer in the ring: a 64-byte header whose first u64 counts the
/// entries written so far, then `capacity` entries of 40 bytes; entry n is at slot n % capacity.
/// Protocol 1.3 (kFeatureWakeRegion) uses five more header words: at byte 8 the u32 wake word
/// (the futex a sleeping consumer waits on; the producer adds one to wake it), at byte 16 a u64
/// count of the datagrams the producer sent on the socket since the Welcome, each counted before
/// it is sent (a busy-polling consumer reads its socket only when this moved), at byte 24 the u64 count of the releases the
/// producer read from the consumer's region (futex.h), at byte 32 the u64 offset in the ring of
/// the producer's wait block, and at byte 40 a u32, nonzero while batches for this consumer wait
/// for its credits (a release then also needs a message, which wakes the producer's I/O thread).
/// The rest of the header is zero.
/// The producer writes an entry, then the count (release order). Stream 0's Schema and End
/// messages still travel on the socket, sent before the entry that counts them in
/// `controls_before`; the consumer applies them there. A slot is written again only after its
/// batch was released: capacity is the credits plus one (for the last entry, kControls, after End).
inline constexpr uint64_t kQueueHeaderSize = 64;
inline constexpr uint64_t kQueueWakeOffset = 8;
inline constexpr uint64_t kQueueMessagesOffset = 16;
inline constexpr uint64_t kQueueReleasesReadOffset = 24;
inline constexpr uint64_t kQueueWaitBlockOffset = 32;
inline constexpr uint64_t kQueueHeldBackOffset = 40;
inline constexpr uint64_t kQueueEntrySize = 40;
inline constexpr uint32_t kMaxQueueCapacity = 1u << 20;
enum class EntryKind : uint32_t {
  kBatch = 1,     // a batch of stream 0, as a Batch message would give it
  kControls = 2,  // no batch: only the control messages before it (the End)
};
struct QueueEntry {
  EntryKind kind = EntryKind::kBatch;
  uint32_t metadata_length = 0;
  uint64_t sequence = 0;
  uint64_t dropped = 0;
  uint64_t metadata_offset = 0;
  uint32_t controls_before = 0;  // stream-0 Schema/End messages on the socket that come first
  uint32_t reserved = 0;
};
static_assert(sizeof(QueueEntry) == kQueueEntrySize);

/// Bytes a queue of `capacity` entries occupies, header included, rounded up to 64.
constexpr uint64_t QueueBytes(uint64_t capacity) {
  return static_cast<uint64_t>(arrow::bit_util::RoundUpToMultipleOf64(
      static_cast<int64_t>(kQueueHeaderSize + capacity * kQueueEntrySize)));
}

/// The producer's end. The count word is only ever accessed through std::atomic_ref.
class QueueWriter {
 public:
  QueueWriter() = default;
  /// Starts an empty queue at `queue` (the slot may have served another consumer before).
  QueueWriter(uint8_t* queue, uint32_t capacity) : queue_(queue), capacity_(capacity) {
    std::memset(queue_, 0, kQueueHeaderSize);
  }

  bool attached() const { return queue_ != nullptr; }
  uint32_t capacity() const { return capacity_; }
  uint64_t written() const { return written_; }
  uint64_t messages() const { return messages_; }

  // The stores below are sequentially consistent: a consumer that says it sleeps and then looks
  // at these counts either sees them moved or is seen asleep by the producer's next look.
  void Write(const QueueEntry& entry) {
    std::memcpy(queue_ + kQueueHeaderSize + (written_ % capacity_) * kQueueEntrySize, &entry,
                sizeof entry);
    ++written_;
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(queue_)).store(written_);
  }
  /// A datagram goes out on the socket (1.3): counted before it is sent, taken back if it was not.
  void CountMessage() { StoreMessages(++messages_); }
  void UncountMessage() { StoreMessages(--messages_); }
  /// 1.3: the consumer's releases read so far from its region, and where the wait block is.
  void StoreReleasesRead(uint64_t count) {
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(queue_ + kQueueReleasesReadOffset))
        .store(count);
  }
  void StoreWaitBlock(uint64_t offset) {
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(queue_ + kQueueWaitBlockOffset))
        .store(offset);
  }
  /// Whether batches wait for this consumer's credits; stored only when that changes.
  void StoreHeldBack(bool held_back) {
    if (held_back == held_back_) return;
    held_back_ = held_back;
    std::atomic_ref<uint32_t>(*reinterpret_cast<uint32_t*>(queue_ + kQueueHeldBackOffset))
        .store(held_back ? 1 : 0);
  }
  uint32_t wake() const { return wake_; }
  /// Moves the wake word on; the caller then wakes its waiters.
  const uint32_t* Wake() {
    auto* word = reinterpret_cast<uint32_t*>(queue_ + kQueueWakeOffset);
    std::atomic_ref<uint32_t>(*word).store(++wake_);
    return word;
  }

 private:
  void StoreMessages(uint64_t count) {
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(queue_ + kQueueMessagesOffset))
        .store(count);
  }

  uint8_t* queue_ = nullptr;
  uint32_t capacity_ = 0;
  uint64_t written_ = 0;
  uint64_t messages_ = 0;
  uint32_t wake_ = 0;
  bool held_back_ = false;
};

/// The consumer's end. Everything in the ring was written by a peer that may be hostile: the
/// count is checked against what was read, and entries are copied out before they are looked at.
class QueueReader {
 public:
  QueueReader() = default;

  /// The queue the Welcome placed at `offset` in a mapped ring of `ring_size` bytes.
  static arrow::Result<QueueReader> Attach(const uint8_t* ring, uint64_t ring_size, uint64_t offset,
                                           uint32_t capacity) {
    const uint64_t bytes = kQueueHeaderSize + uint64_t{capacity} * kQueueEntrySize;
    if (capacity == 0 || capacity > kMaxQueueCapacity || offset % 64 != 0 || offset > ring_size ||
        bytes > ring_size - offset) {
      return ProtocolError("queue of ", capacity, " entries at offset ", offset,
                           " does not fit the ", ring_size,
                           "-byte ring (or is not 64-byte aligned)");
    }
    QueueReader reader;
    reader.queue_ = ring + offset;
    reader.capacity_ = capacity;
    return reader;
  }

  bool attached() const { return queue_ != nullptr; }
  uint64_t read() const { return read_; }

  /// Entries written and not yet read.
  arrow::Result<uint64_t> Unread() const {
    const uint64_t written = Load<uint64_t>(0);
    if (written < read_ || written - read_ > capacity_) {
      return ProtocolError("the queue counts ", written,
                           " entries written, but this consumer read ", read_, " of a queue of ",
                           capacity_);
    }
    return written - read_;
  }

  /// 1.3: the producer's count of datagrams sent (any value: it only says when to look).
  uint64_t messages() const { return Load<uint64_t>(kQueueMessagesOffset); }
  uint32_t wake() const { return Load<uint32_t>(kQueueWakeOffset); }
  const uint32_t* wake_word() const {
    return reinterpret_cast<const uint32_t*>(queue_ + kQueueWakeOffset);
  }
  const uint8_t* header() const { return queue_; }

  /// The next entry, copied out of the ring (only after Unread() said there is one).
  QueueEntry Next() {
    QueueEntry entry;
    std::memcpy(&entry, queue_ + kQueueHeaderSize + (read_ % capacity_) * kQueueEntrySize,
                sizeof entry);
    ++read_;
    return entry;
  }

 private:
  // The ring is mapped read-only here; an atomic load of a const word is still a plain load.
  template <typename T>
  T Load(uint64_t offset) const {
    return std::atomic_ref<T>(*const_cast<T*>(reinterpret_cast<const T*>(queue_ + offset))).load();
  }

  const uint8_t* queue_ = nullptr;
  uint32_t capacity_ = 0;
  uint64_t read_ = 0;
};

}  // namespace shmarrow::internal::protocol
