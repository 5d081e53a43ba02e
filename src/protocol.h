// The shmarrow protocol on a SOCK_SEQPACKET socket: message types and their encoding.
// docs/protocol.md is the specification; this file and it must agree.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include "shmarrow/error.h"

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace shmarrow::internal::protocol {

inline constexpr uint16_t kMajorVersion = 1;
inline constexpr uint16_t kMinorVersion = 3;
inline constexpr uint32_t kMagic = 0x414D4853;  // "SHMA" in little-endian byte order
inline constexpr size_t kHeaderSize = 16;
/// Largest datagram either side sends or accepts (a schema travels in one message).
inline constexpr uint32_t kMaxMessageSize = 256 * 1024;

enum class Type : uint16_t {
  kHello = 1,     // consumer → producer: versions, wishes (mode flags, credits, projection, schema)
  kWelcome = 2,   // producer → consumer: versions, limits, mode, schema; ring mode: 1 fd (the ring)
  kBatch = 3,     // producer → consumer: where one batch is; sealed mode: 1 fd (its memfd)
  kRelease = 4,   // consumer → producer: batches it no longer holds
  kSchema = 5,    // producer → consumer: the schema of the batches that follow on a stream
  kEnd = 6,       // producer → consumer: a stream ended normally
  kError = 7,     // either way: on stream 0 fatal (the connection closes), else that request failed
  kRequest = 8,   // consumer → producer: opaque request bytes; the answer is stream `stream`
  kBye = 9,       // consumer → producer: leaving
  kBatches = 10,  // producer → consumer, ring mode, 1.1 with kFeatureBatchRuns: several Batch
  kWake = 11,     // producer → consumer, 1.1 with kFeatureQueue: the queue has new entries
  kWaiting = 12,  // consumer → producer, 1.1 with kFeatureQueue: read N entries, will sleep
  kRegion = 13,   // consumer → producer, 1.3 with kFeatureWakeRegion: 1 fd (its region), first
};
const char* TypeName(Type type);

/// Flags of Hello.
inline constexpr uint32_t kHelloLossy = 1u << 0;
inline constexpr uint32_t kHelloStartAtOldest = 1u << 1;
inline constexpr uint32_t kHelloSchemaSubset = 1u << 2;  // required schema: subset, else exact
/// With kFeatureDescribe: the consumer only wants the Welcome (schema, limits), then the producer
/// closes; it is never counted, sent batches or retained for (docs/protocol.md, "Describing").
inline constexpr uint32_t kHelloDescribe = 1u << 3;

/// Features (Hello and Welcome); the intersection is what the connection uses.
inline constexpr uint32_t kFeatureRequests = 1u << 0;
inline constexpr uint32_t kFeatureProjection = 1u << 1;
inline constexpr uint32_t kFeatureLossy = 1u << 2;
/// Ring mode: a backlog of batches travels as one Batches message (protocol 1.1).
inline constexpr uint32_t kFeatureBatchRuns = 1u << 3;
/// Ring mode: stream 0 travels through a queue in the ring (protocol 1.1); see QueueEntry.
inline constexpr uint32_t kFeatureQueue = 1u << 4;
/// The producer honours kHelloDescribe; a Welcome without it means the describer was welcomed as
/// a consumer (an older producer) and must say Bye.
inline constexpr uint32_t kFeatureDescribe = 1u << 5;
/// With the queue: the consumer's region (futex.h), where it says it sleeps and writes what it
/// releases; the producer wakes it through the queue header's wake word. Protocol 1.3: the region
/// travels in a Region message right after the Welcome (1.2 put it in the Hello; a producer
/// answers such a Hello without this feature).
inline constexpr uint32_t kFeatureWakeRegion = 1u << 6;
inline constexpr uint32_t kAllFeatures = kFeatureRequests | kFeatureProjection | kFeatureLossy |
                                         kFeatureBatchRuns | kFeatureQueue | kFeatureDescribe |
                                         kFeatureWakeRegion;
/// What a peer of minor version `minor` may use: 1.0 knows neither batch runs, the queue nor
/// describing; 1.1 not the wake region; 1.2's wake region (sent with the Hello) is not spoken
/// any more: a 1.2 peer gets what a 1.1 peer gets.
constexpr uint32_t FeaturesOf(uint16_t minor) {
  if (minor >= 3) return kAllFeatures;
  return minor >= 1 ? kAllFeatures & ~kFeatureWakeRegion
                    : kFeatureRequests | kFeatureProjection | kFeatureLossy;
}

/// Most batches in one Batches message (and sequences in one Release).
inline constexpr uint32_t kMaxRun = 4096;

enum class Mode : uint32_t { kSealed = 0, kRing = 1 };

/// The Error message's code: codes 1-7 of the public ErrorCode.
using ErrorCode = shmarrow::ErrorCode;

/// The Status for a peer's message that breaks the protocol: Invalid, code kProtocol, the message
/// "protocol: " + what.
template <typename... Args>
[[nodiscard]] arrow::Status ProtocolError(Args&&... what) {
  return MakeError(arrow::StatusCode::Invalid, ErrorCode::kProtocol,
                   "protocol: ", std::forward<Args>(what)...);
}

struct Header {
  Type type{};
  uint32_t stream = 0;  // 0: the published stream; otherwise the request id it answers
};

struct Hello {
  uint16_t major = kMajorVersion;
  uint16_t minor = kMinorVersion;
  uint32_t features = kAllFeatures;
  uint32_t flags = 0;
  uint32_t max_in_flight = 0;  // 0: the producer's default
  std::vector<std::string> columns;
  std::string required_schema;  // an Arrow IPC Schema message (encapsulated), or empty
};

struct Welcome {
  uint16_t major = kMajorVersion;
  uint16_t minor = kMinorVersion;
  uint32_t features = kAllFeatures;
  Mode mode = Mode::kSealed;
  uint32_t consumer_id = 0;
  uint64_t ring_size = 0;
  uint32_t max_consumers = 0;
  uint32_t max_in_flight = 0;
  uint32_t max_message_size = kMaxMessageSize;
  std::string schema;  // the schema this consumer receives (projected), IPC Schema message
  // 1.1, kFeatureQueue: where this consumer's queue lies in the ring (capacity 0: no queue).
  uint64_t queue_offset = 0;
  uint32_t queue_capacity = 0;
};

struct Batch {
  uint64_t sequence = 0;
  uint64_t dropped = 0;  // batches this consumer lost (lossy) since the previous Batch
  // Ring mode: the record batch Message flatbuffer at [metadata_offset, +metadata_length) of the
  // ring; its Buffer offsets are relative to offset 0 of the ring. Sealed mode: all zero; the memfd
  // that comes with the message is a complete Arrow IPC stream.
  uint64_t metadata_offset = 0;
  uint32_t metadata_length = 0;
};

struct Error {
  /// As on the wire: decoding keeps a code this version does not know, so that the message
  /// re-encodes to its bytes; WireErrorCode says what a receiver makes of it.
  ErrorCode code = ErrorCode::kProtocol;
  std::string message;
};

/// What a received Error's code means here: a code this version does not know (or a local one,
/// which never travels) reads as kProtocol.
[[nodiscard]] ErrorCode WireErrorCode(ErrorCode sent);

/// Builds one message; reuse it to avoid allocations.
class Writer {
 public:
  Writer& Start(Type type, uint32_t stream);
  Writer& U16(uint16_t v) { return Put(&v, sizeof v); }
  Writer& U32(uint32_t v) { return Put(&v, sizeof v); }
  Writer& U64(uint64_t v) { return Put(&v, sizeof v); }
  Writer& Bytes(std::string_view bytes);  // u32 length + bytes
  /// Fills in the length and returns the datagram.
  std::span<const uint8_t> Finish();

 private:
  Writer& Put(const void* data, size_t size);
  std::vector<uint8_t> buffer_;
};

/// Bounds-checked reading of one received datagram: every failure names the field and offset.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> datagram) : data_(datagram) {}
  [[nodiscard]] arrow::Result<Header> ReadHeader();
  [[nodiscard]] arrow::Result<uint16_t> U16(const char* field) { return Get<uint16_t>(field); }
  [[nodiscard]] arrow::Result<uint32_t> U32(const char* field) { return Get<uint32_t>(field); }
  [[nodiscard]] arrow::Result<uint64_t> U64(const char* field) { return Get<uint64_t>(field); }
  [[nodiscard]] arrow::Result<std::string> Bytes(const char* field, uint32_t max_length);
  /// The message must have been consumed completely.
  [[nodiscard]] arrow::Status ExpectEnd(const char* message) const;

 private:
  template <typename T>
  arrow::Result<T> Get(const char* field) {
    if (data_.size() - position_ < sizeof(T)) {
      return ProtocolError("message ends at byte ", data_.size(), " before field '", field,
                           "' at byte ", position_);
    }
    T value;
    std::memcpy(&value, data_.data() + position_, sizeof(T));
    position_ += sizeof(T);
    return value;
  }
  std::span<const uint8_t> data_;
  size_t position_ = 0;
};

