// How the paced small-batch benchmarks hand the turn between their two processes: a counter in
// shared memory (mapped before fork) that one side advances and the other waits on, sleeping on
// it with a futex (not _PRIVATE: the mapping is shared between processes) or spinning. spsc_baseline's queue cursors and handover_bench's "consumer has taken
// batch n" word are both this, so the floor and shmarrow pay the same for their pacing.
#pragma once

#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <ctime>

namespace bench {

// A peer that died leaves the other side waiting: give up after this long without a change.
constexpr auto kPaceGiveUp = std::chrono::seconds(20);

// On a cache line of its own; `sleeping` says the other side must be woken.
struct alignas(64) PaceWord {
  std::atomic<uint32_t> value{0};
  std::atomic<uint32_t> sleeping{0};
};
static_assert(std::atomic<uint32_t>::is_always_lock_free);

// Which futex operations a word's sleeps and wakes use. The pacing's own (the producer waiting
// until the consumer took a batch) are FUTEX_WAIT_BITSET / FUTEX_WAKE_BITSET with kPaceBitset,
// so that bench/run's system-call count can tell them from the hand-over's and leave them out:
// whether the producer sleeps there depends on how soon the consumer says so, not on the route.
// spsc_baseline's message cursor is its hand-over: plain FUTEX_WAIT / FUTEX_WAKE, as shmarrow's.
enum class Role { kPacing, kHandOver };
constexpr uint32_t kPaceBitset = 0x9ace;

inline void FutexWait(PaceWord* word, uint32_t seen, Role role) {
  auto* address = reinterpret_cast<uint32_t*>(&word->value);
  // EAGAIN (the word changed), EINTR and ETIMEDOUT all mean: look again.
  if (role == Role::kHandOver) {
    const timespec timeout{0, 100 * 1000 * 1000};
    ::syscall(SYS_futex, address, FUTEX_WAIT, seen, &timeout, nullptr, 0);
    return;
  }
  timespec deadline{};  // FUTEX_WAIT_BITSET's timeout is absolute, on CLOCK_MONOTONIC
  ::clock_gettime(CLOCK_MONOTONIC, &deadline);
  deadline.tv_nsec += 100 * 1000 * 1000;
  if (deadline.tv_nsec >= 1000 * 1000 * 1000) {
    deadline.tv_sec += 1;
    deadline.tv_nsec -= 1000 * 1000 * 1000;
  }
  ::syscall(SYS_futex, address, FUTEX_WAIT_BITSET, seen, &deadline, nullptr, kPaceBitset);
}

// Waits until `word` differs from `seen`, sleeping on it unless `busy`. The sleeping flag is set
// before the last look (sequentially consistent on both sides), so the other side either sees
// the flag and wakes us, or we see its new value and do not sleep. False: no change for
// kPaceGiveUp.
inline bool WaitChange(PaceWord* word, uint32_t seen, bool busy, Role role = Role::kPacing) {
  const auto give_up = std::chrono::steady_clock::now() + kPaceGiveUp;
  for (uint64_t spins = 1;; ++spins) {
    if (word->value.load(std::memory_order_acquire) != seen) return true;
    if (busy) {
      if (spins % 65536 == 0 && std::chrono::steady_clock::now() > give_up) return false;
      continue;
    }
    word->sleeping.store(1, std::memory_order_seq_cst);
    if (word->value.load(std::memory_order_seq_cst) == seen) FutexWait(word, seen, role);
    word->sleeping.store(0, std::memory_order_relaxed);
    if (std::chrono::steady_clock::now() > give_up) {
      return word->value.load(std::memory_order_acquire) != seen;
    }
  }
}

// Stores `value` and wakes the other side if it sleeps on the word.
inline void Advance(PaceWord* word, uint32_t value, Role role = Role::kPacing) {
  word->value.store(value, std::memory_order_seq_cst);
  if (word->sleeping.load(std::memory_order_seq_cst) != 0) {
    auto* address = reinterpret_cast<uint32_t*>(&word->value);
    if (role == Role::kHandOver) {
      ::syscall(SYS_futex, address, FUTEX_WAKE, 1, nullptr, nullptr, 0);
    } else {
      ::syscall(SYS_futex, address, FUTEX_WAKE_BITSET, 1, nullptr, nullptr, kPaceBitset);
    }
  }
}

}  // namespace bench
