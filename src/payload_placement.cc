#include "payload_placement.h"

#include <arrow/buffer.h>
#include <arrow/util/bit_util.h>

#include <bit>
#include <cstring>
#include <limits>
#include <vector>

#include "flatbuffer_patch.h"

namespace shmarrow::internal {
namespace {

static_assert(std::endian::native == std::endian::little,
              "Arrow IPC metadata is little-endian; shmarrow writes it with native stores");

constexpr uint32_t kContinuation = 0xFFFFFFFF;
constexpr int64_t kPrefixSize = 8;  // continuation marker + int32 metadata length

// A message's prefix and metadata, padded so that its body starts 8-byte aligned.
int64_t MessageHeadSize(const arrow::ipc::IpcPayload& payload) {
  return arrow::bit_util::RoundUp(kPrefixSize + payload.metadata->size(), 8);
}

// Offsets (from the body start) and lengths of a message's body buffers; `place(buffer)` puts each
// non-empty one and returns its offset. Empty and absent buffers stay {0, 0}.
template <typename Place>
arrow::Result<BodyLayout> PlaceBodyBuffers(const arrow::ipc::IpcPayload& payload, Place place) {
  const size_t count = payload.body_buffers.size();
  BodyLayout layout{std::vector<int64_t>(count, 0), std::vector<int64_t>(count, 0)};
  for (size_t i = 0; i < count; ++i) {
    const auto& buffer = payload.body_buffers[i];
    if (buffer == nullptr || buffer->size() == 0) continue;
    if (!buffer->is_cpu()) {
      return arrow::Status::NotImplemented("body buffer ", i, " is not in CPU memory");
    }
    layout.lengths[i] = buffer->size();
    ARROW_ASSIGN_OR_RAISE(layout.offsets[i], place(*buffer));
  }
  return layout;
}

template <typename T>
void Store(uint8_t* base, int64_t at, T value) {
  std::memcpy(base + at, &value, sizeof(T));
}

}  // namespace

arrow::Status ArenaPayloadWriter::WritePayload(const arrow::ipc::IpcPayload& payload) {
  using arrow::ipc::MessageType;
  switch (payload.type) {
    case MessageType::SCHEMA:
      if (last_.prefix_at >= 0) {
        return arrow::Status::Invalid("a shared stream carries one schema; got a second one");
      }
      return PlaceSchema(payload);
    case MessageType::DICTIONARY_BATCH:
      ++stats_->dictionary_batches;
      held_dictionaries_.push_back(payload);
      return arrow::Status::OK();
    case MessageType::RECORD_BATCH:
      ++stats_->record_batches;
      return PlaceWithDictionaries(payload);
    default:
      return arrow::Status::NotImplemented("IPC message type ", static_cast<int>(payload.type),
                                           " cannot be placed in a shared stream");
  }
}

int64_t ArenaPayloadWriter::WriteMessagePrefix(int64_t at, int64_t region_size,
                                               const arrow::Buffer& metadata) {
  uint8_t* base = arena_->base();
  Store<uint32_t>(base, at, kContinuation);
  Store<int32_t>(base, at + 4, static_cast<int32_t>(region_size - kPrefixSize));
  std::memcpy(base + at + kPrefixSize, metadata.data(), static_cast<size_t>(metadata.size()));
  const int64_t padding_at = at + kPrefixSize + metadata.size();
  std::memset(base + padding_at, 0, static_cast<size_t>(at + region_size - padding_at));
  stats_->metadata_bytes += region_size;
  return at + kPrefixSize;
}

arrow::Status ArenaPayloadWriter::ExtendLastMessageTo(int64_t end) {
  if (end < last_.body_start) {
    return arrow::Status::Invalid("cannot end the last message at ", end, ": its body starts at ",
                                  last_.body_start);
  }
  if (last_.body_length_at >= 0) {
    Store<int64_t>(arena_->base(), last_.body_length_at, end - last_.body_start);
    return arrow::Status::OK();
  }
  // No body: the metadata padding grows instead (metadata_size counts its padding).
  const int64_t metadata_size = end - last_.prefix_at - kPrefixSize;
  if (metadata_size > std::numeric_limits<int32_t>::max()) {
    return arrow::Status::CapacityError("a message without body would need ", metadata_size,
                                        " bytes of padding (over 2 GiB of arena used by no batch)");
  }
  Store<int32_t>(arena_->base(), last_.prefix_at + 4, static_cast<int32_t>(metadata_size));
  last_.body_start = end;
  return arrow::Status::OK();
}

arrow::Status ArenaPayloadWriter::ReserveGap(int64_t size) {
  ARROW_ASSIGN_OR_RAISE(gap_.at, arena_->Reserve(size));
  gap_.size = size;
  return ExtendLastMessageTo(gap_.at);
}

arrow::Status ArenaPayloadWriter::PlaceSchema(const arrow::ipc::IpcPayload& payload) {
  const int64_t region =
      arrow::bit_util::RoundUp(kPrefixSize + payload.metadata->size(), kArenaAlignment);
  ARROW_ASSIGN_OR_RAISE(int64_t at, arena_->Reserve(region));
  WriteMessagePrefix(at, region, *payload.metadata);
  last_ = {at, at + region, -1};
  return ReserveGap(gap_size_);
}

arrow::Status ArenaPayloadWriter::PlaceWithDictionaries(const arrow::ipc::IpcPayload& batch) {
  if (!held_dictionaries_.empty()) {
    const int64_t dictionaries_size = HeldDictionariesSize();
    if (dictionaries_size >= 0 && dictionaries_size + MessageHeadSize(batch) <= gap_.size) {
      ARROW_RETURN_NOT_OK(PlaceHeldDictionariesInGap());
    } else {
      // Too big for the gap: each takes a gap as any message does, so the batch's own buffers
      // end up in front of the batch's gap and are copied.
      ARROW_RETURN_NOT_OK(PlaceHeldDictionariesInTurn());
    }
  }
  return PlaceBatch(batch);
}

arrow::Status ArenaPayloadWriter::PlaceHeldDictionariesInTurn() {
  // Each is dropped once placed, so that none goes into the stream twice.
  while (!held_dictionaries_.empty()) {
    ARROW_RETURN_NOT_OK(PlaceBatch(held_dictionaries_.front()));
    held_dictionaries_.erase(held_dictionaries_.begin());
  }
  return arrow::Status::OK();
}

int64_t ArenaPayloadWriter::HeldDictionariesSize() const {
  int64_t size = 0;
  for (const auto& dictionary : held_dictionaries_) {
    size += MessageHeadSize(dictionary);
    for (const auto& buffer : dictionary.body_buffers) {
      if (buffer == nullptr) continue;
      if (!buffer->is_cpu()) return -1;
      size += arrow::bit_util::RoundUp(buffer->size(), 8);
    }
  }
  return size;
}

arrow::Status ArenaPayloadWriter::PlaceHeldDictionariesInGap() {
  int64_t at = gap_.at;
  for (const auto& dictionary : held_dictionaries_) {
    const int64_t head = MessageHeadSize(dictionary);
    const int64_t body_start = at + head;
    int64_t body_length = 0;
    ARROW_ASSIGN_OR_RAISE(
        BodyLayout layout,
        PlaceBodyBuffers(dictionary, [&](const arrow::Buffer& buffer) -> arrow::Result<int64_t> {
          uint8_t* copy = arena_->base() + body_start + body_length;
          const int64_t padded = arrow::bit_util::RoundUp(buffer.size(), 8);
          std::memcpy(copy, buffer.data(), static_cast<size_t>(buffer.size()));
          std::memset(copy + buffer.size(), 0, static_cast<size_t>(padded - buffer.size()));
          stats_->bytes_copied += buffer.size();
          body_length += padded;
          return body_length - padded;
        }));
    ARROW_RETURN_NOT_OK(ExtendLastMessageTo(at));
    ARROW_RETURN_NOT_OK(WriteBatchMetadata(dictionary, at, head, layout));
    at = body_start + body_length;
  }
  held_dictionaries_.clear();
  gap_ = {at, gap_.at + gap_.size - at};
  return ExtendLastMessageTo(at);
}

arrow::Status ArenaPayloadWriter::PlaceBatch(const arrow::ipc::IpcPayload& payload) {
  if (MessageHeadSize(payload) > gap_.size) {
    // The reserved gap is too small for this message: take a fitting one at the front. The old
    // gap and whatever lies before the new one become part of the previous message's body.
    ARROW_RETURN_NOT_OK(ReserveGap(
        arrow::bit_util::RoundUp(kPrefixSize + payload.metadata->size(), kArenaAlignment)));
  }
  const Region region = gap_;
  const int64_t body_start = region.at + region.size;

  // Where each body buffer will be, as an offset from the body start.
  ARROW_ASSIGN_OR_RAISE(
      BodyLayout layout,
      PlaceBodyBuffers(payload, [&](const arrow::Buffer& buffer) -> arrow::Result<int64_t> {
        const int64_t at =
            arena_->Contains(buffer.data(), buffer.size()) ? arena_->OffsetOf(buffer.data()) : -1;
        if (at >= body_start && (at - body_start) % 8 == 0) {
          stats_->bytes_in_place += buffer.size();
          return at - body_start;
        }
        ARROW_ASSIGN_OR_RAISE(int64_t copy_at, arena_->Reserve(buffer.size()));
        std::memcpy(arena_->base() + copy_at, buffer.data(), static_cast<size_t>(buffer.size()));
        stats_->bytes_copied += buffer.size();
        return copy_at - body_start;
      }));

  // The next gap goes after everything allocated so far; this message's body reaches it.
  ARROW_ASSIGN_OR_RAISE(int64_t next_gap_at, arena_->Reserve(gap_size_));
  ARROW_RETURN_NOT_OK(WriteBatchMetadata(payload, region.at, region.size, layout));
  ARROW_RETURN_NOT_OK(ExtendLastMessageTo(next_gap_at));
  gap_ = {next_gap_at, gap_size_};
  return arrow::Status::OK();
}

arrow::Status ArenaPayloadWriter::WriteBatchMetadata(const arrow::ipc::IpcPayload& payload,
                                                     int64_t at, int64_t region_size,
                                                     const BodyLayout& layout) {
  const arrow::Buffer& metadata = *payload.metadata;
  const int64_t flatbuffer_at = WriteMessagePrefix(at, region_size, metadata);
  ARROW_ASSIGN_OR_RAISE(auto fields,
                        RewriteBufferOffsets(arena_->base() + flatbuffer_at, metadata.size(),
                                             layout.offsets, layout.lengths));
  if (fields.body_length_at < 0 && payload.body_length > 0) {
    return arrow::Status::Invalid("IPC metadata has no bodyLength for a ", payload.body_length,
                                  "-byte body");
  }
  last_ = {at, at + region_size,
           fields.body_length_at < 0 ? -1 : flatbuffer_at + fields.body_length_at};
  return arrow::Status::OK();
}

arrow::Status ArenaPayloadWriter::Close() {
  // Dictionaries whose batch failed: Arrow's writer counts them as sent, so they stay in the stream.
  ARROW_RETURN_NOT_OK(PlaceHeldDictionariesInTurn());
  // The end-of-stream marker takes the unused gap when nothing was allocated after it.
  arena_->ReleaseIfLast(gap_.at, gap_.size);
  ARROW_RETURN_NOT_OK(ReserveGap(kPrefixSize));
  Store<uint32_t>(arena_->base(), gap_.at, kContinuation);
  Store<int32_t>(arena_->base(), gap_.at + 4, 0);
  stats_->metadata_bytes += kPrefixSize;
  stream_end_ = gap_.at + kPrefixSize;
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal
