// Ring mode's shared memory: one memfd per producer, allocated circularly and reused as batches
// are released.
#pragma once

#include <arrow/memory_pool.h>
#include <arrow/result.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "mapping.h"
#include "memfd.h"
#include "pool_accounting.h"
#include "shmarrow/pages.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

/// Allocation is circular: blocks are handed out at the head and come back, in any order, when
/// their last reference dies; the space before the oldest live block is reused once everything
/// older than it is free. Each block starts with a 64-byte header naming its slot, so a free is
/// O(1), takes no lock (it marks the slot; the next allocation reclaims the space), and nothing is
/// allocated on the heap per block. While the blocks held are few and recent, allocation stays in
/// a warm window at the ring's start (src/ring.cc). A full ring blocks the allocating thread until space is
/// released (back-pressure) for up to `wait_ms`, or fails at once when it is 0.
class Ring {
 public:
  /// `reserved` bytes after the circular part belong to the producer (its consumers' queues).
  [[nodiscard]] static arrow::Result<std::unique_ptr<Ring>> Create(
      const std::string& name, int64_t size, int64_t max_blocks, int64_t reserved = 0,
      PagePolicy pages = PagePolicy::kAuto);
  ~Ring();

  [[nodiscard]] uint8_t* base() const { return mapping_.data(); }
  /// The whole memfd (the circular part and the reserved part).
  [[nodiscard]] int64_t size() const { return mapping_.size(); }
  /// The reserved part: [reserved(), base() + size()).
  [[nodiscard]] uint8_t* reserved() const { return base() + arena_size_; }
  [[nodiscard]] bool Contains(const void* p, int64_t length) const {
    return mapping_.Contains(p, length);
  }
  [[nodiscard]] int64_t OffsetOf(const void* p) const {
    return static_cast<const uint8_t*>(p) - mapping_.data();
  }
  /// The size of the pages the ring got (4096 or 2 MiB), measured once it was committed.
  [[nodiscard]] int64_t page_size() const { return page_size_; }
  /// An fd for consumers: opened read-only (through /proc/self/fd) where possible, and the memfd
  /// is sealed against future writes, shrinking and growing, so no consumer can write into it.
  [[nodiscard]] arrow::Result<UniqueFd> ConsumerFd() const;

  /// Makes blocked and future allocations fail (shutdown).
  void Close();

  /// Waits for space up to `wait_ms`: -1 forever, 0 not at all.
  [[nodiscard]] arrow::Result<int64_t> Allocate(int64_t size, int wait_ms);
  /// How a full ring is waited on instead of the condition variable, one slice at a time (the
  /// producer looks at its consumers' release regions, whose releases nothing else announces):
  /// called without the ring's lock, with the slice's milliseconds and whether space is there.
  using WaitHook = std::function<void(int slice_ms, const std::function<bool()>& ready)>;
  /// Before the first allocation.
  void SetWaitHook(WaitHook hook) { wait_hook_ = std::move(hook); }
  [[nodiscard]] bool ResizeInPlace(int64_t offset, int64_t old_size, int64_t new_size);
  /// Any thread, without the ring's lock: a block freed while an allocation looks is seen by that
  /// look or by its next one (a waiter on the condition variable is notified).
  void Free(int64_t offset);

  [[nodiscard]] int64_t bytes_in_use() const;
  [[nodiscard]] int64_t live_blocks() const;

 private:
  struct Block {
    int64_t start = 0;  // header offset
    int64_t end = 0;
    bool freed = false;  // set by Free (any thread, std::atomic_ref), read under the lock
  };
  Ring(Memfd memfd, Mapping mapping, int64_t arena_size, int64_t max_blocks, int64_t page_size)
      : memfd_(std::move(memfd)),
        mapping_(std::move(mapping)),
        arena_size_(arena_size),
        page_size_(page_size),
        blocks_(max_blocks) {}
  static bool IsFreed(const Block& block) {
    return std::atomic_ref<bool>(const_cast<bool&>(block.freed)).load(std::memory_order_acquire);
  }
  /// Moves the tail past the oldest blocks that were freed (under the lock).
  void Reclaim();
  /// The bytes of the blocks not freed, headers included (under the lock).
  int64_t BytesInUse() const;
  /// Where a block of `need` bytes fits now, or -1 (under the lock, after Reclaim).
  int64_t FindSpace(int64_t need) const;
  Block& oldest() { return blocks_[first_]; }
  Block& newest() { return blocks_[(first_ + count_ - 1) % blocks_.size()]; }

  Memfd memfd_;
  Mapping mapping_;
  const int64_t arena_size_;  // the circular part, from offset 0
  const int64_t page_size_;
  mutable std::mutex mutex_;
  std::condition_variable space_freed_;
  std::vector<Block> blocks_;  // circular, in allocation order
  size_t first_ = 0;
  size_t count_ = 0;  // blocks from the oldest not reclaimed to the newest, freed ones included
  // Allocations waiting on space_freed_ (no wait hook): a Free then takes the lock to notify.
  std::atomic<int> waiters_{0};
  bool closed_ = false;
  WaitHook wait_hook_;
};

/// arrow::MemoryPool over a Ring: builders write straight into ring mode's shared memory.
class RingPool final : public AccountingPool {
 public:
  /// Allocations wait up to `wait_ms` for a full ring to drain (see Ring::Allocate).
  RingPool(Ring* ring, int wait_ms) : ring_(ring), wait_ms_(wait_ms) {}

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override;
  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override;
  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override;

  std::string backend_name() const override { return "shmarrow-ring"; }

 private:
  Ring* ring_;
  const int wait_ms_;
};

/// One block of a RingPool that the producer writes itself (a batch's metadata), freed when this
/// dies: no arrow::Buffer object on the heap for it.
class RingBlock {
 public:
  RingBlock() = default;
  [[nodiscard]] static arrow::Result<RingBlock> Allocate(RingPool* pool, int64_t size);
  RingBlock(RingBlock&& other) noexcept
      : pool_(std::exchange(other.pool_, nullptr)), data_(other.data_), size_(other.size_) {}
  RingBlock& operator=(RingBlock&& other) noexcept;
  ~RingBlock() { Reset(); }

  [[nodiscard]] uint8_t* data() const { return data_; }
  [[nodiscard]] int64_t size() const { return size_; }

 private:
  RingBlock(RingPool* pool, uint8_t* data, int64_t size) : pool_(pool), data_(data), size_(size) {}
  void Reset() noexcept;

  RingPool* pool_ = nullptr;
  uint8_t* data_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace shmarrow::internal