std::span<const uint8_t> Encode(Writer& w, const Hello& m);
std::span<const uint8_t> Encode(Writer& w, const Welcome& m);
std::span<const uint8_t> Encode(Writer& w, uint32_t stream, const Batch& m);
std::span<const uint8_t> EncodeBatches(Writer& w, uint32_t stream, std::span<const Batch> run);
std::span<const uint8_t> EncodeRelease(Writer& w, std::span<const uint64_t> sequences);
std::span<const uint8_t> EncodeSchema(Writer& w, uint32_t stream, std::string_view schema);
std::span<const uint8_t> EncodeEnd(Writer& w, uint32_t stream);
std::span<const uint8_t> Encode(Writer& w, uint32_t stream, const Error& m);
std::span<const uint8_t> EncodeRequest(Writer& w, uint32_t stream, std::string_view request);
std::span<const uint8_t> EncodeBye(Writer& w);
std::span<const uint8_t> EncodeWake(Writer& w);
std::span<const uint8_t> EncodeWaiting(Writer& w, uint64_t entries_read);
std::span<const uint8_t> EncodeRegion(Writer& w);

/// Length of the valid UTF-8 sequence starting at text[i] (i < size), or 0 if there is none.
[[nodiscard]] size_t Utf8SequenceLength(std::string_view text, size_t i);
/// True when `text` is valid UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
[[nodiscard]] bool IsUtf8(std::string_view text);
/// A peer's text (an Error message, a field name) made safe for a terminal, a log or JSON: its
/// valid UTF-8 is kept, control characters and bytes that are not UTF-8 become `\xNN`.
[[nodiscard]] std::string Printable(std::string_view text);

