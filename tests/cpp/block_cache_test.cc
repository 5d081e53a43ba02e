// BlockCache / RecyclingAllocator: freed blocks come back for the next allocation of their size
// (through the thread's front, then the shared bins), and blocks returned after every owner let
// go of the cache, or kept in a thread's front, still find it.
#include <gtest/gtest.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "block_cache.h"

namespace shmarrow::internal {
namespace {

TEST(BlockCacheTest, AFreedBlockServesTheNextRequestOfItsSize) {
  BlockCache cache(/*max_per_size=*/2);
  void* a = cache.Take(48);
  cache.Give(a, 48);
  EXPECT_EQ(cache.Take(48), a);
  void* b = cache.Take(64);
  cache.Give(b, 64);
  void* c = cache.Take(48);  // nothing cached of size 48 now: a fresh block
  EXPECT_NE(c, b);
  cache.Give(a, 48);
  cache.Give(c, 48);
  EXPECT_EQ(cache.Take(64), b);
  cache.Give(b, 64);
}

TEST(BlockCacheTest, AtMostMaxPerSizeBlocksAreKeptInTheFrontAndTheBins) {
  BlockCache cache(/*max_per_size=*/1);
  void* a = cache.Take(32);
  void* b = cache.Take(32);
  void* c = cache.Take(32);
  cache.Give(a, 32);  // this thread's front
  cache.Give(b, 32);  // the shared bins
  cache.Give(c, 32);  // over both limits: freed
  EXPECT_EQ(cache.Take(32), a);
  EXPECT_EQ(cache.Take(32), b);
  void* d = cache.Take(32);
  EXPECT_NE(d, a);
  EXPECT_NE(d, b);
  cache.Give(a, 32);
  cache.Give(b, 32);
  cache.Give(d, 32);
}

TEST(BlockCacheTest, AThreadsFrontReturnsItsBlocksWhenTheThreadExits) {
  BlockCache cache(/*max_per_size=*/4);
  void* a = cache.Take(48);
  std::thread([&] { cache.Give(a, 48); }).join();  // kept in that thread's front, then returned
  EXPECT_EQ(cache.Take(48), a);                    // from the bins
  cache.Give(a, 48);
}

TEST(BlockCacheTest, BlocksInAnotherThreadsFrontOutliveTheCache) {
  // The state lives until a thread that still keeps its blocks exits (ASan and the leak checker
  // see the state or a block never freed, or freed twice).
  auto cache = std::make_unique<BlockCache>();
  void* a = cache->Take(64);
  std::mutex mutex;
  std::condition_variable changed;
  int step = 0;
  std::thread keeper([&] {
    cache->Give(a, 64);  // into this thread's front
    std::unique_lock lock(mutex);
    step = 1;
    changed.notify_all();
    changed.wait(lock, [&] { return step == 2; });
  });  // exits: its front returns `a` to the retired state, which then deletes itself
  {
    std::unique_lock lock(mutex);
    changed.wait(lock, [&] { return step == 1; });
  }
  cache.reset();
  {
    std::lock_guard lock(mutex);
    step = 2;
  }
  changed.notify_all();
  keeper.join();
}

TEST(BlockCacheTest, SharedObjectsOutliveTheOwnerOfTheCache) {
  auto cache = std::make_shared<BlockCache>();
  auto first = std::allocate_shared<int>(RecyclingAllocator<int>(cache), 7);
  const int* where = first.get();
  first.reset();
  auto second = std::allocate_shared<int>(RecyclingAllocator<int>(cache), 8);
  EXPECT_EQ(second.get(), where);  // the same control block and object, reused
  cache.reset();                   // the allocator inside `second` keeps the cache alive
  EXPECT_EQ(*second, 8);
  second.reset();
}

TEST(BlockCacheTest, BlocksOutWhenTheCacheGoesComeBackLater) {
  // Blocks of several sizes, cached and not, returned after the cache is destroyed (ASan and the
  // leak checker see a block freed twice, or the state never freed).
  auto cache = std::make_unique<BlockCache>(/*max_per_size=*/1);
  void* cached = cache->Take(16);
  cache->Give(cached, 16);
  std::vector<std::pair<void*, size_t>> out;
  for (size_t size : {16, 16, 24, 32, 40, 48, 56}) out.emplace_back(cache->Take(size), size);
  BlockCache::State* state = cache->state();
  cache.reset();
  out.emplace_back(state->Take(16), 16);  // still served while blocks are out
  for (const auto& [block, size] : out) state->Give(block, size);
}

TEST(BlockCacheTest, ContainersReuseTheirChunks) {
  auto cache = std::make_shared<BlockCache>();
  std::deque<int64_t, RecyclingAllocator<int64_t>> queue{RecyclingAllocator<int64_t>(cache)};
  for (int round = 0; round < 3; ++round) {
    for (int64_t i = 0; i < 1000; ++i) queue.push_back(i);
    int64_t sum = 0;
    while (!queue.empty()) {
      sum += queue.front();
      queue.pop_front();
    }
    EXPECT_EQ(sum, 999 * 1000 / 2);
  }
}

}  // namespace
}  // namespace shmarrow::internal
