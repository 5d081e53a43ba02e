// Ring mode's allocator: alignment and bounds, out-of-order frees and wraparound, a full ring
// failing fast or waiting for space, shutdown, in-place growth, and the memfd's seals as a
// consumer sees them (no write can reach the ring through the fd it is given).
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "memfd.h"
#include "ring.h"
#include "test_util.h"

namespace shmarrow {
namespace {

using internal::Ring;
using internal::RingPool;

constexpr int64_t kRingSize = 64 * 1024;
constexpr int64_t kBlockHeader = 64;
// With its 64-byte header, a block of this many bytes takes exactly a quarter of the ring.
constexpr int64_t kQuarter = kRingSize / 4 - kBlockHeader;
// Allocation turns back to the ring's start at this offset when it can (src/ring.cc).
constexpr int64_t kWarmWindow = int64_t{1} << 20;
constexpr int64_t kLargeRing = 8 * kWarmWindow;

std::unique_ptr<Ring> MakeRing(int64_t size = kRingSize, int64_t max_blocks = 1024) {
  auto ring = Ring::Create("ring-test", size, max_blocks);
  EXPECT_TRUE(ring.ok()) << ring.status().ToString();
  return ring.ok() ? std::move(*ring) : nullptr;
}

TEST(RingTest, CreateRejectsTinyRings) {
  EXPECT_ERROR_CONTAINS(Ring::Create("ring-test", 100, 16), "too small");
  EXPECT_ERROR_CONTAINS(Ring::Create("ring-test", kRingSize, 0), "too small");
  auto ring = MakeRing(5000);  // rounded up to whole pages
  ASSERT_NE(ring, nullptr);
  EXPECT_EQ(ring->size() % 4096, 0);
  EXPECT_GE(ring->size(), 5000);
}

TEST(RingTest, AllocationsAreAlignedAndInside) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  std::vector<std::pair<int64_t, int64_t>> blocks;  // offset, size
  for (int64_t size : {1, 7, 63, 64, 65, 100, 1000, 4095, 4097, 333}) {
    ASSERT_OK_AND_ASSIGN(int64_t offset, ring->Allocate(size, 0));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(ring->base() + offset) % 64, 0u) << "size " << size;
    EXPECT_TRUE(ring->Contains(ring->base() + offset, size)) << "size " << size;
    EXPECT_GE(offset, kBlockHeader);
    blocks.emplace_back(offset, size);
  }
  // No two blocks overlap: fill each with its own byte and read everything back.
  for (size_t i = 0; i < blocks.size(); ++i) {
    std::memset(ring->base() + blocks[i].first, static_cast<int>(i + 1),
                static_cast<size_t>(blocks[i].second));
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    const uint8_t* p = ring->base() + blocks[i].first;
    for (int64_t j = 0; j < blocks[i].second; ++j) ASSERT_EQ(p[j], i + 1) << "block " << i;
  }
  EXPECT_EQ(ring->live_blocks(), static_cast<int64_t>(blocks.size()));
  for (auto [offset, size] : blocks) ring->Free(offset);
  EXPECT_EQ(ring->live_blocks(), 0);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

TEST(RingTest, AllocationLargerThanTheRingNeverFits) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  auto status = ring->Allocate(kRingSize, -1).status();  // must not wait forever
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  EXPECT_NE(status.message().find(std::to_string(kRingSize)), std::string::npos)
      << status.ToString();
  EXPECT_NE(status.message().find("never fit"), std::string::npos) << status.ToString();
}

