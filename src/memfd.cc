#include "memfd.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "errno_status.h"

#ifndef MFD_NOEXEC_SEAL
#define MFD_NOEXEC_SEAL 0x0008U  // Linux 6.3; older headers lack the name
#endif

namespace shmarrow::internal {

arrow::Result<Memfd> Memfd::Create(const std::string& name, PagePolicy pages) {
  const bool hugetlb = pages == PagePolicy::kHugetlb;
  const unsigned base_flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugetlb ? MFD_HUGETLB : 0U);
  int fd = ::memfd_create(name.c_str(), base_flags | MFD_NOEXEC_SEAL);
  if (fd < 0 && errno == EINVAL) fd = ::memfd_create(name.c_str(), base_flags);
  if (fd < 0) {
    return ErrnoStatus(errno, "memfd_create('", name, "'", hugetlb ? ", MFD_HUGETLB" : "", ")");
  }
  return Memfd(UniqueFd(fd), hugetlb);
}

arrow::Status Memfd::Resize(int64_t size) {
  if (RetryOnEintr([&] { return ::ftruncate(fd_.get(), size); }) != 0) {
    return ErrnoStatus(errno, "ftruncate(memfd fd ", fd_.get(), ", ", size, ")");
  }
  return arrow::Status::OK();
}

arrow::Status Memfd::Commit(int64_t offset, int64_t length) {
  if (RetryOnEintr([&] { return ::fallocate(fd_.get(), 0, offset, length); }) != 0) {
    if (hugetlb_ && (errno == ENOSPC || errno == ENOMEM)) {
      return ErrnoStatus(errno, "fallocate(hugetlb memfd fd ", fd_.get(), ", offset ", offset,
                         ", length ", length, "): too few free huge pages (HugePages_Free in ",
                         "/proc/meminfo): reserve more with /proc/sys/vm/nr_hugepages, or choose ",
                         "the page policy auto");
    }
    return ErrnoStatus(errno, "fallocate(memfd fd ", fd_.get(), ", offset ", offset, ", length ",
                       length, "): shared memory exhausted?");
  }
  return arrow::Status::OK();
}

arrow::Status Memfd::AddSeals(int seals) {
  // F_SEAL_WRITE fails with EBUSY while any page of the file has more references than the
  // page cache and its mappings account for. The kernel (mm/memfd.c memfd_wait_for_pins) drains
  // the per-CPU LRU caches and waits about 150 ms for such references to go before it gives up,
  // but some are taken by the kernel itself for longer: page migration and compaction, reclaim
  // writing the page to swap, khugepaged collapsing it. None of them writes the content, and
  // each ends by itself, so a few more tries (each waiting those 150 ms) seal reliably; a
  // writable mapping or a real pin (O_DIRECT, io_uring) fails all tries and is reported.
  constexpr int kTries = 5;
  for (int attempt = 1;; ++attempt) {
    if (::fcntl(fd_.get(), F_ADD_SEALS, seals) == 0) return arrow::Status::OK();
    if (errno != EBUSY || attempt == kTries) {
      return ErrnoStatus(errno, "fcntl(fd ", fd_.get(), ", F_ADD_SEALS, ", SealNames(seals), ")",
                         errno == EBUSY ? " after " + std::to_string(kTries) + " tries" : "");
    }
  }
}

arrow::Result<int> GetSeals(int fd) {
  const int seals = ::fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    if (errno == EINVAL) {
      return arrow::Status::Invalid("fd ", fd, " is not a memfd (F_GET_SEALS unsupported)");
    }
    return ErrnoStatus(errno, "fcntl(fd ", fd, ", F_GET_SEALS)");
  }
  return seals;
}

std::string SealNames(int mask) {
  static constexpr struct {
    int bit;
    const char* name;
  } kNames[] = {{F_SEAL_SEAL, "F_SEAL_SEAL"},
                {F_SEAL_SHRINK, "F_SEAL_SHRINK"},
                {F_SEAL_GROW, "F_SEAL_GROW"},
                {F_SEAL_WRITE, "F_SEAL_WRITE"},
                {F_SEAL_FUTURE_WRITE, "F_SEAL_FUTURE_WRITE"}};
  std::string out;
  for (const auto& seal : kNames) {
    if (mask & seal.bit) {
      if (!out.empty()) out += '|';
      out += seal.name;
    }
  }
  return out.empty() ? "none" : out;
}

}  // namespace shmarrow::internal
