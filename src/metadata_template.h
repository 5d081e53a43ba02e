// Publishing and reading a streamed batch without building or parsing its IPC metadata from
// scratch.
//
// Batches of a stream usually share one layout: the same schema, so the same field nodes and
// body buffers, only lengths, null counts and buffer positions change. Arrow's writer
// (GetRecordBatchPayload) builds the RecordBatch Message for the first such batch; that
// flatbuffer is kept, and each later batch of the layout gets a copy with its own values patched
// into the fixed-size fields (flatbuffer_patch.h), no heap allocation. The bytes are those
// Arrow's writer would produce (tests/cpp/metadata_template_test.cc compares them).
//
// A consumer keeps the last Message Arrow's reader accepted (BatchLayout): a Message equal to it
// except in those values describes a batch of the same layout, whose objects are then made from
// the values alone, with no flatbuffer verifier or decoder run again; what the values claim is
// checked as Arrow's reader checks it, and the batch is validated as before.
#pragma once

#include <arrow/buffer.h>
#include <arrow/record_batch.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <utility>
#include <vector>

#include "batch_arena.h"
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
/// for each batch of that layout; thread-safe. Each thread reads its own copy of what was
/// remembered, refreshed under the lock only after a Remember: a batch of the layout takes no lock.
class MetadataCache {
 public:
  MetadataCache();

  /// The size of the Message Write makes for `batch` (its body listed by ListBody), or -1 when
  /// none of its layout is cached.
  [[nodiscard]] int64_t MessageSize(const arrow::RecordBatch& batch, const BodyList& body);

  /// Writes the Message of `batch` (its body listed by ListBody) into `out` (whose capacity is
  /// reused) with buffer i at buffer_offsets[i] and a body `body_length` long. False when no
  /// Message of this layout is cached: the caller then asks Arrow's writer and offers its Message
  /// to Remember. (Another thread's Remember may change the size MessageSize said.)
  [[nodiscard]] bool Write(const arrow::RecordBatch& batch, const BodyList& body,
                           std::span<const int64_t> buffer_offsets, int64_t body_length,
                           std::vector<uint8_t>* out);

  /// Keeps `metadata`, the Message Arrow's writer produced for `batch` (listed as `body`), for
  /// the next batches of its layout, if it agrees with `body` and can be patched.
  void Remember(const arrow::RecordBatch& batch, const BodyList& body,
                const arrow::Buffer& metadata);

 private:
  /// What was remembered, as one thread last copied it.
  struct Copy {
    uint64_t cache = 0;  // the id_ of the cache it copies
    uint64_t version = 0;
    std::shared_ptr<arrow::Schema> schema;
    std::vector<uint8_t> message;
    MessageFields fields;
  };
  /// The calling thread's copy of what is remembered now.
  const Copy& Current();

  const uint64_t id_;  // unique per cache: a thread's copy is never taken for another cache's
  std::atomic<uint64_t> version_{0};  // how many Remembers changed what is remembered
  std::mutex mutex_;                  // what is remembered (below), and version_'s changes
  std::shared_ptr<arrow::Schema> schema_;
  std::vector<uint8_t> message_;
  MessageFields fields_;
};

/// A consumer's record of its stream's layout: the RecordBatch Message Arrow's reader last turned
/// into a batch of the stream's schema. Not thread-safe (one per source).
class BatchLayout {
 public:
  /// The batch `metadata` (a RecordBatch Message copied out of the producer's reach) describes,
  /// its buffers in `body`, made as Arrow's reader would make it (not yet validated). Its
  /// ArrayData and buffers are allocated in `arena`, which keeps `body`'s memory for them: the
  /// buffers hold no reference to `body`.
  /// nullptr when `metadata` is not the remembered Message with other values patched in, or when
  /// a value is one Arrow's reader refuses (a buffer outside `body` or misaligned, a column
  /// shorter or longer than the batch): the caller then asks Arrow's reader, which says why.
  [[nodiscard]] std::shared_ptr<arrow::RecordBatch> Build(
      const uint8_t* metadata, int64_t size, const std::shared_ptr<arrow::Schema>& schema,
      const arrow::Buffer& body, BatchArena* arena);

  /// True when `batch`, which Build made, passes every check of RecordBatch::ValidateFull. What
  /// the layout fixes was proven when it was remembered (the number of columns, children and
  /// buffers of each array, each array's type the schema's, no offsets, every buffer present), so
  /// only what a batch's values decide is checked: lengths, null counts against the bitmaps,
  /// buffer sizes, offsets (in order, within their data), UTF-8. False also for a layout holding
  /// a type whose values ValidateFull checks beyond those (times, decimals): the caller then asks
  /// ValidateFull, whose verdict stands (with its message).
  [[nodiscard]] bool Valid(const arrow::RecordBatch& batch) const;

  /// Keeps `metadata`, a Message Arrow's reader accepted for a batch of `schema`, when Build can
  /// follow its layout: every type in the schema one whose buffers Arrow's reader takes as the
  /// Message gives them, and the patched values apart from the Message's structure.
  void Remember(const arrow::Buffer& metadata, const std::shared_ptr<arrow::Schema>& schema);

 private:
  /// How Arrow's reader turns a field's node and buffers into ArrayData.
  enum class Load : uint8_t { kFixedWidth, kFixedSizeBinary, kBinary, kList, kStruct };
  struct Node {  // a field, children after their parent (the order of the Message's nodes)
    std::shared_ptr<arrow::DataType> type;
    Load load;
    int value_bits;  // kFixedWidth, kFixedSizeBinary: the bits of a value (1 for booleans)
  };
  struct Cursor;

  /// How Arrow's reader loads an array of type `id`; none for types Build does not make.
  static std::optional<Load> LoadOf(arrow::Type::type id);
  /// How many Buffer structs (and ArrayData buffers) an array loaded as `load` has.
  static int BuffersOf(Load load);

  /// Adds `type` (a field's, given as `as`, `depth` levels down) and its children to plan_; false
  /// for a type Build does not make (Arrow's reader then reads every batch).
  [[nodiscard]] bool Plan(const arrow::DataType& type, const std::shared_ptr<arrow::DataType>& as,
                          int depth);
  /// The ArrayData of the field node at the cursor and its children.
  [[nodiscard]] std::shared_ptr<arrow::ArrayData> Make(Cursor* cursor);
  /// Valid for the array of plan_[*node] (made by Make) and its children; advances *node past them.
  [[nodiscard]] bool Valid(const arrow::ArrayData& data, size_t* node) const;

  std::shared_ptr<arrow::Schema> schema_;  // the schema plan_ was made for
  bool plannable_ = false;
  bool checkable_ = false;  // Valid can judge the plan's every type
  std::vector<Node> plan_;
  int64_t num_buffers_ = 0;
  std::vector<uint8_t> message_;  // empty: none remembered
  MessageFields fields_;
  std::array<std::pair<int64_t, int64_t>, 4> sorted_patched_{};  // {offset, bytes}, by offset
};

}  // namespace shmarrow::internal
