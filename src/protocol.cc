#include "protocol.h"

#include <algorithm>

namespace shmarrow::internal::protocol {

const char* TypeName(Type type) {
  switch (type) {
    case Type::kHello:
      return "Hello";
    case Type::kWelcome:
      return "Welcome";
    case Type::kBatch:
      return "Batch";
    case Type::kRelease:
      return "Release";
    case Type::kSchema:
      return "Schema";
    case Type::kEnd:
      return "End";
    case Type::kError:
      return "Error";
    case Type::kRequest:
      return "Request";
    case Type::kBye:
      return "Bye";
    case Type::kBatches:
      return "Batches";
    case Type::kWake:
      return "Wake";
    case Type::kWaiting:
      return "Waiting";
    case Type::kRegion:
      return "Region";
  }
  return "unknown";
}

size_t Utf8SequenceLength(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t lead = byte(i);
  if (lead < 0x80) return 1;
  size_t length;
  uint32_t code;
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2, code = lead & 0x1F;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3, code = lead & 0x0F;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4, code = lead & 0x07;
  } else {
    return 0;
  }
  if (text.size() - i < length) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  const bool overlong = (length == 3 && code < 0x800) || (length == 4 && code < 0x10000);
  const bool surrogate = code >= 0xD800 && code <= 0xDFFF;
  return overlong || surrogate || code > 0x10FFFF ? 0 : length;
}

bool IsUtf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const size_t length = Utf8SequenceLength(text, i);
    if (length == 0) return false;
    i += length;
  }
  return true;
}

std::string Printable(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const size_t length = Utf8SequenceLength(text, i);
    const auto lead = static_cast<uint8_t>(text[i]);
    // C0 controls, DEL, and C1 controls (U+0080 to U+009F: CSI and others act on terminals).
    const bool control = lead < 0x20 || lead == 0x7F ||
                         (length == 2 && lead == 0xC2 && static_cast<uint8_t>(text[i + 1]) < 0xA0);
    if (length == 0 || control) {
      static constexpr char kHex[] = "0123456789abcdef";
      for (size_t k = 0; k < std::max<size_t>(length, 1); ++k) {
        const auto byte = static_cast<uint8_t>(text[i + k]);
        out += "\\x";
        out += kHex[byte >> 4];
        out += kHex[byte & 0xF];
      }
      i += std::max<size_t>(length, 1);
      continue;
    }
    out.append(text.substr(i, length));
    i += length;
  }
  return out;
}

Writer& Writer::Start(Type type, uint32_t stream) {
  buffer_.clear();
  U32(kMagic);
  U16(static_cast<uint16_t>(type));
  U16(0);  // flags, reserved
  U32(stream);
  return U32(0);  // payload length, filled in by Finish
}

Writer& Writer::Put(const void* data, size_t size) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  buffer_.insert(buffer_.end(), bytes, bytes + size);
  return *this;
}

Writer& Writer::Bytes(std::string_view bytes) {
  U32(static_cast<uint32_t>(bytes.size()));
  return Put(bytes.data(), bytes.size());
}

std::span<const uint8_t> Writer::Finish() {
  const auto payload = static_cast<uint32_t>(buffer_.size() - kHeaderSize);
  std::memcpy(buffer_.data() + 12, &payload, sizeof payload);
  return buffer_;
}

arrow::Result<Header> Reader::ReadHeader() {
  if (data_.size() < kHeaderSize) {
    return ProtocolError(data_.size(), "-byte message is shorter than the ", kHeaderSize,
                         "-byte header");
  }
  ARROW_ASSIGN_OR_RAISE(auto magic, U32("magic"));
  if (magic != kMagic) {
    return ProtocolError("bad magic 0x", std::hex, magic, " (expected 0x", kMagic, ")");
  }
  Header header;
  ARROW_ASSIGN_OR_RAISE(auto type, U16("type"));
  ARROW_ASSIGN_OR_RAISE(auto flags, U16("flags"));
  ARROW_ASSIGN_OR_RAISE(header.stream, U32("stream"));
  ARROW_ASSIGN_OR_RAISE(auto length, U32("length"));
  if (type < static_cast<uint16_t>(Type::kHello) || type > static_cast<uint16_t>(Type::kRegion)) {
    return ProtocolError("unknown message type ", type);
  }
  if (flags != 0) return ProtocolError("unknown header flags ", flags);
  if (length != data_.size() - kHeaderSize) {
    return ProtocolError("header announces ", length, " payload bytes, the ", "message has ",
                         data_.size() - kHeaderSize);
  }
  header.type = static_cast<Type>(type);
  return header;
}

