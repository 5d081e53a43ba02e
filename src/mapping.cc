#include "mapping.h"

#include <arrow/util/bit_util.h>
#include <sys/mman.h>
#include <unistd.h>

#include "errno_status.h"
#include "pages.h"

namespace shmarrow::internal {
namespace {
int64_t PageSize() {
  static const int64_t page = ::sysconf(_SC_PAGESIZE);
  return page;
}
int64_t RoundUpToPage(int64_t n) { return arrow::bit_util::RoundUp(n, PageSize()); }
}  // namespace

arrow::Result<Mapping> Mapping::Map(int fd, int64_t size, int prot, const char* what) {
  if (size <= 0) return arrow::Status::Invalid("cannot map fd ", fd, ": size ", size);
  // At a 2 MiB boundary (file offset 0 too), so huge pages of the file can map as huge pages in
  // this process: address space is reserved with room to spare, the file mapped over it, and
  // the spare head and tail given back.
  uint8_t* at = nullptr;
  int fixed = 0;
  if (size >= kHugePageSize) {
    const size_t reserved = static_cast<size_t>(size + kHugePageSize);
    void* space =
        ::mmap(nullptr, reserved, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (space != MAP_FAILED) {
      auto* begin = static_cast<uint8_t*>(space);
      const auto misalign = reinterpret_cast<uintptr_t>(begin) % kHugePageSize;
      at = begin + (misalign == 0 ? 0 : kHugePageSize - misalign);
      uint8_t* const end = at + RoundUpToPage(size);
      // Unchecked: trimming the ends of a mapping just made, page-aligned, cannot fail (no EINVAL,
      // and no split that could hit vm.max_map_count); at worst a spare end stays reserved.
      if (at > begin) ::munmap(begin, static_cast<size_t>(at - begin));
      if (end < begin + reserved) ::munmap(end, static_cast<size_t>(begin + reserved - end));
      fixed = MAP_FIXED;
    }
  }
  void* addr =
      ::mmap(at, static_cast<size_t>(size), prot, MAP_SHARED | MAP_NORESERVE | fixed, fd, 0);
  if (addr == MAP_FAILED) {
    const int err = errno;
    // The reservation, unchecked as above: the mmap error is the one to report.
    if (at != nullptr) ::munmap(at, static_cast<size_t>(RoundUpToPage(size)));
    // ENOMEM here is usually vm.max_map_count or the address-space limit, not RAM.
    return ErrnoStatus(err, "mmap(fd ", fd, ", ", size, " bytes, ", what, ")",
                       err == ENOMEM ? ": vm.max_map_count or RLIMIT_AS reached?" : "");
  }
  return Mapping(static_cast<uint8_t*>(addr), size);
}

arrow::Result<Mapping> Mapping::MapWritable(int fd, int64_t size) {
  return Map(fd, size, PROT_READ | PROT_WRITE, "read-write");
}

arrow::Result<Mapping> Mapping::MapReadOnly(int fd, int64_t size) {
  return Map(fd, size, PROT_READ, "read-only");
}

Mapping& Mapping::operator=(Mapping&& other) noexcept {
  if (this != &other) {
    Unmap();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

arrow::Status Mapping::RemapReadOnlyPrivate(int fd, int64_t keep) {
  const int64_t kept = RoundUpToPage(keep);
  if (kept > 0) {
    void* addr = ::mmap(data_, static_cast<size_t>(kept), PROT_READ,
                        MAP_PRIVATE | MAP_FIXED | MAP_NORESERVE, fd, 0);
    if (addr == MAP_FAILED) {
      return ErrnoStatus(errno, "mmap(MAP_FIXED read-only remap of fd ", fd, ", ", kept, " bytes)");
    }
  }
  if (kept < size_) {
    if (::munmap(data_ + kept, static_cast<size_t>(size_ - kept)) != 0) {
      return ErrnoStatus(errno, "munmap of the arena tail (", size_ - kept, " bytes)");
    }
  }
  size_ = kept;
  if (kept == 0) data_ = nullptr;
  return arrow::Status::OK();
}

void Mapping::Unmap() noexcept {
  // Unchecked: a whole mapping of ours, page-aligned, unmaps without error, and a destructor
  // could not report one.
  if (data_ != nullptr) ::munmap(data_, static_cast<size_t>(size_));
  data_ = nullptr;
  size_ = 0;
}

}  // namespace shmarrow::internal
