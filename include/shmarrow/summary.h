// Summaries of a stream that two processes can compare: schema, counts, per-column checksums.
#pragma once

#include <arrow/record_batch.h>
#include <arrow/type_fwd.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace shmarrow {

/// Per-column checksum, position sensitive and independent of how rows are split into batches:
///   sum over rows i of  e_i * (2*i + 1)  (mod 2^64),
///   e_i = FNV-1a-64 of the value's bytes (little-endian fixed width; bool as one byte 0/1;
///         raw bytes for utf8/binary), or 0x9E3779B97F4A7C15 for a null.
/// Defined for bool, (u)int8..64, float32/64, date/time/timestamp/duration, utf8, binary (and
/// their large forms); other types have no checksum. docs/protocol.md specifies it for other
/// implementations (python/shmarrow/summary.py is one).
class StreamSummary {
 public:
  explicit StreamSummary(std::shared_ptr<arrow::Schema> schema);

  void Add(const arrow::RecordBatch& batch);

  [[nodiscard]] int64_t batches() const { return batches_; }
  [[nodiscard]] int64_t rows() const { return rows_; }
  /// Checksum of column i, or nullopt for types without one.
  [[nodiscard]] std::optional<uint64_t> checksum(int i) const;
  /// {"schema":[...],"batches":N,"rows":N,"columns":[{"name","type","null_count","checksum"}]}
  /// as compact JSON without a trailing newline. `extra` members (already JSON) are appended.
  [[nodiscard]] std::string ToJson(const std::string& extra = "") const;

 private:
  struct Column {
    bool supported = false;
    uint64_t checksum = 0;
    int64_t null_count = 0;
  };
  std::shared_ptr<arrow::Schema> schema_;
  std::vector<Column> columns_;
  int64_t batches_ = 0;
  int64_t rows_ = 0;
};

/// JSON string literal (quoted, escaped; a byte that is not UTF-8 becomes U+FFFD).
[[nodiscard]] std::string JsonQuote(const std::string& text);
/// Text from a peer (a field name, a value, an error) safe to print on a terminal: control
/// characters and bytes that are not UTF-8 become \xNN.
[[nodiscard]] std::string PrintableText(std::string_view text);

/// The summary's JSON around already-formatted parts: the schema from `schema`, the counts, the
/// `columns` array members (see ColumnJson) and `extra` members.
[[nodiscard]] std::string SummaryJson(const arrow::Schema& schema, int64_t batches, int64_t rows,
                                      const std::string& columns, const std::string& extra);
/// One member of the "columns" array.
[[nodiscard]] std::string ColumnJson(const arrow::Field& field, int64_t null_count,
                                     std::optional<uint64_t> checksum);

}  // namespace shmarrow