arrow::Result<std::string> Reader::Bytes(const char* field, uint32_t max_length) {
  ARROW_ASSIGN_OR_RAISE(auto length, U32(field));
  if (length > max_length || length > data_.size() - position_) {
    return ProtocolError("field '", field, "' claims ", length, " bytes at byte ", position_, "; ",
                         data_.size() - position_, " remain, limit ", max_length);
  }
  std::string out(reinterpret_cast<const char*>(data_.data() + position_), length);
  position_ += length;
  return out;
}

arrow::Status Reader::ExpectEnd(const char* message) const {
  if (position_ != data_.size()) {
    return ProtocolError(data_.size() - position_, " unexpected trailing bytes in ", message);
  }
  return arrow::Status::OK();
}

namespace {
constexpr uint32_t kMaxColumns = 4096;
constexpr uint32_t kMaxName = 4096;
}  // namespace

std::span<const uint8_t> Encode(Writer& w, const Hello& m) {
  w.Start(Type::kHello, 0).U16(m.major).U16(m.minor).U32(m.features).U32(m.flags);
  w.U32(m.max_in_flight).U32(static_cast<uint32_t>(m.columns.size()));
  for (const auto& column : m.columns) w.Bytes(column);
  return w.Bytes(m.required_schema).Finish();
}

arrow::Result<Hello> DecodeHello(Reader& r) {
  Hello m;
  ARROW_ASSIGN_OR_RAISE(m.major, r.U16("major"));
  ARROW_ASSIGN_OR_RAISE(m.minor, r.U16("minor"));
  if (m.major != kMajorVersion) return m;  // the rest may differ in another major version
  ARROW_ASSIGN_OR_RAISE(m.features, r.U32("features"));
  ARROW_ASSIGN_OR_RAISE(m.flags, r.U32("flags"));
  ARROW_ASSIGN_OR_RAISE(m.max_in_flight, r.U32("max_in_flight"));
  ARROW_ASSIGN_OR_RAISE(auto count, r.U32("column count"));
  if (count > kMaxColumns) {
    return ProtocolError("Hello asks for ", count, " columns (limit ", kMaxColumns, ")");
  }
  for (uint32_t i = 0; i < count; ++i) {
    ARROW_ASSIGN_OR_RAISE(auto name, r.Bytes("column name", kMaxName));
    m.columns.push_back(std::move(name));
  }
  ARROW_ASSIGN_OR_RAISE(m.required_schema, r.Bytes("required schema", kMaxMessageSize));
  if (m.minor <= kMinorVersion) ARROW_RETURN_NOT_OK(r.ExpectEnd("Hello"));
  return m;  // a newer minor version may append fields: they are ignored
}

std::span<const uint8_t> Encode(Writer& w, const Welcome& m) {
  w.Start(Type::kWelcome, 0).U16(m.major).U16(m.minor).U32(m.features);
  w.U32(static_cast<uint32_t>(m.mode)).U32(m.consumer_id).U64(m.ring_size);
  w.U32(m.max_consumers).U32(m.max_in_flight).U32(m.max_message_size);
  w.Bytes(m.schema);
  if (m.minor >= 1) w.U64(m.queue_offset).U32(m.queue_capacity);
  return w.Finish();
}

