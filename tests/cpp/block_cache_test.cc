// BlockCache / RecyclingAllocator: freed blocks come back for the next allocation of their size,
// and blocks returned after every owner let go of the cache still find it.
#include <gtest/gtest.h>

#include <deque>
#include <memory>
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

TEST(BlockCacheTest, AtMostMaxPerSizeBlocksAreKept) {
  BlockCache cache(/*max_per_size=*/1);
  void* a = cache.Take(32);
  void* b = cache.Take(32);
  cache.Give(a, 32);
  cache.Give(b, 32);  // over the limit: freed
  EXPECT_EQ(cache.Take(32), a);
  void* c = cache.Take(32);
  EXPECT_NE(c, a);
  cache.Give(a, 32);
  cache.Give(c, 32);
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