TEST(RingTest, OutOfOrderFreesAndWraparound) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  int64_t q[4];
  for (int i = 0; i < 4; ++i) {
    ASSERT_OK_AND_ASSIGN(q[i], ring->Allocate(kQuarter, 0));
    EXPECT_EQ(q[i], i * (kRingSize / 4) + kBlockHeader);
  }
  EXPECT_EQ(ring->bytes_in_use(), kRingSize);
  EXPECT_TRUE(ring->Allocate(1, 0).status().IsOutOfMemory());

  // Freeing a newer block first returns its bytes but not its space: the oldest still pins it.
  ring->Free(q[1]);
  EXPECT_EQ(ring->bytes_in_use(), 3 * kRingSize / 4);
  EXPECT_EQ(ring->live_blocks(), 4);
  EXPECT_TRUE(ring->Allocate(1, 0).status().IsOutOfMemory());

  // Once the oldest goes, both it and the already freed one are reclaimed, and allocation wraps
  // around to the start of the ring.
  ring->Free(q[0]);
  EXPECT_EQ(ring->live_blocks(), 2);
  ASSERT_OK_AND_ASSIGN(int64_t w0, ring->Allocate(kQuarter, 0));
  EXPECT_EQ(w0, kBlockHeader);
  ASSERT_OK_AND_ASSIGN(int64_t w1, ring->Allocate(kQuarter, 0));
  EXPECT_EQ(w1, kRingSize / 4 + kBlockHeader);
  // Wrapped: the head has met the tail (q[2]).
  EXPECT_TRUE(ring->Allocate(1, 0).status().IsOutOfMemory());

  // Free in reverse order; nothing is reclaimed until q[2] (the oldest) goes.
  ring->Free(w1);
  ring->Free(w0);
  ring->Free(q[3]);
  EXPECT_EQ(ring->live_blocks(), 4);
  EXPECT_TRUE(ring->Allocate(kQuarter, 0).status().IsOutOfMemory());
  ring->Free(q[2]);
  EXPECT_EQ(ring->live_blocks(), 0);
  EXPECT_EQ(ring->bytes_in_use(), 0);
  // Empty again: the whole ring is one free stretch.
  ASSERT_OK_AND_ASSIGN(int64_t all, ring->Allocate(kRingSize - kBlockHeader, 0));
  EXPECT_EQ(all, kBlockHeader);
  ring->Free(all);
}

TEST(RingTest, WrapsWhenTheTailLeavesRoomAtTheStart) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  // Three quarters used; a half-ring request does not fit at the head (one quarter left) and not
  // at the start until the two oldest quarters are free.
  int64_t q[3];
  for (auto& offset : q) {
    ASSERT_OK_AND_ASSIGN(offset, ring->Allocate(kQuarter, 0));
  }
  const int64_t half = kRingSize / 2 - kBlockHeader;
  EXPECT_TRUE(ring->Allocate(half, 0).status().IsOutOfMemory());
  ring->Free(q[0]);
  EXPECT_TRUE(ring->Allocate(half, 0).status().IsOutOfMemory());
  ring->Free(q[1]);
  ASSERT_OK_AND_ASSIGN(int64_t wrapped, ring->Allocate(half, 0));
  EXPECT_EQ(wrapped, kBlockHeader);
  ring->Free(q[2]);
  ring->Free(wrapped);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

TEST(RingTest, MaxBlocksLimitsLiveBlocks) {
  auto ring = MakeRing(kRingSize, 2);
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t a, ring->Allocate(64, 0));
  ASSERT_OK_AND_ASSIGN(int64_t b, ring->Allocate(64, 0));
  EXPECT_TRUE(ring->Allocate(64, 0).status().IsOutOfMemory());  // bytes left, but no slot
  ring->Free(a);
  ASSERT_OK_AND_ASSIGN(int64_t c, ring->Allocate(64, 0));
  ring->Free(b);
  ring->Free(c);
  EXPECT_EQ(ring->live_blocks(), 0);
}

TEST(RingTest, FullRingFailsFastNamingSizes) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  std::vector<int64_t> held;
  for (int i = 0; i < 4; ++i) {
    ASSERT_OK_AND_ASSIGN(int64_t offset, ring->Allocate(kQuarter, 0));
    held.push_back(offset);
  }
  auto status = ring->Allocate(12345, 0).status();
  ASSERT_TRUE(status.IsOutOfMemory()) << status.ToString();
  const std::string message = status.message();
  EXPECT_NE(message.find("ring full"), std::string::npos) << message;
  EXPECT_NE(message.find("12345"), std::string::npos) << message;                    // requested
  EXPECT_NE(message.find(std::to_string(kRingSize)), std::string::npos) << message;  // ring size
  for (int64_t offset : held) ring->Free(offset);
}

TEST(RingTest, BlockedAllocationSucceedsWhenAnotherThreadFrees) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  int64_t q[4];
  for (auto& offset : q) {
    ASSERT_OK_AND_ASSIGN(offset, ring->Allocate(kQuarter, 0));
  }
  ASSERT_TRUE(ring->Allocate(kQuarter, 0).status().IsOutOfMemory());
  std::atomic<bool> freeing{false};
  std::thread freer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    freeing = true;  // set before the free: the allocation can only succeed after this
    ring->Free(q[0]);
  });
  // Generous wait: if Free did not wake the waiter, this times out and fails.
  auto result = ring->Allocate(kQuarter, 10000);
  const bool freed_first = freeing.load();
  freer.join();
  ASSERT_TRUE(result.ok()) << result.status().ToString();
  EXPECT_TRUE(freed_first) << "the allocation did not wait for the free";
  EXPECT_EQ(*result, kBlockHeader);  // the freed first quarter
  ring->Free(*result);
  for (int i = 1; i < 4; ++i) ring->Free(q[i]);
}