arrow::Result<Welcome> DecodeWelcome(Reader& r) {
  Welcome m;
  ARROW_ASSIGN_OR_RAISE(m.major, r.U16("major"));
  ARROW_ASSIGN_OR_RAISE(m.minor, r.U16("minor"));
  if (m.major != kMajorVersion) return m;
  ARROW_ASSIGN_OR_RAISE(m.features, r.U32("features"));
  ARROW_ASSIGN_OR_RAISE(auto mode, r.U32("mode"));
  if (mode > static_cast<uint32_t>(Mode::kRing)) {
    return ProtocolError("unknown memory mode ", mode);
  }
  m.mode = static_cast<Mode>(mode);
  ARROW_ASSIGN_OR_RAISE(m.consumer_id, r.U32("consumer_id"));
  ARROW_ASSIGN_OR_RAISE(m.ring_size, r.U64("ring_size"));
  ARROW_ASSIGN_OR_RAISE(m.max_consumers, r.U32("max_consumers"));
  ARROW_ASSIGN_OR_RAISE(m.max_in_flight, r.U32("max_in_flight"));
  ARROW_ASSIGN_OR_RAISE(m.max_message_size, r.U32("max_message_size"));
  ARROW_ASSIGN_OR_RAISE(m.schema, r.Bytes("schema", kMaxMessageSize));
  if (m.minor >= 1) {
    ARROW_ASSIGN_OR_RAISE(m.queue_offset, r.U64("queue_offset"));
    ARROW_ASSIGN_OR_RAISE(m.queue_capacity, r.U32("queue_capacity"));
  }
  if (m.minor <= kMinorVersion) ARROW_RETURN_NOT_OK(r.ExpectEnd("Welcome"));
  return m;
}

namespace {
Writer& PutBatch(Writer& w, const Batch& m) {
  return w.U64(m.sequence).U64(m.dropped).U64(m.metadata_offset).U32(m.metadata_length);
}

arrow::Status GetBatch(Reader& r, Batch* m) {
  ARROW_ASSIGN_OR_RAISE(m->sequence, r.U64("sequence"));
  ARROW_ASSIGN_OR_RAISE(m->dropped, r.U64("dropped"));
  ARROW_ASSIGN_OR_RAISE(m->metadata_offset, r.U64("metadata_offset"));
  ARROW_ASSIGN_OR_RAISE(m->metadata_length, r.U32("metadata_length"));
  return arrow::Status::OK();
}
}  // namespace

std::span<const uint8_t> Encode(Writer& w, uint32_t stream, const Batch& m) {
  return PutBatch(w.Start(Type::kBatch, stream), m).Finish();
}

arrow::Result<Batch> DecodeBatch(Reader& r) {
  Batch m;
  ARROW_RETURN_NOT_OK(GetBatch(r, &m));
  ARROW_RETURN_NOT_OK(r.ExpectEnd("Batch"));
  return m;
}

std::span<const uint8_t> EncodeBatches(Writer& w, uint32_t stream, std::span<const Batch> run) {
  w.Start(Type::kBatches, stream).U32(static_cast<uint32_t>(run.size()));
  for (const Batch& m : run) PutBatch(w, m);
  return w.Finish();
}

arrow::Status DecodeBatches(Reader& r, uint32_t max_count, std::vector<Batch>* out) {
  ARROW_ASSIGN_OR_RAISE(uint32_t count, r.U32("count"));
  if (count == 0 || count > max_count) {
    return ProtocolError("Batches of ", count, " batches (1 to ", max_count, " allowed)");
  }
  out->resize(count);
  for (Batch& m : *out) ARROW_RETURN_NOT_OK(GetBatch(r, &m));
  return r.ExpectEnd("Batches");
}

std::span<const uint8_t> EncodeRelease(Writer& w, std::span<const uint64_t> sequences) {
  w.Start(Type::kRelease, 0).U32(static_cast<uint32_t>(sequences.size()));
  for (uint64_t sequence : sequences) w.U64(sequence);
  return w.Finish();
}

arrow::Status DecodeRelease(Reader& r, uint32_t max_count, std::vector<uint64_t>* out) {
  ARROW_ASSIGN_OR_RAISE(auto count, r.U32("count"));
  if (count > max_count) {
    return ProtocolError("Release of ", count, " batches (limit ", max_count, ")");
  }
  for (uint32_t i = 0; i < count; ++i) {
    ARROW_ASSIGN_OR_RAISE(auto sequence, r.U64("sequence"));
    out->push_back(sequence);
  }
  return r.ExpectEnd("Release");
}

