// Finds the few fields of an Arrow IPC Message flatbuffer that placement rewrites in place.
//
// Arrow's writer lays a record batch's buffers out back to back; shmarrow keeps them where the
// builders put them. The Message Arrow produced stays as it is except for values of fixed size:
// each Buffer{offset, length} struct and Message.bodyLength. Rewriting those never changes the
// flatbuffer's layout, so no flatbuffers library is needed, only this bounds-checked locator.
#pragma once

#include <arrow/result.h>

#include <cstdint>
#include <span>

namespace shmarrow::internal {

/// Sizes of the Buffer{int64 offset, int64 length} and FieldNode{int64 length, int64 null_count}
/// structs in their vectors.
inline constexpr int64_t kBufferStructSize = 16;
inline constexpr int64_t kFieldNodeStructSize = 16;

/// MessageHeader union tags (Message.fbs).
enum class MessageHeaderType : uint8_t {
  kNone = 0,
  kSchema = 1,
  kDictionaryBatch = 2,
  kRecordBatch = 3,
};

struct MessageFields {
  MessageHeaderType header_type = MessageHeaderType::kNone;
  /// Byte offset of Message.bodyLength (int64) in the flatbuffer; -1 when absent (a zero body).
  int64_t body_length_at = -1;
  /// Byte offset of the first Buffer{int64 offset, int64 length} struct; the structs are contiguous.
  int64_t buffers_at = -1;
  int64_t num_buffers = 0;
  /// Byte offset of RecordBatch.length (int64); -1 when absent (zero rows, the default).
  int64_t length_at = -1;
  /// Byte offset of the first FieldNode{int64 length, int64 null_count} struct (contiguous).
  int64_t nodes_at = -1;
  int64_t num_nodes = 0;
  /// The batch declares body compression (RecordBatch.compression). shmarrow never writes it, and a
  /// consumer refuses it: decompression allocates whatever size each buffer claims.
  bool compressed = false;
};

/// Locates the fields in `flatbuffer` (the Message, without the continuation/length prefix).
/// Every read is checked against `size`; malformed input gives Invalid naming the offset.
[[nodiscard]] arrow::Result<MessageFields> LocateMessageFields(const uint8_t* flatbuffer,
                                                               int64_t size);

/// OK unless the Message declares body compression (RecordBatch.compression, or the pre-1.0
/// "ARROW:experimental_compression" custom metadata). Consumers call it on every message a peer
/// sent before Arrow reads it: shmarrow never compresses, and Arrow's decompression allocates the
/// size each buffer claims (a few bytes of input could ask for gigabytes). Malformed input: Invalid.
[[nodiscard]] arrow::Status CheckNotCompressed(const uint8_t* flatbuffer, int64_t size);

/// Points a record or dictionary batch message at where its buffers really are: checks that the
/// i-th Buffer struct's length equals lengths[i] (what Arrow's writer recorded) and sets its offset
/// to offsets[i]. Returns the located fields, for SetBodyLength.
[[nodiscard]] arrow::Result<MessageFields> RewriteBufferOffsets(uint8_t* flatbuffer, int64_t size,
                                                                std::span<const int64_t> offsets,
                                                                std::span<const int64_t> lengths);

/// A batch's values that a cached RecordBatch Message of the same layout is patched with.
struct BatchValues {
  int64_t num_rows = 0;
  std::span<const int64_t> node_lengths;
  std::span<const int64_t> node_null_counts;
  std::span<const int64_t> buffer_offsets;
  std::span<const int64_t> buffer_lengths;
  int64_t body_length = 0;
};

/// True when `fields` (located in a RecordBatch Message) can take any batch with as many field
/// nodes and buffers as `values` has: every value patched is present in the flatbuffer (a field
/// equal to its default, such as a zero length, is left out of it, changing its layout).
[[nodiscard]] bool CanPatch(const MessageFields& fields, const BatchValues& values);

/// Writes `values` into a RecordBatch Message located as `fields` (CanPatch must hold).
void PatchBatchValues(uint8_t* flatbuffer, const MessageFields& fields, const BatchValues& values);

/// True when the values PatchBatchValues writes into this RecordBatch Message (CanPatch holds for
/// its counts) lie apart from each other and from every byte that gives the Message its structure
/// (the root offset, both tables and their vtables, the header type, version, header and vector
/// offsets, the vectors' counts), and the Message carries no custom metadata, compression nor
/// variadic buffer counts. Then a Message whose other bytes equal these has the same structure:
/// the same fields at the same offsets, so the flatbuffer verifier and Arrow's reader would find
/// in it what they found in this one, except the patched values.
[[nodiscard]] bool PatchedValuesIsolated(const uint8_t* flatbuffer, int64_t size,
                                         const MessageFields& fields);

/// Stores Message.bodyLength (which must be present: it is absent only for an empty body).
void SetBodyLength(uint8_t* flatbuffer, const MessageFields& fields, int64_t body_length);

}  // namespace shmarrow::internal