/// Decoders take a Reader positioned after the header.
[[nodiscard]] arrow::Result<Hello> DecodeHello(Reader& r);
[[nodiscard]] arrow::Result<Welcome> DecodeWelcome(Reader& r);
[[nodiscard]] arrow::Result<Batch> DecodeBatch(Reader& r);
/// Replaces `out`'s contents (reused by the caller): 1 to `max_count` entries.
[[nodiscard]] arrow::Status DecodeBatches(Reader& r, uint32_t max_count, std::vector<Batch>* out);
/// Appends to `out` (reused by the caller); at most `max_count` entries.
[[nodiscard]] arrow::Status DecodeRelease(Reader& r, uint32_t max_count,
                                          std::vector<uint64_t>* out);
[[nodiscard]] arrow::Result<std::string> DecodeSchema(Reader& r);
[[nodiscard]] arrow::Result<Error> DecodeError(Reader& r);
[[nodiscard]] arrow::Result<std::string> DecodeRequest(Reader& r);
[[nodiscard]] arrow::Result<uint64_t> DecodeWaiting(Reader& r);

/// The producer's answer to a Hello (one whole datagram): its Welcome, or an error saying why not
/// (its Error message, another message type, another major version). `address` names it.
[[nodiscard]] arrow::Result<Welcome> DecodeHandshakeAnswer(std::span<const uint8_t> datagram,
                                                           std::string_view address);

}  // namespace shmarrow::internal::protocol