std::span<const uint8_t> EncodeSchema(Writer& w, uint32_t stream, std::string_view schema) {
  return w.Start(Type::kSchema, stream).Bytes(schema).Finish();
}

arrow::Result<std::string> DecodeSchema(Reader& r) {
  ARROW_ASSIGN_OR_RAISE(auto schema, r.Bytes("schema", kMaxMessageSize));
  ARROW_RETURN_NOT_OK(r.ExpectEnd("Schema"));
  return schema;
}

std::span<const uint8_t> EncodeEnd(Writer& w, uint32_t stream) {
  return w.Start(Type::kEnd, stream).Finish();
}

std::span<const uint8_t> Encode(Writer& w, uint32_t stream, const Error& m) {
  w.Start(Type::kError, stream).U32(static_cast<uint32_t>(m.code));
  return w.Bytes(m.message.substr(0, kMaxMessageSize / 2)).Finish();
}

ErrorCode WireErrorCode(ErrorCode sent) {
  const auto code = static_cast<uint32_t>(sent);
  const bool known = code >= static_cast<uint32_t>(ErrorCode::kProtocol) &&
                     code <= static_cast<uint32_t>(ErrorCode::kShutdown);
  return known ? sent : ErrorCode::kProtocol;
}

arrow::Result<Error> DecodeError(Reader& r) {
  Error m;
  ARROW_ASSIGN_OR_RAISE(auto code, r.U32("code"));
  m.code = static_cast<ErrorCode>(code);  // as sent: WireErrorCode judges it
  ARROW_ASSIGN_OR_RAISE(m.message, r.Bytes("message", kMaxMessageSize));
  ARROW_RETURN_NOT_OK(r.ExpectEnd("Error"));
  return m;
}

std::span<const uint8_t> EncodeRequest(Writer& w, uint32_t stream, std::string_view request) {
  return w.Start(Type::kRequest, stream).Bytes(request).Finish();
}

arrow::Result<std::string> DecodeRequest(Reader& r) {
  ARROW_ASSIGN_OR_RAISE(auto request, r.Bytes("request", kMaxMessageSize));
  ARROW_RETURN_NOT_OK(r.ExpectEnd("Request"));
  return request;
}

std::span<const uint8_t> EncodeBye(Writer& w) { return w.Start(Type::kBye, 0).Finish(); }

std::span<const uint8_t> EncodeWake(Writer& w) { return w.Start(Type::kWake, 0).Finish(); }

std::span<const uint8_t> EncodeRegion(Writer& w) { return w.Start(Type::kRegion, 0).Finish(); }

std::span<const uint8_t> EncodeWaiting(Writer& w, uint64_t entries_read) {
  return w.Start(Type::kWaiting, 0).U64(entries_read).Finish();
}

arrow::Result<uint64_t> DecodeWaiting(Reader& r) {
  ARROW_ASSIGN_OR_RAISE(uint64_t entries_read, r.U64("entries_read"));
  ARROW_RETURN_NOT_OK(r.ExpectEnd("Waiting"));
  return entries_read;
}

arrow::Result<Welcome> DecodeHandshakeAnswer(std::span<const uint8_t> datagram,
                                             std::string_view address) {
  Reader reader(datagram);
  ARROW_ASSIGN_OR_RAISE(auto header, reader.ReadHeader());
  if (header.type == Type::kError) {
    ARROW_ASSIGN_OR_RAISE(auto error, DecodeError(reader));
    return WithCode(
        arrow::Status::Invalid("producer at '", address, "' refused: ", Printable(error.message)),
        WireErrorCode(error.code), /*from_producer=*/true);
  }
  if (header.type != Type::kWelcome) {
    return ProtocolError("expected Welcome, got ", TypeName(header.type));
  }
  ARROW_ASSIGN_OR_RAISE(auto welcome, DecodeWelcome(reader));
  if (welcome.major != kMajorVersion) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kVersion, "producer speaks protocol ",
                     welcome.major, ".", welcome.minor, "; this consumer speaks ", kMajorVersion,
                     ".", kMinorVersion, " (major versions must match)");
  }
  return welcome;
}

}  // namespace shmarrow::internal::protocol
