// The human-readable report of `shmarrow recv` (same text as `python -m shmarrow.recv`).
#pragma once

#include <arrow/record_batch.h>

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

namespace shmarrow::cli {

/// Collects what the report needs while batches stream by: the first rows, rendered as text at
/// once, so that the report keeps no batch (nor the shared memory it lives in) alive.
class Report {
 public:
  static constexpr int64_t kHeadRows = 10;

  explicit Report(std::shared_ptr<arrow::Schema> schema) : schema_(std::move(schema)) {}
  /// The schema the report prints (after a schema change: the stream's last one).
  void SetSchema(std::shared_ptr<arrow::Schema> schema) { schema_ = std::move(schema); }
  void Add(const std::shared_ptr<arrow::RecordBatch>& batch);
  void Print(std::ostream& out) const;

 private:
  std::shared_ptr<arrow::Schema> schema_;
  std::vector<std::string> head_;  // one tab-separated line per row
  int64_t rows_ = 0;
};

}  // namespace shmarrow::cli
