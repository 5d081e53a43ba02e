// Arena and ArenaPool: alignment, in-place growth and roll-back, exhaustion, statistics, sealing.
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>

#include <cstring>
#include <thread>
#include <vector>

#include "arena.h"
#include "test_util.h"

namespace shmarrow::internal {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;

std::unique_ptr<Arena> MakeArena(int64_t capacity = 4 * kMiB) {
  auto arena = Arena::Create("arena-test", capacity);
  EXPECT_TRUE(arena.ok()) << arena.status().ToString();
  return arena.ok() ? std::move(*arena) : nullptr;
}

bool AlignedTo(const void* p, int64_t alignment) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(alignment) == 0;
}

TEST(Arena, CreateRejectsNonPositiveCapacity) {
  EXPECT_ERROR_CONTAINS(Arena::Create("bad", 0), "capacity");
  EXPECT_ERROR_CONTAINS(Arena::Create("bad", -5), "capacity");
}

TEST(Arena, CapacityIsRoundedToCommitChunks) {
  auto arena = MakeArena(1);
  ASSERT_NE(arena, nullptr);
  EXPECT_GE(arena->capacity(), 1);
  EXPECT_EQ(arena->capacity() % kArenaAlignment, 0);
  EXPECT_EQ(arena->front(), 0);
  EXPECT_TRUE(AlignedTo(arena->base(), 4096));
}

TEST(Arena, ReserveAlignsAndAdvancesTheFront) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t a, arena->Reserve(1));
  ASSERT_OK_AND_ASSIGN(int64_t b, arena->Reserve(100));
  ASSERT_OK_AND_ASSIGN(int64_t c, arena->Reserve(10, 256));
  ASSERT_OK_AND_ASSIGN(int64_t d, arena->Reserve(0));
  EXPECT_EQ(a, 0);
  EXPECT_EQ(b, 64);
  EXPECT_EQ(c, 256);
  EXPECT_EQ(d, 320);
  EXPECT_EQ(arena->front(), 320);
  EXPECT_TRUE(arena->Contains(arena->base() + b, 100));
  EXPECT_FALSE(arena->Contains(arena->base() - 1, 1));
  EXPECT_FALSE(arena->Contains(arena->base() + arena->capacity(), 1));
  EXPECT_EQ(arena->OffsetOf(arena->base() + c), c);
}

TEST(Arena, ReserveRejectsBadArguments) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  EXPECT_ERROR_CONTAINS(arena->Reserve(-1), "negative");
  EXPECT_ERROR_CONTAINS(arena->Reserve(8, 96), "power of two");
  EXPECT_EQ(arena->front(), 0);
}

TEST(Arena, ExhaustionIsOutOfMemoryNotACrash) {
  auto arena = MakeArena(4 * kMiB);
  ASSERT_NE(arena, nullptr);
  const auto too_big = arena->Reserve(arena->capacity() + 1);
  ASSERT_FALSE(too_big.ok());
  EXPECT_TRUE(too_big.status().IsOutOfMemory()) << too_big.status().ToString();
  EXPECT_NE(too_big.status().message().find("capacity"), std::string::npos);
  // Fill exactly to the end: allowed; one byte more: refused.
  ASSERT_OK_AND_ASSIGN(int64_t first, arena->Reserve(arena->capacity() - 64));
  EXPECT_EQ(first, 0);
  ASSERT_OK_AND_ASSIGN(int64_t last, arena->Reserve(64));
  EXPECT_EQ(last, arena->capacity() - 64);
  // Every byte handed out is backed by memory: writing all of it must not SIGBUS.
  std::memset(arena->base(), 0xAB, static_cast<size_t>(arena->capacity()));
  EXPECT_TRUE(arena->Reserve(1).status().IsOutOfMemory());
  EXPECT_TRUE(arena->Reserve(0).ok()) << "a zero-byte reservation at the very end fits";
}

TEST(Arena, ResizeLastInPlace) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t a, arena->Reserve(100));
  ASSERT_OK_AND_ASSIGN(int64_t b, arena->Reserve(100));
  EXPECT_FALSE(arena->ResizeLastInPlace(a, 100, 200)) << "a is not the last block";
  EXPECT_TRUE(arena->ResizeLastInPlace(a, 100, 50)) << "shrinking any block keeps it";
  EXPECT_EQ(arena->front(), b + 100);
  EXPECT_TRUE(arena->ResizeLastInPlace(b, 100, 3 * kMiB));
  EXPECT_EQ(arena->front(), b + 3 * kMiB);
  EXPECT_TRUE(arena->ResizeLastInPlace(b, 3 * kMiB, 10));
  EXPECT_EQ(arena->front(), b + 10);
  EXPECT_FALSE(arena->ResizeLastInPlace(b, 10, arena->capacity()));
  EXPECT_EQ(arena->front(), b + 10);
}

