#include "futex.h"

#include <linux/futex.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <climits>
#include <ctime>

#include "errno_status.h"
#include "memfd.h"
#include "ring_queue.h"

namespace shmarrow::internal {

arrow::Result<bool> FutexWait(const uint32_t* word, uint32_t expected, int timeout_ms) {
  timespec timeout{timeout_ms / 1000, static_cast<long>(timeout_ms % 1000) * 1000000L};
  if (::syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, nullptr, 0) == 0) return true;
  if (errno == ETIMEDOUT) return false;
  if (errno == EAGAIN || errno == EINTR) return true;
  return ErrnoStatus(errno, "futex wait on the queue's wake word");
}

void FutexWake(const uint32_t* word) {
  // Fails only for a bad address, which a mapped word is not.
  (void)::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

arrow::Result<bool> FutexWaitAny(std::span<const FutexWatch> watches, int timeout_ms) {
#if defined(SYS_futex_waitv) && defined(FUTEX_WAITV_MAX)
  if (watches.size() > 1) {
    std::array<futex_waitv, FUTEX_WAITV_MAX> waiters{};
    const size_t count = std::min<size_t>(watches.size(), FUTEX_WAITV_MAX);
    for (size_t i = 0; i < count; ++i) {
      waiters[i].val = watches[i].seen;
      waiters[i].uaddr = reinterpret_cast<uintptr_t>(watches[i].word);
      waiters[i].flags =
          FUTEX_32;  // shared, not _PRIVATE: the words are in other processes' memory
    }
    // futex_waitv's timeout is absolute.
    timespec deadline{};
    ::clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += static_cast<long>(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
      deadline.tv_sec += 1;
      deadline.tv_nsec -= 1000000000L;
    }
    if (::syscall(SYS_futex_waitv, waiters.data(), count, 0, &deadline, CLOCK_MONOTONIC) >= 0) {
      return true;
    }
    if (errno == ETIMEDOUT) return false;
    if (errno == EAGAIN || errno == EINTR) return true;
    if (errno != ENOSYS) return ErrnoStatus(errno, "futex_waitv on ", count, " words");
  }
#endif
  if (watches.empty()) return arrow::Status::Invalid("futex wait on no word");
  return FutexWait(watches.front().word, watches.front().seen, timeout_ms);
}

arrow::Result<RegionWriter> RegionWriter::Create() {
  ARROW_ASSIGN_OR_RAISE(auto memfd, Memfd::Create("shmarrow-consumer-region"));
  ARROW_RETURN_NOT_OK(memfd.Resize(kRegionSize));
  ARROW_RETURN_NOT_OK(memfd.Commit(0, kRegionSize));
  ARROW_RETURN_NOT_OK(memfd.AddSeals(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW));
  RegionWriter region;
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapWritable(memfd.fd(), kRegionSize));
  region.mapping_ = std::make_shared<Mapping>(std::move(mapping));
  region.fd_ = std::move(memfd).TakeFd();
  return region;
}

namespace {

std::atomic_ref<uint64_t> ReadOnlyWord(const uint8_t* at) {
  // The ring is mapped read-only here; an atomic load of a const word is still a plain load.
  return std::atomic_ref<uint64_t>(*const_cast<uint64_t*>(reinterpret_cast<const uint64_t*>(at)));
}

std::atomic_ref<uint32_t> ReadOnlyWord32(const uint8_t* at) {
  return std::atomic_ref<uint32_t>(*const_cast<uint32_t*>(reinterpret_cast<const uint32_t*>(at)));
}

}  // namespace

bool ReleaseWriter::TryWrite(uint64_t sequence) {
  // The producer's count is any value: one that claims more than was written means no room.
  const uint64_t read = ReadOnlyWord(header_ + protocol::kQueueReleasesReadOffset).load();
  if (read > written_ || written_ - read >= kRegionSlots) return false;
  uint8_t* region = region_->data();
  std::atomic_ref<uint64_t>(
      *reinterpret_cast<uint64_t*>(region + kRegionSlotsOffset + (written_ % kRegionSlots) * 8))
      .store(sequence, std::memory_order_relaxed);
  ++written_;
  // Sequentially consistent, as Announce's loads of the producer's words: a producer that said
  // it waits (for room, or for credits) before looking at this count is seen there, or sees the
  // count moved.
  std::atomic_ref<uint64_t>(*reinterpret_cast<uint64_t*>(region + kRegionReleasesOffset))
      .store(written_);
  return true;
}

bool ReleaseWriter::Announce() {
  const uint64_t block = ReadOnlyWord(header_ + protocol::kQueueWaitBlockOffset).load();
  // Any value: a wait block outside the ring is never woken (the producer's waits are bounded).
  if (block % 8 == 0 && block <= ring_size_ && ring_size_ - block >= kWaitBlockSize &&
      ReadOnlyWord32(ring_ + block + kWaitBlockWaitersOffset).load() != 0) {
    // A waiter adds one to the futex word before each sleep: the word this consumer last woke
    // means that waiter has not run yet (it takes these releases too when it does).
    const uint32_t sleep = ReadOnlyWord32(ring_ + block).load();
    if (sleep != last_woken_) {
      FutexWake(reinterpret_cast<const uint32_t*>(ring_ + block));  // the waiter takes them all
      last_woken_ = sleep;
    }
    return false;
  }
  return ReadOnlyWord32(header_ + protocol::kQueueHeldBackOffset).load() != 0;
}

arrow::Result<RegionReader> RegionReader::Open(int fd) {
  ARROW_ASSIGN_OR_RAISE(int seals, GetSeals(fd));
  constexpr int kNeeded = F_SEAL_SHRINK | F_SEAL_GROW;
  if ((seals & kNeeded) != kNeeded) {
    return arrow::Status::Invalid("consumer region fd ", fd, " is not sealed against ",
                                  SealNames(kNeeded & ~seals), ": it could fault this producer");
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat of the consumer region fd ", fd);
  if (st.st_size != kRegionSize) {
    return arrow::Status::Invalid("consumer region fd ", fd, " is ", st.st_size,
                                  " bytes, expected ", kRegionSize);
  }
  RegionReader region;
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapReadOnly(fd, kRegionSize));
  region.mapping_ = std::make_shared<const Mapping>(std::move(mapping));
  return region;
}

}  // namespace shmarrow::internal
