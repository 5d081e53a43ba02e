// Random record batches for `shmarrow send`, built with a caller-chosen pool (the arena's).
#pragma once

#include <arrow/memory_pool.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <cstdint>
#include <memory>
#include <random>
#include <string>

namespace shmarrow::cli {

class Args;

/// The options every producing subcommand shares: where, and what to generate.
struct GeneratorOptions {
  std::string socket;
  int64_t rows = 100;
  int64_t batches = 1;
  std::string schema_spec = "rand:int32";
  double null_fraction = 0;
  uint64_t seed = 1;
};
[[nodiscard]] arrow::Result<GeneratorOptions> ParseGeneratorOptions(Args& args);

/// "name:type[,name:type...]" with types int32, int64, float64, utf8, bool.
[[nodiscard]] arrow::Result<std::shared_ptr<arrow::Schema>> ParseSchemaSpec(
    const std::string& spec);

class BatchGenerator {
 public:
  BatchGenerator(std::shared_ptr<arrow::Schema> schema, uint64_t seed, double null_fraction)
      : schema_(std::move(schema)), random_(seed), null_fraction_(null_fraction) {}

  /// A batch of `rows` rows whose buffers are all allocated from `pool`. Integers are uniform in
  /// [0, 100], floats in [0, 1), strings 0..16 lowercase letters.
  [[nodiscard]] arrow::Result<std::shared_ptr<arrow::RecordBatch>> Next(int64_t rows,
                                                                        arrow::MemoryPool* pool);

 private:
  std::shared_ptr<arrow::Schema> schema_;
  std::mt19937_64 random_;
  double null_fraction_;
};

}  // namespace shmarrow::cli
