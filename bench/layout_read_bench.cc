// layout_read_bench: what a ring consumer spends making one small batch (1 row; t int64, id int64,
// value float64) out of its Message and validating it fully, in one process with no transport:
// Arrow's reader (ReadRecordBatch) then ValidateFull; the stream's remembered layout
// (BatchLayout::Build, src/metadata_template.h) then ValidateFull; and the layout checked as the
// consumer checks it (BatchLayout::Valid, ValidateFull only where it doubts).
//
//   layout_read_bench [--batches N (default 1000000)] [--reps R (default 3)]
//
// Prints one JSON line: per route the nanoseconds a batch of each repetition (the routes
// interleaved within a repetition).
#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/api.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "metadata_template.h"

namespace {

arrow::Status Run(int64_t batches, int reps) {
  const auto schema =
      arrow::schema({arrow::field("t", arrow::int64()), arrow::field("id", arrow::int64()),
                     arrow::field("value", arrow::float64())});
  std::vector<std::shared_ptr<arrow::Array>> arrays;
  for (int c = 0; c < 3; ++c) {
    ARROW_ASSIGN_OR_RAISE(std::shared_ptr<arrow::Buffer> values, arrow::AllocateBuffer(8));
    std::memset(values->mutable_data(), 0, 8);
    arrays.push_back(arrow::MakeArray(
        arrow::ArrayData::Make(schema->field(c)->type(), 1, {nullptr, std::move(values)}, 0)));
  }
  const auto batch = arrow::RecordBatch::Make(schema, 1, arrays);
  ARROW_ASSIGN_OR_RAISE(auto serialized,
                        arrow::ipc::SerializeRecordBatch(*batch, arrow::ipc::IpcWriteOptions{}));
  arrow::io::BufferReader reader(serialized);
  ARROW_ASSIGN_OR_RAISE(auto message, arrow::ipc::ReadMessage(&reader));
  const std::shared_ptr<arrow::Buffer> body = message->body();
  const arrow::Buffer& metadata = *message->metadata();

  shmarrow::internal::BatchLayout layout;
  size_t arena_bytes = 0;  // as a consumer sizes each batch's arena: what the one before needed
  auto build = [&] {
    auto arena = shmarrow::internal::BatchArena::Create(arena_bytes);
    auto built = layout.Build(metadata.data(), metadata.size(), schema, *body, arena.get());
    arena_bytes = arena->wanted();
    return built;
  };
  layout.Remember(metadata, schema);
  using Clock = std::chrono::steady_clock;
  auto per_batch = [batches](Clock::time_point start) {
    return std::chrono::duration<double, std::nano>(Clock::now() - start).count() /
           static_cast<double>(batches);
  };
  std::string arrow_ns, layout_ns, layout_checked_ns;
  for (int rep = 0; rep < reps; ++rep) {
    auto start = Clock::now();
    for (int64_t i = 0; i < batches; ++i) {
      arrow::io::BufferReader source(body);
      ARROW_ASSIGN_OR_RAISE(auto read,
                            arrow::ipc::ReadRecordBatch(metadata, schema, nullptr,
                                                        arrow::ipc::IpcReadOptions{}, &source));
      ARROW_RETURN_NOT_OK(read->ValidateFull());
    }
    arrow_ns += (rep ? "," : "") + std::to_string(per_batch(start));
    start = Clock::now();
    for (int64_t i = 0; i < batches; ++i) {
      auto built = build();
      if (built == nullptr) return arrow::Status::Invalid("the layout was not followed");
      ARROW_RETURN_NOT_OK(built->ValidateFull());
    }
    layout_ns += (rep ? "," : "") + std::to_string(per_batch(start));
    start = Clock::now();
    for (int64_t i = 0; i < batches; ++i) {
      auto built = build();
      if (built == nullptr) return arrow::Status::Invalid("the layout was not followed");
      if (!layout.Valid(*built)) return arrow::Status::Invalid("the layout's check refused");
    }
    layout_checked_ns += (rep ? "," : "") + std::to_string(per_batch(start));
  }
  std::cout << "{\"batches\":" << batches << ",\"arrow_reader_ns\":[" << arrow_ns
            << "],\"layout_ns\":[" << layout_ns << "],\"layout_checked_ns\":[" << layout_checked_ns
            << "]}" << std::endl;
  return arrow::Status::OK();
}

}  // namespace

int main(int argc, char** argv) {
  int64_t batches = 1000000;
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    if (key == "--batches") batches = std::stoll(argv[i + 1]);
    if (key == "--reps") reps = std::stoi(argv[i + 1]);
  }
  const auto status = Run(batches, reps);
  if (!status.ok()) {
    std::cerr << status.ToString() << std::endl;
    return 1;
  }
  return 0;
}
