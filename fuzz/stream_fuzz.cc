// libFuzzer target: the sealed-mode consumer path from received bytes to validated batches. The
// input is what a producer put in its memfd; it goes into a real sealed memfd, and
// SharedStream::Open (seal and size checks, read-only mapping) + OpenReader (Arrow's stream reader
// over the mapping, ValidateFull on every batch) read it to the end, as sealed_source.cc does for a
// sealed Batch. Every batch handed out is walked (row by row to a string) to touch its buffers.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>

#include "fixtures.h"
#include "shmarrow/shared_stream.h"

namespace {

constexpr size_t kMaxInput = 1 << 20;

shmarrow::UniqueFd SealedMemfd(const uint8_t* data, size_t size) {
  const int fd = ::memfd_create("stream_fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) std::abort();
  shmarrow::UniqueFd owned(fd);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) std::abort();
    done += static_cast<size_t>(n);
  }
  if (::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
    std::abort();
  }
  return owned;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > kMaxInput) return -1;
  shmarrow::SharedStreamOptions options;
  options.validation = shmarrow::Validation::kFull;
  auto stream = shmarrow::SharedStream::Open(SealedMemfd(data, size), options);
  if (!stream.ok()) return 0;
  auto reader = (*stream)->OpenReader();
  if (!reader.ok()) return 0;
  for (int i = 0; i < 1000; ++i) {
    auto batch = (*reader)->Next();
    if (!batch.ok() || *batch == nullptr) break;
    // A fully validated batch must be safe to read in full.
    (void)(*batch)->ToString();
  }
  return 0;
}
