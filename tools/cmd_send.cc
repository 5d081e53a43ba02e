#include <arrow/io/file.h>
#include <arrow/ipc/reader.h>
#include <sys/stat.h>

#include <iostream>
#include <sstream>

#include "commands.h"
#include "data_gen.h"
#include "file_kind.h"
#include "shmarrow/handover.h"
#include "shmarrow/stream_writer.h"
#include "shmarrow/summary.h"

namespace shmarrow::cli {
namespace {

/// A file whose asynchronous reads happen synchronously, in the caller's thread. Arrow's IPC
/// readers read through ReadAsync; the default runs the read on Arrow's IO thread pool, whose
/// worker may drop the result buffer (allocated from the arena's pool) after the arena is gone,
/// even at exit. Here every buffer read has only the owners the caller can see.
class SyncReadFile final : public arrow::io::RandomAccessFile {
 public:
  explicit SyncReadFile(std::shared_ptr<arrow::io::RandomAccessFile> file)
      : file_(std::move(file)) {}

  arrow::Status Close() override { return file_->Close(); }
  bool closed() const override { return file_->closed(); }
  arrow::Result<int64_t> Tell() const override { return file_->Tell(); }
  arrow::Status Seek(int64_t position) override { return file_->Seek(position); }
  arrow::Result<int64_t> GetSize() override { return file_->GetSize(); }
  arrow::Result<int64_t> Read(int64_t nbytes, void* out) override {
    return file_->Read(nbytes, out);
  }
  arrow::Result<std::shared_ptr<arrow::Buffer>> Read(int64_t nbytes) override {
    return file_->Read(nbytes);
  }
  arrow::Result<int64_t> ReadAt(int64_t position, int64_t nbytes, bool allow_short_read,
                                void* out) override {
    return file_->ReadAt(position, nbytes, allow_short_read, out);
  }
  arrow::Result<int64_t> ReadAt(int64_t position, int64_t nbytes, void* out) override {
    return file_->ReadAt(position, nbytes, out);
  }
  arrow::Result<std::shared_ptr<arrow::Buffer>> ReadAt(int64_t position, int64_t nbytes,
                                                       bool allow_short_read) override {
    return file_->ReadAt(position, nbytes, allow_short_read);
  }
  arrow::Result<std::shared_ptr<arrow::Buffer>> ReadAt(int64_t position, int64_t nbytes) override {
    return file_->ReadAt(position, nbytes);
  }
  arrow::Future<std::shared_ptr<arrow::Buffer>> ReadAsync(const arrow::io::IOContext&,
                                                          int64_t position, int64_t nbytes,
                                                          bool allow_short_read) override {
    return arrow::Future<std::shared_ptr<arrow::Buffer>>::MakeFinished(
        file_->ReadAt(position, nbytes, allow_short_read));
  }
  arrow::Future<std::shared_ptr<arrow::Buffer>> ReadAsync(const arrow::io::IOContext&,
                                                          int64_t position,
                                                          int64_t nbytes) override {
    return arrow::Future<std::shared_ptr<arrow::Buffer>>::MakeFinished(
        file_->ReadAt(position, nbytes));
  }

 private:
  std::shared_ptr<arrow::io::RandomAccessFile> file_;
};

/// Batches of an Arrow IPC file or stream, read one at a time into `pool`: each batch's body
/// lands in the arena right before it is published, so republishing copies nothing.
class IpcSource {
 public:
  static arrow::Result<IpcSource> Open(const std::string& path, arrow::MemoryPool* pool) {
    IpcSource source;
    ARROW_ASSIGN_OR_RAISE(auto readable, arrow::io::ReadableFile::Open(path, pool));
    auto file = std::make_shared<SyncReadFile>(std::move(readable));
    auto options = arrow::ipc::IpcReadOptions::Defaults();
    options.memory_pool = pool;
    auto as_file = arrow::ipc::RecordBatchFileReader::Open(file, options);
    if (as_file.ok()) {
      source.file_ = *as_file;
      source.schema_ = source.file_->schema();
      return source;
    }
    ARROW_RETURN_NOT_OK(file->Seek(0));
    ARROW_ASSIGN_OR_RAISE(source.stream_, arrow::ipc::RecordBatchStreamReader::Open(file, options));
    source.schema_ = source.stream_->schema();
    return source;
  }

  const std::shared_ptr<arrow::Schema>& schema() const { return schema_; }

  /// The next batch, or nullptr at the end.
  arrow::Result<std::shared_ptr<arrow::RecordBatch>> Next() {
    if (stream_ != nullptr) return stream_->Next();
    if (next_ >= file_->num_record_batches()) return nullptr;
    return file_->ReadRecordBatch(next_++);
  }

