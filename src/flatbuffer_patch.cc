#include "flatbuffer_patch.h"

#include <arrow/status.h>

#include <cstring>
#include <iterator>
#include <span>
#include <utility>
#include <vector>
#include <string_view>

namespace shmarrow::internal {
namespace {

// Field slots, in declaration order of Message.fbs.
constexpr int kMessageVersion = 0;
constexpr int kMessageHeaderType = 1;
constexpr int kMessageHeader = 2;
constexpr int kMessageBodyLength = 3;
constexpr int kDictionaryBatchData = 1;
constexpr int kRecordBatchLength = 0;
constexpr int kRecordBatchNodes = 1;
constexpr int kRecordBatchBuffers = 2;
constexpr int kRecordBatchCompression = 3;
constexpr int kRecordBatchVariadicCounts = 4;
constexpr int kMessageCustomMetadata = 4;

class FlatbufferView {
 public:
  FlatbufferView(const uint8_t* data, int64_t size) : data_(data), size_(size) {}

  template <typename T>
  arrow::Result<T> Read(int64_t at) const {
    if (at < 0 || at > size_ - static_cast<int64_t>(sizeof(T))) {
      return arrow::Status::Invalid("flatbuffer read of ", sizeof(T), " bytes at offset ", at,
                                    " is outside the ", size_, "-byte message");
    }
    T value;
    std::memcpy(&value, data_ + at, sizeof(T));
    return value;
  }

  /// Offset of field `slot` of the table at `table`, or -1 if the field is absent.
  arrow::Result<int64_t> Field(int64_t table, int slot) const {
    ARROW_ASSIGN_OR_RAISE(auto vtable_delta, Read<int32_t>(table));
    const int64_t vtable = table - vtable_delta;
    ARROW_ASSIGN_OR_RAISE(auto vtable_size, Read<uint16_t>(vtable));
    const int64_t entry = 4 + 2 * static_cast<int64_t>(slot);
    if (entry + 2 > vtable_size) return -1;
    ARROW_ASSIGN_OR_RAISE(auto field_delta, Read<uint16_t>(vtable + entry));
    return field_delta == 0 ? -1 : table + field_delta;
  }

  /// The vtable of the table at `table`: where it starts and how many bytes it has.
  arrow::Status VTable(int64_t table, int64_t* at, int64_t* bytes) const {
    ARROW_ASSIGN_OR_RAISE(auto vtable_delta, Read<int32_t>(table));
    *at = table - vtable_delta;
    ARROW_ASSIGN_OR_RAISE(auto vtable_size, Read<uint16_t>(*at));
    *bytes = vtable_size;
    if (*at < 0 || *bytes < 4 || *at > size_ - *bytes) {
      return arrow::Status::Invalid("flatbuffer vtable at offset ", *at, " is outside the message");
    }
    return arrow::Status::OK();
  }

  /// Follows the uoffset stored at `at` (tables, vectors).
  arrow::Result<int64_t> Deref(int64_t at) const {
    ARROW_ASSIGN_OR_RAISE(auto delta, Read<uint32_t>(at));
    return at + static_cast<int64_t>(delta);
  }

  /// Where the vector of `struct_size`-byte structs in field `field` (-1: absent, leaving the
  /// outputs as they are) begins, and how many it holds, all of them inside the flatbuffer.
  arrow::Status StructVector(int64_t field, int64_t struct_size, const char* what, int64_t* at,
                             int64_t* count) const {
    if (field < 0) return arrow::Status::OK();
    ARROW_ASSIGN_OR_RAISE(int64_t vector, Deref(field));
    ARROW_ASSIGN_OR_RAISE(auto claimed, Read<uint32_t>(vector));
    *at = vector + 4;
    *count = claimed;
    if (*count > (size_ - *at) / struct_size) {
      return arrow::Status::Invalid("flatbuffer claims ", claimed, " ", what, " at offset ", *at,
                                    " but the message has ", size_, " bytes");
    }
    return arrow::Status::OK();
  }

