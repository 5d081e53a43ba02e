// Which pages back shared memory: the choice behind TLB misses and page faults on large batches.
#pragma once

#include <arrow/result.h>

#include <string>
#include <string_view>

namespace shmarrow {

enum class PagePolicy {
  /// madvise(MADV_HUGEPAGE) and 2 MiB alignment: transparent huge pages where the kernel offers
  /// them for shared memory (/sys/kernel/mm/transparent_hugepage/shmem_enabled advise,
  /// within_size or always), 4 KiB pages otherwise.
  kAuto,
  /// MFD_HUGETLB: the huge pages the host reserved (vm.nr_hugepages). Creating the memory fails,
  /// naming nr_hugepages, when too few are free.
  kHugetlb,
  /// 4 KiB pages.
  kOff,
};

/// "auto", "hugetlb" or "off".
[[nodiscard]] arrow::Result<PagePolicy> ParsePagePolicy(std::string_view name);
[[nodiscard]] std::string PagePolicyName(PagePolicy policy);

}  // namespace shmarrow
