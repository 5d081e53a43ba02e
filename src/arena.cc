#include "arena.h"

#include <arrow/util/bit_util.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "errno_status.h"
#include "pages.h"
#include "pool_util.h"

namespace shmarrow::internal {
namespace {
constexpr int64_t kCommitChunk = int64_t{2} << 20;

// Zero-byte allocations get this address, as Arrow's own pools do: never in the arena, never freed.
alignas(kArenaAlignment) uint8_t zero_size_area[1];
}  // namespace

arrow::Result<std::unique_ptr<Arena>> Arena::Create(const std::string& name, int64_t capacity,
                                                    PagePolicy pages) {
  if (capacity <= 0)
    return arrow::Status::Invalid("arena capacity must be positive, got ", capacity);
  capacity = arrow::bit_util::RoundUp(capacity, kCommitChunk);
  ARROW_ASSIGN_OR_RAISE(auto memfd, Memfd::Create(name, pages));
  ARROW_RETURN_NOT_OK(memfd.Resize(capacity));
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapWritable(memfd.fd(), capacity));
  // A fork() by any thread would copy this writable shared mapping into the child, and while
  // the child lives (until it execs or exits) F_SEAL_WRITE fails with EBUSY (the kernel's
  // mapping_deny_writable). The child never needs the arena.
  if (::madvise(mapping.data(), static_cast<size_t>(capacity), MADV_DONTFORK) != 0) {
    return ErrnoStatus(errno, "madvise(MADV_DONTFORK) on the arena of memfd fd ", memfd.fd());
  }
  // Huge pages from the second 2 MiB on: a batch that fits the first would otherwise take (and
  // at sealing split and give back) a whole huge page, which made small sealed batches slower.
  ARROW_RETURN_NOT_OK(
      AdviseHugePages(mapping.data() + kHugePageSize, capacity - kHugePageSize, pages));
  return std::unique_ptr<Arena>(new Arena(std::move(memfd), std::move(mapping), capacity, pages));
}

int64_t Arena::front() const {
  std::lock_guard lock(mutex_);
  return front_;
}

arrow::Status Arena::CommitUpTo(int64_t end) {
  if (end <= committed_) return arrow::Status::OK();
  // Commits round up to a step that starts at one page and doubles with each commit, up to
  // kCommitChunk: few fallocate calls for a builder that grows a block bit by bit, and little
  // committed past the end (allocated, then freed when the sealed file is trimmed) where a
  // large block is followed by a small one, as a batch's Message follows its body. hugetlb
  // memory commits whole huge pages.
  const int64_t step = pages_ == PagePolicy::kHugetlb ? kCommitChunk : commit_step_;
  const int64_t new_committed = std::min(arrow::bit_util::RoundUp(end, step), capacity_);
  ARROW_RETURN_NOT_OK(
      CommitPages(memfd_, mapping_.data(), committed_, new_committed - committed_, pages_));
  committed_ = new_committed;
  commit_step_ = std::min(commit_step_ * 2, kCommitChunk);
  return arrow::Status::OK();
}

arrow::Result<int64_t> Arena::Reserve(int64_t size, int64_t alignment) {
  if (size < 0) return arrow::Status::Invalid("negative arena reservation: ", size);
  alignment = std::max(alignment, kArenaAlignment);
  if (alignment & (alignment - 1)) {
    return arrow::Status::Invalid("arena alignment ", alignment, " is not a power of two");
  }
  std::lock_guard lock(mutex_);
  if (sealed_) return arrow::Status::Invalid("arena is sealed: no allocation after Finish()");
  const int64_t offset = arrow::bit_util::RoundUp(front_, alignment);
  if (size > capacity_ - offset) {
    return arrow::Status::OutOfMemory("shared-memory arena full: ", size,
                                      " bytes requested at offset ", offset, ", capacity ",
                                      capacity_, " (raise the writer's capacity option)");
  }
  ARROW_RETURN_NOT_OK(CommitUpTo(offset + size));
  front_ = offset + size;
  return offset;
}

bool Arena::ResizeLastInPlace(int64_t offset, int64_t old_size, int64_t new_size) {
  std::lock_guard lock(mutex_);
  if (sealed_) return false;
  if (new_size <= old_size && offset + old_size != front_) return true;  // shrink: keep the block
  if (offset + old_size != front_ || new_size > capacity_ - offset) return false;
  if (!CommitUpTo(offset + new_size).ok()) return false;
  front_ = offset + new_size;
  return true;
}

void Arena::ReleaseIfLast(int64_t offset, int64_t size) {
  std::lock_guard lock(mutex_);
  if (!sealed_ && offset + size == front_) front_ = offset;
}

arrow::Result<UniqueFd> Arena::SealAt(int64_t size) {
  std::lock_guard lock(mutex_);
  if (sealed_) return arrow::Status::Invalid("arena already sealed");
  if (size < front_ || size > capacity_) {
    return arrow::Status::Invalid("cannot seal arena at ", size, ": front is at ", front_);
  }
  sealed_ = true;
  // A file may end on a huge page (SealedFileSize); the stream inside still ends at `size`.
  const int64_t file_size = SealedFileSize(size, pages_);
  ARROW_RETURN_NOT_OK(mapping_.RemapReadOnlyPrivate(memfd_.fd(), file_size));
  ARROW_RETURN_NOT_OK(memfd_.Resize(file_size));
  ARROW_RETURN_NOT_OK(memfd_.AddSeals(kImmutableSeals));
  // The producer keeps reading its batches through the private mapping; the sealed fd goes out.
  return std::move(memfd_).TakeFd();
}

arrow::Status ArenaPool::Allocate(int64_t size, int64_t alignment, uint8_t** out) {
  if (size == 0) {
    *out = zero_size_area;
    return arrow::Status::OK();
  }
  ARROW_ASSIGN_OR_RAISE(int64_t offset, arena_->Reserve(size, alignment));
  *out = arena_->base() + offset;
  DidAllocate(size);
  return arrow::Status::OK();
}

arrow::Status ArenaPool::Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                                    uint8_t** ptr) {
  if (old_size == 0 || *ptr == zero_size_area) return Allocate(new_size, alignment, ptr);
  if (new_size == 0) {
    Free(*ptr, old_size, alignment);
    *ptr = zero_size_area;
    return arrow::Status::OK();
  }
  if (arena_->ResizeLastInPlace(arena_->OffsetOf(*ptr), old_size, new_size)) {
    DidResize(old_size, new_size);
    return arrow::Status::OK();
  }
  return MoveToNewBlock(this, old_size, new_size, alignment, ptr);
}

void ArenaPool::Free(uint8_t* buffer, int64_t size, int64_t /*alignment*/) {
  if (size == 0 || buffer == zero_size_area) return;
  arena_->ReleaseIfLast(arena_->OffsetOf(buffer), size);
  DidFree(size);
}

}  // namespace shmarrow::internal
