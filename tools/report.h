// The human-readable report of `shmarrow recv` (same text as `python -m shmarrow.recv`).
#pragma once

#include <arrow/record_batch.h>

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <vector>

namespace shmarrow::cli {

/// Collects what the report needs while batches stream by: only the first rows are kept.
class Report {
 public:
  static constexpr int64_t kHeadRows = 10;

  explicit Report(std::shared_ptr<arrow::Schema> schema) : schema_(std::move(schema)) {}
  void Add(const std::shared_ptr<arrow::RecordBatch>& batch);
  void Print(std::ostream& out) const;

 private:
  std::shared_ptr<arrow::Schema> schema_;
  std::vector<std::shared_ptr<arrow::RecordBatch>> head_;
  int64_t head_rows_ = 0;
  int64_t rows_ = 0;
};

}  // namespace shmarrow::cli