// Frees come from another thread, without the ring's lock, while allocations reclaim and reuse
// their space (and wait for it when the ring is full): no block is handed out twice, no free is
// lost. Blocks of up to `max_block` bytes.
void AllocateWhileAnotherThreadFrees(int64_t ring_size, int64_t max_block) {
  auto ring = MakeRing(ring_size, 4096);
  ASSERT_NE(ring, nullptr);
  struct Held {
    int64_t offset;
    int64_t size;
    uint8_t tag;
  };
  std::mutex mutex;
  std::condition_variable handed;
  std::vector<Held> to_free;
  bool done = false;
  std::atomic<int64_t> overlaps{0};
  std::thread freer([&] {
    for (;;) {
      std::vector<Held> batch;
      {
        std::unique_lock lock(mutex);
        handed.wait(lock, [&] { return done || !to_free.empty(); });
        if (to_free.empty()) return;
        batch.swap(to_free);
      }
      for (const Held& held : batch) {
        const uint8_t* p = ring->base() + held.offset;
        for (int64_t i = 0; i < held.size; ++i) {
          if (p[i] != held.tag) {
            overlaps.fetch_add(1);
            break;
          }
        }
        ring->Free(held.offset);
      }
    }
  });
  constexpr int kAllocations = 20000;
  for (int n = 0; n < kAllocations; ++n) {
    const int64_t size = 64 + (n * 4099) % max_block;
    auto offset = ring->Allocate(size, 10000);  // a free never seen fails this
    ASSERT_TRUE(offset.ok()) << offset.status().ToString();
    const auto tag = static_cast<uint8_t>(n);
    std::memset(ring->base() + *offset, tag, static_cast<size_t>(size));
    std::lock_guard lock(mutex);
    to_free.push_back({*offset, size, tag});
    handed.notify_one();
  }
  {
    std::lock_guard lock(mutex);
    done = true;
    handed.notify_one();
  }
  freer.join();
  EXPECT_EQ(overlaps.load(), 0);
  EXPECT_EQ(ring->live_blocks(), 0);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

TEST(RingTest, BlocksFreedOnAnotherThreadAreReusedWithoutOverlap) {
  AllocateWhileAnotherThreadFrees(kRingSize, kRingSize / 8);
}

// A ring larger than the warm window: allocation turns back to the start early whenever the
// held blocks allow it, and walks on when they do not.
TEST(RingTest, BlocksFreedOnAnotherThreadAreReusedWithoutOverlapInALargeRing) {
  AllocateWhileAnotherThreadFrees(kLargeRing, 8 * 1024);
}

// Small blocks released soon after they were allocated (a producer whose consumers keep up)
// reuse the first megabyte of the ring instead of walking through all of it.
TEST(RingTest, PromptlyFreedBlocksStayInTheWarmWindow) {
  auto ring = MakeRing(kLargeRing, 4096);
  ASSERT_NE(ring, nullptr);
  constexpr int64_t kBlock = 4096 - kBlockHeader;
  std::deque<std::pair<int64_t, uint8_t>> held;  // offset, tag
  int64_t highest_end = 0;
  for (int n = 0; n < 10000; ++n) {
    ASSERT_OK_AND_ASSIGN(int64_t offset, ring->Allocate(kBlock, 0));
    highest_end = std::max(highest_end, offset + kBlock);
    std::memset(ring->base() + offset, static_cast<uint8_t>(n), kBlock);
    held.emplace_back(offset, static_cast<uint8_t>(n));
    if (held.size() > 8) {
      auto [oldest, tag] = held.front();
      for (int64_t i = 0; i < kBlock; ++i) ASSERT_EQ(ring->base()[oldest + i], tag) << n;
      ring->Free(oldest);
      held.pop_front();
    }
  }
  EXPECT_LE(highest_end, kWarmWindow);
  for (auto [offset, tag] : held) ring->Free(offset);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

// A block held when allocation turned back to the start pins the ring's end until it is freed:
// the start still has room for at least half the warm window, and the whole ring comes back once
// the block goes.
TEST(RingTest, ABlockHeldAcrossTheTurnLeavesHalfTheWindowAtTheStart) {
  auto ring = MakeRing(kLargeRing, 4096);
  ASSERT_NE(ring, nullptr);
  constexpr int64_t kBlock = 4096 - kBlockHeader;
  // Fill to just past half the window, freeing every block but the last.
  ASSERT_OK_AND_ASSIGN(int64_t pinned, ring->Allocate(kBlock, 0));
  while (pinned < kWarmWindow / 2) {
    ASSERT_OK_AND_ASSIGN(const int64_t next, ring->Allocate(kBlock, 0));
    ring->Free(pinned);
    pinned = next;
  }
  // Walk on, freeing each block at once, until allocation turns back to the start.
  int64_t offset = pinned;
  int64_t previous = pinned;
  while (offset >= previous) {
    previous = offset;
    ASSERT_OK_AND_ASSIGN(offset, ring->Allocate(kBlock, 0));
    ring->Free(offset);
  }
  EXPECT_EQ(offset, kBlockHeader);
  // From the start up to the pinned block, then the ring is full, though its end is unused.
  int64_t allocated_from_start = kBlock + kBlockHeader;
  arrow::Result<int64_t> next;
  while ((next = ring->Allocate(kBlock, 0)).ok()) {
    ring->Free(*next);
    allocated_from_start += kBlock + kBlockHeader;
  }
  EXPECT_TRUE(next.status().IsOutOfMemory()) << next.status().ToString();
  EXPECT_GE(allocated_from_start, kWarmWindow / 2);
  ring->Free(pinned);
  ASSERT_OK_AND_ASSIGN(int64_t after, ring->Allocate(kBlock, 0));
  ring->Free(after);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

TEST(RingTest, TimedWaitOnAFullRingFailsWithOutOfMemory) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t all, ring->Allocate(kRingSize - kBlockHeader, 0));
  auto status = ring->Allocate(100, 50).status();
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  EXPECT_NE(status.message().find("50 ms"), std::string::npos) << status.ToString();
  ring->Free(all);
}

TEST(RingTest, CloseWakesABlockedAllocation) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t all, ring->Allocate(kRingSize - kBlockHeader, 0));
  std::atomic<bool> closing{false};
  arrow::Status blocked_status;
  bool closed_first = false;
  std::thread waiter([&] {
    // 20 s: if Close did not wake it, it would fail with "ring full" (OutOfMemory) instead.
    blocked_status = ring->Allocate(100, 20000).status();
    closed_first = closing.load();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  closing = true;
  ring->Close();
  waiter.join();
  EXPECT_TRUE(blocked_status.IsCancelled()) << blocked_status.ToString();
  EXPECT_NE(blocked_status.message().find("closed"), std::string::npos)
      << blocked_status.ToString();
  EXPECT_TRUE(closed_first);
  ring->Free(all);
}

TEST(RingTest, AllocationsAfterCloseFail) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ring->Close();
  // "Makes blocked and future allocations fail": even one that would fit.
  auto status = ring->Allocate(100, 0).status();
  EXPECT_TRUE(status.IsCancelled()) << status.ToString();
}

