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
/// may be released on any thread. Blocks still out when the cache is destroyed may come back
/// later: its state lives until the last of them has (RecyclingAllocator relies on it).
class BlockCache {
 public:
  class State;

  explicit BlockCache(size_t max_per_size = 1024) : state_(new State(max_per_size)) {}
  ~BlockCache() { state_->Retire(); }
  BlockCache(const BlockCache&) = delete;
  BlockCache& operator=(const BlockCache&) = delete;

  void* Take(size_t size) { return state_->Take(size); }
  void Give(void* block, size_t size) { state_->Give(block, size); }

  State* state() const { return state_; }

  /// The cache proper. It deletes itself once retired (its BlockCache gone) and every block it
  /// handed out came back, so a block may be returned at any time.
  class State {
   public:
    explicit State(size_t max_per_size) : max_per_size_(max_per_size) {}
    State(const State&) = delete;
    State& operator=(const State&) = delete;

    void* Take(size_t size) {
      {
        std::lock_guard lock(mutex_);
        if (Bin* bin = BinFor(size); bin != nullptr && !bin->free.empty()) {
          void* block = bin->free.back();
          bin->free.pop_back();
          ++out_;
          return block;
        }
      }
      void* block = ::operator new(size);
      std::lock_guard lock(mutex_);
      ++out_;
      return block;
    }

    void Give(void* block, size_t size) {
      bool last = false;
      {
        std::lock_guard lock(mutex_);
        --out_;
        if (!retired_) {
          if (Bin* bin = BinFor(size); bin != nullptr && bin->free.size() < max_per_size_) {
            bin->free.push_back(block);  // capacity reserved when the bin was made
            return;
          }
        }
        last = retired_ && out_ == 0;
      }
      ::operator delete(block);
      if (last) delete this;
    }

    /// The owning BlockCache is going: frees the cached blocks, and the state too if no block is
    /// out.
    void Retire() {
      std::array<std::vector<void*>, kSizes> cached;
      bool last = false;
      {
        std::lock_guard lock(mutex_);
        retired_ = true;
        for (size_t i = 0; i < kSizes; ++i) cached[i].swap(bins_[i].free);
        last = out_ == 0;
      }
      for (const auto& blocks : cached) {
        for (void* block : blocks) ::operator delete(block);
      }
      if (last) delete this;
    }

   private:
    static constexpr size_t kSizes = 4;
    struct Bin {
      size_t size = 0;
      std::vector<void*> free;
    };
    ~State() = default;

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
    size_t out_ = 0;  // blocks handed out and not given back
    bool retired_ = false;
  };

 private:
  State* const state_;
};

/// A std allocator over a BlockCache (for std::allocate_shared and containers). It holds the
/// cache's state by plain pointer: copies (std::allocate_shared makes several per object) cost
/// nothing, where a shared_ptr's would each touch its count. Blocks may come back after the
/// BlockCache is gone (the state waits for them); an allocator must not allocate after that, so
/// containers using one do not outlive the cache's owner, or always hold a block (std::deque
/// does).
template <typename T>
class RecyclingAllocator {
 public:
  using value_type = T;
  explicit RecyclingAllocator(const std::shared_ptr<BlockCache>& cache) : state_(cache->state()) {}
  template <typename U>
  RecyclingAllocator(const RecyclingAllocator<U>& other) : state_(other.state()) {}

  T* allocate(size_t n) {
    static_assert(alignof(T) <= __STDCPP_DEFAULT_NEW_ALIGNMENT__, "operator new's alignment");
    return static_cast<T*>(state_->Take(n * sizeof(T)));
  }
  void deallocate(T* p, size_t n) { state_->Give(p, n * sizeof(T)); }

  BlockCache::State* state() const { return state_; }
  template <typename U>
  bool operator==(const RecyclingAllocator<U>& other) const {
    return state_ == other.state();
  }

 private:
  BlockCache::State* state_;
};

}  // namespace shmarrow::internal
