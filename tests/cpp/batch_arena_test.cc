// BatchArena / ArenaAllocator: a batch's objects share one block while it has room (the heap
// beyond), live on after the arena's handle is gone, and may die on any thread, in any order;
// the block, as the batch's lease, releases the batch once, when the last of them is gone.
// (Whether the block is freed exactly once is for the sanitizer builds to see.)
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "batch_arena.h"
#include "consumer_channel.h"

namespace shmarrow::internal {
namespace {

// `alive` is atomic: objects die on several threads at once.
struct Tracked {
  explicit Tracked(std::atomic<int>* alive, int64_t value) : alive(alive), value(value) {
    ++*alive;
  }
  ~Tracked() { --*alive; }
  std::atomic<int>* alive;
  int64_t value;
};

std::shared_ptr<Tracked> Make(BatchArena* arena, std::atomic<int>* alive, int64_t value) {
  return std::allocate_shared<Tracked>(ArenaAllocator<Tracked>(arena), alive, value);
}

TEST(BatchArena, ObjectsShareTheBlockWhileItHasRoom) {
  std::atomic<int> alive{0};
  auto arena = BatchArena::Create(4096);
  auto a = Make(arena.get(), &alive, 1);
  auto b = Make(arena.get(), &alive, 2);
  // Both control blocks (with their object) lie in the arena, one after the other.
  const auto distance = reinterpret_cast<uintptr_t>(b.get()) - reinterpret_cast<uintptr_t>(a.get());
  EXPECT_GT(distance, sizeof(Tracked));
  EXPECT_LT(distance, 4 * sizeof(Tracked) + 64);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.get()) % alignof(Tracked), 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.get()) % alignof(Tracked), 0u);
  EXPECT_GE(arena->wanted(), 2 * sizeof(Tracked));
  EXPECT_EQ(alive.load(), 2);
}

TEST(BatchArena, AFullBlockLeavesTheRestToTheHeapAndCountsItAsWanted) {
  std::atomic<int> alive{0};
  auto arena = BatchArena::Create(0);
  std::vector<std::shared_ptr<Tracked>> objects;
  for (int i = 0; i < 5; ++i) objects.push_back(Make(arena.get(), &alive, i));
  const size_t wanted = arena->wanted();
  EXPECT_GE(wanted, 5 * sizeof(Tracked));
  // A block of that size holds them all: each lies within it.
  auto sized = BatchArena::Create(wanted);
  std::vector<std::shared_ptr<Tracked>> inside;
  for (int i = 0; i < 5; ++i) inside.push_back(Make(sized.get(), &alive, i));
  EXPECT_EQ(sized->wanted(), wanted);
  const auto first = reinterpret_cast<uintptr_t>(inside.front().get());
  for (const auto& object : inside) {
    EXPECT_LT(reinterpret_cast<uintptr_t>(object.get()) - first, wanted);
  }
  for (int i = 0; i < 5; ++i) EXPECT_EQ(objects[i]->value, i);
  objects.clear();
  inside.clear();
  EXPECT_EQ(alive.load(), 0);
}

TEST(BatchArena, ObjectsOutliveTheHandleAndDieOnAnyThreadInAnyOrder) {
  std::atomic<int> alive{0};
  std::vector<std::shared_ptr<Tracked>> objects;
  {
    auto arena = BatchArena::Create(3 * 64);  // some in the block, some on the heap
    for (int i = 0; i < 8; ++i) objects.push_back(Make(arena.get(), &alive, i));
  }
  EXPECT_EQ(alive.load(), 8);
  for (int i = 0; i < 8; ++i) EXPECT_EQ(objects[i]->value, i);
  std::vector<std::shared_ptr<Tracked>> odd;
  for (int i = 7; i >= 0; i -= 2) odd.push_back(std::move(objects[i]));
  std::thread other([&odd] { odd.clear(); });
  objects.clear();
  other.join();
  EXPECT_EQ(alive.load(), 0);
}

/// Counts the Release messages a channel sends (no region attached: every release is one).
class CountingOutbox final : public Outbox {
 public:
  arrow::Result<bool> TrySend(std::span<const uint8_t>) override {
    ++sent;
    return true;
  }
  std::atomic<int> sent{0};
};

TEST(BatchArena, TheLastObjectGoneReleasesTheBatchOnce) {
  auto outbox = std::make_shared<CountingOutbox>();
  auto channel = std::make_shared<Channel>(outbox);
  std::atomic<int> alive{0};
  // What a ring's batches share: the channel, and the memory their buffers point into.
  auto target = std::make_shared<const LeaseTarget>(LeaseTarget{channel, std::make_shared<int>(0)});
  std::vector<std::shared_ptr<Tracked>> objects;
  {
    auto arena = BatchArena::Create(2 * 64);
    arena->Lease(target, 41);
    for (int i = 0; i < 4; ++i) objects.push_back(Make(arena.get(), &alive, i));
  }
  EXPECT_EQ(channel->released(), 0) << "objects still hold the batch";
  EXPECT_EQ(target.use_count(), 2) << "the block keeps the batch's memory";
  std::thread other([last = std::move(objects.back())]() mutable { last.reset(); });
  objects.pop_back();
  objects.clear();
  other.join();
  EXPECT_EQ(alive.load(), 0);
  EXPECT_EQ(channel->released(), 1);
  EXPECT_EQ(outbox->sent.load(), 1);
  EXPECT_EQ(target.use_count(), 1);
  // An arena whose objects all died before its handle: released when the handle goes.
  {
    auto arena = BatchArena::Create(64);
    arena->Lease(target, 42);
    Make(arena.get(), &alive, 0).reset();
    EXPECT_EQ(channel->released(), 1);
  }
  EXPECT_EQ(channel->released(), 2);
}

}  // namespace
}  // namespace shmarrow::internal
