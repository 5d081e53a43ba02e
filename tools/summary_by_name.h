// The JSON summary of `shmarrow send --mode` and `shmarrow recv`, for streams whose schema may
// change midway (Producer::ChangeSchema).
#pragma once

#include <arrow/record_batch.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "shmarrow/summary.h"

namespace shmarrow::cli {

/// The same JSON as shmarrow::StreamSummary (and the same checksums: for a stream whose schema
/// never changes the two are identical), but columns are followed by name, batch by batch:
///
/// * the summary reports the schema set last with SetSchema (the stream's schema at its end);
/// * each of its columns sums the rows of every batch that has a column of that name and type,
///   with row numbers counted over the whole stream; rows of batches without the column add
///   nothing to its checksum or null count (a column added midway starts at the row where it
///   appears; a column whose type changed counts from its first batch with the new type).
class SummaryByName {
 public:
  explicit SummaryByName(std::shared_ptr<arrow::Schema> schema) : schema_(std::move(schema)) {}

  void SetSchema(std::shared_ptr<arrow::Schema> schema) { schema_ = std::move(schema); }
  [[nodiscard]] arrow::Status Add(const arrow::RecordBatch& batch);

  [[nodiscard]] int64_t batches() const { return batches_; }
  [[nodiscard]] int64_t rows() const { return rows_; }
  /// {"schema":[...],"batches":N,"rows":N,"columns":[...]} plus `extra` members, one line.
  [[nodiscard]] std::string ToJson(const std::string& extra = "") const;

 private:
  struct Column {
    std::shared_ptr<arrow::Schema> schema;  // just this column
    std::unique_ptr<StreamSummary> summary;
    std::shared_ptr<arrow::Array> nulls;  // padding for rows without the column
    int64_t null_count = 0;
    uint64_t padding = 0;  // what the padding added to the checksum
  };
  /// Key of the `occurrence`-th field named `name` (duplicate names are followed by position).
  static std::string Key(const std::string& name, int occurrence);
  [[nodiscard]] arrow::Status CatchUp(Column& column);

  std::shared_ptr<arrow::Schema> schema_;
  std::map<std::string, Column> columns_;
  int64_t batches_ = 0;
  int64_t rows_ = 0;
};

}  // namespace shmarrow::cli
