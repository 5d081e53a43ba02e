// Heap blocks kept for reuse instead of freed, so that the objects made for every batch (the
// producer's record of a published batch and its queue entries, a consumer's lease) cost no
// malloc once the stream runs.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <new>
#include <utility>
#include <vector>

namespace shmarrow::internal {

/// Caches freed blocks of up to kSizes distinct sizes (the first sizes asked for), at most
/// `max_per_size` of each in the shared bins, and as many (up to kFrontDepth) in each thread's
/// front; other sizes go straight to operator new/delete. Thread-safe: a batch may be released on
/// any thread. A block given back on the thread that takes the next one (the publishing thread's
/// records, a consumer's leases) goes through that thread's front, without the lock. Blocks still
/// out when the cache is destroyed may come back later: its state lives until the last of them has
/// (RecyclingAllocator relies on it); a thread's front returns its blocks when the thread moves
/// on to other caches, or exits.
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
      if (void* block = Front::Take(this, size)) return block;
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
      // A block kept in a front stays out (out_ counts it) until the front returns it.
      if (!retired_.load(std::memory_order_relaxed) && Front::Give(this, block, size)) return;
      GiveToBins(block, size);
    }

    /// The owning BlockCache is going: frees the cached blocks, and the state too if no block is
    /// out.
    void Retire() {
      Front::Return(this);  // this thread's; other threads' come back when they move on or exit
      std::array<std::vector<void*>, kSizes> cached;
      bool last = false;
      {
        std::lock_guard lock(mutex_);
        retired_.store(true, std::memory_order_relaxed);
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
    static constexpr size_t kFrontDepth = 8;
    struct Bin {
      size_t size = 0;
      std::vector<void*> free;
    };
    ~State() = default;

    void GiveToBins(void* block, size_t size) {
      bool last = false;
      {
        std::lock_guard lock(mutex_);
        --out_;
        if (!retired_.load(std::memory_order_relaxed)) {
          if (Bin* bin = BinFor(size); bin != nullptr && bin->free.size() < max_per_size_) {
            bin->free.push_back(block);  // capacity reserved when the bin was made
            return;
          }
        }
        last = retired_.load(std::memory_order_relaxed) && out_ == 0;
      }
      ::operator delete(block);
      if (last) delete this;
    }

    /// A thread's blocks of the (at most kLanes) states it used last, kept without a lock.
    class Front {
     public:
      static void* Take(State* state, size_t size) {
        if (gone) return nullptr;
        Lane* lane = front.Find(state);
        if (lane == nullptr) return nullptr;
        for (Slot& slot : lane->slots) {
          if (slot.size == size && slot.count > 0) return slot.blocks[--slot.count];
        }
        return nullptr;
      }

      /// False when the front is full for `size` (or gone): the bins take the block then.
      static bool Give(State* state, void* block, size_t size) {
        if (gone) return false;
        Lane* lane = front.Find(state);
        if (lane == nullptr) lane = front.Claim(state);
        const size_t depth = std::min(kFrontDepth, state->max_per_size_);
        for (Slot& slot : lane->slots) {
          if (slot.size == 0) slot.size = size;
          if (slot.size != size) continue;
          if (slot.count >= depth) return false;
          slot.blocks[slot.count++] = block;
          return true;
        }
        return false;
      }

      /// Gives this thread's blocks of `state` back to its bins.
      static void Return(State* state) {
        if (gone) return;
        if (Lane* lane = front.Find(state)) Empty(lane);
      }

      ~Front() {
        for (Lane& lane : lanes_) Empty(&lane);
        gone = true;  // a block freed by a later thread-exit destructor goes to the bins
      }

     private:
      struct Slot {
        size_t size = 0;
        size_t count = 0;
        void* blocks[kFrontDepth];
      };
      struct Lane {
        State* state = nullptr;
        Slot slots[kSizes];
      };
      static constexpr size_t kLanes = 2;  // a producer's records and its queues' chunks

      Lane* Find(State* state) {
        for (Lane& lane : lanes_) {
          if (lane.state == state) return &lane;
        }
        return nullptr;
      }
      /// A lane for `state`: a free one, else the one used longest ago (its blocks go back).
      Lane* Claim(State* state) {
        Lane* lane = &lanes_[next_];
        next_ = (next_ + 1) % kLanes;
        Empty(lane);
        lane->state = state;
        return lane;
      }
      static void Empty(Lane* lane) {
        State* state = std::exchange(lane->state, nullptr);
        // A retired state deletes itself with the last block out: only then, after the lane's
        // last block, so nothing of it is read afterwards.
        for (Slot& slot : lane->slots) {
          for (size_t i = 0; i < slot.count; ++i) state->GiveToBins(slot.blocks[i], slot.size);
          slot = Slot{};
        }
      }

      Lane lanes_[kLanes];
      size_t next_ = 0;
    };
    static thread_local Front front;
    // Trivially destructible: readable by destructors that run after front's at thread exit.
    static thread_local bool gone;

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
    size_t out_ = 0;  // blocks handed out and not given back (those in fronts count as out)
    std::atomic<bool> retired_{false};  // written under mutex_
  };

 private:
  State* const state_;
};

inline thread_local BlockCache::State::Front BlockCache::State::front;
inline thread_local bool BlockCache::State::gone = false;

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
