// Pieces of the consumer side shared by SharedStream and Consumer.
#pragma once

#include <arrow/buffer.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <memory>

#include "mapping.h"
#include "shmarrow/types.h"

namespace shmarrow::internal {

/// A read-only mapping as an Arrow buffer: it owns the Mapping, and every slice of it (each
/// column buffer of each batch) keeps it, so the memory outlives whoever still points into it.
class MappedBuffer final : public arrow::Buffer {
 public:
  explicit MappedBuffer(Mapping mapping)
      : arrow::Buffer(mapping.data(), mapping.size()), mapping_(std::move(mapping)) {}

 private:
  Mapping mapping_;
};

/// Checks `batch` as `validation` says; the error names the batch.
[[nodiscard]] arrow::Status ValidateBatch(const arrow::RecordBatch& batch, Validation validation,
                                          int64_t index);

/// An Arrow IPC stream reader over `source` (zero-copy slices of it) that validates every batch.
/// With `allocated_bytes` >= 0 (the memory the memfd behind `source` really has), a batch whose
/// buffers claim more bytes of `source` than that is refused before anything reads them: a
/// sparse memfd would otherwise make the consumer commit memory the producer never wrote.
[[nodiscard]] arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> OpenValidatedStream(
    std::shared_ptr<arrow::Buffer> source, Validation validation, int64_t allocated_bytes);

}  // namespace shmarrow::internal
