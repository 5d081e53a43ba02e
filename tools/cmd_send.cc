#include <arrow/io/file.h>
#include <arrow/ipc/reader.h>
#include <sys/stat.h>

#include <iostream>
#include <sstream>

#include "commands.h"
#include "data_gen.h"
#include "shmarrow/handover.h"
#include "shmarrow/stream_writer.h"
#include "shmarrow/summary.h"

namespace shmarrow::cli {
namespace {

/// Opens an Arrow IPC file (or stream) whose reads allocate from `pool`, so that republishing
/// the batches needs no copy.
arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> OpenIpc(const std::string& path,
                                                                 arrow::MemoryPool* pool) {
  ARROW_ASSIGN_OR_RAISE(auto file, arrow::io::ReadableFile::Open(path, pool));
  auto options = arrow::ipc::IpcReadOptions::Defaults();
  options.memory_pool = pool;
  auto as_file = arrow::ipc::RecordBatchFileReader::Open(file, options);
  if (as_file.ok()) {
    ARROW_ASSIGN_OR_RAISE(auto batches, (*as_file)->ToRecordBatches());
    return arrow::RecordBatchReader::Make(std::move(batches), (*as_file)->schema());
  }
  ARROW_RETURN_NOT_OK(file->Seek(0));
  return arrow::ipc::RecordBatchStreamReader::Open(file, options);
}

}  // namespace

arrow::Status RunSend(Args& args) {
  const std::string socket = args.String("--socket", kDefaultSocketPath);
  ARROW_ASSIGN_OR_RAISE(int64_t rows, args.Int("--rows", 100));
  ARROW_ASSIGN_OR_RAISE(int64_t batches, args.Int("--batches", 1));
  const std::string spec = args.String("--schema", "rand:int32");
  ARROW_ASSIGN_OR_RAISE(double null_fraction, args.Double("--null-fraction", 0.0));
  ARROW_ASSIGN_OR_RAISE(int64_t seed, args.Int("--seed", 1));
  const std::string from = args.String("--from", "");
  ARROW_ASSIGN_OR_RAISE(int64_t clients, args.Int("--clients", 1));
  ARROW_ASSIGN_OR_RAISE(int64_t accept_timeout_ms, args.Int("--accept-timeout-ms", -1));
  WriterOptions writer_options;
  ARROW_ASSIGN_OR_RAISE(writer_options.capacity, args.Int("--capacity", writer_options.capacity));
  const bool json = args.Flag("--json");
  ARROW_RETURN_NOT_OK(args.CheckAllUsed());
  if (rows < 0 || batches < 1 || clients < 1 || !(null_fraction >= 0 && null_fraction <= 1)) {
    return arrow::Status::Invalid("need --rows >= 0, --batches >= 1, --clients >= 1 and "
                                  "--null-fraction in [0, 1]");
  }

  std::shared_ptr<arrow::Schema> schema;
  if (from.empty()) {
    ARROW_ASSIGN_OR_RAISE(schema, ParseSchemaSpec(spec));
  } else {
    ARROW_ASSIGN_OR_RAISE(auto probe, OpenIpc(from, arrow::default_memory_pool()));
    schema = probe->schema();
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
    ARROW_ASSIGN_OR_RAISE(auto reader, OpenIpc(from, writer->pool()));
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto batch, reader->Next());
      if (batch == nullptr) break;
      ARROW_RETURN_NOT_OK(publish(batch));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto sealed, writer->Finish());

  struct stat st {};
  ::fstat(sealed.fd.get(), &st);
  const auto& stats = writer->stats();
  if (json) {
    std::ostringstream extra;
    extra << "\"memfd\":{\"inode\":" << st.st_ino << ",\"bytes\":" << sealed.size
          << "},\"placement\":{\"bytes_in_place\":" << stats.bytes_in_place
          << ",\"bytes_copied\":" << stats.bytes_copied
          << ",\"metadata_bytes\":" << stats.metadata_bytes << "},\"socket\":" << JsonQuote(socket);
    std::cout << summary.ToJson(extra.str()) << std::endl;
  } else {
    std::cerr << "shmarrow send: " << summary.batches() << " batches, " << summary.rows()
              << " rows in a sealed " << sealed.size << "-byte memfd (" << stats.bytes_copied
              << " body bytes copied); serving " << clients << " client(s) on " << socket
              << std::endl;
  }
  ServeOptions serve;
  serve.clients = static_cast<int>(clients);
  serve.accept_timeout_ms = static_cast<int>(accept_timeout_ms);
  return ServeFd(socket, sealed.fd.get(), serve);
}

}  // namespace shmarrow::cli
