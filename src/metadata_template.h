// Publishing a streamed batch without building its IPC metadata from scratch.
//
// Batches of a stream usually share one layout: the same schema, so the same field nodes and
// body buffers, only lengths, null counts and buffer positions change. Arrow's writer
// (GetRecordBatchPayload) builds the RecordBatch Message for the first such batch; that
// flatbuffer is kept, and each later batch of the layout gets a copy with its own values patched
// into the fixed-size fields (flatbuffer_patch.h), no heap allocation. The bytes are those
// Arrow's writer would produce (tests/cpp/metadata_template_test.cc compares them).
#pragma once

#include <arrow/buffer.h>
#include <arrow/record_batch.h>

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "flatbuffer_patch.h"

namespace shmarrow::internal {

/// A batch's field nodes and body buffers in the order, and with the lengths, Arrow's IPC writer
/// gives them. The vectors keep their capacity between batches.
struct BodyList {
  int64_t num_rows = 0;
  std::vector<int64_t> node_lengths;
  std::vector<int64_t> node_null_counts;
  std::vector<const uint8_t*> buffer_data;  // nullptr for an empty buffer
  std::vector<int64_t> buffer_lengths;

  void Clear();
};

/// Lists `batch`'s body as Arrow's writer would, without allocating once `out` has grown to the
/// layout, for the batches whose buffers that writer passes on as they are (at most shortened):
/// at least one row; every array unsliced (offset 0); types fixed-width numeric or temporal,
/// binary and string, lists (their offsets starting at 0, their child exactly as long as they
/// need) and structs (children as long as the struct). False for any other batch, which then
/// goes through Arrow's writer.
[[nodiscard]] bool ListBody(const arrow::RecordBatch& batch, BodyList* out);

/// The RecordBatch Message Arrow's writer produced for the stream's layout (one schema), patched
/// for each batch of that layout; thread-safe.
class MetadataCache {
 public:
  /// True when a Message of `batch`'s layout (its body listed by ListBody) is cached.
  [[nodiscard]] bool Fits(const arrow::RecordBatch& batch, const BodyList& body);

  /// Writes the Message of `batch` (its body listed by ListBody) into `out` (whose capacity is
  /// reused) with buffer i at buffer_offsets[i] and a body `body_length` long. False when no
  /// Message of this layout is cached: the caller then asks Arrow's writer and offers its Message
  /// to Remember.
  [[nodiscard]] bool Write(const arrow::RecordBatch& batch, const BodyList& body,
                           std::span<const int64_t> buffer_offsets, int64_t body_length,
                           std::vector<uint8_t>* out);

  /// Keeps `metadata`, the Message Arrow's writer produced for `batch` (listed as `body`), for
  /// the next batches of its layout, if it agrees with `body` and can be patched.
  void Remember(const arrow::RecordBatch& batch, const BodyList& body,
                const arrow::Buffer& metadata);

 private:
  /// `batch` has the cached Message's schema (under mutex_).
  [[nodiscard]] bool SameSchema(const arrow::RecordBatch& batch) const;

  std::mutex mutex_;
  std::shared_ptr<arrow::Schema> schema_;
  std::vector<uint8_t> message_;
  MessageFields fields_;
};

}  // namespace shmarrow::internal
