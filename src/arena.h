// A memfd mapped once, handed out front to back: the shared memory batches are built in.
#pragma once

#include <arrow/memory_pool.h>
#include <arrow/result.h>

#include <cstdint>
#include <mutex>
#include <string>

#include "mapping.h"
#include "memfd.h"
#include "pool_accounting.h"
#include "shmarrow/pages.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

inline constexpr int64_t kArenaAlignment = 64;

/// The memfd is sized to `capacity` up front (sparse: costs nothing until used) and mapped once, so
/// addresses never move. Memory is committed with fallocate in chunks as the front advances, so
/// exhaustion is an error from Reserve(), never a SIGBUS.
class Arena {
 public:
  [[nodiscard]] static arrow::Result<std::unique_ptr<Arena>> Create(
      const std::string& name, int64_t capacity, PagePolicy pages = PagePolicy::kAuto);

  [[nodiscard]] uint8_t* base() const { return mapping_.data(); }
  [[nodiscard]] int64_t capacity() const { return capacity_; }
  /// Offset of the first byte never handed out.
  [[nodiscard]] int64_t front() const;
  [[nodiscard]] bool Contains(const void* p, int64_t length) const {
    return mapping_.Contains(p, length);
  }
  [[nodiscard]] int64_t OffsetOf(const void* p) const {
    return static_cast<const uint8_t*>(p) - mapping_.data();
  }

  /// Hands out `size` bytes at the front, aligned to `alignment` (at least 64); returns the offset.
  [[nodiscard]] arrow::Result<int64_t> Reserve(int64_t size, int64_t alignment = kArenaAlignment);
  /// Grows or shrinks the block at `offset` in place when it is the last one handed out.
  [[nodiscard]] bool ResizeLastInPlace(int64_t offset, int64_t old_size, int64_t new_size);
  /// Gives a block back when it is the last one handed out (builders' temporaries); else no-op.
  void ReleaseIfLast(int64_t offset, int64_t size);

  /// Ends writing: truncates the file to `size`, drops the writable mapping (pointers stay valid,
  /// now read-only), applies the immutable seals and returns the fd. The arena refuses Reserve after.
  [[nodiscard]] arrow::Result<UniqueFd> SealAt(int64_t size);
  [[nodiscard]] bool sealed() const { return sealed_; }

 private:
  Arena(Memfd memfd, Mapping mapping, int64_t capacity, PagePolicy pages)
      : memfd_(std::move(memfd)),
        mapping_(std::move(mapping)),
        capacity_(capacity),
        pages_(pages) {}
  arrow::Status CommitUpTo(int64_t end);

  // Member order: the mapping goes before the fd it maps is closed.
  Memfd memfd_;
  Mapping mapping_;
  const int64_t capacity_;
  const PagePolicy pages_;
  mutable std::mutex mutex_;
  int64_t front_ = 0;
  int64_t committed_ = 0;
  int64_t commit_step_ = 4096;  // what the next commit rounds up to (see CommitUpTo)
  bool sealed_ = false;
};

/// arrow::MemoryPool over an Arena: every buffer a builder allocates from it lies in the memfd.
class ArenaPool final : public AccountingPool {
 public:
  explicit ArenaPool(Arena* arena) : arena_(arena) {}

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override;
  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override;
  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override;

  std::string backend_name() const override { return "shmarrow-memfd-arena"; }

 private:
  Arena* arena_;
};

}  // namespace shmarrow::internal
