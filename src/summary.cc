#include "shmarrow/summary.h"

#include <arrow/array.h>
#include <arrow/type.h>
#include <arrow/visit_type_inline.h>

#include <cstdio>
#include <cstring>
#include <sstream>

#include "protocol.h"

namespace shmarrow {
namespace {

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ULL;
constexpr uint64_t kFnvPrime = 0x100000001b3ULL;
constexpr uint64_t kNullHash = 0x9E3779B97F4A7C15ULL;

uint64_t Fnv1a(const uint8_t* bytes, size_t length) {
  uint64_t hash = kFnvOffset;
  for (size_t i = 0; i < length; ++i) {
    hash ^= bytes[i];
    hash *= kFnvPrime;
  }
  return hash;
}

/// Adds one array's contribution, rows numbered from `first_row`. Returns false for a type
/// without a checksum definition.
struct ChecksumVisitor {
  const arrow::Array& array;
  int64_t first_row;
  uint64_t* sum;

  void AddHash(int64_t i, uint64_t element_hash) const {
    *sum += element_hash * (2 * static_cast<uint64_t>(first_row + i) + 1);
  }

  template <typename Hasher>
  void ForEach(Hasher&& hash_of) const {
    for (int64_t i = 0; i < array.length(); ++i) {
      AddHash(i, array.IsNull(i) ? kNullHash : hash_of(i));
    }
  }

  arrow::Status Visit(const arrow::BooleanType&) {
    const auto& bools = static_cast<const arrow::BooleanArray&>(array);
    ForEach([&](int64_t i) {
      const uint8_t byte = bools.Value(i) ? 1 : 0;
      return Fnv1a(&byte, 1);
    });
    return arrow::Status::OK();
  }

  // Fixed-width types hashed by their little-endian bytes (the documented list, nothing more).
  template <typename T>
  static constexpr bool kFixedWidth =
      arrow::is_integer_type<T>::value || std::is_same_v<T, arrow::FloatType> ||
      std::is_same_v<T, arrow::DoubleType> || arrow::is_date_type<T>::value ||
      arrow::is_time_type<T>::value || std::is_same_v<T, arrow::TimestampType> ||
      std::is_same_v<T, arrow::DurationType>;

  template <typename T>
  std::enable_if_t<kFixedWidth<T>, arrow::Status> Visit(const T&) {
    using CType = typename T::c_type;
    const auto* values = array.data()->GetValues<CType>(1);
    ForEach([&](int64_t i) {
      return Fnv1a(reinterpret_cast<const uint8_t*>(values + i), sizeof(CType));
    });
    return arrow::Status::OK();
  }

  template <typename T>
  std::enable_if_t<arrow::is_base_binary_type<T>::value, arrow::Status> Visit(const T&) {
    const auto& binary = static_cast<const typename arrow::TypeTraits<T>::ArrayType&>(array);
    ForEach([&](int64_t i) {
      const auto view = binary.GetView(i);
      return Fnv1a(reinterpret_cast<const uint8_t*>(view.data()), view.size());
    });
    return arrow::Status::OK();
  }

  arrow::Status Visit(const arrow::DataType& type) {
    return arrow::Status::NotImplemented("no checksum for ", type.ToString());
  }
};

std::string Hex(uint64_t value) {
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace

std::string JsonQuote(const std::string& text) {
  std::string out = "\"";
  for (size_t i = 0; i < text.size();) {
    const size_t length = internal::protocol::Utf8SequenceLength(text, i);
    if (length == 0) {  // JSON is Unicode text: a byte that is not UTF-8 becomes U+FFFD
      out += "\\ufffd";
      ++i;
      continue;
    }
    const auto c = static_cast<unsigned char>(text[i]);
    i += length;
    if (length > 1) {
      out.append(text, i - length, length);
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char escaped[7];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", c);
          out += escaped;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string PrintableText(std::string_view text) { return internal::protocol::Printable(text); }

StreamSummary::StreamSummary(std::shared_ptr<arrow::Schema> schema)
    : schema_(std::move(schema)), columns_(schema_->num_fields()) {
  for (int i = 0; i < schema_->num_fields(); ++i) {
    auto probe = arrow::MakeArrayOfNull(schema_->field(i)->type(), 0);
    uint64_t ignored = 0;
    if (!probe.ok()) continue;
    ChecksumVisitor visitor{**probe, 0, &ignored};
    columns_[i].supported = arrow::VisitTypeInline(*schema_->field(i)->type(), &visitor).ok();
  }
}

void StreamSummary::Add(const arrow::RecordBatch& batch) {
  for (int i = 0; i < batch.num_columns() && i < static_cast<int>(columns_.size()); ++i) {
    const auto& array = *batch.column(i);
    columns_[i].null_count += array.null_count();
    if (columns_[i].supported) {
      ChecksumVisitor visitor{array, rows_, &columns_[i].checksum};
      (void)arrow::VisitTypeInline(*array.type(), &visitor);
    }
  }
  ++batches_;
  rows_ += batch.num_rows();
}

std::optional<uint64_t> StreamSummary::checksum(int i) const {
  if (!columns_.at(i).supported) return std::nullopt;
  return columns_[i].checksum;
}

std::string SummaryJson(const arrow::Schema& schema, int64_t batches, int64_t rows,
                        const std::string& columns, const std::string& extra) {
  std::ostringstream out;
  out << "{\"schema\":[";
  for (int i = 0; i < schema.num_fields(); ++i) {
    const auto& field = *schema.field(i);
    out << (i ? "," : "") << "{\"name\":" << JsonQuote(field.name())
        << ",\"type\":" << JsonQuote(field.type()->ToString())
        << ",\"nullable\":" << (field.nullable() ? "true" : "false") << "}";
  }
  out << "],\"batches\":" << batches << ",\"rows\":" << rows << ",\"columns\":[" << columns << "]";
  if (!extra.empty()) out << "," << extra;
  out << "}";
  return out.str();
}

std::string ColumnJson(const arrow::Field& field, int64_t null_count,
                       std::optional<uint64_t> checksum) {
  return "{\"name\":" + JsonQuote(field.name()) +
         ",\"type\":" + JsonQuote(field.type()->ToString()) +
         ",\"null_count\":" + std::to_string(null_count) +
         ",\"checksum\":" + (checksum ? JsonQuote(Hex(*checksum)) : "null") + "}";
}

std::string StreamSummary::ToJson(const std::string& extra) const {
  std::string columns;
  for (int i = 0; i < schema_->num_fields(); ++i) {
    if (i) columns += ",";
    columns += ColumnJson(*schema_->field(i), columns_[i].null_count, checksum(i));
  }
  return SummaryJson(*schema_, batches_, rows_, columns, extra);
}

}  // namespace shmarrow
