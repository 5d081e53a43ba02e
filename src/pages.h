// Page policy mechanics shared by the ring and the sealed arenas.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <cstdint>
#include <string>

#include "memfd.h"
#include "shmarrow/pages.h"

namespace shmarrow::internal {

inline constexpr int64_t kHugePageSize = int64_t{2} << 20;

/// `size` rounded up to what memory of this policy holds (hugetlb files hold whole huge pages).
[[nodiscard]] int64_t RoundUpForPages(int64_t size, PagePolicy policy);

/// The size a sealed arena's file keeps for a stream of `size` bytes: RoundUpForPages, and for
/// kAuto where shared memory gets transparent huge pages (shmem_enabled advise, always,
/// within_size, force) a stream past the arena's first 2 MiB ends its file on a huge page.
/// Truncating inside a huge page zeroes its tail and splits it (about 270 µs of each sealed
/// batch of 64 MiB and more on the development machine); the bytes kept are that huge page's
/// own, allocated already.
[[nodiscard]] int64_t SealedFileSize(int64_t size, PagePolicy policy);

/// Asks the kernel for huge pages on a fresh writable mapping of a memfd (kAuto; else nothing).
[[nodiscard]] arrow::Status AdviseHugePages(uint8_t* base, int64_t size, PagePolicy policy);

/// Backs [offset, offset+length) of `memfd`, mapped writable at `base`, with memory now, so
/// exhaustion is an error here and never a SIGBUS at a later write. kAuto under
/// shmem_enabled=advise allocates by faulting the range in (MADV_POPULATE_WRITE): the kernel
/// then picks huge pages only for a fault in a MADV_HUGEPAGE mapping.
[[nodiscard]] arrow::Status CommitPages(Memfd& memfd, uint8_t* base, int64_t offset, int64_t length,
                                        PagePolicy policy);

/// Maps committed memory into the page table now, so that the first write to each 4 KiB page
/// does not fault (256 MiB written: about 105 ms faulting, 34 ms pre-mapped, on the development
/// machine). Worth it for memory written many times (the ring), not for memory unmapped after
/// one batch (an arena: tearing the mappings down again costs more than the faults saved).
void Prefault(uint8_t* base, int64_t length);

/// The size of the pages of the mapping holding `addr` in this process (4096 or 2 MiB, counting
/// only pages mapped now), from /proc/self/smaps:
/// KernelPageSize for hugetlb, ShmemPmdMapped/FilePmdMapped for transparent huge pages.
[[nodiscard]] arrow::Result<int64_t> MappedPageSize(const void* addr);

/// The page size a fresh shared memory of this policy gets here: one huge page's worth created,
/// committed, measured and dropped.
[[nodiscard]] arrow::Result<int64_t> ProbePageSize(const std::string& name, PagePolicy policy);

}  // namespace shmarrow::internal
