#include "metadata_template.h"

#include <arrow/array/data.h>
#include <arrow/array/validate.h>
#include <arrow/ipc/util.h>
#include <arrow/type.h>
#include <arrow/util/bit_util.h>
#include <arrow/util/bitmap_ops.h>
#include <arrow/util/ubsan.h>

#include <algorithm>
#include <cstring>

namespace shmarrow::internal {
namespace {

using arrow::ArrayData;
using arrow::bit_util::BytesForBits;
using arrow::bit_util::RoundUpToMultipleOf8;
using arrow::ipc::PaddedLength;

// The lengths below follow what Arrow's writer (RecordBatchSerializer) keeps of each buffer of an
// unsliced array: everything, or the prefix the array uses where the buffer is longer than that
// prefix padded to Arrow's alignment. metadata_template_test checks them against the writer.

/// A number, date, time, timestamp or duration: a type of whole bytes whose array has a validity
/// bitmap and one buffer of values.
bool IsWholeBytesNumber(arrow::Type::type id) {
  switch (id) {
    case arrow::Type::INT8:
    case arrow::Type::UINT8:
    case arrow::Type::INT16:
    case arrow::Type::UINT16:
    case arrow::Type::HALF_FLOAT:
    case arrow::Type::INT32:
    case arrow::Type::UINT32:
    case arrow::Type::FLOAT:
    case arrow::Type::DATE32:
    case arrow::Type::TIME32:
    case arrow::Type::INT64:
    case arrow::Type::UINT64:
    case arrow::Type::DOUBLE:
    case arrow::Type::DATE64:
    case arrow::Type::TIME64:
    case arrow::Type::TIMESTAMP:
    case arrow::Type::DURATION:
      return true;
    default:
      return false;
  }
}

int64_t Size(const std::shared_ptr<arrow::Buffer>& buffer) {
  return buffer == nullptr ? 0 : buffer->size();
}

void Add(BodyList* out, const std::shared_ptr<arrow::Buffer>& buffer, int64_t length) {
  out->buffer_data.push_back(length == 0 ? nullptr : buffer->data());
  out->buffer_lengths.push_back(length);
}

/// A fixed-width values buffer: Arrow slices it to the bytes in use (rounded up to 8).
int64_t ValuesLength(const ArrayData& data, int byte_width) {
  const int64_t size = Size(data.buffers[1]);
  const int64_t used = data.length * byte_width;
  return size > PaddedLength(used) ? RoundUpToMultipleOf8(used) : size;
}

/// A 32- or 64-bit offsets buffer: Arrow writes length + 1 offsets, which must start at 0 (Arrow
/// would write rebased copies otherwise). Returns the last offset, or -1 if ineligible.
template <typename Offset>
int64_t AddOffsets(const ArrayData& data, BodyList* out) {
  const auto& buffer = data.buffers[1];
  // Arrow writes an empty array's offsets buffer whole, whatever it holds.
  if (data.length == 0) return -1;
  const int64_t required = static_cast<int64_t>(sizeof(Offset)) * (data.length + 1);
  if (buffer == nullptr || buffer->size() < required || !buffer->is_cpu()) return -1;
  // A buffer from elsewhere (a Flight DoPut's gRPC message) need not be aligned for Offset.
  const uint8_t* offsets = buffer->data();
  if (arrow::util::SafeLoadAs<Offset>(offsets) != 0) return -1;
  Add(out, buffer, required);
  return static_cast<int64_t>(
      arrow::util::SafeLoadAs<Offset>(offsets + sizeof(Offset) * static_cast<size_t>(data.length)));
}

bool ListArray(const ArrayData& data, BodyList* out, int depth);

template <typename Offset>
bool ListBinary(const ArrayData& data, BodyList* out) {
  const int64_t last = AddOffsets<Offset>(data, out);
  if (last < 0) return false;
  const int64_t size = Size(data.buffers[2]);
  if (last > size) return false;
  Add(out, data.buffers[2], size > last ? std::min(PaddedLength(last), size) : size);
  return true;
}

template <typename Offset>
bool ListList(const ArrayData& data, BodyList* out, int depth) {
  const int64_t last = AddOffsets<Offset>(data, out);
  // Arrow slices a child longer than the lists use; such batches go through it.
  return last >= 0 && data.child_data.size() == 1 && data.child_data[0]->length == last &&
         ListArray(*data.child_data[0], out, depth + 1);
}

bool ListArray(const ArrayData& data, BodyList* out, int depth) {
  constexpr int kMaxDepth = 64;  // Arrow's writer refuses deeper nesting
  // (An empty array is a list's child without values; ListBody asks for one row at least.)
  if (depth >= kMaxDepth || data.offset != 0 || data.length < 0) return false;
  const arrow::DataType& type = *data.type;
  if (data.buffers.empty() || type.id() == arrow::Type::EXTENSION) return false;
  const int64_t null_count = data.GetNullCount();
  out->node_lengths.push_back(data.length);
  out->node_null_counts.push_back(null_count);
  if (null_count > 0) {
    const auto& bitmap = data.buffers[0];
    if (bitmap == nullptr || bitmap->size() < BytesForBits(data.length)) return false;
    // Arrow copies a bitmap longer than needed; the copy holds the same bits, so the original's
    // prefix is described instead.
    const int64_t size = bitmap->size();
    Add(out, bitmap,
        size > PaddedLength(BytesForBits(data.length)) ? BytesForBits(data.length) : size);
  } else {
    Add(out, nullptr, 0);
  }
  if (IsWholeBytesNumber(type.id())) {
    if (data.buffers.size() != 2) return false;
    const int width = type.byte_width();
    if (Size(data.buffers[1]) < data.length * width) return false;
    Add(out, data.buffers[1], ValuesLength(data, width));
    return true;
  }
  switch (type.id()) {
    case arrow::Type::STRING:
    case arrow::Type::BINARY:
      return data.buffers.size() == 3 && ListBinary<int32_t>(data, out);
    case arrow::Type::LARGE_STRING:
    case arrow::Type::LARGE_BINARY:
      return data.buffers.size() == 3 && ListBinary<int64_t>(data, out);
    case arrow::Type::LIST:
      return data.buffers.size() == 2 && ListList<int32_t>(data, out, depth);
    case arrow::Type::LARGE_LIST:
      return data.buffers.size() == 2 && ListList<int64_t>(data, out, depth);
    case arrow::Type::STRUCT:
      for (const auto& child : data.child_data) {
        if (child->length != data.length || !ListArray(*child, out, depth + 1)) return false;
      }
      return true;
    default:
      return false;
  }
}

}  // namespace

void BodyList::Clear() {
  num_rows = 0;
  node_lengths.clear();
  node_null_counts.clear();
  buffer_data.clear();
  buffer_lengths.clear();
}

bool ListBody(const arrow::RecordBatch& batch, BodyList* out) {
  out->Clear();
  out->num_rows = batch.num_rows();
  if (batch.num_rows() <= 0) return false;  // zero rows: Arrow leaves the length field out
  // By reference: column_data(i) would copy each column's shared_ptr.
  const arrow::ArrayDataVector& columns = batch.column_data();
  for (const auto& column_ptr : columns) {
    const ArrayData& column = *column_ptr;
    if (column.length != batch.num_rows() || !ListArray(column, out, 0)) return false;
  }
  return true;
}

namespace {

BatchValues ValuesOf(const BodyList& body, std::span<const int64_t> buffer_offsets,
                     int64_t body_length) {
  BatchValues values;
  values.num_rows = body.num_rows;
  values.node_lengths = body.node_lengths;
  values.node_null_counts = body.node_null_counts;
  values.buffer_offsets = buffer_offsets;
  values.buffer_lengths = body.buffer_lengths;
  values.body_length = body_length;
  return values;
}

}  // namespace

namespace {

/// `batch` has `schema`, the one of a cached Message.
bool SameSchema(const std::shared_ptr<arrow::Schema>& schema, const arrow::RecordBatch& batch) {
  // Usually the very object; bindings may import an equal one with each batch. (The Message does
  // not hold the schema: the field names and metadata do not matter, only the types.)
  return schema != nullptr &&
         (schema == batch.schema() || schema->Equals(*batch.schema(), /*check_metadata=*/false));
}

std::atomic<uint64_t> next_metadata_cache_id{1};

}  // namespace

MetadataCache::MetadataCache() : id_(next_metadata_cache_id.fetch_add(1)) {}

const MetadataCache::Copy& MetadataCache::Current() {
  // One copy per thread, of the cache it used last (threads publishing to several producers in
  // turn refresh it at each change, as they took the lock before).
  thread_local Copy copy;
  if (copy.cache != id_ || copy.version != version_.load(std::memory_order_acquire)) {
    std::lock_guard lock(mutex_);
    copy.cache = id_;
    copy.version = version_.load(std::memory_order_relaxed);
    copy.schema = schema_;
    copy.message.assign(message_.begin(), message_.end());
    copy.fields = fields_;
  }
  return copy;
}

int64_t MetadataCache::MessageSize(const arrow::RecordBatch& batch, const BodyList& body) {
  // Only how many buffer offsets there are matters here: the lengths stand in for them.
  const BatchValues values = ValuesOf(body, body.buffer_lengths, 0);
  const Copy& current = Current();
  if (!SameSchema(current.schema, batch) || !CanPatch(current.fields, values)) return -1;
  return static_cast<int64_t>(current.message.size());
}

bool MetadataCache::Write(const arrow::RecordBatch& batch, const BodyList& body,
                          std::span<const int64_t> buffer_offsets, int64_t body_length,
                          std::vector<uint8_t>* out) {
  const BatchValues values = ValuesOf(body, buffer_offsets, body_length);
  // A copy made before another thread's Remember still describes every batch it fits.
  const Copy& current = Current();
  if (!SameSchema(current.schema, batch) || !CanPatch(current.fields, values)) return false;
  out->assign(current.message.begin(), current.message.end());
  PatchBatchValues(out->data(), current.fields, values);
  return true;
}

void MetadataCache::Remember(const arrow::RecordBatch& batch, const BodyList& body,
                             const arrow::Buffer& metadata) {
  auto fields = LocateMessageFields(metadata.data(), metadata.size());
  if (!fields.ok()) return;
  // Arrow's writer must have listed the same nodes and buffer lengths as ListBody: then the
  // Message can describe every later batch of the layout.
  const BatchValues values = ValuesOf(body, body.buffer_lengths, 0);  // as in MessageSize
  if (!CanPatch(*fields, values)) return;
  for (int64_t i = 0; i < fields->num_nodes; ++i) {
    int64_t node[2];
    std::memcpy(node, metadata.data() + fields->nodes_at + i * kFieldNodeStructSize, sizeof node);
    if (node[0] != body.node_lengths[i] || node[1] != body.node_null_counts[i]) return;
  }
  for (int64_t i = 0; i < fields->num_buffers; ++i) {
    int64_t length;
    std::memcpy(&length, metadata.data() + fields->buffers_at + i * kBufferStructSize + 8,
                sizeof length);
    if (length != body.buffer_lengths[i]) return;
  }
  std::lock_guard lock(mutex_);
  schema_ = batch.schema();
  message_.assign(metadata.data(), metadata.data() + metadata.size());
  fields_ = *fields;
  version_.fetch_add(1, std::memory_order_release);
}

}  // namespace shmarrow::internal

