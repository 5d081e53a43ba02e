// Consumer side: a received memfd, checked, mapped read-only and read in place.
#pragma once

#include <arrow/buffer.h>
#include <arrow/ipc/options.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <cstdint>
#include <memory>

#include "shmarrow/types.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow {

struct SharedStreamOptions {
  /// Refuse fds without F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE|F_SEAL_SEAL. When false, an fd
  /// lacking them is not mapped but copied into private memory with pread: a producer that later
  /// shrinks or rewrites the file can then neither crash the consumer (SIGBUS) nor change its data.
  bool require_seals = true;
  Validation validation = Validation::kFull;
};

/// A memfd holding an Arrow IPC stream, mapped read-only. Batches read from it reference the mapping
/// directly; the mapping lives until the SharedStream and every buffer read from it are gone.
class SharedStream {
 public:
  /// Checks the fd before mapping it: a memfd (F_GET_SEALS works), sealed as required, a regular
  /// file whose size comes from fstat, never from the peer. Takes ownership of `fd`.
  [[nodiscard]] static arrow::Result<std::shared_ptr<SharedStream>> Open(
      UniqueFd fd, const SharedStreamOptions& options = {});

  /// The whole mapping as an Arrow buffer (read-only). Holding it keeps the mapping alive.
  [[nodiscard]] const std::shared_ptr<arrow::Buffer>& buffer() const { return buffer_; }
  [[nodiscard]] int64_t size() const { return buffer_->size(); }
  /// Inode and device of the memfd: equal in producer and consumer when no copy was made.
  [[nodiscard]] uint64_t inode() const { return inode_; }
  [[nodiscard]] uint64_t device() const { return device_; }
  [[nodiscard]] int seals() const { return seals_; }
  /// False when the content was copied because the fd was not sealed (require_seals = false).
  [[nodiscard]] bool mapped() const { return mapped_; }
  /// Bytes of memory the memfd has (fstat st_blocks × 512) — less than size() where it has
  /// holes; -1 for a private copy. A batch's buffers may not claim more (OpenReader refuses).
  [[nodiscard]] int64_t allocated_bytes() const { return allocated_bytes_; }
  /// True when [address, address+length) lies inside this mapping.
  [[nodiscard]] bool Contains(const void* address, int64_t length = 0) const;

  /// A reader over the mapping: schema first, then batches whose buffers point into it.
  [[nodiscard]] arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> OpenReader() const;

 private:
  SharedStream() = default;
  std::shared_ptr<arrow::Buffer> buffer_;
  uint64_t inode_ = 0;
  uint64_t device_ = 0;
  int seals_ = 0;
  bool mapped_ = true;
  int64_t allocated_bytes_ = -1;
  Validation validation_ = Validation::kFull;
};

/// True when every buffer of every array in `batch` (children and dictionaries included) lies
/// inside `stream`'s mapping: the check that no copy was made on the way in.
[[nodiscard]] bool AllBuffersInside(const SharedStream& stream, const arrow::RecordBatch& batch);

}  // namespace shmarrow