TEST(Arena, ReleaseIfLastRollsBackOnlyTheLastBlock) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t a, arena->Reserve(100));
  ASSERT_OK_AND_ASSIGN(int64_t b, arena->Reserve(100));
  arena->ReleaseIfLast(a, 100);
  EXPECT_EQ(arena->front(), b + 100);
  arena->ReleaseIfLast(b, 100);
  EXPECT_EQ(arena->front(), b);
  ASSERT_OK_AND_ASSIGN(int64_t c, arena->Reserve(10));
  EXPECT_EQ(c, b);
}

TEST(Arena, EveryReservedByteIsCommittedWhateverThePagePolicy) {
  // Commits start at 64 KiB and double; each reservation below crosses a different step. A byte
  // reserved but not committed would SIGBUS here.
  for (auto pages : {PagePolicy::kAuto, PagePolicy::kOff}) {
    ASSERT_OK_AND_ASSIGN(auto arena, Arena::Create("arena-test", 16 * kMiB, pages));
    for (int64_t size : {int64_t{1}, int64_t{70} << 10, int64_t{200} << 10, 3 * kMiB, 5 * kMiB}) {
      ASSERT_OK_AND_ASSIGN(int64_t offset, arena->Reserve(size));
      std::memset(arena->base() + offset, 0x5a, static_cast<size_t>(size));
    }
    EXPECT_EQ(arena->base()[arena->front() - 1], 0x5a);
  }
}

TEST(Arena, SealAtTrimsSealsAndRefusesMore) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t a, arena->Reserve(5000));
  std::memset(arena->base() + a, 0x5A, 5000);
  EXPECT_ERROR_CONTAINS(arena->SealAt(100), "front");
  EXPECT_FALSE(arena->sealed());
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, arena->SealAt(5000));
  EXPECT_TRUE(arena->sealed());
  EXPECT_EQ(::fcntl(fd.get(), F_GET_SEALS) & test_util::kAllSeals, test_util::kAllSeals);
  struct stat st{};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  EXPECT_EQ(st.st_size, 5000);
  // Still readable through the same pointers.
  EXPECT_EQ(arena->base()[a], 0x5A);
  EXPECT_EQ(arena->base()[a + 4999], 0x5A);
  EXPECT_ERROR_CONTAINS(arena->Reserve(1), "sealed");
  EXPECT_FALSE(arena->ResizeLastInPlace(a, 5000, 6000));
  EXPECT_ERROR_CONTAINS(arena->SealAt(5000), "already sealed");
}

// ---------------------------------------------------------------------------------------------

TEST(ArenaPool, EveryAllocationIs64ByteAlignedOrMore) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  std::vector<std::pair<uint8_t*, int64_t>> blocks;
  for (int64_t alignment :
       {int64_t{1}, int64_t{8}, int64_t{16}, int64_t{64}, int64_t{128}, int64_t{4096}}) {
    for (int64_t size : {int64_t{1}, int64_t{7}, int64_t{63}, int64_t{65}, int64_t{1000}}) {
      uint8_t* p = nullptr;
      ASSERT_OK(pool.Allocate(size, alignment, &p));
      EXPECT_TRUE(AlignedTo(p, std::max<int64_t>(alignment, 64)))
          << "size " << size << " alignment " << alignment;
      EXPECT_TRUE(arena->Contains(p, size));
      std::memset(p, 0xCD, static_cast<size_t>(size));
      blocks.emplace_back(p, size);
    }
  }
  // Blocks never overlap.
  std::sort(blocks.begin(), blocks.end());
  for (size_t i = 1; i < blocks.size(); ++i) {
    EXPECT_LE(blocks[i - 1].first + blocks[i - 1].second, blocks[i].first);
  }
  for (auto& [p, size] : blocks) pool.Free(p, size, 64);
  EXPECT_EQ(pool.bytes_allocated(), 0);
}

TEST(ArenaPool, DefaultAlignmentOverloadIsAligned) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool arena_pool(arena.get());
  arrow::MemoryPool& pool = arena_pool;  // the overloads without alignment live in the base
  uint8_t* a = nullptr;
  uint8_t* b = nullptr;
  ASSERT_OK(pool.Allocate(3, &a));
  ASSERT_OK(pool.Allocate(3, &b));
  EXPECT_TRUE(AlignedTo(a, 64));
  EXPECT_TRUE(AlignedTo(b, 64));
  EXPECT_EQ(b - a, 64);
  pool.Free(b, 3);
  pool.Free(a, 3);
}