namespace shmarrow::internal {

namespace {

constexpr int kMaxNesting = 64;  // Arrow's reader refuses deeper nesting (its own limit)

int64_t LoadInt64(const uint8_t* at) {
  int64_t value;
  std::memcpy(&value, at, sizeof value);
  return value;
}

/// A type whose values ValidateFull checks one by one beyond their offsets and UTF-8 (a time
/// within a day, a date of whole days, a decimal within its precision).
bool ValuesChecked(arrow::Type::type id) {
  switch (id) {
    case arrow::Type::DATE64:
    case arrow::Type::TIME32:
    case arrow::Type::TIME64:
    case arrow::Type::DECIMAL32:
    case arrow::Type::DECIMAL64:
    case arrow::Type::DECIMAL128:
    case arrow::Type::DECIMAL256:
      return true;
    default:
      return false;
  }
}

/// ValidateFull's checks of an offsets buffer (Offset: int32_t or int64_t) of an array `length`
/// long (at offset 0) whose offsets must lie in [0, limit]: enough of them, the first not
/// negative, each at least the one before and at most `limit`. (Its first/last checks follow.)
template <typename Offset>
bool OffsetsValid(const arrow::Buffer& offsets, int64_t length, int64_t limit) {
  if (length == 0) return true;  // Arrow needs no offsets for an empty array
  if (offsets.size() / static_cast<int64_t>(sizeof(Offset)) < length + 1) return false;
  // Aligned: Make takes only buffers at multiples of 8 of the page-aligned body.
  const auto* values = reinterpret_cast<const Offset*>(offsets.data());
  Offset previous = values[0];
  if (previous < 0) return false;
  for (int64_t i = 1; i <= length; ++i) {
    const Offset current = values[i];
    if (current < previous || current > limit) return false;
    previous = current;
  }
  return true;
}

/// The zero-byte buffer Arrow's reader gives for a buffer of length 0 (which it does not look up).
const std::shared_ptr<arrow::Buffer>& EmptyBuffer() {
  alignas(64) static const uint8_t kNothing[64] = {};
  static const auto empty = std::make_shared<arrow::Buffer>(kNothing, 0);
  return empty;
}

}  // namespace

/// Where Make is in the Message being built: its nodes and buffers, and the body they point into.
struct BatchLayout::Cursor {
  const uint8_t* metadata;
  const arrow::Buffer* body;
  BatchArena* arena;
  size_t node = 0;       // the next entry of plan_ (one per field node)
  int64_t buffer = 0;    // the next Buffer struct
  bool refused = false;  // a value Arrow's reader refuses: it is asked instead
};

std::optional<BatchLayout::Load> BatchLayout::LoadOf(arrow::Type::type id) {
  if (IsWholeBytesNumber(id)) return Load::kFixedWidth;
  switch (id) {
    case arrow::Type::BOOL:
    case arrow::Type::INTERVAL_MONTHS:
    case arrow::Type::INTERVAL_DAY_TIME:
    case arrow::Type::INTERVAL_MONTH_DAY_NANO:
      return Load::kFixedWidth;
    case arrow::Type::FIXED_SIZE_BINARY:
    case arrow::Type::DECIMAL32:
    case arrow::Type::DECIMAL64:
    case arrow::Type::DECIMAL128:
    case arrow::Type::DECIMAL256:
      return Load::kFixedSizeBinary;
    case arrow::Type::STRING:
    case arrow::Type::BINARY:
    case arrow::Type::LARGE_STRING:
    case arrow::Type::LARGE_BINARY:
      return Load::kBinary;
    case arrow::Type::LIST:
    case arrow::Type::LARGE_LIST:
      return Load::kList;
    case arrow::Type::STRUCT:
      return Load::kStruct;
    default:  // dictionaries, unions, views, maps, extensions...
      return std::nullopt;
  }
}

int BatchLayout::BuffersOf(Load load) {
  return load == Load::kBinary ? 3 : load == Load::kStruct ? 1 : 2;  // the bitmap, then values
}

bool BatchLayout::Plan(const arrow::DataType& type, const std::shared_ptr<arrow::DataType>& as,
                       int depth) {
  if (depth >= kMaxNesting) return false;
  const auto load = LoadOf(type.id());
  if (!load.has_value()) return false;  // Arrow's reader reads every batch of such a schema
  plan_.push_back({as, *load, type.bit_width()});
  if (ValuesChecked(type.id())) checkable_ = false;
  num_buffers_ += BuffersOf(*load);
  if (*load != Load::kList && *load != Load::kStruct) return true;
  for (const auto& child : type.fields()) {
    if (!Plan(*child->type(), child->type(), depth + 1)) return false;
  }
  return true;
}

std::shared_ptr<arrow::ArrayData> BatchLayout::Make(Cursor* cursor) {
  const Node& node = plan_[cursor->node];
  const uint8_t* field_node =
      cursor->metadata + fields_.nodes_at + cursor->node * kFieldNodeStructSize;
  ++cursor->node;
  // Buffer `index` as Arrow's reader gives it: its bytes of the body, or an empty buffer.
  auto buffer = [&](int64_t index) -> std::shared_ptr<arrow::Buffer> {
    const uint8_t* entry = cursor->metadata + fields_.buffers_at + index * kBufferStructSize;
    const int64_t offset = LoadInt64(entry);
    const int64_t length = LoadInt64(entry + 8);
    if (length == 0) return EmptyBuffer();
    const arrow::Buffer& body = *cursor->body;
    if (offset < 0 || length < 0 || offset % 8 != 0 || offset > body.size() ||
        length > body.size() - offset) {
      cursor->refused = true;
      return nullptr;
    }
    // No parent: the arena keeps the memory (one reference for the batch, not one a buffer).
    return std::allocate_shared<arrow::Buffer>(ArenaAllocator<arrow::Buffer>(cursor->arena),
                                               body.data() + offset, length, body.memory_manager());
  };
  // Constructed with its values: a value-initialized ArrayData is zeroed first. offset is 0.
  const int64_t null_count = LoadInt64(field_node + 8);
  auto data = std::allocate_shared<arrow::ArrayData>(ArenaAllocator<ArrayData>(cursor->arena),
                                                     node.type, LoadInt64(field_node), null_count);
  data->buffers.resize(static_cast<size_t>(BuffersOf(node.load)));
  if (null_count != 0) data->buffers[0] = buffer(cursor->buffer);
  ++cursor->buffer;
  switch (node.load) {
    case Load::kFixedWidth:
      // Arrow's reader leaves an empty array's values alone. (Not as one conditional expression:
      // its type would be a const shared_ptr, copied into place with two more atomic operations.)
      if (data->length > 0) {
        data->buffers[1] = buffer(cursor->buffer);
      } else {
        data->buffers[1] = EmptyBuffer();
      }
      ++cursor->buffer;
      break;
    case Load::kFixedSizeBinary:
    case Load::kList:
      data->buffers[1] = buffer(cursor->buffer++);
      break;
    case Load::kBinary:
      data->buffers[1] = buffer(cursor->buffer++);
      data->buffers[2] = buffer(cursor->buffer++);
      break;
    case Load::kStruct:
      break;
  }
  if (node.load == Load::kList || node.load == Load::kStruct) {
    data->child_data.resize(static_cast<size_t>(node.type->num_fields()));
    for (auto& child : data->child_data) child = Make(cursor);
  }
  return data;
}

bool BatchLayout::Valid(const ArrayData& data, size_t* node_index) const {
  const Node& node = plan_[(*node_index)++];
  const int64_t length = data.length;
  const int64_t null_count = data.null_count.load(std::memory_order_relaxed);
  // (A negative null count other than "unknown" is refused by ValidateFull, which also judges
  // an unknown one.)
  if (length < 0 || null_count < 0 || null_count > length) return false;
  if (null_count > 0) {  // Make gave a bitmap exactly then
    const arrow::Buffer& bitmap = *data.buffers[0];
    if (bitmap.size() < BytesForBits(length) ||
        length - arrow::internal::CountSetBits(bitmap.data(), 0, length) != null_count) {
      return false;
    }
  }
  switch (node.load) {
    case Load::kFixedWidth:
    case Load::kFixedSizeBinary: {
      if (length == 0) return true;
      const int64_t bytes_per_value = node.value_bits / 8;
      if (node.value_bits != 1 && length > INT64_MAX / bytes_per_value) return false;
      const int64_t needed = node.value_bits == 1 ? BytesForBits(length) : length * bytes_per_value;
      return data.buffers[1]->size() >= needed;
    }
    case Load::kBinary: {
      const arrow::Buffer& offsets = *data.buffers[1];
      const int64_t limit = data.buffers[2]->size();
      const bool large = node.type->id() == arrow::Type::LARGE_STRING ||
                         node.type->id() == arrow::Type::LARGE_BINARY;
      if (!(large ? OffsetsValid<int64_t>(offsets, length, limit)
                  : OffsetsValid<int32_t>(offsets, length, limit))) {
        return false;
      }
      const bool utf8 =
          node.type->id() == arrow::Type::STRING || node.type->id() == arrow::Type::LARGE_STRING;
      return !utf8 || arrow::internal::ValidateUTF8(data).ok();  // Arrow's own check of the text
    }
    case Load::kList: {
      const ArrayData& values = *data.child_data[0];
      if (!Valid(values, node_index)) return false;
      return node.type->id() == arrow::Type::LARGE_LIST
                 ? OffsetsValid<int64_t>(*data.buffers[1], length, values.length)
                 : OffsetsValid<int32_t>(*data.buffers[1], length, values.length);
    }
    case Load::kStruct:
      for (const auto& child : data.child_data) {
        if (!Valid(*child, node_index) || child->length < length) return false;
      }
      return true;
  }
  return false;
}

bool BatchLayout::Valid(const arrow::RecordBatch& batch) const {
  if (!checkable_) return false;
  size_t node = 0;
  for (const auto& column : batch.column_data()) {
    if (!Valid(*column, &node)) return false;
  }
  return true;
}

std::shared_ptr<arrow::RecordBatch> BatchLayout::Build(const uint8_t* metadata, int64_t size,
                                                       const std::shared_ptr<arrow::Schema>& schema,
                                                       const arrow::Buffer& body,
                                                       BatchArena* arena) {
  if (schema != schema_ || message_.empty() || size != static_cast<int64_t>(message_.size())) {
    return nullptr;
  }
  // Every byte but the patched values as remembered (PatchedValuesIsolated held for them).
  int64_t at = 0;
  for (const auto& [begin, bytes] : sorted_patched_) {
    if (std::memcmp(metadata + at, message_.data() + at, static_cast<size_t>(begin - at)) != 0) {
      return nullptr;
    }
    at = begin + bytes;
  }
  if (std::memcmp(metadata + at, message_.data() + at, static_cast<size_t>(size - at)) != 0) {
    return nullptr;
  }
  const int64_t num_rows = LoadInt64(metadata + fields_.length_at);
  Cursor cursor{metadata, &body, arena};
  std::vector<std::shared_ptr<arrow::ArrayData>> columns(static_cast<size_t>(schema->num_fields()));
  for (auto& column : columns) {
    column = Make(&cursor);
    // Arrow's reader refuses a column that is not as long as the batch.
    if (cursor.refused || column->length != num_rows) return nullptr;
  }
  return arrow::RecordBatch::Make(schema, num_rows, std::move(columns));
}

void BatchLayout::Remember(const arrow::Buffer& metadata,
                           const std::shared_ptr<arrow::Schema>& schema) {
  if (schema != schema_) {
    schema_ = schema;
    message_.clear();
    plan_.clear();
    num_buffers_ = 0;
    plannable_ = true;
    checkable_ = true;
    for (const auto& field : schema->fields()) {
      if (!Plan(*field->type(), field->type(), 0)) {
        plannable_ = false;
        break;
      }
    }
  }
  message_.clear();
  if (!plannable_) return;
  auto fields = LocateMessageFields(metadata.data(), metadata.size());
  if (!fields.ok() || fields->num_nodes != static_cast<int64_t>(plan_.size()) ||
      fields->num_buffers != num_buffers_ ||
      !PatchedValuesIsolated(metadata.data(), metadata.size(), *fields)) {
    return;
  }
  fields_ = *fields;
  sorted_patched_ = {{{fields_.length_at, 8},
                      {fields_.body_length_at, 8},
                      {fields_.nodes_at, fields_.num_nodes * kFieldNodeStructSize},
                      {fields_.buffers_at, fields_.num_buffers * kBufferStructSize}}};
  std::sort(sorted_patched_.begin(), sorted_patched_.end());
  message_.assign(metadata.data(), metadata.data() + metadata.size());
}

}  // namespace shmarrow::internal
