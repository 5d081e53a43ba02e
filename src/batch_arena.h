// One heap block for the small objects a received batch is made of (its arrays' ArrayData, its
// buffers), allocated with std::allocate_shared instead of a malloc each, which is also the
// batch's lease: when the last of them is gone, the block tells the producer the batch is
// released (one release hook for all of them, with no reference of their own to hold) and is
// freed.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <new>

namespace shmarrow::internal {

class Channel;

/// Whom a batch's lease tells of its release, and what it keeps (what the batch's buffers point
/// into) until then: the same for every batch of a ring, so that a batch holds one reference.
struct LeaseTarget {
  std::shared_ptr<Channel> channel;  // none: nobody to tell
  std::shared_ptr<const void> memory;
};

/// A bump allocator over one block. Every object allocated through it (in the block, or on the
/// heap once the block is full) holds a reference, as does the handle Create returns; the last
/// reference frees the block. Allocation is for one thread (the one building the batch) and
/// counts without atomics; the objects may die on any thread.
class alignas(alignof(std::max_align_t)) BatchArena {  // the block follows it, aligned alike
 public:
  struct Drop {
    // The handle's reference and the objects' counted in one go: refs_ then holds one per
    // object still alive.
    void operator()(BatchArena* arena) const { arena->Unref(kHandle - arena->objects_); }
  };
  using Handle = std::unique_ptr<BatchArena, Drop>;

  /// An arena of `capacity` bytes in one allocation.
  static Handle Create(size_t capacity) {
    void* block = ::operator new(sizeof(BatchArena) + capacity);
    return Handle(new (block) BatchArena(capacity));
  }

  /// `bytes` aligned to `alignment` (at most that of std::max_align_t), from the block or, once
  /// it is full, from the heap.
  void* Allocate(size_t bytes, size_t alignment) {
    ++objects_;
    const size_t at = (used_ + alignment - 1) & ~(alignment - 1);
    wanted_ = (wanted_ + alignment - 1) & ~(alignment - 1);
    wanted_ += bytes;
    if (at + bytes <= capacity_) {
      used_ = at + bytes;
      return data() + at;
    }
    return ::operator new(bytes);
  }

  /// Returns what Allocate gave.
  void Deallocate(void* p) {
    // (As integers: the heap's blocks are other objects than this one.)
    const auto at = reinterpret_cast<uintptr_t>(p) - reinterpret_cast<uintptr_t>(data());
    if (at >= capacity_) ::operator delete(p);
    Unref(1);
  }

  /// Makes the block batch `sequence`'s lease: freed, it releases the batch to `target`, whose
  /// memory it keeps until then.
  void Lease(std::shared_ptr<const LeaseTarget> target, uint64_t sequence) {
    target_ = std::move(target);
    sequence_ = sequence;
  }

  /// The bytes asked of this arena so far, the block's or not: what a block for the next batch
  /// of the same kind needs.
  size_t wanted() const { return wanted_; }

 private:
  explicit BatchArena(size_t capacity) : capacity_(capacity) {}

  unsigned char* data() { return reinterpret_cast<unsigned char*>(this + 1); }
  const unsigned char* data() const { return reinterpret_cast<const unsigned char*>(this + 1); }

  /// Drops `count` references; the last frees the block.
  void Unref(int64_t count) {
    if (refs_.fetch_sub(count, std::memory_order_acq_rel) == count) Free();
  }
  /// Releases the batch (if leased) and frees the block (consumer_channel.cc).
  void Free();

  /// What the handle holds, less one for each object allocated: more than any arena allocates,
  /// so objects dying before the handle is dropped never bring refs_ to 0.
  static constexpr int64_t kHandle = int64_t{1} << 62;

  std::atomic<int64_t> refs_{kHandle};
  int64_t objects_ = 0;  // allocated so far
  size_t used_ = 0;
  size_t wanted_ = 0;
  const size_t capacity_;
  std::shared_ptr<const LeaseTarget> target_;  // with sequence_: the lease, if any
  uint64_t sequence_ = 0;
};

/// Allocates from a BatchArena (for std::allocate_shared).
template <typename T>
class ArenaAllocator {
 public:
  using value_type = T;
  static_assert(alignof(T) <= alignof(std::max_align_t));

  explicit ArenaAllocator(BatchArena* arena) : arena_(arena) {}
  template <typename U>
  ArenaAllocator(const ArenaAllocator<U>& other) : arena_(other.arena()) {}  // NOLINT: rebinding

  T* allocate(size_t n) { return static_cast<T*>(arena_->Allocate(n * sizeof(T), alignof(T))); }
  void deallocate(T* p, size_t) { arena_->Deallocate(p); }

  BatchArena* arena() const { return arena_; }
  template <typename U>
  bool operator==(const ArenaAllocator<U>& other) const {
    return arena_ == other.arena();
  }

 private:
  BatchArena* arena_;
};

}  // namespace shmarrow::internal
