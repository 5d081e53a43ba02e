// The vocabulary the library's parts share: how batches are checked, schemas compared, memory
// shared, and what the stats count. Small on purpose: internal headers include this, never a
// public class header, for one of these types.
#pragma once

#include <cstdint>

namespace shmarrow {

enum class Validation {
  /// Structural checks only (O(1) per array). For producers you trust.
  kBasic,
  /// ValidateFull on every batch: offsets, UTF-8 and bounds checked before data is handed out.
  kFull,
};

enum class SchemaMatch {
  /// The producer's schema must equal the expected one (names, types, nullability, order).
  kExact,
  /// Every expected field must exist in the producer's schema with the same type.
  kSubset,
};

enum class MemoryMode {
  /// Each published batch is its own memfd, sealed before it is sent: consumers need not trust
  /// the producer. One fd per batch per consumer.
  kSealed,
  /// One memfd ring per producer, sent once at the handshake and mapped read-only by consumers;
  /// a batch message carries only where the batch is. For producers the consumers trust.
  kRing,
};

/// Which pages back shared memory (the ring, sealed mode's arenas).
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

struct ConsumerStats {
  int64_t batches = 0;         // batches read
  int64_t dropped = 0;         // batches a lossy consumer lost
  int64_t schema_changes = 0;  // new schemas announced by the producer
  int64_t released = 0;        // batches given back to the producer
};

struct ProducerStats {
  int64_t published = 0;          // batches published
  int64_t bytes_copied = 0;       // body bytes copied in because they were not built in pool()
  int64_t consumers = 0;          // connected now
  int64_t consumers_total = 0;    // attached since Listen
  int64_t consumers_refused = 0;  // connections refused for their uid or for want of fds
  int64_t dropped = 0;            // batches lossy consumers lost
  int64_t in_flight = 0;          // batches some consumer holds or has queued
  int64_t ring_bytes_in_use = 0;  // ring mode: bytes allocated and not yet released
  /// Bytes per page of the shared memory as obtained (4096, or 2 MiB for huge pages): the ring's,
  /// or in sealed mode a probe's made like an arena at Listen (arenas take huge pages, under
  /// PagePolicy::kAuto, from their second 2 MiB on).
  int64_t page_size = 0;
};

/// What publishing cost. For batches built with pool(), bytes_copied stays 0.
struct PlacementStats {
  int64_t record_batches = 0;
  int64_t dictionary_batches = 0;
  /// Body bytes referenced where the builders wrote them.
  int64_t bytes_in_place = 0;
  /// Body bytes copied into the arena because they lived elsewhere (or were misaligned).
  int64_t bytes_copied = 0;
  /// Bytes of IPC metadata written (prefixes, flatbuffers and their padding).
  int64_t metadata_bytes = 0;
};

struct FlightBridgeStats {
  int64_t streams_served = 0;    // DoGet calls that connected to the producer
  int64_t streams_active = 0;    // of those, still running
  int64_t batches_sent = 0;      // batches handed to Flight
  int64_t calls_refused = 0;     // unknown tickets or descriptors
  int64_t batches_ingested = 0;  // DoPut batches published to local consumers
};

}  // namespace shmarrow
