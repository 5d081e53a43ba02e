// Producer side: build record batches directly in memfd shared memory and seal them as an Arrow
// IPC stream that any Arrow reader can read from offset 0.
#pragma once

#include <arrow/ipc/options.h>
#include <arrow/memory_pool.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>
#include <arrow/table.h>

#include <cstdint>
#include <memory>
#include <string>

#include "shmarrow/pages.h"
#include "shmarrow/types.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow {

struct WriterOptions {
  /// Address space reserved for the arena. The memfd is sparse: only what is used costs memory.
  int64_t capacity = int64_t{64} << 30;
  /// memfd name, visible in /proc/PID/maps and /proc/PID/fd as "memfd:<name>".
  std::string name = "shmarrow";
  /// Which pages back the arena (see PagePolicy).
  PagePolicy pages = PagePolicy::kAuto;
};

/// A finished stream: a memfd sealed with F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE|F_SEAL_SEAL
/// whose bytes [0, size) are a complete Arrow IPC stream.
struct SealedStream {
  UniqueFd fd;
  int64_t size = 0;
};

/// Writes an Arrow IPC stream into a fresh memfd arena.
///
/// Build batches with builders (or any Arrow API taking a MemoryPool) on pool(): their buffers are
/// then already in shared memory, and WriteRecordBatch() only writes Arrow's flatbuffer metadata in
/// front of them, with buffer offsets pointing at where the data already is. Batches from
/// elsewhere are accepted too; their buffers are copied in once and counted in stats(). A
/// dictionary column's dictionaries are copied in front of their batch (a stream holds them before
/// the batch's metadata, builders write them after the indices; docs/design.md).
///
/// The writer owns the arena: keep it alive as long as batches built from pool() are in use (the
/// rule of every arrow::MemoryPool). Not thread-safe, except pool(), which builders on several
/// threads may share.
class SharedStreamWriter {
 public:
  [[nodiscard]] static arrow::Result<std::unique_ptr<SharedStreamWriter>> Open(
      std::shared_ptr<arrow::Schema> schema, const WriterOptions& options = {});
  ~SharedStreamWriter();

  /// Allocations from this pool land in the memfd, 64-byte aligned.
  [[nodiscard]] arrow::MemoryPool* pool();

  [[nodiscard]] arrow::Status WriteRecordBatch(const arrow::RecordBatch& batch);
  [[nodiscard]] arrow::Status WriteTable(const arrow::Table& table);

  /// Writes the end-of-stream marker, trims the memfd to the stream, drops the producer's writable
  /// mapping (its batches stay readable) and seals. After Finish the pool refuses allocations.
  [[nodiscard]] arrow::Result<SealedStream> Finish();

  [[nodiscard]] const PlacementStats& stats() const;
  [[nodiscard]] const std::shared_ptr<arrow::Schema>& schema() const;

 private:
  struct Impl;
  explicit SharedStreamWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmarrow
