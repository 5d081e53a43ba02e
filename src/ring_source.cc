#include "ring_source.h"

#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>
#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "errno_status.h"
#include "flatbuffer_patch.h"
#include "mapping.h"
#include "memfd.h"
#include "shared_stream_internal.h"

namespace shmarrow::internal {

namespace proto = protocol;

namespace {
constexpr uint32_t kMaxMetadata = 1 << 20;
// Any object held keeps its batch's block: the objects of wide batches beyond this go to the heap.
constexpr size_t kMaxArenaBytes = 16 << 10;
}  // namespace

arrow::Result<std::unique_ptr<RingSource>> RingSource::Open(int ring_fd,
                                                            std::shared_ptr<Channel> channel,
                                                            uint32_t credits,
                                                            Validation validation) {
  ARROW_ASSIGN_OR_RAISE(int seals, GetSeals(ring_fd));
  constexpr int kNoResize = F_SEAL_SHRINK | F_SEAL_GROW;
  constexpr int kNoWrites = F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
  if ((seals & kNoResize) != kNoResize || (seals & kNoWrites) == 0) {
    return arrow::Status::Invalid("ring memfd fd ", ring_fd, " lacks seals: has ", SealNames(seals),
                                  ", needs F_SEAL_SHRINK|F_SEAL_GROW and a write seal");
  }
  struct stat st{};
  if (::fstat(ring_fd, &st) != 0) return ErrnoStatus(errno, "fstat(fd ", ring_fd, ")");
  ARROW_ASSIGN_OR_RAISE(auto mapping, Mapping::MapReadOnly(ring_fd, st.st_size));
  return std::unique_ptr<RingSource>(new RingSource(
      std::make_shared<MappedBuffer>(std::move(mapping)), std::move(channel), credits, validation));
}

arrow::Status RingSource::Materialize(const proto::Batch& message, uint32_t stream,
                                      const std::shared_ptr<arrow::Schema>& schema,
                                      std::vector<UniqueFd>& fds, EventQueue* out) {
  if (!fds.empty()) return proto::ProtocolError("ring Batch carries an fd");
  ARROW_RETURN_NOT_OK(channel_->Hold(message.sequence, stream != 0, credits_));
  // The batch's objects in one block, sized as the batch before needed it, which is its lease.
  auto arena = BatchArena::Create(arena_bytes_);
  arena->Lease(lease_target_, message.sequence);
  const auto ring_size = static_cast<uint64_t>(ring_->size());
  if (message.metadata_length == 0 || message.metadata_length > kMaxMetadata ||
      message.metadata_offset > ring_size ||
      message.metadata_length > ring_size - message.metadata_offset) {
    return proto::ProtocolError("batch ", message.sequence, " metadata at [",
                                message.metadata_offset, ", +", message.metadata_length,
                                ") is outside the ", ring_size, "-byte ring");
  }
  // The metadata is copied out of the ring before Arrow parses and checks it, so the producer
  // cannot change it between the check and the use. (Arrow keeps nothing of it: the batch
  // points into the body only, so one private buffer serves every batch.)
  if (metadata_scratch_.size() < message.metadata_length) {
    metadata_scratch_.resize(std::max<size_t>(message.metadata_length, 4096));
  }
  std::memcpy(metadata_scratch_.data(), ring_->data() + message.metadata_offset,
              message.metadata_length);
  // The stream's layout again, with other values: built from them, with no flatbuffer parsed.
  std::shared_ptr<arrow::RecordBatch> batch =
      layout_.Build(metadata_scratch_.data(), message.metadata_length, schema, *ring_, arena.get());
  arena_bytes_ = std::min(arena->wanted(), kMaxArenaBytes);
  const bool remember = batch == nullptr;
  // Only Arrow's reader needs the copy as a Buffer (whose constructor takes a reference to the
  // CPU memory manager: two atomic operations a batch).
  std::optional<arrow::Buffer> metadata;
  if (remember) {
    metadata.emplace(metadata_scratch_.data(), message.metadata_length);
    // Before Arrow reads it: decompression would allocate whatever size each buffer claims.
    if (auto plain = CheckNotCompressed(metadata->data(), metadata->size()); !plain.ok()) {
      return plain.WithMessage("batch ", message.sequence, ": ", plain.message());
    }
    // The ring as an object of the block: what Arrow's reader slices of it holds the lease.
    arrow::io::BufferReader body(
        std::allocate_shared<arrow::Buffer>(ArenaAllocator<arrow::Buffer>(arena.get()),
                                            ring_->data(), ring_->size(), ring_->memory_manager()));
    auto read = arrow::ipc::ReadRecordBatch(*metadata, schema, nullptr,
                                            arrow::ipc::IpcReadOptions::Defaults(), &body);
    if (!read.ok()) {  // Arrow's message names the buffer, not the batch nor where it is
      return read.status().WithMessage("batch ", message.sequence, " (metadata at [",
                                       message.metadata_offset, ", +", message.metadata_length,
                                       ") of the ", ring_size,
                                       "-byte ring): ", read.status().message());
    }
    batch = *std::move(read);
  }
  arena.reset();  // the batch's objects hold it now
  // A batch of the layout is checked for what its values decide; any doubt goes to ValidateFull,
  // which says what is wrong.
  if (remember || validation_ != Validation::kFull || !layout_.Valid(*batch)) {
    ARROW_RETURN_NOT_OK(ValidateBatch(*batch, validation_, static_cast<int64_t>(message.sequence)));
  }
  if (remember) layout_.Remember(*metadata, schema);
  out->emplace_back(std::move(batch));
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal
