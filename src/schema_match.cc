#include "schema_match.h"

#include <arrow/buffer.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/dictionary.h>
#include <arrow/ipc/reader.h>
#include <arrow/ipc/writer.h>
#include <arrow/extension_type.h>
#include <arrow/type.h>

#include <algorithm>

#include "protocol.h"
#include "shmarrow/error.h"

namespace shmarrow::internal {

std::string DescribeSchema(const arrow::Schema& schema) {
  std::string out;
  for (int i = 0; i < schema.num_fields(); ++i) {
    if (i) out += ", ";
    out += protocol::Printable(schema.field(i)->name()) + ": " +
           protocol::Printable(schema.field(i)->type()->ToString());
  }
  return "(" + out + ")";
}

arrow::Status CheckSchema(const arrow::Schema& expected, const arrow::Schema& actual,
                          SchemaMatch match) {
  std::string problems;
  auto note = [&](const std::string& problem) {
    problems += (problems.empty() ? "" : "; ") + problem;
  };
  if (match == SchemaMatch::kExact && expected.num_fields() != actual.num_fields()) {
    note("expected " + std::to_string(expected.num_fields()) + " fields, producer has " +
         std::to_string(actual.num_fields()));
  }
  for (int i = 0; i < expected.num_fields(); ++i) {
    const auto& want = *expected.field(i);
    if (match == SchemaMatch::kExact) {
      if (i >= actual.num_fields()) break;
      const auto& have = *actual.field(i);
      if (!want.Equals(have)) {
        note("field " + std::to_string(i) + ": expected '" + want.ToString() + "', producer has '" +
             have.ToString() + "'");
      }
      continue;
    }
    const auto have = actual.GetFieldByName(want.name());
    if (have == nullptr) {
      note("field '" + want.name() + ": " + want.type()->ToString() + "' is missing");
    } else if (!have->type()->Equals(*want.type())) {
      note("field '" + want.name() + "': expected " + want.type()->ToString() + ", producer has " +
           have->type()->ToString());
    }
  }
  if (problems.empty()) return arrow::Status::OK();
  return MakeError(arrow::StatusCode::Invalid, ErrorCode::kSchemaMismatch, "schema mismatch (",
                   match == SchemaMatch::kExact ? "exact" : "subset", "): ", problems,
                   ". Expected ", DescribeSchema(expected), ", producer has ",
                   DescribeSchema(actual));
}

arrow::Result<std::vector<int>> ProjectionIndices(const arrow::Schema& schema,
                                                  const std::vector<std::string>& names) {
  std::vector<int> indices;
  for (const auto& name : names) {
    const int index = schema.GetFieldIndex(name);
    if (index < 0) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kSchemaMismatch,
                       "projection asks for column '", protocol::Printable(name),
                       "', which the schema ", DescribeSchema(schema),
                       " lacks (or has more than once)");
    }
    // A name asked twice would cost its column's metadata once more per batch, as often as a
    // peer repeats it; a projection is therefore at most as long as the schema.
    if (std::find(indices.begin(), indices.end(), index) != indices.end()) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kSchemaMismatch,
                       "projection asks for column '", protocol::Printable(name),
                       "' more than once");
    }
    indices.push_back(index);
  }
  return indices;
}

std::shared_ptr<arrow::Schema> ProjectSchema(const arrow::Schema& schema,
                                             const std::vector<int>& indices) {
  arrow::FieldVector fields;
  for (int index : indices) fields.push_back(schema.field(index));
  return arrow::schema(std::move(fields), schema.metadata());
}

namespace {
bool HasDictionary(const arrow::DataType& type) {
  if (type.id() == arrow::Type::DICTIONARY) return true;
  if (type.id() == arrow::Type::EXTENSION) {
    return HasDictionary(*static_cast<const arrow::ExtensionType&>(type).storage_type());
  }
  for (const auto& child : type.fields()) {
    if (HasDictionary(*child->type())) return true;
  }
  return false;
}
}  // namespace

arrow::Status CheckNoDictionaries(const arrow::Schema& schema) {
  for (const auto& field : schema.fields()) {
    if (HasDictionary(*field->type())) {
      return arrow::Status::Invalid("field '", field->name(), "' (", field->type()->ToString(),
                                    ") is or contains a dictionary, which ring mode cannot carry");
    }
  }
  return arrow::Status::OK();
}

arrow::Result<std::string> SerializeSchema(const arrow::Schema& schema) {
  ARROW_ASSIGN_OR_RAISE(auto buffer, arrow::ipc::SerializeSchema(schema));
  return buffer->ToString();
}

arrow::Result<std::shared_ptr<arrow::Schema>> DeserializeSchema(const std::string& bytes) {
  arrow::io::BufferReader reader(std::make_shared<arrow::Buffer>(bytes));
  arrow::ipc::DictionaryMemo memo;
  auto schema = arrow::ipc::ReadSchema(&reader, &memo);
  if (!schema.ok()) {  // the peer sent it: say what Arrow's message is about
    return schema.status().WithMessage("schema from the peer (", bytes.size(),
                                       " bytes) does not parse: ", schema.status().message());
  }
  ARROW_RETURN_NOT_OK(CheckUtf8Names(**schema));
  return schema;
}

namespace {
arrow::Status CheckUtf8Names(const arrow::Field& field, const std::string& path) {
  const std::string name = path.empty() ? field.name() : path + "." + field.name();
  if (!protocol::IsUtf8(field.name())) {
    return arrow::Status::Invalid("field name '", protocol::Printable(name),
                                  "' is not valid UTF-8 (Arrow's format requires it)");
  }
  for (const auto& child : field.type()->fields()) {
    ARROW_RETURN_NOT_OK(CheckUtf8Names(*child, name));
  }
  return arrow::Status::OK();
}
}  // namespace

arrow::Status CheckUtf8Names(const arrow::Schema& schema) {
  for (const auto& field : schema.fields()) ARROW_RETURN_NOT_OK(CheckUtf8Names(*field, ""));
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal
