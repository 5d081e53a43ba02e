// Schema checks shared by producer and consumer, and the schema's wire form.
#pragma once

#include <arrow/result.h>
#include <arrow/type_fwd.h>

#include <memory>
#include <string>
#include <vector>

#include "shmarrow/types.h"

namespace shmarrow::internal {

/// OK when `actual` satisfies `expected`; otherwise Invalid naming the fields and types on both
/// sides, e.g. "field 'a': expected int64, producer has int32".
[[nodiscard]] arrow::Status CheckSchema(const arrow::Schema& expected, const arrow::Schema& actual,
                                        SchemaMatch match);

/// Column indices of `names` in `schema`; an error names a missing column and the schema, or a
/// column asked for twice.
[[nodiscard]] arrow::Result<std::vector<int>> ProjectionIndices(
    const arrow::Schema& schema, const std::vector<std::string>& names);

/// The fields at `indices`, in that order, with the schema's metadata.
std::shared_ptr<arrow::Schema> ProjectSchema(const arrow::Schema& schema,
                                             const std::vector<int>& indices);

/// OK when no field of `schema` is or contains (nested, or as an extension's storage) a dictionary;
/// otherwise Invalid naming the field. Ring mode carries no dictionary batches, so a consumer must
/// refuse such a schema: Arrow's ReadRecordBatch without dictionaries dereferences a null memo.
[[nodiscard]] arrow::Status CheckNoDictionaries(const arrow::Schema& schema);

/// OK when every field name (nested ones too) is valid UTF-8, as Arrow's format requires;
/// otherwise Invalid naming the field. A peer's names reach Python strings and JSON.
[[nodiscard]] arrow::Status CheckUtf8Names(const arrow::Schema& schema);

/// The schema as an encapsulated Arrow IPC Schema message, and back.
[[nodiscard]] arrow::Result<std::string> SerializeSchema(const arrow::Schema& schema);
/// Deserializing also checks the names (CheckUtf8Names).
[[nodiscard]] arrow::Result<std::shared_ptr<arrow::Schema>> DeserializeSchema(
    const std::string& bytes);

/// "a: int32, b: string"
std::string DescribeSchema(const arrow::Schema& schema);

}  // namespace shmarrow::internal