TEST(RingTest, ResizeInPlaceGrowsOnlyTheNewestBlock) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t a, ring->Allocate(1000, 0));
  const int64_t used_before = ring->bytes_in_use();
  // The newest block grows in place, up to the end of the ring.
  EXPECT_TRUE(ring->ResizeInPlace(a, 1000, 5000));
  EXPECT_EQ(ring->bytes_in_use(), used_before + (5056 - 1024));
  EXPECT_FALSE(ring->ResizeInPlace(a, 5000, kRingSize));  // past the end
  // The next block starts after the grown one.
  ASSERT_OK_AND_ASSIGN(int64_t b, ring->Allocate(100, 0));
  EXPECT_EQ(b, a + 5056 + kBlockHeader);
  // `a` is no longer the newest: it cannot grow, but shrinking keeps the block as it is.
  EXPECT_FALSE(ring->ResizeInPlace(a, 5000, 6000));
  EXPECT_TRUE(ring->ResizeInPlace(a, 5000, 10));
  // The newest shrinks and grows again.
  EXPECT_TRUE(ring->ResizeInPlace(b, 100, 10));
  EXPECT_TRUE(ring->ResizeInPlace(b, 10, 2000));
  ring->Free(a);
  ring->Free(b);
  EXPECT_EQ(ring->bytes_in_use(), 0);
  EXPECT_EQ(ring->live_blocks(), 0);
}

