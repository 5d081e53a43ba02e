#include "shmarrow/shared_stream.h"

#include <arrow/array.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/message.h>
#include <arrow/ipc/reader.h>
#include <sys/stat.h>
#include <unistd.h>

#include "errno_status.h"
#include "flatbuffer_patch.h"
#include "mapping.h"
#include "shared_stream_internal.h"
#include "memfd.h"

namespace shmarrow {
namespace {

/// Runs the chosen validation on each batch before it is handed out.
class ValidatingReader final : public arrow::RecordBatchReader {
 public:
  ValidatingReader(std::shared_ptr<arrow::ipc::RecordBatchStreamReader> inner,
                   Validation validation)
      : inner_(std::move(inner)), validation_(validation) {}

  std::shared_ptr<arrow::Schema> schema() const override { return inner_->schema(); }

  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    ARROW_RETURN_NOT_OK(inner_->ReadNext(batch));
    if (*batch == nullptr) return arrow::Status::OK();
    auto status = internal::ValidateBatch(**batch, validation_, index_++);
    if (!status.ok()) batch->reset();
    return status;
  }

  arrow::Status Close() override { return inner_->Close(); }

 private:
  std::shared_ptr<arrow::ipc::RecordBatchStreamReader> inner_;
  Validation validation_;
  int64_t index_ = 0;
};

/// Arrow's message reader, refusing messages that declare body compression before Arrow reads them.
class UncompressedMessageReader final : public arrow::ipc::MessageReader {
 public:
  explicit UncompressedMessageReader(std::unique_ptr<arrow::ipc::MessageReader> inner)
      : inner_(std::move(inner)) {}

  arrow::Result<std::unique_ptr<arrow::ipc::Message>> ReadNextMessage() override {
    ARROW_ASSIGN_OR_RAISE(auto message, inner_->ReadNextMessage());
    if (message != nullptr) {
      const auto& metadata = *message->metadata();
      ARROW_RETURN_NOT_OK(internal::CheckNotCompressed(metadata.data(), metadata.size()));
    }
    return message;
  }

 private:
  std::unique_ptr<arrow::ipc::MessageReader> inner_;
};

bool DataInside(const SharedStream& stream, const arrow::ArrayData& data) {
  for (const auto& buffer : data.buffers) {
    if (buffer != nullptr && buffer->size() > 0 && !stream.Contains(buffer->data(), buffer->size())) {
      return false;
    }
  }
  for (const auto& child : data.child_data) {
    if (!DataInside(stream, *child)) return false;
  }
  return data.dictionary == nullptr || DataInside(stream, *data.dictionary);
}

}  // namespace

namespace {

/// The content of an unsealed fd, read into private memory: the producer can no longer affect it.
arrow::Result<std::shared_ptr<arrow::Buffer>> CopyFile(int fd, int64_t size) {
  ARROW_ASSIGN_OR_RAISE(auto copy, arrow::AllocateBuffer(size));
  int64_t done = 0;
  while (done < size) {
    const ssize_t n = internal::RetryOnEintr(
        [&] { return ::pread(fd, copy->mutable_data() + done, size - done, done); });
    if (n < 0) return internal::ErrnoStatus(errno, "pread(fd ", fd, ", offset ", done, ")");
    if (n == 0) break;  // shrunk meanwhile: keep what was there
    done += n;
  }
  return arrow::SliceBuffer(std::shared_ptr<arrow::Buffer>(std::move(copy)), 0, done);
}

}  // namespace

arrow::Result<std::shared_ptr<SharedStream>> SharedStream::Open(UniqueFd fd,
                                                                const SharedStreamOptions& options) {
  const int raw = fd.get();
  auto seals = internal::GetSeals(raw);
  const int missing = internal::kImmutableSeals & ~(seals.ok() ? *seals : 0);
  if (options.require_seals) {
    ARROW_RETURN_NOT_OK(seals.status());
    if (missing != 0) {
      return arrow::Status::Invalid("memfd fd ", raw, " is not sealed against change: missing ",
                                    internal::SealNames(missing));
    }
  }
  struct stat st {};
  if (::fstat(raw, &st) != 0) return internal::ErrnoStatus(errno, "fstat(fd ", raw, ")");
  if (!S_ISREG(st.st_mode)) {
    return arrow::Status::Invalid("fd ", raw, " is not a regular file (st_mode 0", std::oct,
                                  st.st_mode, ")");
  }
  if (st.st_size <= 0) return arrow::Status::Invalid("memfd fd ", raw, " is empty");

  std::shared_ptr<SharedStream> stream(new SharedStream());
  stream->inode_ = st.st_ino;
  stream->device_ = st.st_dev;
  stream->seals_ = seals.ok() ? *seals : 0;
  stream->validation_ = options.validation;
  stream->mapped_ = missing == 0;
  if (stream->mapped_) {
    // The size comes from the file itself; with F_SEAL_SHRINK it cannot change under the mapping.
    ARROW_ASSIGN_OR_RAISE(auto mapping, internal::Mapping::MapReadOnly(raw, st.st_size));
    stream->buffer_ = std::make_shared<internal::MappedBuffer>(std::move(mapping));
  } else {
    ARROW_ASSIGN_OR_RAISE(stream->buffer_, CopyFile(raw, st.st_size));
  }
  return stream;  // the fd closes here: the mapping keeps the memory
}

bool SharedStream::Contains(const void* address, int64_t length) const {
  return internal::RangeContains(buffer_->data(), buffer_->size(), address, length);
}

arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> SharedStream::OpenReader() const {
  return internal::OpenValidatedStream(buffer_, validation_);
}

namespace internal {

arrow::Status ValidateBatch(const arrow::RecordBatch& batch, Validation validation,
                            int64_t index) {
  auto status = validation == Validation::kFull ? batch.ValidateFull() : batch.Validate();
  return status.ok() ? status
                     : status.WithMessage("record batch ", index, " is invalid: ", status.message());
}

arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> OpenValidatedStream(
    std::shared_ptr<arrow::Buffer> source, Validation validation) {
  auto input = std::make_shared<arrow::io::BufferReader>(std::move(source));
  ARROW_ASSIGN_OR_RAISE(auto reader,
                        arrow::ipc::RecordBatchStreamReader::Open(
                            std::make_unique<UncompressedMessageReader>(
                                arrow::ipc::MessageReader::Open(std::move(input))),
                            arrow::ipc::IpcReadOptions::Defaults()));
  return std::make_shared<ValidatingReader>(std::move(reader), validation);
}

}  // namespace internal

bool AllBuffersInside(const SharedStream& stream, const arrow::RecordBatch& batch) {
  for (const auto& column : batch.column_data()) {
    if (!DataInside(stream, *column)) return false;
  }
  return true;
}

}  // namespace shmarrow
