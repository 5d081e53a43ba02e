#include "summary_by_name.h"

#include <arrow/array.h>
#include <arrow/type.h>

#include <algorithm>
#include <cstdio>

namespace shmarrow::cli {
namespace {

constexpr uint64_t kNullHash = 0x9E3779B97F4A7C15ULL;  // docs/protocol.md
constexpr int64_t kPaddingChunk = 1 << 16;

/// Names of `schema`'s fields made unique by occurrence: "a", "b", "a" -> keys a#0, b#0, a#1.
template <typename OnField>
void ForEachKeyed(const arrow::Schema& schema, OnField&& on_field) {
  std::map<std::string, int> seen;
  for (int i = 0; i < schema.num_fields(); ++i) {
    const auto& name = schema.field(i)->name();
    on_field(i, name, seen[name]++);
  }
}

}  // namespace

std::string SummaryByName::Key(const std::string& name, int occurrence) {
  return name + '\0' + std::to_string(occurrence);
}

arrow::Status SummaryByName::CatchUp(Column& column) {
  // Rows before the column appeared (or while it was absent) are fed as nulls so that the
  // column's own row numbers stay those of the stream; what they add is subtracted at the end.
  if (!column.summary->checksum(0).has_value()) return arrow::Status::OK();  // nothing to number
  while (column.summary->rows() < rows_) {
    const int64_t first = column.summary->rows();
    const int64_t count = std::min(kPaddingChunk, rows_ - first);
    if (column.nulls == nullptr) {
      ARROW_ASSIGN_OR_RAISE(column.nulls,
                            arrow::MakeArrayOfNull(column.schema->field(0)->type(), kPaddingChunk));
    }
    auto padding = arrow::RecordBatch::Make(column.schema, count, {column.nulls->Slice(0, count)});
    column.summary->Add(*padding);
    // sum over rows j in [first, first + count) of (2j + 1) = (first + count)^2 - first^2
    const auto end = static_cast<uint64_t>(first + count);
    const auto begin = static_cast<uint64_t>(first);
    column.padding += kNullHash * (end * end - begin * begin);
  }
  return arrow::Status::OK();
}

arrow::Status SummaryByName::Add(const arrow::RecordBatch& batch) {
  const auto& schema = *batch.schema();
  arrow::Status status;
  ForEachKeyed(schema, [&](int i, const std::string& name, int occurrence) {
    if (!status.ok()) return;
    const auto& field = schema.field(i);
    Column& column = columns_[Key(name, occurrence)];
    if (column.summary == nullptr || !column.schema->field(0)->type()->Equals(*field->type())) {
      column = Column{};
      column.schema = arrow::schema({field});
      column.summary = std::make_unique<StreamSummary>(column.schema);
    }
    status = CatchUp(column);
    if (!status.ok()) return;
    const auto& array = batch.column(i);
    column.summary->Add(*arrow::RecordBatch::Make(column.schema, batch.num_rows(), {array}));
    column.null_count += array->null_count();
  });
  ARROW_RETURN_NOT_OK(status);
  ++batches_;
  rows_ += batch.num_rows();
  return arrow::Status::OK();
}

std::string SummaryByName::ToJson(const std::string& extra) const {
  std::string columns;
  ForEachKeyed(*schema_, [&](int i, const std::string& name, int occurrence) {
    const auto& field = *schema_->field(i);
    int64_t null_count = 0;
    std::optional<uint64_t> checksum;
    auto it = columns_.find(Key(name, occurrence));
    if (it != columns_.end() && it->second.schema->field(0)->type()->Equals(*field.type())) {
      null_count = it->second.null_count;
      checksum = it->second.summary->checksum(0);
      if (checksum) *checksum -= it->second.padding;
    } else {
      checksum = StreamSummary(arrow::schema({schema_->field(i)})).checksum(0);  // no rows yet
    }
    if (i) columns += ",";
    columns += ColumnJson(field, null_count, checksum);
  });
  return SummaryJson(*schema_, batches_, rows_, columns, extra);
}

}  // namespace shmarrow::cli