 private:
  std::shared_ptr<arrow::Schema> schema_;
  std::shared_ptr<arrow::ipc::RecordBatchFileReader> file_;
  std::shared_ptr<arrow::RecordBatchReader> stream_;
  int next_ = 0;
};

}  // namespace

arrow::Status RunSend(Args& args) {
  if (args.Has("--mode")) {
    const std::string mode = args.String("--mode", "");
    if (mode != "ring" && mode != "sealed") {
      return UsageError("--mode takes ring or sealed (leave it out for the single hand-over)");
    }
    return RunPublish(args, mode);
  }
  ARROW_ASSIGN_OR_RAISE(auto generator_options, ParseGeneratorOptions(args));
  const auto& [socket, rows, batches, spec, null_fraction, seed] = generator_options;
  const std::string from = args.String("--from", "");
  ARROW_ASSIGN_OR_RAISE(int64_t clients, args.Int("--clients", 1));
  ARROW_ASSIGN_OR_RAISE(int64_t accept_timeout_ms, args.Int("--accept-timeout-ms", -1));
  WriterOptions writer_options;
  ARROW_ASSIGN_OR_RAISE(writer_options.capacity, args.Bytes("--capacity", writer_options.capacity));
  const bool json = args.Flag("--json");
  ARROW_RETURN_NOT_OK(args.CheckAllUsed("needs --mode ring|sealed"));
  if (rows < 0 || batches < 1 || clients < 1 || !(null_fraction >= 0 && null_fraction <= 1)) {
    return UsageError(
        "need --rows >= 0, --batches >= 1, --clients >= 1 and "
        "--null-fraction in [0, 1]");
  }

  std::shared_ptr<arrow::Schema> schema;
  if (from.empty()) {
    auto parsed = ParseSchemaSpec(spec);
    if (!parsed.ok()) return UsageError("--schema: " + parsed.status().message());
    schema = *parsed;
  } else {
    ARROW_RETURN_NOT_OK(CheckLooksLikeArrowIpc(from));
    ARROW_ASSIGN_OR_RAISE(auto probe, IpcSource::Open(from, arrow::default_memory_pool()));
    schema = probe.schema();
  }
  ARROW_ASSIGN_OR_RAISE(auto writer, SharedStreamWriter::Open(schema, writer_options));
  StreamSummary summary(schema);
  auto publish = [&](const std::shared_ptr<arrow::RecordBatch>& batch) {
    summary.Add(*batch);
    return writer->WriteRecordBatch(*batch);
  };
  if (from.empty()) {
    BatchGenerator generator(schema, static_cast<uint64_t>(seed), null_fraction);
    for (int64_t i = 0; i < batches; ++i) {
      ARROW_ASSIGN_OR_RAISE(auto batch, generator.Next(rows, writer->pool()));
      ARROW_RETURN_NOT_OK(publish(batch));
    }
  } else {
    ARROW_ASSIGN_OR_RAISE(auto source, IpcSource::Open(from, writer->pool()));
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto batch, source.Next());
      if (batch == nullptr) break;
      ARROW_RETURN_NOT_OK(publish(batch));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto sealed, writer->Finish());

  struct stat st{};
  ::fstat(sealed.fd.get(), &st);
  const auto& stats = writer->stats();
  std::ostringstream announcement;
  if (json) {
    announcement << summary.ToJson(
        "\"memfd\":{\"inode\":" + std::to_string(st.st_ino) +
        ",\"bytes\":" + std::to_string(sealed.size) +
        "},\"placement\":{\"bytes_in_place\":" + std::to_string(stats.bytes_in_place) +
        ",\"bytes_copied\":" + std::to_string(stats.bytes_copied) + ",\"metadata_bytes\":" +
        std::to_string(stats.metadata_bytes) + "},\"socket\":" + JsonQuote(socket));
  } else {
    announcement << "shmarrow send: " << summary.batches() << " batches, " << summary.rows()
                 << " rows in a sealed " << sealed.size << "-byte memfd (" << stats.bytes_copied
                 << " body bytes copied); serving " << clients << " client(s) on " << socket;
  }
  ServeOptions serve;
  serve.clients = static_cast<int>(clients);
  serve.accept_timeout_ms = static_cast<int>(accept_timeout_ms);
  // Announced once consumers can connect, so a script may start them as soon as it reads it.
  serve.on_listening = [&] { (json ? std::cout : std::cerr) << announcement.str() << std::endl; };
  return ServeFd(socket, sealed.fd.get(), serve);
}

}  // namespace shmarrow::cli