 private:
  const uint8_t* data_;
  int64_t size_;
};

}  // namespace

arrow::Result<MessageFields> LocateMessageFields(const uint8_t* flatbuffer, int64_t size) {
  FlatbufferView fb(flatbuffer, size);
  MessageFields out;
  ARROW_ASSIGN_OR_RAISE(int64_t message, fb.Deref(0));

  ARROW_ASSIGN_OR_RAISE(int64_t type_at, fb.Field(message, kMessageHeaderType));
  if (type_at >= 0) {
    ARROW_ASSIGN_OR_RAISE(auto type, fb.Read<uint8_t>(type_at));
    out.header_type = static_cast<MessageHeaderType>(type);
  }
  ARROW_ASSIGN_OR_RAISE(out.body_length_at, fb.Field(message, kMessageBodyLength));
  if (out.body_length_at >= 0) ARROW_RETURN_NOT_OK(fb.Read<int64_t>(out.body_length_at).status());

  if (out.header_type != MessageHeaderType::kRecordBatch &&
      out.header_type != MessageHeaderType::kDictionaryBatch) {
    return out;
  }
  ARROW_ASSIGN_OR_RAISE(int64_t header_at, fb.Field(message, kMessageHeader));
  if (header_at < 0) return arrow::Status::Invalid("IPC message has a batch type but no header");
  ARROW_ASSIGN_OR_RAISE(int64_t record_batch, fb.Deref(header_at));
  if (out.header_type == MessageHeaderType::kDictionaryBatch) {
    ARROW_ASSIGN_OR_RAISE(int64_t data_at, fb.Field(record_batch, kDictionaryBatchData));
    if (data_at < 0) return arrow::Status::Invalid("DictionaryBatch message without data");
    ARROW_ASSIGN_OR_RAISE(record_batch, fb.Deref(data_at));
  }
  ARROW_ASSIGN_OR_RAISE(int64_t compression_field, fb.Field(record_batch, kRecordBatchCompression));
  out.compressed = compression_field >= 0;
  ARROW_ASSIGN_OR_RAISE(out.length_at, fb.Field(record_batch, kRecordBatchLength));
  if (out.length_at >= 0) ARROW_RETURN_NOT_OK(fb.Read<int64_t>(out.length_at).status());
  ARROW_ASSIGN_OR_RAISE(int64_t nodes_field, fb.Field(record_batch, kRecordBatchNodes));
  ARROW_RETURN_NOT_OK(fb.StructVector(nodes_field, kFieldNodeStructSize, "field nodes",
                                      &out.nodes_at, &out.num_nodes));
  ARROW_ASSIGN_OR_RAISE(int64_t buffers_field, fb.Field(record_batch, kRecordBatchBuffers));
  ARROW_RETURN_NOT_OK(fb.StructVector(buffers_field, kBufferStructSize, "buffers", &out.buffers_at,
                                      &out.num_buffers));
  return out;
}

arrow::Status CheckNotCompressed(const uint8_t* flatbuffer, int64_t size) {
  ARROW_ASSIGN_OR_RAISE(auto fields, LocateMessageFields(flatbuffer, size));
  static constexpr std::string_view kExperimental = "ARROW:experimental_compression";
  const std::string_view bytes(reinterpret_cast<const char*>(flatbuffer),
                               static_cast<size_t>(size));
  const bool batch = fields.header_type == MessageHeaderType::kRecordBatch ||
                     fields.header_type == MessageHeaderType::kDictionaryBatch;
  if (fields.compressed || (batch && bytes.find(kExperimental) != std::string_view::npos)) {
    return arrow::Status::Invalid("IPC message declares body compression, which shmarrow never ",
                                  "writes: refused (decompression would allocate what it claims)");
  }
  return arrow::Status::OK();
}

arrow::Result<MessageFields> RewriteBufferOffsets(uint8_t* flatbuffer, int64_t size,
                                                  std::span<const int64_t> offsets,
                                                  std::span<const int64_t> lengths) {
  ARROW_ASSIGN_OR_RAISE(auto fields, LocateMessageFields(flatbuffer, size));
  if (fields.num_buffers != static_cast<int64_t>(offsets.size())) {
    return arrow::Status::Invalid("IPC metadata lists ", fields.num_buffers,
                                  " buffers, payload has ", offsets.size());
  }
  for (size_t i = 0; i < offsets.size(); ++i) {
    uint8_t* entry = flatbuffer + fields.buffers_at + static_cast<int64_t>(i) * kBufferStructSize;
    int64_t recorded;
    std::memcpy(&recorded, entry + 8, sizeof recorded);
    if (recorded != lengths[i]) {
      return arrow::Status::Invalid("IPC metadata gives buffer ", i, " length ", recorded,
                                    ", payload has ", lengths[i]);
    }
    std::memcpy(entry, &offsets[i], sizeof offsets[i]);
  }
  return fields;
}

namespace {

struct ByteRange {
  int64_t begin, end;
};

bool Overlap(const ByteRange& a, const ByteRange& b) { return a.begin < b.end && b.begin < a.end; }

/// The structural bytes of the Message table or the RecordBatch table at `table` (its vtable
/// offset, vtable, and the fields in `fields`, each `widths[i]` bytes), added to `out`; false
/// when a field outside `fields` (up to slot `last_slot`) is present.
arrow::Result<bool> AddTable(const FlatbufferView& fb, int64_t table,
                             std::span<const std::pair<int, int>> fields, int last_slot,
                             std::vector<ByteRange>* out) {
  int64_t vtable = 0, vtable_bytes = 0;
  ARROW_RETURN_NOT_OK(fb.VTable(table, &vtable, &vtable_bytes));
  out->push_back({table, table + 4});
  out->push_back({vtable, vtable + vtable_bytes});
  for (int slot = 0; slot <= last_slot; ++slot) {
    ARROW_ASSIGN_OR_RAISE(int64_t at, fb.Field(table, slot));
    if (at < 0) continue;
    int width = 0;
    for (const auto& [field, bytes] : fields) {
      if (field == slot) width = bytes;
    }
    if (width == 0) return false;  // a field Arrow's reader would use beyond what is checked
    out->push_back({at, at + width});
  }
  return true;
}

}  // namespace

bool PatchedValuesIsolated(const uint8_t* flatbuffer, int64_t size, const MessageFields& fields) {
  if (fields.header_type != MessageHeaderType::kRecordBatch || fields.compressed ||
      fields.length_at < 0 || fields.body_length_at < 0 || fields.nodes_at < 4 ||
      fields.buffers_at < 4) {
    return false;
  }
  const FlatbufferView fb(flatbuffer, size);
  std::vector<ByteRange> structure{
      {0, 4}, {fields.nodes_at - 4, fields.nodes_at}, {fields.buffers_at - 4, fields.buffers_at}};
  auto collect = [&]() -> arrow::Result<bool> {
    ARROW_ASSIGN_OR_RAISE(int64_t message, fb.Deref(0));
    // Message: version (int16), header type (uint8), header (uoffset); bodyLength is patched.
    constexpr std::pair<int, int> kMessage[] = {{kMessageVersion, 2},
                                                {kMessageHeaderType, 1},
                                                {kMessageHeader, 4},
                                                {kMessageBodyLength, 8}};
    ARROW_ASSIGN_OR_RAISE(bool plain,
                          AddTable(fb, message, kMessage, kMessageCustomMetadata, &structure));
    if (!plain) return false;
    ARROW_ASSIGN_OR_RAISE(int64_t header_at, fb.Field(message, kMessageHeader));
    ARROW_ASSIGN_OR_RAISE(int64_t record_batch, fb.Deref(header_at));
    // RecordBatch: length is patched; nodes and buffers are uoffsets to their vectors.
    constexpr std::pair<int, int> kBatch[] = {
        {kRecordBatchLength, 8}, {kRecordBatchNodes, 4}, {kRecordBatchBuffers, 4}};
    return AddTable(fb, record_batch, kBatch, kRecordBatchVariadicCounts, &structure);
  };
  auto collected = collect();
  if (!collected.ok() || !*collected) return false;
  const ByteRange patched[] = {
      {fields.length_at, fields.length_at + 8},
      {fields.body_length_at, fields.body_length_at + 8},
      {fields.nodes_at, fields.nodes_at + fields.num_nodes * kFieldNodeStructSize},
      {fields.buffers_at, fields.buffers_at + fields.num_buffers * kBufferStructSize}};
  for (size_t i = 0; i < std::size(patched); ++i) {
    for (size_t j = i + 1; j < std::size(patched); ++j) {
      if (Overlap(patched[i], patched[j])) return false;
    }
    // The patched values themselves were added as fields of their tables: those ranges are
    // the values', not structure, and are skipped here.
    for (const ByteRange& range : structure) {
      const bool itself = range.begin == patched[i].begin && range.end == patched[i].end;
      if (!itself && Overlap(range, patched[i])) return false;
    }
  }
  return true;
}

bool CanPatch(const MessageFields& fields, const BatchValues& values) {
  return fields.header_type == MessageHeaderType::kRecordBatch && !fields.compressed &&
         fields.length_at >= 0 && fields.body_length_at >= 0 &&
         fields.num_nodes == static_cast<int64_t>(values.node_lengths.size()) &&
         values.node_null_counts.size() == values.node_lengths.size() &&
         fields.num_buffers == static_cast<int64_t>(values.buffer_offsets.size()) &&
         values.buffer_lengths.size() == values.buffer_offsets.size();
}

void PatchBatchValues(uint8_t* flatbuffer, const MessageFields& fields, const BatchValues& values) {
  auto store = [flatbuffer](int64_t at, int64_t value) {
    std::memcpy(flatbuffer + at, &value, sizeof value);
  };
  store(fields.length_at, values.num_rows);
  for (size_t i = 0; i < values.node_lengths.size(); ++i) {
    const int64_t node = fields.nodes_at + static_cast<int64_t>(i) * kFieldNodeStructSize;
    store(node, values.node_lengths[i]);
    store(node + 8, values.node_null_counts[i]);
  }
  for (size_t i = 0; i < values.buffer_offsets.size(); ++i) {
    const int64_t buffer = fields.buffers_at + static_cast<int64_t>(i) * kBufferStructSize;
    store(buffer, values.buffer_offsets[i]);
    store(buffer + 8, values.buffer_lengths[i]);
  }
  store(fields.body_length_at, values.body_length);
}

void SetBodyLength(uint8_t* flatbuffer, const MessageFields& fields, int64_t body_length) {
  if (fields.body_length_at >= 0) {
    std::memcpy(flatbuffer + fields.body_length_at, &body_length, sizeof body_length);
  }
}

}  // namespace shmarrow::internal
