// Every IPC file of the Arrow integration corpus, read straight into the arena (the file reader
// allocates from the writer's pool), published as a shared stream, read back and compared with
// the same file read on the heap. Files without compression or dictionaries must cost no copy.
#include <arrow/api.h>
#include <arrow/extension_type.h>
#include <arrow/io/file.h>
#include <arrow/ipc/reader.h>
#include <arrow/util/thread_pool.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "schema_match.h"
#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

namespace fs = std::filesystem;

constexpr const char* kAbsent = "";

fs::path CorpusRoot() { return fs::path(SHMARROW_SOURCE_DIR) / ".." / "shared" / "arrow-testing"; }

fs::path CorpusDir() { return CorpusRoot() / "arrow-ipc-stream" / "integration"; }

/// Paths of the corpus files relative to CorpusDir(), sorted; {kAbsent} when the corpus is absent.
std::vector<std::string> CorpusFiles() {
  std::vector<std::string> files;
  std::error_code error;
  if (fs::is_directory(CorpusDir(), error)) {
    for (const auto& entry : fs::recursive_directory_iterator(CorpusDir(), error)) {
      if (entry.is_regular_file() && entry.path().extension() == ".arrow_file") {
        files.push_back(fs::relative(entry.path(), CorpusDir()).string());
      }
    }
  }
  std::sort(files.begin(), files.end());
  if (files.empty()) files.push_back(kAbsent);
  return files;
}

/// Every batch of an IPC file, read with Arrow's defaults (heap).
arrow::Result<std::vector<std::shared_ptr<arrow::RecordBatch>>> ReadOnHeap(
    const std::string& path, std::shared_ptr<arrow::Schema>* schema) {
  ARROW_ASSIGN_OR_RAISE(auto file, arrow::io::ReadableFile::Open(path));
  ARROW_ASSIGN_OR_RAISE(auto reader, arrow::ipc::RecordBatchFileReader::Open(file));
  *schema = reader->schema();
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  for (int i = 0; i < reader->num_record_batches(); ++i) {
    ARROW_ASSIGN_OR_RAISE(auto batch, reader->ReadRecordBatch(i));
    ARROW_RETURN_NOT_OK(batch->ValidateFull());
    batches.push_back(std::move(batch));
  }
  return batches;
}

class Corpus : public ::testing::TestWithParam<std::string> {};

TEST_P(Corpus, RoundTripsThroughSharedMemory) {
  if (GetParam() == kAbsent) {
    GTEST_SKIP() << "../shared/arrow-testing not present (looked for " << CorpusDir().string()
                 << ")";
  }
  const std::string path = (CorpusDir() / GetParam()).string();
  std::shared_ptr<arrow::Schema> schema;
  auto originals = ReadOnHeap(path, &schema);
  if (!originals.ok()) {
    GTEST_SKIP() << "Arrow's own reader rejects " << GetParam() << ": "
                 << originals.status().ToString();
  }

  WriterOptions options;
  options.capacity = int64_t{1} << 30;
  options.name = "corpus";
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, options));
  // Declared after the writer: these arena batches go first.
  std::vector<std::shared_ptr<arrow::RecordBatch>> placed;
  {
    ASSERT_OK_AND_ASSIGN(auto file, arrow::io::ReadableFile::Open(path, writer->pool()));
    auto read_options = arrow::ipc::IpcReadOptions::Defaults();
    read_options.memory_pool = writer->pool();
    read_options.use_threads = false;
    ASSERT_OK_AND_ASSIGN(auto reader, arrow::ipc::RecordBatchFileReader::Open(file, read_options));
    ASSERT_EQ(reader->num_record_batches(), static_cast<int>(originals->size()));
    for (int i = 0; i < reader->num_record_batches(); ++i) {
      ASSERT_OK_AND_ASSIGN(auto batch, reader->ReadRecordBatch(i));
      ASSERT_OK(writer->WriteRecordBatch(*batch));
      placed.push_back(std::move(batch));
    }
  }
  // Opening a file reader reads the footer with ReadAsync on Arrow's IO thread pool: the task
  // that read it into the arena may drop its last reference to that buffer after we got the
  // result. Wait for the pool to go idle so no arena buffer is freed after the writer is gone.
  if (auto* io_pool =
          dynamic_cast<arrow::internal::ThreadPool*>(arrow::io::default_io_context().executor())) {
    io_pool->WaitForIdle();
  }
  ASSERT_OK_AND_ASSIGN(test_util::ReadBack back, test_util::FinishAndRead(*writer));

  ASSERT_EQ(back.batches.size(), originals->size());
  for (size_t i = 0; i < originals->size(); ++i) {
    SCOPED_TRACE("batch " + std::to_string(i));
    EXPECT_TRUE(back.batches[i]->Equals(*(*originals)[i], /*check_metadata=*/true))
        << "read back:\n"
        << back.batches[i]->ToString() << "\noriginal:\n"
        << (*originals)[i]->ToString();
    EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[i]));
  }
  ASSERT_OK_AND_ASSIGN(auto reader, back.stream->OpenReader());
  EXPECT_TRUE(reader->schema()->Equals(*schema, /*check_metadata=*/true));

  const PlacementStats& stats = writer->stats();
  const bool compressed = GetParam().find("compression") != std::string::npos;
  const bool dictionaries = !internal::CheckNoDictionaries(*schema).ok();
  RecordProperty("bytes_copied", std::to_string(stats.bytes_copied));
  RecordProperty("bytes_in_place", std::to_string(stats.bytes_in_place));
  std::cout << "[corpus] " << GetParam() << ": batches=" << stats.record_batches
            << " dictionaries=" << stats.dictionary_batches << " in_place=" << stats.bytes_in_place
            << " copied=" << stats.bytes_copied << (compressed ? " (compressed)" : "")
            << (dictionaries ? " (dictionary schema)" : "") << std::endl;
  EXPECT_EQ(stats.record_batches, static_cast<int64_t>(originals->size()));
  if (!compressed && !dictionaries) {
    EXPECT_EQ(stats.bytes_copied, 0) << "a file read into the arena batch by batch was copied";
  }
}

INSTANTIATE_TEST_SUITE_P(ArrowTesting, Corpus, ::testing::ValuesIn(CorpusFiles()),
                         [](const ::testing::TestParamInfo<std::string>& info) {
                           if (info.param.empty()) return std::string("absent");
                           std::string name = info.param;
                           for (auto& c : name) {
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace shmarrow
