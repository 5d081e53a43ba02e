// The statistics every shmarrow arrow::MemoryPool reports, counted the way Arrow's own pools count
// them (arrow::internal::MemoryPoolStats): a pool derives from AccountingPool and says what it did.
#pragma once

#include <arrow/memory_pool.h>

#include <cstdint>

namespace shmarrow::internal {

/// bytes_allocated, max_memory, total_bytes_allocated and num_allocations, thread-safe. A pool
/// calls DidAllocate for each new block, DidResize when a block changes size (in place or moved),
/// DidFree when one is given back. Zero-size allocations (the pools' shared zero-size area) count
/// nothing.
class AccountingPool : public arrow::MemoryPool {
 public:
  int64_t bytes_allocated() const override { return stats_.bytes_allocated(); }
  int64_t max_memory() const override { return stats_.max_memory(); }
  int64_t total_bytes_allocated() const override { return stats_.total_bytes_allocated(); }
  int64_t num_allocations() const override { return stats_.num_allocations(); }

 protected:
  void DidAllocate(int64_t size) {
    if (size > 0) stats_.DidAllocateBytes(size);
  }
  /// Growing counts as an allocation of the difference, as in Arrow's pools.
  void DidResize(int64_t old_size, int64_t new_size) {
    if (old_size != new_size) stats_.DidReallocateBytes(old_size, new_size);
  }
  void DidFree(int64_t size) { stats_.DidFreeBytes(size); }

 private:
  arrow::internal::MemoryPoolStats stats_;
};

}  // namespace shmarrow::internal