TEST(RingTest, ResizeInPlaceOfAWrappedBlockStopsAtTheTail) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  int64_t q[4];
  for (auto& offset : q) {
    ASSERT_OK_AND_ASSIGN(offset, ring->Allocate(kQuarter, 0));
  }
  ring->Free(q[0]);
  ring->Free(q[1]);
  ASSERT_OK_AND_ASSIGN(int64_t w, ring->Allocate(100, 0));  // wrapped to the start
  ASSERT_EQ(w, kBlockHeader);
  // It may grow up to the oldest live block (q[2] at half the ring), not beyond.
  EXPECT_TRUE(ring->ResizeInPlace(w, 100, kRingSize / 2 - kBlockHeader));
  EXPECT_FALSE(ring->ResizeInPlace(w, kRingSize / 2 - kBlockHeader, kRingSize / 2));
  ring->Free(q[2]);
  ring->Free(q[3]);
  ring->Free(w);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

TEST(RingTest, RingPoolBuildsArraysInTheRing) {
  auto ring = MakeRing(1 << 20);
  ASSERT_NE(ring, nullptr);
  RingPool pool(ring.get(), 0);
  std::shared_ptr<arrow::Array> array;
  {
    arrow::StringBuilder builder(&pool);
    for (int i = 0; i < 2000; ++i) {  // grows several times (Reallocate)
      if (i % 3 == 0) {
        ASSERT_OK(builder.AppendNull());
      } else {
        ASSERT_OK(builder.Append("value-" + std::to_string(i)));
      }
    }
    ASSERT_OK(builder.Finish(&array));
  }
  ASSERT_OK(array->ValidateFull());
  for (const auto& buffer : array->data()->buffers) {
    if (buffer == nullptr || buffer->size() == 0) continue;
    EXPECT_TRUE(ring->Contains(buffer->data(), buffer->size()));
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buffer->data()) % 64, 0u);
  }
  EXPECT_EQ(std::static_pointer_cast<arrow::StringArray>(array)->GetString(1999), "value-1999");
  EXPECT_GT(pool.bytes_allocated(), 0);
  array.reset();
  EXPECT_EQ(pool.bytes_allocated(), 0);
  EXPECT_EQ(ring->bytes_in_use(), 0);
  // A full ring surfaces as OutOfMemory through the pool.
  uint8_t* out = nullptr;
  auto status = pool.Allocate(int64_t{2} << 20, 64, &out);
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
}

// The statistics Arrow's own pools report, counted alike: growing in place counts as an allocation
// of the difference.
TEST(RingTest, RingPoolStatistics) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  RingPool pool(ring.get(), 0);
  EXPECT_EQ(pool.backend_name(), "shmarrow-ring");
  uint8_t* a = nullptr;
  uint8_t* b = nullptr;
  ASSERT_OK(pool.Allocate(100, 64, &a));
  ASSERT_OK(pool.Allocate(200, 64, &b));
  EXPECT_EQ(pool.bytes_allocated(), 300);
  EXPECT_EQ(pool.max_memory(), 300);
  EXPECT_EQ(pool.total_bytes_allocated(), 300);
  EXPECT_EQ(pool.num_allocations(), 2);
  pool.Free(a, 100, 64);
  EXPECT_EQ(pool.bytes_allocated(), 200);
  ASSERT_OK(pool.Reallocate(200, 1200, 64, &b));  // the newest block: in place
  EXPECT_EQ(pool.bytes_allocated(), 1200);
  EXPECT_EQ(pool.max_memory(), 1200);
  EXPECT_EQ(pool.total_bytes_allocated(), 1300);
  EXPECT_EQ(pool.num_allocations(), 3);
  pool.Free(b, 1200, 64);
  EXPECT_EQ(pool.bytes_allocated(), 0);
  EXPECT_EQ(pool.max_memory(), 1200);
  // Zero-size allocations count nothing.
  uint8_t* z = nullptr;
  ASSERT_OK(pool.Allocate(0, 64, &z));
  EXPECT_EQ(pool.num_allocations(), 3);
  pool.Free(z, 0, 64);
  EXPECT_EQ(ring->bytes_in_use(), 0);
}

