// Places Arrow IPC payloads (from Arrow's own writer) into an Arena as a valid stream, leaving body
// buffers where they already are.
#pragma once

#include <arrow/ipc/writer.h>

#include "arena.h"
#include "shmarrow/types.h"

namespace shmarrow::internal {

/// Layout in the arena, front to back:
///   [schema message][gap 1][batch 1 buffers as the builders wrote them][gap 2][batch 2 ...]
/// A gap is a region reserved after each message for the next message's metadata. When a record
/// batch arrives, its flatbuffer goes into the gap (padded so that the body begins exactly where the
/// gap ends) and each Buffer{offset, length} is rewritten to the buffer's real distance from there.
/// The body then extends to the end of everything allocated so far, where the next gap is reserved,
/// so messages follow each other without holes. Buffers that are not behind the gap (built
/// elsewhere, or built before the previous batch was written) are copied to the front first.
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
  arrow::Status PlaceBatch(const arrow::ipc::IpcPayload& payload);
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
  int64_t stream_end_ = -1;
};

}  // namespace shmarrow::internal
