#include "metadata_template.h"

#include <arrow/array/data.h>
#include <arrow/ipc/util.h>
#include <arrow/type.h>
#include <arrow/util/bit_util.h>
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
  switch (type.id()) {
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
    case arrow::Type::DURATION: {
      if (data.buffers.size() != 2) return false;
      const int width = type.byte_width();
      if (Size(data.buffers[1]) < data.length * width) return false;
      Add(out, data.buffers[1], ValuesLength(data, width));
      return true;
    }
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
  for (int i = 0; i < batch.num_columns(); ++i) {
    const ArrayData& column = *batch.column_data(i);
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

bool MetadataCache::SameSchema(const arrow::RecordBatch& batch) const {
  // Usually the very object; bindings may import an equal one with each batch. (The Message does
  // not hold the schema: the field names and metadata do not matter, only the types.)
  return schema_ != nullptr &&
         (schema_ == batch.schema() || schema_->Equals(*batch.schema(), /*check_metadata=*/false));
}

bool MetadataCache::Fits(const arrow::RecordBatch& batch, const BodyList& body) {
  // Only how many buffer offsets there are matters here: the lengths stand in for them.
  const BatchValues values = ValuesOf(body, body.buffer_lengths, 0);
  std::lock_guard lock(mutex_);
  return SameSchema(batch) && CanPatch(fields_, values);
}

bool MetadataCache::Write(const arrow::RecordBatch& batch, const BodyList& body,
                          std::span<const int64_t> buffer_offsets, int64_t body_length,
                          std::vector<uint8_t>* out) {
  const BatchValues values = ValuesOf(body, buffer_offsets, body_length);
  std::lock_guard lock(mutex_);
  if (!SameSchema(batch) || !CanPatch(fields_, values)) return false;
  out->assign(message_.begin(), message_.end());
  PatchBatchValues(out->data(), fields_, values);
  return true;
}

void MetadataCache::Remember(const arrow::RecordBatch& batch, const BodyList& body,
                             const arrow::Buffer& metadata) {
  auto fields = LocateMessageFields(metadata.data(), metadata.size());
  if (!fields.ok()) return;
  // Arrow's writer must have listed the same nodes and buffer lengths as ListBody: then the
  // Message can describe every later batch of the layout.
  const BatchValues values = ValuesOf(body, body.buffer_lengths, 0);  // as in Fits
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
}

}  // namespace shmarrow::internal
