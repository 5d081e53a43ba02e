#include "data_gen.h"

#include <arrow/builder.h>
#include <arrow/type.h>

#include <sstream>

#include "cli_args.h"
#include "shmarrow/handover.h"

namespace shmarrow::cli {

arrow::Result<GeneratorOptions> ParseGeneratorOptions(Args& args) {
  GeneratorOptions options;
  options.socket = args.String("--socket", kDefaultSocketPath);
  ARROW_ASSIGN_OR_RAISE(options.rows, args.Int("--rows", options.rows));
  ARROW_ASSIGN_OR_RAISE(options.batches, args.Int("--batches", options.batches));
  options.schema_spec = args.String("--schema", options.schema_spec);
  ARROW_ASSIGN_OR_RAISE(options.null_fraction, args.Double("--null-fraction", 0.0));
  ARROW_ASSIGN_OR_RAISE(int64_t seed, args.Int("--seed", 1));
  options.seed = static_cast<uint64_t>(seed);
  return options;
}

arrow::Result<std::shared_ptr<arrow::Schema>> ParseSchemaSpec(const std::string& spec) {
  arrow::FieldVector fields;
  std::stringstream items(spec);
  std::string item;
  while (std::getline(items, item, ',')) {
    const auto colon = item.find(':');
    if (colon == std::string::npos || colon == 0) {
      return arrow::Status::Invalid("column '", item, "' is not NAME:TYPE");
    }
    const std::string name = item.substr(0, colon);
    const std::string type = item.substr(colon + 1);
    std::shared_ptr<arrow::DataType> arrow_type;
    if (type == "int32")
      arrow_type = arrow::int32();
    else if (type == "int64")
      arrow_type = arrow::int64();
    else if (type == "float64" || type == "double")
      arrow_type = arrow::float64();
    else if (type == "utf8" || type == "string")
      arrow_type = arrow::utf8();
    else if (type == "bool")
      arrow_type = arrow::boolean();
    else {
      return arrow::Status::Invalid("column '", name, "': unknown type '", type,
                                    "' (int32, int64, float64, utf8, bool)");
    }
    fields.push_back(arrow::field(name, arrow_type));
  }
  if (fields.empty()) return arrow::Status::Invalid("empty schema '", spec, "'");
  return arrow::schema(std::move(fields));
}

namespace {

template <typename Builder, typename Draw>
arrow::Result<std::shared_ptr<arrow::Array>> Fill(Builder& builder, int64_t rows,
                                                  std::mt19937_64& random, double null_fraction,
                                                  Draw&& draw) {
  std::bernoulli_distribution is_null(null_fraction);
  ARROW_RETURN_NOT_OK(builder.Reserve(rows));
  for (int64_t i = 0; i < rows; ++i) {
    if (null_fraction > 0 && is_null(random)) {
      builder.UnsafeAppendNull();
    } else {
      ARROW_RETURN_NOT_OK(draw(builder));
    }
  }
  return builder.Finish();
}

}  // namespace

arrow::Result<std::shared_ptr<arrow::RecordBatch>> BatchGenerator::Next(int64_t rows,
                                                                        arrow::MemoryPool* pool) {
  std::uniform_int_distribution<int64_t> integer(0, 100);
  std::uniform_real_distribution<double> real(0.0, 1.0);
  std::uniform_int_distribution<int> length(0, 16), letter('a', 'z');
  arrow::ArrayVector columns;
  for (const auto& field : schema_->fields()) {
    std::shared_ptr<arrow::Array> column;
    switch (field->type()->id()) {
      case arrow::Type::INT32: {
        arrow::Int32Builder builder(pool);
        ARROW_ASSIGN_OR_RAISE(column, Fill(builder, rows, random_, null_fraction_, [&](auto& b) {
                                b.UnsafeAppend(static_cast<int32_t>(integer(random_)));
                                return arrow::Status::OK();
                              }));
        break;
      }
      case arrow::Type::INT64: {
        arrow::Int64Builder builder(pool);
        ARROW_ASSIGN_OR_RAISE(column, Fill(builder, rows, random_, null_fraction_, [&](auto& b) {
                                b.UnsafeAppend(integer(random_));
                                return arrow::Status::OK();
                              }));
        break;
      }
      case arrow::Type::DOUBLE: {
        arrow::DoubleBuilder builder(pool);
        ARROW_ASSIGN_OR_RAISE(column, Fill(builder, rows, random_, null_fraction_, [&](auto& b) {
                                b.UnsafeAppend(real(random_));
                                return arrow::Status::OK();
                              }));
        break;
      }
      case arrow::Type::BOOL: {
        arrow::BooleanBuilder builder(pool);
        ARROW_ASSIGN_OR_RAISE(column, Fill(builder, rows, random_, null_fraction_, [&](auto& b) {
                                b.UnsafeAppend(integer(random_) % 2 == 0);
                                return arrow::Status::OK();
                              }));
        break;
      }
      case arrow::Type::STRING: {
        arrow::StringBuilder builder(pool);
        ARROW_RETURN_NOT_OK(builder.ReserveData(rows * 8));
        char text[16];
        ARROW_ASSIGN_OR_RAISE(column, Fill(builder, rows, random_, null_fraction_, [&](auto& b) {
                                const int n = length(random_);
                                for (int i = 0; i < n; ++i)
                                  text[i] = static_cast<char>(letter(random_));
                                return b.Append(text, n);
                              }));
        break;
      }
      default:
        return arrow::Status::NotImplemented("no generator for ", field->type()->ToString());
    }
    columns.push_back(std::move(column));
  }
  return arrow::RecordBatch::Make(schema_, rows, std::move(columns));
}

}  // namespace shmarrow::cli
