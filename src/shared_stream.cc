#include "shmarrow/shared_stream.h"

#include <arrow/array.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/message.h>
#include <arrow/ipc/reader.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <utility>
#include <vector>

#include "errno_status.h"
#include "flatbuffer_patch.h"
#include "mapping.h"
#include "shared_stream_internal.h"
#include "memfd.h"
#include "schema_match.h"

namespace shmarrow {
namespace {

/// Appends the [begin, end) ranges of `source` that `data`'s buffers (children and dictionary
/// included) claim.
void CollectRanges(const arrow::ArrayData& data, const arrow::Buffer& source,
                   std::vector<std::pair<uintptr_t, uintptr_t>>* ranges) {
  const auto base = reinterpret_cast<uintptr_t>(source.data());
  for (const auto& buffer : data.buffers) {
    if (buffer == nullptr || buffer->size() <= 0) continue;
    const auto begin = reinterpret_cast<uintptr_t>(buffer->data());
    if (begin < base || begin - base > static_cast<uintptr_t>(source.size())) continue;
    const auto end = begin + std::min<uintptr_t>(static_cast<uintptr_t>(buffer->size()),
                                                 base + source.size() - begin);
    ranges->emplace_back(begin, end);
  }
  for (const auto& child : data.child_data) CollectRanges(*child, source, ranges);
  if (data.dictionary != nullptr) CollectRanges(*data.dictionary, source, ranges);
}

/// Bytes of `source` that `batch`'s buffers claim, each byte counted once.
int64_t ClaimedBytes(const arrow::RecordBatch& batch, const arrow::Buffer& source,
                     std::vector<std::pair<uintptr_t, uintptr_t>>& ranges) {
  ranges.clear();
  for (const auto& column : batch.column_data()) CollectRanges(*column, source, &ranges);
  std::sort(ranges.begin(), ranges.end());
  int64_t claimed = 0;
  uintptr_t covered = 0;  // ranges are merged as they come, in order
  for (const auto& [begin, end] : ranges) {
    const uintptr_t from = std::max(begin, covered);
    if (end > from) claimed += static_cast<int64_t>(end - from);
    covered = std::max(covered, end);
  }
  return claimed;
}

/// Runs the chosen validation on each batch before it is handed out, after checking that its
/// buffers lie in memory the producer wrote.
class ValidatingReader final : public arrow::RecordBatchReader {
 public:
  ValidatingReader(std::shared_ptr<arrow::ipc::RecordBatchStreamReader> inner,
                   std::shared_ptr<arrow::Buffer> source, Validation validation,
                   int64_t allocated_bytes)
      : inner_(std::move(inner)),
        source_(std::move(source)),
        validation_(validation),
        allocated_bytes_(allocated_bytes) {}

  std::shared_ptr<arrow::Schema> schema() const override { return inner_->schema(); }

  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    ARROW_RETURN_NOT_OK(inner_->ReadNext(batch));
    if (*batch == nullptr) return arrow::Status::OK();
    const int64_t index = index_++;
    auto status = CheckAllocated(**batch, index);
    if (status.ok()) status = internal::ValidateBatch(**batch, validation_, index);
    if (!status.ok()) batch->reset();
    return status;
  }

  arrow::Status Close() override { return inner_->Close(); }

 private:
  /// Reading a hole of a memfd allocates a page there: a consumer that read a batch whose
  /// buffers lie in holes would pay (in shmem) for what the producer never wrote.
  arrow::Status CheckAllocated(const arrow::RecordBatch& batch, int64_t index) {
    if (allocated_bytes_ < 0) return arrow::Status::OK();
    const int64_t claimed = ClaimedBytes(batch, *source_, ranges_);
    if (claimed <= allocated_bytes_) return arrow::Status::OK();
    return arrow::Status::Invalid("record batch ", index, "'s buffers claim ", claimed,
                                  " bytes of the memfd, which has only ", allocated_bytes_,
                                  " bytes allocated (st_blocks): the rest are holes the producer "
                                  "never wrote; refused before reading them");
  }

  std::shared_ptr<arrow::ipc::RecordBatchStreamReader> inner_;
  std::shared_ptr<arrow::Buffer> source_;
  Validation validation_;
  int64_t allocated_bytes_;
  int64_t index_ = 0;
  std::vector<std::pair<uintptr_t, uintptr_t>> ranges_;  // reused per batch
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
    if (buffer != nullptr && buffer->size() > 0 &&
        !stream.Contains(buffer->data(), buffer->size())) {
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

arrow::Result<std::shared_ptr<SharedStream>> SharedStream::Open(
    UniqueFd fd, const SharedStreamOptions& options) {
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
  struct stat st{};
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
    stream->allocated_bytes_ = static_cast<int64_t>(st.st_blocks) * 512;  // fixed by the seals
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
  return internal::OpenValidatedStream(buffer_, validation_, allocated_bytes_);
}

namespace internal {

arrow::Status ValidateBatch(const arrow::RecordBatch& batch, Validation validation, int64_t index) {
  auto status = validation == Validation::kFull ? batch.ValidateFull() : batch.Validate();
  return status.ok()
             ? status
             : status.WithMessage("record batch ", index, " is invalid: ", status.message());
}

arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> OpenValidatedStream(
    std::shared_ptr<arrow::Buffer> source, Validation validation, int64_t allocated_bytes) {
  auto input = std::make_shared<arrow::io::BufferReader>(source);
  ARROW_ASSIGN_OR_RAISE(auto reader, arrow::ipc::RecordBatchStreamReader::Open(
                                         std::make_unique<UncompressedMessageReader>(
                                             arrow::ipc::MessageReader::Open(std::move(input))),
                                         arrow::ipc::IpcReadOptions::Defaults()));
  ARROW_RETURN_NOT_OK(internal::CheckUtf8Names(*reader->schema()));
  return std::make_shared<ValidatingReader>(std::move(reader), std::move(source), validation,
                                            allocated_bytes);
}

}  // namespace internal

bool AllBuffersInside(const SharedStream& stream, const arrow::RecordBatch& batch) {
  for (const auto& column : batch.column_data()) {
    if (!DataInside(stream, *column)) return false;
  }
  return true;
}

}  // namespace shmarrow
