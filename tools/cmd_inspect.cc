#include <arrow/buffer.h>
#include <arrow/io/file.h>
#include <arrow/ipc/reader.h>

#include <iostream>

#include "commands.h"
#include "file_kind.h"
#include "shmarrow/summary.h"

namespace shmarrow::cli {
namespace {

constexpr char kFileMagic[] = "ARROW1";

arrow::Status ValidateBatch(const arrow::RecordBatch& batch, int index) {
  auto status = batch.ValidateFull();
  return status.ok() ? status : status.WithMessage("batch ", index, ": ", status.message());
}

/// Reads every batch of an IPC file or stream with full validation; `on_batch` sees each one.
template <typename OnBatch>
arrow::Result<std::shared_ptr<arrow::Schema>> ReadAll(const std::string& path, bool* is_file,
                                                      OnBatch&& on_batch) {
  ARROW_ASSIGN_OR_RAISE(auto file, arrow::io::ReadableFile::Open(path));
  ARROW_ASSIGN_OR_RAISE(auto magic, file->ReadAt(0, sizeof(kFileMagic) - 1));
  *is_file = magic->ToString() == kFileMagic;
  ARROW_RETURN_NOT_OK(file->Seek(0));  // ReadAt leaves the implicit position undefined
  auto options = arrow::ipc::IpcReadOptions::Defaults();
  std::shared_ptr<arrow::RecordBatchReader> reader;
  if (*is_file) {
    ARROW_ASSIGN_OR_RAISE(auto file_reader, arrow::ipc::RecordBatchFileReader::Open(file, options));
    for (int i = 0; i < file_reader->num_record_batches(); ++i) {
      ARROW_ASSIGN_OR_RAISE(auto batch, file_reader->ReadRecordBatch(i));
      ARROW_RETURN_NOT_OK(ValidateBatch(*batch, i));
      on_batch(batch);
    }
    return file_reader->schema();
  }
  ARROW_ASSIGN_OR_RAISE(auto stream_reader,
                        arrow::ipc::RecordBatchStreamReader::Open(file, options));
  for (int i = 0;; ++i) {
    ARROW_ASSIGN_OR_RAISE(auto batch, stream_reader->Next());
    if (batch == nullptr) break;
    ARROW_RETURN_NOT_OK(ValidateBatch(*batch, i));
    on_batch(batch);
  }
  return stream_reader->schema();
}

}  // namespace

arrow::Status RunInspect(Args& args) {
  const bool json = args.Flag("--json");
  ARROW_RETURN_NOT_OK(args.CheckAllUsed("does not apply to inspect"));
  if (args.positional().size() != 1) return UsageError("inspect takes one FILE");
  const std::string& path = args.positional()[0];
  ARROW_RETURN_NOT_OK(CheckLooksLikeArrowIpc(path));

  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  bool is_file = false;
  auto schema = ReadAll(path, &is_file, [&](std::shared_ptr<arrow::RecordBatch> batch) {
    batches.push_back(std::move(batch));
  });
  if (!schema.ok()) return schema.status().WithMessage(path, ": ", schema.status().message());

  StreamSummary summary(*schema);
  for (const auto& batch : batches) summary.Add(*batch);
  const std::string format = is_file ? "file" : "stream";
  if (json) {
    std::cout << summary.ToJson("\"format\":\"" + format + "\"") << std::endl;
    return arrow::Status::OK();
  }
  std::cout << path << ": valid Arrow IPC " << format << (is_file ? " (Feather v2)" : "") << "\n"
            << "schema:\n"
            << (*schema)->ToString() << "\n"
            << summary.batches() << " record batches, " << summary.rows() << " rows\n";
  for (size_t i = 0; i < batches.size(); ++i) {
    std::cout << "  batch " << i << ": " << batches[i]->num_rows() << " rows\n";
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
