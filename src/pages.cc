#include "pages.h"

#include <arrow/util/bit_util.h>
#include <sys/mman.h>

#include <charconv>
#include <cstring>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "errno_status.h"
#include "mapping.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack the name
#endif

namespace shmarrow {

arrow::Result<PagePolicy> ParsePagePolicy(std::string_view name) {
  if (name == "auto") return PagePolicy::kAuto;
  if (name == "hugetlb") return PagePolicy::kHugetlb;
  if (name == "off") return PagePolicy::kOff;
  return arrow::Status::Invalid("page policy '", std::string(name),
                                "' is not one of auto, hugetlb, off");
}

std::string PagePolicyName(PagePolicy policy) {
  switch (policy) {
    case PagePolicy::kAuto:
      return "auto";
    case PagePolicy::kHugetlb:
      return "hugetlb";
    case PagePolicy::kOff:
      return "off";
  }
  return "unknown";
}

namespace internal {

int64_t RoundUpForPages(int64_t size, PagePolicy policy) {
  if (policy != PagePolicy::kHugetlb) return size;
  return arrow::bit_util::RoundUp(size, kHugePageSize);
}

arrow::Status AdviseHugePages(uint8_t* base, int64_t size, PagePolicy policy) {
  if (policy != PagePolicy::kAuto) return arrow::Status::OK();
  // EINVAL: a kernel built without transparent huge pages; 4 KiB pages then, as with kOff.
  if (::madvise(base, static_cast<size_t>(size), MADV_HUGEPAGE) != 0 && errno != EINVAL) {
    return ErrnoStatus(errno, "madvise(MADV_HUGEPAGE, ", size, " bytes)");
  }
  return arrow::Status::OK();
}

namespace {
/// The bracketed choice of shmem_enabled ("always within_size [advise] never deny force"), read
/// once per process; empty where the kernel has no transparent huge pages.
const std::string& ShmemEnabled() {
  static const std::string chosen = [] {
    std::ifstream in("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    std::string setting;
    std::getline(in, setting);
    const auto open = setting.find('['), close = setting.find(']');
    if (open == std::string::npos || close == std::string::npos || close < open) {
      return std::string();
    }
    return setting.substr(open + 1, close - open - 1);
  }();
  return chosen;
}

/// shmem_enabled is `advise`: the kernel then gives a MADV_HUGEPAGE mapping huge pages when it
/// faults them in, but fallocate on the file only 4 KiB pages.
bool ShmemHugeOnlyThroughAdvisedFaults() { return ShmemEnabled() == "advise"; }
}  // namespace

int64_t SealedFileSize(int64_t size, PagePolicy policy) {
  if (policy != PagePolicy::kAuto || size <= kHugePageSize) return RoundUpForPages(size, policy);
  const std::string& shmem = ShmemEnabled();
  const bool huge =
      shmem == "advise" || shmem == "always" || shmem == "within_size" || shmem == "force";
  return huge ? arrow::bit_util::RoundUp(size, kHugePageSize) : size;
}

arrow::Status CommitPages(Memfd& memfd, uint8_t* base, int64_t offset, int64_t length,
                          PagePolicy policy) {
  uint8_t* const at = base + offset;
  const auto bytes = static_cast<size_t>(length);
  if (policy == PagePolicy::kAuto && ShmemHugeOnlyThroughAdvisedFaults()) {
    if (::madvise(at, bytes, MADV_POPULATE_WRITE) == 0) return arrow::Status::OK();
    // EINVAL: a kernel before 5.14; fallocate commits as well, in 4 KiB pages.
    if (errno != EINVAL) {
      return ErrnoStatus(errno, "madvise(MADV_POPULATE_WRITE, memfd fd ", memfd.fd(), ", offset ",
                         offset, ", length ", length, "): shared memory exhausted?");
    }
  }
  // fallocate, not a fault, allocates: over a memory cgroup limit it fails with ENOMEM, where a
  // fault would wait for the OOM killer.
  return memfd.Commit(offset, length);
}

void Prefault(uint8_t* base, int64_t length) {
  // Best effort: before Linux 5.14 the writes fault as they go.
  (void)::madvise(base, static_cast<size_t>(length), MADV_POPULATE_WRITE);
}

/// The address range a mapping's header line of smaps starts with ("7f..-7f.. rw-s ..."), or
/// nothing for the other lines ("Size:   2048 kB").
std::optional<std::pair<uintptr_t, uintptr_t>> MappingRange(const std::string& line) {
  const char* const end = line.c_str() + line.size();
  uintptr_t from = 0, to = 0;
  const auto first = std::from_chars(line.c_str(), end, from, 16);
  if (first.ec != std::errc() || first.ptr == end || *first.ptr != '-') return std::nullopt;
  const auto second = std::from_chars(first.ptr + 1, end, to, 16);
  if (second.ec != std::errc() || second.ptr == end || *second.ptr != ' ') return std::nullopt;
  return std::pair{from, to};
}

/// The kB value of an smaps field line ("ShmemPmdMapped:    2048 kB") named `key` (with its
/// colon), or nothing for other lines.
std::optional<int64_t> FieldKib(std::string_view line, std::string_view key) {
  if (!line.starts_with(key)) return std::nullopt;
  line.remove_prefix(key.size());
  while (!line.empty() && line.front() == ' ') line.remove_prefix(1);
  int64_t kib = 0;
  if (std::from_chars(line.data(), line.data() + line.size(), kib).ec != std::errc()) {
    return std::nullopt;
  }
  return kib;
}

arrow::Result<int64_t> MappedPageSize(const void* addr) {
  std::ifstream smaps("/proc/self/smaps");
  if (!smaps) return arrow::Status::IOError("cannot read /proc/self/smaps");
  const auto target = reinterpret_cast<uintptr_t>(addr);
  bool inside = false;
  int64_t kernel_page_kib = 4;
  std::string line;
  while (std::getline(smaps, line)) {
    if (const auto range = MappingRange(line)) {
      if (inside) break;  // the next mapping: ours had no PMD-mapped pages
      inside = range->first <= target && target < range->second;
      continue;
    }
    if (!inside) continue;
    if (const auto kib = FieldKib(line, "KernelPageSize:")) kernel_page_kib = *kib;
    for (const std::string_view key : {"ShmemPmdMapped:", "FilePmdMapped:"}) {
      if (const auto kib = FieldKib(line, key); kib && *kib > 0) return kHugePageSize;
    }
  }
  if (!inside) return arrow::Status::Invalid("no mapping holds ", addr, " in /proc/self/smaps");
  return kernel_page_kib * 1024;
}

arrow::Result<int64_t> ProbePageSize(const std::string& name, PagePolicy policy) {
  ARROW_ASSIGN_OR_RAISE(auto memfd, Memfd::Create(name + "-page-probe", policy));
  ARROW_RETURN_NOT_OK(memfd.Resize(kHugePageSize));
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapWritable(memfd.fd(), kHugePageSize));
  ARROW_RETURN_NOT_OK(AdviseHugePages(mapping.data(), kHugePageSize, policy));
  ARROW_RETURN_NOT_OK(CommitPages(memfd, mapping.data(), 0, kHugePageSize, policy));
  return MappedPageSize(mapping.data());
}

}  // namespace internal
}  // namespace shmarrow
