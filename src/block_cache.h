// Heap blocks kept for reuse instead of freed, so that the objects made for every batch (the
// producer's record of a published batch and its queue entries, a consumer's lease) cost no
// malloc once the stream runs.
#pragma once

#include <array>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

namespace shmarrow::internal {

/// Caches freed blocks of up to kSizes distinct sizes (the first sizes asked for), at most
/// `max_per_size` of each; other sizes go straight to operator new/delete. Thread-safe: a batch
/// may be released on any thread.
class BlockCache {
 public:
  explicit BlockCache(size_t max_per_size = 1024) : max_per_size_(max_per_size) {}
  ~BlockCache() {
    for (auto& bin : bins_) {
      for (void* block : bin.free) ::operator delete(block);
    }
  }
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  void* Take(size_t size) {
    {
      std::lock_guard lock(mutex_);
      if (Bin* bin = BinFor(size); bin != nullptr && !bin->free.empty()) {
        void* block = bin->free.back();
        bin->free.pop_back();
        return block;
      }
    }
    return ::operator new(size);
  }

  void Give(void* block, size_t size) {
    {
      std::lock_guard lock(mutex_);
      if (Bin* bin = BinFor(size); bin != nullptr && bin->free.size() < max_per_size_) {
        bin->free.push_back(block);  // capacity reserved when the bin was made
        return;
      }
    }
    ::operator delete(block);
  }

 private:
  static constexpr size_t kSizes = 4;
  struct Bin {
    size_t size = 0;
    std::vector<void*> free;
  };
  /// The bin of `size`, made on first use while a slot is free; nullptr when all are taken.
  Bin* BinFor(size_t size) {
    for (Bin& bin : bins_) {
      if (bin.size == size) return &bin;
      if (bin.size == 0) {
        bin.size = size;
        bin.free.reserve(max_per_size_);
        return &bin;
      }
    }
    return nullptr;
  }

  const size_t max_per_size_;
  std::mutex mutex_;
  std::array<Bin, kSizes> bins_;
};

/// A std allocator over a shared BlockCache (for std::allocate_shared and containers). The cache
/// lives as long as any allocator copy, so blocks returned late still find it.
template <typename T>
class RecyclingAllocator {
 public:
  using value_type = T;
  explicit RecyclingAllocator(std::shared_ptr<BlockCache> cache) : cache_(std::move(cache)) {}
  template <typename U>
  RecyclingAllocator(const RecyclingAllocator<U>& other) : cache_(other.cache()) {}

  T* allocate(size_t n) {
    static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "operator new's alignment");
    return static_cast<T*>(cache_->Take(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) { cache_->Give(p, n * sizeof(T)); }

  const std::shared_ptr<BlockCache>& cache() const { return cache_; }
  template <typename U>
  bool operator==(const RecyclingAllocator<U>& other) const {
    return cache_ == other.cache();
  }

 private:
  std::shared_ptr<BlockCache> cache_;
};

}  // namespace shmarrow::internal
