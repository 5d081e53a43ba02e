// The wake-up of protocol 1.2 (kFeatureWakeRegion): a futex on a word in the consumer's queue
// header, and the consumer's own small writable region where it says it sleeps. A consumer makes
// the region (a sealed memfd) and passes it in its Hello; the producer maps it read-only and
// treats what it reads there as untrusted: a value there decides only whether the producer wakes
// this consumer, never what it frees or where it writes.
#pragma once

#include <arrow/result.h>

#include <atomic>
#include <cstdint>
#include <memory>

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

/// How a sleeping consumer wants to be woken.
enum class SleepMode : uint32_t {
  kAwake = 0,
  kFutex = 1,   // FUTEX_WAKE on the queue header's wake word
  kSocket = 2,  // a Wake message on its socket (a consumer that waits on fd())
};

/// The consumer's region: one page, of which the first 8 bytes are the sleep word, a u64 written
/// only by the consumer: 0 awake, else (mode << 32) | the wake word's value when it fell asleep.
inline constexpr int64_t kRegionSize = 4096;
inline constexpr uint64_t SleepWord(SleepMode mode, uint32_t wake_seen) {
  return (uint64_t{static_cast<uint32_t>(mode)} << 32) | wake_seen;
}

/// The consumer's end: a memfd sealed against shrinking and growing (so the producer's read-only
/// mapping cannot fault), mapped writable here.
class RegionWriter {
 public:
  [[nodiscard]] static arrow::Result<RegionWriter> Create();
  int fd() const { return fd_.get(); }
  /// Says the consumer sleeps (or not); sequentially consistent, against the producer's stores
  /// to the queue header.
  void Announce(uint64_t sleep_word) {
    std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(mapping_.data())).store(sleep_word);
  }

 private:
  UniqueFd fd_;
  Mapping mapping_;
};

/// The producer's end: the consumer's memfd, checked (seals, size) and mapped read-only.
class RegionReader {
 public:
  [[nodiscard]] static arrow::Result<RegionReader> Open(int fd);
  bool attached() const { return mapping_ != nullptr; }
  /// The sleep word as the consumer last wrote it (any value).
  uint64_t Load() const {
    return std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(mapping_->data())).load();
  }

 private:
  std::shared_ptr<const Mapping> mapping_;  // shared: the handshake's terms are copied
};

}  // namespace shmarrow::internal
