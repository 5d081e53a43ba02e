#include "futex.h"

#include <linux/futex.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <ctime>

#include "errno_status.h"
#include "memfd.h"

namespace shmarrow::internal {

arrow::Result<bool> FutexWait(const uint32_t* word, uint32_t expected, int timeout_ms) {
  timespec timeout{timeout_ms / 1000, static_cast<long>(timeout_ms % 1000) * 1000000L};
  if (::syscall(SYS_futex, word, FUTEX_WAIT, expected, &timeout, nullptr, 0) == 0) return true;
  if (errno == ETIMEDOUT) return false;
  if (errno == EAGAIN || errno == EINTR) return true;
  return ErrnoStatus(errno, "futex wait on the queue's wake word");
}

void FutexWake(const uint32_t* word) {
  // Fails only for a bad address, which a mapped word is not.
  (void)::syscall(SYS_futex, word, FUTEX_WAKE, INT_MAX, nullptr, nullptr, 0);
}

arrow::Result<RegionWriter> RegionWriter::Create() {
  ARROW_ASSIGN_OR_RAISE(auto memfd, Memfd::Create("shmarrow-consumer-region"));
  ARROW_RETURN_NOT_OK(memfd.Resize(kRegionSize));
  ARROW_RETURN_NOT_OK(memfd.Commit(0, kRegionSize));
  ARROW_RETURN_NOT_OK(memfd.AddSeals(F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW));
  RegionWriter region;
  ARROW_ASSIGN_OR_RAISE(region.mapping_, Mapping::MapWritable(memfd.fd(), kRegionSize));
  region.fd_ = std::move(memfd).TakeFd();
  return region;
}

arrow::Result<RegionReader> RegionReader::Open(int fd) {
  ARROW_ASSIGN_OR_RAISE(int seals, GetSeals(fd));
  constexpr int kNeeded = F_SEAL_SHRINK | F_SEAL_GROW;
  if ((seals & kNeeded) != kNeeded) {
    return arrow::Status::Invalid("consumer region fd ", fd, " is not sealed against ",
                                  SealNames(kNeeded & ~seals), ": it could fault this producer");
  }
  struct stat st{};
  if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat of the consumer region fd ", fd);
  if (st.st_size != kRegionSize) {
    return arrow::Status::Invalid("consumer region fd ", fd, " is ", st.st_size,
                                  " bytes, expected ", kRegionSize);
  }
  RegionReader region;
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapReadOnly(fd, kRegionSize));
  region.mapping_ = std::make_shared<const Mapping>(std::move(mapping));
  return region;
}

}  // namespace shmarrow::internal
