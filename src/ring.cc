#include "ring.h"

#include <arrow/util/bit_util.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "deadline.h"
#include "errno_status.h"
#include "pages.h"
#include "pool_util.h"
#include "shmarrow/error.h"

namespace shmarrow::internal {
namespace {

constexpr int64_t kHeaderSize = 64;  // keeps the block's data 64-byte aligned
constexpr uint32_t kHeaderMagic = 0x52494E47;
// A wait hook's slice: how long a release nobody announced can go unseen.
constexpr int kWaitSliceMs = 5;
// Allocation turns back to the ring's start at this offset while the blocks still held are few
// and recent, instead of walking on through the whole ring: the headers a free reads and the
// bytes a producer writes stay in the cache (and the TLB).
constexpr int64_t kWarmWindow = int64_t{1} << 20;

struct BlockHeader {
  uint32_t magic;
  uint32_t slot;
};

alignas(64) uint8_t zero_size_area[1];

}  // namespace

arrow::Result<std::unique_ptr<Ring>> Ring::Create(const std::string& name, int64_t arena_size,
                                                  int64_t max_blocks, int64_t reserved,
                                                  PagePolicy pages) {
  if (arena_size < 4096 || max_blocks < 1 || reserved < 0) {
    return arrow::Status::Invalid("ring of ", arena_size, " bytes / ", max_blocks,
                                  " blocks is too small");
  }
  arena_size = arrow::bit_util::RoundUp(arena_size, 4096);
  const int64_t size =
      RoundUpForPages(arena_size + arrow::bit_util::RoundUp(reserved, 4096), pages);
  ARROW_ASSIGN_OR_RAISE(auto memfd, Memfd::Create(name, pages));
  ARROW_RETURN_NOT_OK(memfd.Resize(size));
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapWritable(memfd.fd(), size));
  ARROW_RETURN_NOT_OK(AdviseHugePages(mapping.data(), size, pages));
  // Commit it all now: running out of shared memory is an error here, never a SIGBUS later.
  ARROW_RETURN_NOT_OK(CommitPages(memfd, mapping.data(), 0, size, pages));
  Prefault(mapping.data(), size);
  ARROW_ASSIGN_OR_RAISE(const int64_t page_size, MappedPageSize(mapping.data()));
  // The producer's writable mapping exists; from now on nobody else can map it writable or write
  // through an fd, and its size is fixed.
  ARROW_RETURN_NOT_OK(memfd.AddSeals(kRingSeals));
  return std::unique_ptr<Ring>(
      new Ring(std::move(memfd), std::move(mapping), arena_size, max_blocks, page_size));
}

Ring::~Ring() = default;

