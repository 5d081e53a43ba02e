#include "report.h"

#include <arrow/array.h>
#include <arrow/scalar.h>
#include <arrow/type.h>

#include <cstdio>
#include <ostream>
#include <string>
#include <string_view>

#include "shmarrow/summary.h"

namespace shmarrow::cli {
namespace {

std::string RenderSchema(const arrow::Schema& schema) {
  std::string out;
  for (int i = 0; i < schema.num_fields(); ++i) {
    if (i) out += ", ";
    out += PrintableText(schema.field(i)->name()) + ": " + schema.field(i)->type()->ToString();
  }
  return out;
}

// At most this much of a string value is shown: a value may be as large as the memfd (and
// copying it whole would cost the consumer as much heap).
constexpr size_t kShownBytes = 256;

std::string Shown(std::string_view value) {
  if (value.size() <= kShownBytes) return PrintableText(value);
  return PrintableText(value.substr(0, kShownBytes)) + "... (" + std::to_string(value.size()) +
         " bytes)";
}

// The formatting both consumers share: null, true/false, integers in decimal, floats as C's %g,
// strings as their text (control characters escaped, long ones cut), anything else as Arrow
// prints the scalar.
std::string RenderValue(const arrow::Array& array, int64_t i) {
  if (array.IsNull(i)) return "null";
  switch (array.type_id()) {
    case arrow::Type::BOOL:
      return static_cast<const arrow::BooleanArray&>(array).Value(i) ? "true" : "false";
    case arrow::Type::FLOAT:
    case arrow::Type::DOUBLE: {
      const double value = array.type_id() == arrow::Type::FLOAT
                               ? static_cast<const arrow::FloatArray&>(array).Value(i)
                               : static_cast<const arrow::DoubleArray&>(array).Value(i);
      char text[64];
      std::snprintf(text, sizeof(text), "%g", value);
      return text;
    }
    case arrow::Type::STRING:
      return Shown(static_cast<const arrow::StringArray&>(array).GetView(i));
    case arrow::Type::LARGE_STRING:
      return Shown(static_cast<const arrow::LargeStringArray&>(array).GetView(i));
    default: {
      auto scalar = array.GetScalar(i);
      return scalar.ok() ? (*scalar)->ToString() : "?";
    }
  }
}

}  // namespace

void Report::Add(const std::shared_ptr<arrow::RecordBatch>& batch) {
  rows_ += batch->num_rows();
  for (int64_t row = 0; row < batch->num_rows() && static_cast<int64_t>(head_.size()) < kHeadRows;
       ++row) {
    std::string line;
    for (int c = 0; c < batch->num_columns(); ++c) {
      line += (c ? "\t" : "") + RenderValue(*batch->column(c), row);
    }
    head_.push_back(std::move(line));
  }
}

void Report::Print(std::ostream& out) const {
  const std::string schema = RenderSchema(*schema_);
  out << "RecordBatch schema: " << schema << "\n";
  for (const auto& field : schema_->fields()) {
    out << "Column name: " << PrintableText(field->name()) << "\n";
    out << "Column Arrow type: " << field->type()->ToString() << "\n";
  }
  out << "== Arrow Table Summary ==\n";
  out << "Schema      : " << schema << "\n";
  out << "Num Columns : " << schema_->num_fields() << "\n";
  out << "Num Rows    : " << rows_ << "\n\n";
  out << "== First " << kHeadRows << " Rows ==\n";
  for (int i = 0; i < schema_->num_fields(); ++i) {
    out << (i ? "\t" : "") << PrintableText(schema_->field(i)->name());
  }
  out << "\n" << std::string(40, '-') << "\n";
  for (const auto& line : head_) out << line << "\n";
}

}  // namespace shmarrow::cli
