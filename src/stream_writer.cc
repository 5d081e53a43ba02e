#include "shmarrow/stream_writer.h"

#include <arrow/array/util.h>
#include <arrow/buffer.h>
#include <arrow/ipc/writer.h>
#include <arrow/util/bit_util.h>

#include "arena.h"
#include "payload_placement.h"

namespace shmarrow {
namespace {

using internal::kArenaAlignment;

// Room in front of a batch for the dictionary messages Arrow sends before it, with copies of the
// dictionaries: placement copies those (small, usually) instead of the batch's own buffers, which
// lie in front of dictionaries built after them (see ArenaPayloadWriter).
constexpr int64_t kDictionaryRoom = 16 << 10;

bool HasDictionary(const arrow::DataType& type) {
  if (type.id() == arrow::Type::DICTIONARY) return true;
  for (const auto& child : type.fields()) {
    if (HasDictionary(*child->type())) return true;
  }
  return false;
}

// Room for one record batch message of `schema`: the metadata Arrow writes for an empty batch, plus
// what a non-empty body adds (the bodyLength field) and slack, plus kDictionaryRoom when the schema
// has dictionaries. View types, whose buffer count varies, may still need more; placement then
// takes a larger gap (see ArenaPayloadWriter).
arrow::Result<int64_t> MetadataGapSize(const arrow::Schema& schema,
                                       const arrow::ipc::IpcWriteOptions& options) {
  arrow::ArrayVector columns;
  bool dictionaries = false;
  for (const auto& field : schema.fields()) {
    ARROW_ASSIGN_OR_RAISE(auto column, arrow::MakeArrayOfNull(field->type(), 0));
    columns.push_back(std::move(column));
    dictionaries = dictionaries || HasDictionary(*field->type());
  }
  auto empty = arrow::RecordBatch::Make(std::make_shared<arrow::Schema>(schema), 0, columns);
  arrow::ipc::IpcPayload payload;
  ARROW_RETURN_NOT_OK(arrow::ipc::GetRecordBatchPayload(*empty, options, &payload));
  const int64_t needed = 8 + payload.metadata->size() + 64 + (dictionaries ? kDictionaryRoom : 0);
  return arrow::bit_util::RoundUp(needed, kArenaAlignment);
}

}  // namespace

struct SharedStreamWriter::Impl {
  std::shared_ptr<arrow::Schema> schema;
  std::unique_ptr<internal::Arena> arena;
  std::unique_ptr<internal::ArenaPool> pool;
  PlacementStats stats;
  internal::ArenaPayloadWriter* placement = nullptr;  // owned by `writer`
  std::unique_ptr<arrow::ipc::RecordBatchWriter> writer;
  bool finished = false;
};

SharedStreamWriter::SharedStreamWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SharedStreamWriter::~SharedStreamWriter() = default;

arrow::Result<std::unique_ptr<SharedStreamWriter>> SharedStreamWriter::Open(
    std::shared_ptr<arrow::Schema> schema, const WriterOptions& options) {
  if (schema == nullptr) return arrow::Status::Invalid("SharedStreamWriter needs a schema");
  auto impl = std::make_unique<Impl>();
  impl->schema = std::move(schema);
  // Body compression would rewrite every buffer: never zero-copy, so it stays off.
  auto ipc_options = arrow::ipc::IpcWriteOptions::Defaults();
  ARROW_ASSIGN_OR_RAISE(int64_t gap, MetadataGapSize(*impl->schema, ipc_options));
  ARROW_ASSIGN_OR_RAISE(impl->arena,
                        internal::Arena::Create(options.name, options.capacity, options.pages));
  impl->pool = std::make_unique<internal::ArenaPool>(impl->arena.get());
  auto placement =
      std::make_unique<internal::ArenaPayloadWriter>(impl->arena.get(), gap, &impl->stats);
  impl->placement = placement.get();
  // Arrow's own stream writer produces every message (schema, dictionaries, batches); placement
  // only decides where the bytes go. It writes the schema message right away.
  ARROW_ASSIGN_OR_RAISE(impl->writer, arrow::ipc::internal::OpenRecordBatchWriter(
                                          std::move(placement), impl->schema, ipc_options));
  return std::unique_ptr<SharedStreamWriter>(new SharedStreamWriter(std::move(impl)));
}

arrow::MemoryPool* SharedStreamWriter::pool() { return impl_->pool.get(); }

arrow::Status SharedStreamWriter::WriteRecordBatch(const arrow::RecordBatch& batch) {
  if (impl_->finished) return arrow::Status::Invalid("SharedStreamWriter already finished");
  if (!batch.schema()->Equals(*impl_->schema, /*check_metadata=*/false)) {
    return arrow::Status::Invalid("batch schema (", batch.schema()->ToString(),
                                  ") differs from the stream's (", impl_->schema->ToString(), ")");
  }
  return impl_->writer->WriteRecordBatch(batch);
}

arrow::Status SharedStreamWriter::WriteTable(const arrow::Table& table) {
  arrow::TableBatchReader reader(table);
  std::shared_ptr<arrow::RecordBatch> batch;
  while (true) {
    ARROW_RETURN_NOT_OK(reader.ReadNext(&batch));
    if (batch == nullptr) return arrow::Status::OK();
    ARROW_RETURN_NOT_OK(WriteRecordBatch(*batch));
  }
}

arrow::Result<SealedStream> SharedStreamWriter::Finish() {
  if (impl_->finished) return arrow::Status::Invalid("SharedStreamWriter already finished");
  impl_->finished = true;
  ARROW_RETURN_NOT_OK(impl_->writer->Close());
  const int64_t size = impl_->placement->stream_end();
  ARROW_ASSIGN_OR_RAISE(UniqueFd fd, impl_->arena->SealAt(size));
  return SealedStream{std::move(fd), size};
}

const PlacementStats& SharedStreamWriter::stats() const { return impl_->stats; }
const std::shared_ptr<arrow::Schema>& SharedStreamWriter::schema() const { return impl_->schema; }

}  // namespace shmarrow