arrow::Result<UniqueFd> Ring::ConsumerFd() const {
  const std::string path = "/proc/self/fd/" + std::to_string(memfd_.fd());
  UniqueFd read_only(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (read_only) return read_only;
  // No /proc: the seals alone keep consumers from writing.
  UniqueFd copy(::fcntl(memfd_.fd(), F_DUPFD_CLOEXEC, 0));
  if (!copy) return ErrnoStatus(errno, "dup of ring memfd fd ", memfd_.fd());
  return copy;
}

void Ring::Close() {
  std::lock_guard lock(mutex_);
  closed_ = true;
  space_freed_.notify_all();
}

void Ring::Reclaim() {
  while (count_ > 0 && IsFreed(oldest())) {
    first_ = (first_ + 1) % blocks_.size();
    --count_;
  }
}

int64_t Ring::FindSpace(int64_t need) const {
  const int64_t size = arena_size_;
  if (count_ == 0) return need <= size ? 0 : -1;
  if (count_ == blocks_.size()) return -1;
  const int64_t tail = blocks_[first_].start;
  const int64_t head = blocks_[(first_ + count_ - 1) % blocks_.size()].end;
  if (head > tail) {  // live blocks in [tail, head)
    // Past the warm window, turn back early only if the held blocks span at most half of it:
    // the start then has room for half a window even if the oldest of them is held for long.
    const bool turn_back = head + need > kWarmWindow && need <= tail &&
                           head - tail <= kWarmWindow / 2 && tail >= kWarmWindow / 2;
    if (head + need <= size && !turn_back) return head;
    return need <= tail ? 0 : -1;  // wrap; [head, size) waits until the tail passes it
  }
  return head + need <= tail ? head : -1;  // wrapped: live in [tail, size) and [0, head)
}

arrow::Result<int64_t> Ring::Allocate(int64_t size, int wait_ms) {
  const int64_t need = kHeaderSize + arrow::bit_util::RoundUp(size, 64);
  if (need > arena_size_) {
    return MakeError(arrow::StatusCode::OutOfMemory, ErrorCode::kLimit, "allocation of ", size,
                     " bytes can never fit the ", arena_size_, "-byte ring (raise the ring size)");
  }
  std::unique_lock lock(mutex_);
  auto full = [&] {
    return MakeError(
        arrow::StatusCode::OutOfMemory, ErrorCode::kTimeout, "ring full: ", size,
        " bytes requested, ", BytesInUse(), " of ", arena_size_, " bytes held by ", count_,
        " blocks after waiting ", wait_ms,
        " ms (consumers hold batches: raise the ring size, release batches, or use lossy)");
  };
  auto closed = [] {
    return MakeError(arrow::StatusCode::Cancelled, ErrorCode::kClosed, "ring closed");
  };
  if (closed_) return closed();
  Reclaim();
  int64_t at = FindSpace(need);
  if (at < 0) {
    if (wait_ms == 0) return full();
    // The clock is read only here, when the ring is full: most allocations find space at once.
    // Wait returns with space (`at` >= 0), or at the deadline, or when the ring closes.
    const Deadline deadline(wait_ms);
    if (wait_hook_) {
      auto ready = [&] {
        std::lock_guard relock(mutex_);
        Reclaim();
        return closed_ || FindSpace(need) >= 0;
      };
      while (!closed_ && (Reclaim(), at = FindSpace(need)) < 0 && !deadline.expired()) {
        lock.unlock();
        wait_hook_(deadline.Slice(kWaitSliceMs), ready);
        lock.lock();
      }
    } else {
      // Announced before the looks (both sequentially consistent, as a Free's mark and its look
      // at the waiters): a Free either is seen by a look or sees the waiter and notifies it.
      waiters_.fetch_add(1);
      std::atomic_thread_fence(std::memory_order_seq_cst);
      deadline.Wait(space_freed_, lock,
                    [&] { return closed_ || (Reclaim(), at = FindSpace(need)) >= 0; });
      waiters_.fetch_sub(1);
    }
    if (at < 0) return closed_ ? closed() : full();
  }
  const size_t slot = (first_ + count_) % blocks_.size();
  blocks_[slot] = Block{at, at + need, false};
  ++count_;
  const BlockHeader header{kHeaderMagic, static_cast<uint32_t>(slot)};
  std::memcpy(base() + at, &header, sizeof header);
  return at + kHeaderSize;
}

bool Ring::ResizeInPlace(int64_t offset, int64_t old_size, int64_t new_size) {
  std::lock_guard lock(mutex_);
  Reclaim();
  if (count_ == 0) return false;
  Block& last = newest();
  if (last.start + kHeaderSize != offset) return new_size <= old_size;  // shrink keeps the block
  const int64_t end = offset + arrow::bit_util::RoundUp(new_size, 64);
  const bool wrapped = count_ > 1 && last.start < oldest().start;
  const int64_t limit = wrapped ? oldest().start : arena_size_;
  if (end > limit) return false;
  last.end = end;
  return true;
}

void Ring::Free(int64_t offset) {
  BlockHeader header;
  std::memcpy(&header, base() + offset - kHeaderSize, sizeof header);
  if (header.magic != kHeaderMagic || header.slot >= blocks_.size()) return;  // not ours
  // The slot is live (only a reclaimed one is reused), so no allocation writes it meanwhile.
  std::atomic_ref<bool>(blocks_[header.slot].freed).store(true, std::memory_order_release);
  if (wait_hook_) return;  // allocations wait in slices, looking again themselves
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (waiters_.load(std::memory_order_relaxed) > 0) {
    std::lock_guard lock(mutex_);  // held by a waiter until it sleeps
    space_freed_.notify_all();
  }
}

int64_t Ring::BytesInUse() const {
  int64_t bytes = 0;
  for (size_t i = 0; i < count_; ++i) {
    const Block& block = blocks_[(first_ + i) % blocks_.size()];
    if (!IsFreed(block)) bytes += block.end - block.start;
  }
  return bytes;
}

int64_t Ring::bytes_in_use() const {
  std::lock_guard lock(mutex_);
  return BytesInUse();
}

int64_t Ring::live_blocks() const {
  std::lock_guard lock(mutex_);
  size_t freed_oldest = 0;  // reclaimed by the next allocation
  while (freed_oldest < count_ && IsFreed(blocks_[(first_ + freed_oldest) % blocks_.size()])) {
    ++freed_oldest;
  }
  return static_cast<int64_t>(count_ - freed_oldest);
}

arrow::Status RingPool::Allocate(int64_t size, int64_t /*alignment: always 64*/, uint8_t** out) {
  if (size == 0) {
    *out = zero_size_area;
    return arrow::Status::OK();
  }
  ARROW_ASSIGN_OR_RAISE(int64_t offset, ring_->Allocate(size, wait_ms_));
  *out = ring_->base() + offset;
  DidAllocate(size);
  return arrow::Status::OK();
}

arrow::Status RingPool::Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                                   uint8_t** ptr) {
  if (old_size == 0 || *ptr == zero_size_area) return Allocate(new_size, alignment, ptr);
  if (ring_->ResizeInPlace(ring_->OffsetOf(*ptr), old_size, new_size)) {
    DidResize(old_size, new_size);
    return arrow::Status::OK();
  }
  return MoveToNewBlock(this, old_size, new_size, alignment, ptr);
}

void RingPool::Free(uint8_t* buffer, int64_t size, int64_t /*alignment*/) {
  if (size == 0 || buffer == zero_size_area) return;
  ring_->Free(ring_->OffsetOf(buffer));
  DidFree(size);
}

arrow::Result<RingBlock> RingBlock::Allocate(RingPool* pool, int64_t size) {
  uint8_t* data = nullptr;
  ARROW_RETURN_NOT_OK(pool->Allocate(size, 64, &data));
  return RingBlock(pool, data, size);
}

RingBlock& RingBlock::operator=(RingBlock&& other) noexcept {
  if (this != &other) {
    Reset();
    pool_ = std::exchange(other.pool_, nullptr);
    data_ = other.data_;
    size_ = other.size_;
  }
  return *this;
}

void RingBlock::Reset() noexcept {
  if (pool_ != nullptr) pool_->Free(data_, size_, 64);
  pool_ = nullptr;
}

}  // namespace shmarrow::internal
