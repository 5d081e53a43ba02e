// An anonymous shared-memory file (memfd) that can be sized, committed and sealed.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>
#include <fcntl.h>

#include <cstdint>
#include <string>

#include "shmarrow/pages.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

/// Seals a consumer requires before it maps a memfd it did not create: the file can neither shrink
/// (no SIGBUS) nor grow nor change, and the seals themselves are final.
inline constexpr int kImmutableSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
/// Seals of a ring's memfd: its size is fixed and final, and nobody can map it writable or write
/// through an fd any more, while the producer's own writable mapping (made before) keeps working.
inline constexpr int kRingSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE;

class Memfd {
 public:
  /// memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL), falling back to no
  /// MFD_NOEXEC_SEAL on kernels older than 6.3 (which reject it with EINVAL); MFD_HUGETLB too
  /// for PagePolicy::kHugetlb (its sizes and offsets are then whole huge pages).
  [[nodiscard]] static arrow::Result<Memfd> Create(const std::string& name,
                                                   PagePolicy pages = PagePolicy::kOff);

  Memfd(Memfd&&) noexcept = default;
  Memfd& operator=(Memfd&&) noexcept = default;

  [[nodiscard]] int fd() const { return fd_.get(); }
  [[nodiscard]] UniqueFd TakeFd() && { return std::move(fd_); }

  /// ftruncate: sets the file size (sparse; no memory is used until committed or touched).
  [[nodiscard]] arrow::Status Resize(int64_t size);
  /// fallocate: backs [offset, offset+length) with memory now, so running out of memory is an
  /// error here instead of a SIGBUS at the first write through a mapping.
  [[nodiscard]] arrow::Status Commit(int64_t offset, int64_t length);
  [[nodiscard]] arrow::Status AddSeals(int seals);

 private:
  Memfd(UniqueFd fd, bool hugetlb) : fd_(std::move(fd)), hugetlb_(hugetlb) {}
  UniqueFd fd_;
  bool hugetlb_ = false;
};

/// F_GET_SEALS of any fd; EINVAL (not a memfd/shmem file) becomes an error naming the fd.
[[nodiscard]] arrow::Result<int> GetSeals(int fd);
/// Human-readable list of the seals in `mask`, e.g. "F_SEAL_SHRINK|F_SEAL_WRITE".
std::string SealNames(int mask);

}  // namespace shmarrow::internal
