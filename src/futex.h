// The wake-up and the release region of protocol 1.3 (kFeatureWakeRegion): a futex on a word in
// the consumer's queue header, and the consumer's own small writable region where it says it
// sleeps and writes the sequences it releases. A consumer makes the region (a sealed memfd) after
// the Welcome and passes it in a Region message; the producer maps it read-only and treats what
// it reads there as untrusted: a sleep word decides only whether the producer wakes this
// consumer; a released sequence is checked against what this consumer holds.
#pragma once

#include <arrow/result.h>

#include <atomic>
#include <bit>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>

#include "mapping.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

/// FUTEX_WAIT (shared, not _PRIVATE: the word is in a mapping of another process) while `*word`
/// is `expected`, for at most `timeout_ms`: false on timeout, true otherwise (woken, the value
/// changed, or a signal: the caller looks again either way).
[[nodiscard]] arrow::Result<bool> FutexWait(const uint32_t* word, uint32_t expected,
                                            int timeout_ms);
/// FUTEX_WAKE of every waiter on `word`.
void FutexWake(const uint32_t* word);

/// A futex word and the value its waiter last saw there; `owner` keeps its mapping alive.
struct FutexWatch {
  const uint32_t* word = nullptr;
  uint32_t seen = 0;
  std::shared_ptr<const void> owner;
};
/// As FutexWait, but on several words at once (futex_waitv, Linux 5.16): returns as soon as any
/// of them is woken or differs from its `seen`. Before 5.16 (ENOSYS), the first word alone.
[[nodiscard]] arrow::Result<bool> FutexWaitAny(std::span<const FutexWatch> watches, int timeout_ms);

/// How a sleeping consumer wants to be woken.
enum class SleepMode : uint32_t {
  kAwake = 0,
  kFutex = 1,   // FUTEX_WAKE on the queue header's wake word
  kSocket = 2,  // a Wake message on its socket (a consumer that waits on fd())
};

/// The consumer's region: one page, written only by the consumer (docs/protocol.md, "The wake
/// region"): at byte 0 the sleep word, u64: 0 awake, else (mode << 32) | the wake word's value
/// when it fell asleep; at byte 8 the u64 count of releases written; from byte 64 a ring of u64
/// released sequences, release n in slot n % kRegionSlots.
inline constexpr int64_t kRegionSize = 4096;
inline constexpr int64_t kRegionReleasesOffset = 8;
inline constexpr int64_t kRegionSlotsOffset = 64;
inline constexpr uint64_t kRegionSlots = (kRegionSize - kRegionSlotsOffset) / 8;
inline constexpr uint64_t SleepWord(SleepMode mode, uint32_t wake_seen) {
  return (uint64_t{static_cast<uint32_t>(mode)} << 32) | wake_seen;
}

/// The producer's wait block (8 bytes in its ring, located by the queue header): a u32 futex word
/// its threads sleep on while Publish waits for room, and the u32 count of those threads. A
/// consumer that wrote a release and sees the count nonzero wakes them (FUTEX_WAKE works on its
/// read-only mapping).
inline constexpr uint64_t kWaitBlockSize = 8;
inline constexpr uint64_t kWaitBlockWaitersOffset = 4;

/// The consumer's end: a memfd sealed against shrinking and growing (so the producer's read-only
/// mapping cannot fault), mapped writable here.
class RegionWriter {
 public:
  [[nodiscard]] static arrow::Result<RegionWriter> Create();
  bool created() const { return mapping_ != nullptr; }
  int fd() const { return fd_.get(); }
  /// Once the fd was passed: the mapping stays.
  void CloseFd() { fd_.reset(); }
  /// Says the consumer sleeps (or not); sequentially consistent, against the producer's stores
  /// to the queue header.
  void Announce(uint64_t sleep_word) {
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(mapping_->data())).store(sleep_word);
  }
  /// Shared with the releasing side (the consumer's Channel), which may outlive the consumer.
  const std::shared_ptr<Mapping>& mapping() const { return mapping_; }

 private:
  UniqueFd fd_;
  std::shared_ptr<Mapping> mapping_;
};

/// The consumer's release ring: it writes released sequences into its region, and learns from
/// its queue header in the (read-only) ring how far the producer read them. Not thread-safe: its
/// owner serializes the writes (one writer, as the producer expects).
class ReleaseWriter {
 public:
  ReleaseWriter() = default;
  /// `header` is the consumer's queue header inside `ring` (both kept alive here).
  ReleaseWriter(std::shared_ptr<Mapping> region, std::shared_ptr<const void> ring_owner,
                const uint8_t* ring, uint64_t ring_size, const uint8_t* header)
      : region_(std::move(region)),
        ring_owner_(std::move(ring_owner)),
        ring_(ring),
        ring_size_(ring_size),
        header_(header) {}
  bool attached() const { return region_ != nullptr; }
  /// Writes `sequence` into the region; false when there is no free slot by the producer's count
  /// (or that count is impossible): the caller sends a Release message instead.
  bool TryWrite(uint64_t sequence);
  /// After releases were written: wakes the producer's threads waiting for room, if any; else
  /// true when batches wait for this consumer's credits and nobody will look at the region soon:
  /// the caller sends an empty Release message, which wakes the producer's I/O thread.
  bool Announce();

 private:
  std::shared_ptr<Mapping> region_;
  std::shared_ptr<const void> ring_owner_;
  const uint8_t* ring_ = nullptr;
  uint64_t ring_size_ = 0;
  const uint8_t* header_ = nullptr;
  uint64_t written_ = 0;
  std::optional<uint32_t> last_woken_;  // the wait block's futex word at this writer's last wake
};

/// The producer's end: the consumer's memfd, checked (seals, size) and mapped read-only. Every
/// value read here is any value the consumer chose.
class RegionReader {
 public:
  [[nodiscard]] static arrow::Result<RegionReader> Open(int fd);
  bool attached() const { return mapping_ != nullptr; }
  /// The sleep word as the consumer last wrote it.
  uint64_t Load() const { return Word(0).load(); }
  /// The consumer's count of releases written (acquire: the slots before it are written).
  uint64_t ReleasesWritten() const {
    return Word(kRegionReleasesOffset).load(std::memory_order_acquire);
  }
  /// The count's low 32 bits as a futex word, and its value now (sequentially consistent): a
  /// producer thread that sleeps on it after it last drained the region cannot miss a release
  /// written since, even when the consumer's wake of the wait block comes before the sleep.
  FutexWatch ReleasesWatch() const {
    constexpr int64_t kLowHalf = std::endian::native == std::endian::little ? 0 : 4;
    return {reinterpret_cast<const uint32_t*>(mapping_->data() + kRegionReleasesOffset + kLowHalf),
            static_cast<uint32_t>(Word(kRegionReleasesOffset).load()), mapping_};
  }
  /// Slot of release `n`, read once.
  uint64_t Released(uint64_t n) const {
    return Word(kRegionSlotsOffset + static_cast<int64_t>(n % kRegionSlots) * 8)
        .load(std::memory_order_relaxed);
  }

 private:
  std::atomic_ref<uint64_t> Word(int64_t offset) const {
    return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(mapping_->data() + offset));
  }
  std::shared_ptr<const Mapping> mapping_;  // shared: the handshake's terms are copied
};

}  // namespace shmarrow::internal
