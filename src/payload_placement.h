// Places Arrow IPC payloads (from Arrow's own writer) into an Arena as a valid stream, leaving body
// buffers where they already are.
#pragma once

#include <arrow/ipc/writer.h>

#include <vector>

#include "arena.h"
#include "shmarrow/types.h"

namespace shmarrow::internal {

/// Where a message's body buffers are: offsets from the body start, and lengths.
struct BodyLayout {
  std::vector<int64_t> offsets;
  std::vector<int64_t> lengths;
};

/// Layout in the arena, front to back:
///   [schema message][gap 1][batch 1 buffers as the builders wrote them][gap 2][batch 2 ...]
/// A gap is a region reserved after each message for the next message's metadata. When a record
/// batch arrives, its flatbuffer goes into the gap (padded so that the body begins exactly where the
/// gap ends) and each Buffer{offset, length} is rewritten to the buffer's real distance from there.
/// The body then extends to the end of everything allocated so far, where the next gap is reserved,
/// so messages follow each other without holes. Buffers that are not behind the gap (built
/// elsewhere, or built before the previous batch was written) are copied to the front first.
///
/// Dictionary messages, which Arrow sends right before the batch that needs them, are held until
/// that batch arrives: their buffers are built after (or among) the batch's own, and a stream
/// cannot hold them there (each message's buffers lie in its own body, and the dictionaries come
/// first). When they fit, the dictionary messages and copies of their buffers go into the gap in
/// front of the batch's metadata, so only the dictionaries are copied, never the batch's columns.
class ArenaPayloadWriter final : public arrow::ipc::internal::IpcPayloadWriter {
 public:
  /// `gap_size`: bytes reserved for each message's prefix and metadata (a multiple of 64).
  ArenaPayloadWriter(Arena* arena, int64_t gap_size, PlacementStats* stats)
      : arena_(arena), gap_size_(gap_size), stats_(stats) {}

  arrow::Status WritePayload(const arrow::ipc::IpcPayload& payload) override;
  /// Writes the end-of-stream marker after everything allocated.
  arrow::Status Close() override;

  /// Bytes [0, stream_end) are the finished stream (valid after Close()).
  [[nodiscard]] int64_t stream_end() const { return stream_end_; }

 private:
  struct Region {
    int64_t at = 0;
    int64_t size = 0;
  };
  /// Where the last message written lies, so it can be stretched over bytes that follow it.
  struct LastMessage {
    int64_t prefix_at = -1;
    int64_t body_start = 0;
    int64_t body_length_at = -1;  // absolute offset of Message.bodyLength, -1 if absent
  };

  arrow::Status PlaceSchema(const arrow::ipc::IpcPayload& payload);
  /// Places the held dictionaries, then `batch`: in the gap when they fit, else each in turn.
  arrow::Status PlaceWithDictionaries(const arrow::ipc::IpcPayload& batch);
  /// Places the held dictionary messages one after the other, each taking the gap.
  arrow::Status PlaceHeldDictionariesInTurn();
  /// Bytes the held dictionary messages take when their buffers are copied in after each one; -1
  /// when a buffer is not in CPU memory (placing it in turn then fails with a clear error).
  [[nodiscard]] int64_t HeldDictionariesSize() const;
  /// Writes the held dictionary messages from gap_.at on, each followed by copies of its buffers,
  /// and shrinks gap_ to what follows them.
  arrow::Status PlaceHeldDictionariesInGap();
  arrow::Status PlaceBatch(const arrow::ipc::IpcPayload& payload);
  /// Writes a batch or dictionary message's prefix and metadata at `at` (a region of
  /// `region_size`, its body right after), pointing its buffers where `layout` says; the message
  /// becomes the last one.
  arrow::Status WriteBatchMetadata(const arrow::ipc::IpcPayload& payload, int64_t at,
                                   int64_t region_size, const BodyLayout& layout);
  /// Writes the continuation marker, metadata length and flatbuffer at `at`, zero-padding to
  /// `region_size`; returns the flatbuffer's offset.
  int64_t WriteMessagePrefix(int64_t at, int64_t region_size, const arrow::Buffer& metadata);
  /// Makes the last message end exactly at `end` (its body, or its metadata padding when it has no
  /// body), so the next message can start there.
  arrow::Status ExtendLastMessageTo(int64_t end);
  arrow::Status ReserveGap(int64_t size);

  Arena* arena_;
  const int64_t gap_size_;
  PlacementStats* stats_;
  Region gap_;
  LastMessage last_;
  std::vector<arrow::ipc::IpcPayload> held_dictionaries_;
  int64_t stream_end_ = -1;
};

}  // namespace shmarrow::internal