TEST(RingTest, MemfdIsSealedAgainstResizingAndWrites) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, ring->ConsumerFd());
  ASSERT_OK_AND_ASSIGN(int seals, internal::GetSeals(fd.get()));
  constexpr int kRequired = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;
  EXPECT_EQ(seals & kRequired, kRequired) << internal::SealNames(seals);
}

TEST(RingTest, ConsumerFdCanBeReadButNeverWritten) {
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t offset, ring->Allocate(64, 0));
  const char kText[] = "written by the producer";
  std::memcpy(ring->base() + offset, kText, sizeof kText);

  ASSERT_OK_AND_ASSIGN(UniqueFd fd, ring->ConsumerFd());
  EXPECT_EQ(::fcntl(fd.get(), F_GETFL) & O_ACCMODE, O_RDONLY);

  // Both ways of writing are expected to fail.
  errno = 0;
  void* writable = ::mmap(nullptr, static_cast<size_t>(kRingSize), PROT_READ | PROT_WRITE,
                          MAP_SHARED, fd.get(), 0);
  EXPECT_EQ(writable, MAP_FAILED) << "a consumer could map the ring writable";
  if (writable != MAP_FAILED) ::munmap(writable, static_cast<size_t>(kRingSize));
  const char kEvil[] = "written by a consumer";
  EXPECT_LT(::pwrite(fd.get(), kEvil, sizeof kEvil, offset), 0) << "a consumer could write";
  EXPECT_LT(::write(fd.get(), kEvil, sizeof kEvil), 0) << "a consumer could write";

  // Reading works: pread and a read-only shared mapping both see the producer's bytes.
  char read_back[sizeof kText] = {};
  ASSERT_EQ(::pread(fd.get(), read_back, sizeof read_back, offset),
            static_cast<ssize_t>(sizeof read_back));
  EXPECT_STREQ(read_back, kText);
  void* readable =
      ::mmap(nullptr, static_cast<size_t>(kRingSize), PROT_READ, MAP_SHARED, fd.get(), 0);
  ASSERT_NE(readable, MAP_FAILED) << std::strerror(errno);
  EXPECT_STREQ(static_cast<const char*>(readable) + offset, kText);
  // Later producer writes show through the consumer's mapping (same pages, no copy).
  ring->base()[offset] = 'W';
  EXPECT_EQ(static_cast<const char*>(readable)[offset], 'W');
  // Nor can the read-only mapping be turned writable.
  EXPECT_NE(::mprotect(readable, static_cast<size_t>(kRingSize), PROT_READ | PROT_WRITE), 0);
  ::munmap(readable, static_cast<size_t>(kRingSize));
  EXPECT_EQ(ring->base()[offset], 'W');
  EXPECT_EQ(std::memcmp(ring->base() + offset + 1, kText + 1, sizeof kText - 1), 0);
  ring->Free(offset);
}

TEST(RingTest, ReopeningTheConsumerFdWritableStillCannotWrite) {
  // A consumer can reopen the memfd through /proc/self/fd with O_RDWR (memfds are mode 0777):
  // then only the seals stand between it and the ring.
  auto ring = MakeRing();
  ASSERT_NE(ring, nullptr);
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, ring->ConsumerFd());
  const std::string path = "/proc/self/fd/" + std::to_string(fd.get());
  UniqueFd reopened(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!reopened) GTEST_SKIP() << "cannot reopen " << path << ": " << std::strerror(errno);
  void* writable = ::mmap(nullptr, static_cast<size_t>(kRingSize), PROT_READ | PROT_WRITE,
                          MAP_SHARED, reopened.get(), 0);
  EXPECT_EQ(writable, MAP_FAILED);
  if (writable != MAP_FAILED) ::munmap(writable, static_cast<size_t>(kRingSize));
  const char kEvil[] = "evil";
  EXPECT_LT(::pwrite(reopened.get(), kEvil, sizeof kEvil, 128), 0);
  EXPECT_NE(::ftruncate(reopened.get(), 0), 0);                      // F_SEAL_SHRINK
  EXPECT_NE(::ftruncate(reopened.get(), kRingSize * 2), 0);          // F_SEAL_GROW
  EXPECT_NE(::fallocate(reopened.get(), 0, 0, kRingSize * 2), 0);    // F_SEAL_GROW
  EXPECT_NE(::fcntl(reopened.get(), F_ADD_SEALS, F_SEAL_WRITE), 0);  // F_SEAL_SEAL
}

}  // namespace
}  // namespace shmarrow