TEST(ArenaPool, ZeroSizeAllocationsTakeNoArenaSpace) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  uint8_t* zero1 = nullptr;
  uint8_t* zero2 = nullptr;
  ASSERT_OK(pool.Allocate(0, 64, &zero1));
  ASSERT_OK(pool.Allocate(0, 128, &zero2));
  ASSERT_NE(zero1, nullptr);
  EXPECT_TRUE(AlignedTo(zero1, 64));
  EXPECT_FALSE(arena->Contains(zero1, 0));
  EXPECT_EQ(arena->front(), 0);
  EXPECT_EQ(pool.bytes_allocated(), 0);
  // Growing a zero-size block allocates a real one; shrinking to zero gives the space back.
  uint8_t* p = zero1;
  ASSERT_OK(pool.Reallocate(0, 100, 64, &p));
  EXPECT_TRUE(arena->Contains(p, 100));
  EXPECT_EQ(pool.bytes_allocated(), 100);
  ASSERT_OK(pool.Reallocate(100, 0, 64, &p));
  EXPECT_FALSE(arena->Contains(p, 0));
  EXPECT_EQ(arena->front(), 0);
  EXPECT_EQ(pool.bytes_allocated(), 0);
  pool.Free(zero1, 0, 64);
  pool.Free(zero2, 0, 128);
  pool.Free(p, 0, 64);
  EXPECT_EQ(arena->front(), 0);
}

TEST(ArenaPool, ReallocateLastBlockGrowsInPlace) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  uint8_t* p = nullptr;
  ASSERT_OK(pool.Allocate(100, 64, &p));
  for (int i = 0; i < 100; ++i) p[i] = static_cast<uint8_t>(i);
  uint8_t* const before = p;
  ASSERT_OK(pool.Reallocate(100, 3 * kMiB, 64, &p));  // crosses commit chunks
  EXPECT_EQ(p, before);
  EXPECT_EQ(arena->front(), arena->OffsetOf(p) + 3 * kMiB);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(p[i], i);
  p[3 * kMiB - 1] = 1;  // committed: no SIGBUS
  ASSERT_OK(pool.Reallocate(3 * kMiB, 50, 64, &p));
  EXPECT_EQ(p, before);
  EXPECT_EQ(arena->front(), arena->OffsetOf(p) + 50);
  EXPECT_EQ(pool.bytes_allocated(), 50);
  pool.Free(p, 50, 64);
}

TEST(ArenaPool, ReallocateEarlierBlockMovesAndKeepsData) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  uint8_t* first = nullptr;
  uint8_t* second = nullptr;
  ASSERT_OK(pool.Allocate(1000, 64, &first));
  ASSERT_OK(pool.Allocate(10, 64, &second));
  for (int i = 0; i < 1000; ++i) first[i] = static_cast<uint8_t>(i * 7);
  uint8_t* moved = first;
  ASSERT_OK(pool.Reallocate(1000, 5000, 128, &moved));
  EXPECT_NE(moved, first);
  EXPECT_GT(moved, second);
  EXPECT_TRUE(AlignedTo(moved, 128));
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(moved[i], static_cast<uint8_t>(i * 7)) << i;
  EXPECT_EQ(pool.bytes_allocated(), 5000 + 10);
  // Shrinking a block that is not last keeps it where it is.
  uint8_t* shrunk = second;
  ASSERT_OK(pool.Allocate(1, 64, &first));  // something after `moved`
  uint8_t* m = moved;
  ASSERT_OK(pool.Reallocate(5000, 100, 64, &m));
  EXPECT_EQ(m, moved);
  for (int i = 0; i < 100; ++i) ASSERT_EQ(m[i], static_cast<uint8_t>(i * 7)) << i;
  pool.Free(shrunk, 10, 64);
  pool.Free(first, 1, 64);
  pool.Free(m, 100, 64);
  EXPECT_EQ(pool.bytes_allocated(), 0);
}

TEST(ArenaPool, FreeOfTheLastBlockRollsBack) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  uint8_t* a = nullptr;
  uint8_t* b = nullptr;
  ASSERT_OK(pool.Allocate(100, 64, &a));
  ASSERT_OK(pool.Allocate(100, 64, &b));
  const int64_t front_after_b = arena->front();
  pool.Free(a, 100, 64);
  EXPECT_EQ(arena->front(), front_after_b) << "freeing a non-last block cannot roll back";
  pool.Free(b, 100, 64);
  EXPECT_EQ(arena->front(), arena->OffsetOf(b));
  uint8_t* c = nullptr;
  ASSERT_OK(pool.Allocate(100, 64, &c));
  EXPECT_EQ(c, b) << "the freed space is reused";
  pool.Free(c, 100, 64);
}

