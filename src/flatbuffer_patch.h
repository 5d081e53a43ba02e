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

/// Stores Message.bodyLength (which must be present: it is absent only for an empty body).
void SetBodyLength(uint8_t* flatbuffer, const MessageFields& fields, int64_t body_length);

}  // namespace shmarrow::internal