TEST(ArenaPool, ExhaustionIsOutOfMemory) {
  auto arena = MakeArena(4 * kMiB);
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  uint8_t* p = nullptr;
  arrow::Status status = pool.Allocate(5 * kMiB, 64, &p);
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  std::vector<uint8_t*> blocks;
  for (;;) {
    uint8_t* block = nullptr;
    status = pool.Allocate(kMiB / 2, 64, &block);
    if (!status.ok()) break;
    blocks.push_back(block);
    ASSERT_LT(blocks.size(), 100u);
  }
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  EXPECT_EQ(static_cast<int64_t>(blocks.size()), arena->capacity() / (kMiB / 2));
  // Growing the last block fails too, and leaves it intact.
  uint8_t* last = blocks.back();
  last[0] = 42;
  status = pool.Reallocate(kMiB / 2, kMiB, 64, &last);
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  EXPECT_EQ(last, blocks.back());
  EXPECT_EQ(last[0], 42);
  // Arrow APIs surface it as a Status.
  arrow::Int64Builder builder(&pool);
  EXPECT_TRUE(builder.Reserve(kMiB).IsOutOfMemory());
}

TEST(ArenaPool, Statistics) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  EXPECT_EQ(pool.backend_name(), "shmarrow-memfd-arena");
  uint8_t* a = nullptr;
  uint8_t* b = nullptr;
  uint8_t* c = nullptr;
  ASSERT_OK(pool.Allocate(100, 64, &a));
  ASSERT_OK(pool.Allocate(200, 64, &b));
  ASSERT_OK(pool.Allocate(300, 64, &c));
  EXPECT_EQ(pool.bytes_allocated(), 600);
  EXPECT_EQ(pool.max_memory(), 600);
  EXPECT_EQ(pool.total_bytes_allocated(), 600);
  EXPECT_EQ(pool.num_allocations(), 3);
  pool.Free(b, 200, 64);
  EXPECT_EQ(pool.bytes_allocated(), 400);
  EXPECT_EQ(pool.max_memory(), 600);
  ASSERT_OK(pool.Reallocate(300, 1300, 64, &c));  // last block: in place
  EXPECT_EQ(pool.bytes_allocated(), 1400);
  EXPECT_EQ(pool.max_memory(), 1400);
  EXPECT_EQ(pool.total_bytes_allocated(), 1600);
  EXPECT_EQ(pool.num_allocations(), 4);  // growing counts, as in Arrow's pools
  pool.Free(a, 100, 64);
  pool.Free(c, 1300, 64);
  EXPECT_EQ(pool.bytes_allocated(), 0);
  EXPECT_EQ(pool.max_memory(), 1400);
  // Zero-size allocations are not counted as bytes.
  uint8_t* z = nullptr;
  ASSERT_OK(pool.Allocate(0, 64, &z));
  EXPECT_EQ(pool.bytes_allocated(), 0);
  pool.Free(z, 0, 64);
}

TEST(ArenaPool, AfterSealAllocationFailsWithStatus) {
  auto arena = MakeArena();
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  uint8_t* p = nullptr;
  ASSERT_OK(pool.Allocate(100, 64, &p));
  p[0] = 7;
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, arena->SealAt(arena->front()));
  uint8_t* q = nullptr;
  EXPECT_ERROR_CONTAINS(pool.Allocate(10, 64, &q), "sealed");
  uint8_t* grown = p;
  EXPECT_FALSE(pool.Reallocate(100, 200, 64, &grown).ok());
  EXPECT_EQ(grown, p);
  EXPECT_EQ(p[0], 7);
  pool.Free(p, 100, 64);  // harmless after sealing
  EXPECT_EQ(pool.bytes_allocated(), 0);
}

TEST(ArenaPool, ConcurrentAllocationsDoNotOverlap) {
  auto arena = MakeArena(64 * kMiB);
  ASSERT_NE(arena, nullptr);
  ArenaPool pool(arena.get());
  constexpr int kThreads = 4;
  constexpr int kPerThread = 500;
  std::vector<std::vector<std::pair<uint8_t*, int64_t>>> blocks(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const int64_t size = 1 + (i * 37 + t) % 3000;
        uint8_t* p = nullptr;
        if (!pool.Allocate(size, 64, &p).ok()) return;
        std::memset(p, t + 1, static_cast<size_t>(size));
        blocks[t].emplace_back(p, size);
      }
    });
  }
  for (auto& thread : threads) thread.join();
  std::vector<std::pair<uint8_t*, int64_t>> all;
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(blocks[t].size(), static_cast<size_t>(kPerThread));
    for (const auto& [p, size] : blocks[t]) {
      for (int64_t i = 0; i < size; ++i) ASSERT_EQ(p[i], t + 1);  // nobody else wrote here
      all.emplace_back(p, size);
    }
  }
  std::sort(all.begin(), all.end());
  for (size_t i = 1; i < all.size(); ++i) {
    ASSERT_LE(all[i - 1].first + all[i - 1].second, all[i].first);
  }
  EXPECT_EQ(pool.num_allocations(), kThreads * kPerThread);
}

}  // namespace
}  // namespace shmarrow::internal
