// Placement of Arrow IPC payloads in the arena: zero copy where the builders wrote into the arena,
// one counted copy otherwise, and always a stream any Arrow reader accepts. Also the flatbuffer
// locator placement relies on, on real and malformed messages.
#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>
#include <arrow/ipc/writer.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <random>
#include <thread>

#include "flatbuffer_patch.h"
#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

using arrow::MemoryPool;
using arrow::RecordBatch;
using BatchResult = arrow::Result<std::shared_ptr<RecordBatch>>;
using test_util::BodyBufferBytes;
using test_util::FinishAndRead;
using test_util::ReadBack;

// Small capacity keeps each test's memfd cheap; the arena is sparse anyway.
WriterOptions SmallWriter(const std::string& name = "placement-test") {
  WriterOptions options;
  options.capacity = int64_t{256} << 20;
  options.name = name;
  return options;
}

// ---------------------------------------------------------------------------------------------
// Batch factories. Each builds everything from `pool`; `seed` varies the values.

std::shared_ptr<arrow::Schema> MixedSchema() {
  return arrow::schema({arrow::field("id", arrow::int64(), /*nullable=*/false),
                        arrow::field("name", arrow::utf8()),
                        arrow::field("score", arrow::float64()),
                        arrow::field("flag", arrow::boolean()), arrow::field("n", arrow::int32())});
}

BatchResult MakeMixedBatch(MemoryPool* pool, int64_t rows, int64_t seed) {
  arrow::Int64Builder id(pool);
  arrow::StringBuilder name(pool);
  arrow::DoubleBuilder score(pool);
  arrow::BooleanBuilder flag(pool);
  arrow::Int32Builder n(pool);
  for (int64_t i = 0; i < rows; ++i) {
    ARROW_RETURN_NOT_OK(id.Append(seed * 1000000 + i));
    if (i % 7 == 3) {
      ARROW_RETURN_NOT_OK(name.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(name.Append("row-" + std::to_string(seed) + "-" + std::to_string(i)));
    }
    if (i % 5 == 0) {
      ARROW_RETURN_NOT_OK(score.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(score.Append(static_cast<double>(i) * 0.5 + static_cast<double>(seed)));
    }
    if (i % 11 == 0) {
      ARROW_RETURN_NOT_OK(flag.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(flag.Append((i + seed) % 3 == 0));
    }
    ARROW_RETURN_NOT_OK(n.Append(static_cast<int32_t>(i * seed - 17)));
  }
  std::vector<std::shared_ptr<arrow::Array>> columns(5);
  ARROW_RETURN_NOT_OK(id.Finish(&columns[0]));
  ARROW_RETURN_NOT_OK(name.Finish(&columns[1]));
  ARROW_RETURN_NOT_OK(score.Finish(&columns[2]));
  ARROW_RETURN_NOT_OK(flag.Finish(&columns[3]));
  ARROW_RETURN_NOT_OK(n.Finish(&columns[4]));
  return RecordBatch::Make(MixedSchema(), rows, std::move(columns));
}

BatchResult MakeStringsBatch(MemoryPool* pool, int64_t seed) {
  arrow::StringBuilder builder(pool);
  for (int64_t i = 0; i < 300; ++i) {
    if ((i + seed) % 4 == 0) {
      ARROW_RETURN_NOT_OK(builder.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(builder.Append(std::string(static_cast<size_t>(i % 23), 'a' + i % 26)));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto array, builder.Finish());
  return RecordBatch::Make(arrow::schema({arrow::field("s", arrow::utf8())}), array->length(),
                           {array});
}

BatchResult MakeBoolBatch(MemoryPool* pool, int64_t seed) {
  arrow::BooleanBuilder builder(pool);
  for (int64_t i = 0; i < 1001; ++i) {
    if (i % 9 == seed % 9) {
      ARROW_RETURN_NOT_OK(builder.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(builder.Append((i * seed) % 3 == 1));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto array, builder.Finish());
  return RecordBatch::Make(arrow::schema({arrow::field("b", arrow::boolean())}), array->length(),
                           {array});
}

BatchResult MakeFloatIntBatch(MemoryPool* pool, int64_t seed) {
  arrow::DoubleBuilder f(pool);
  arrow::Int32Builder i32(pool);
  for (int64_t i = 0; i < 777; ++i) {
    ARROW_RETURN_NOT_OK(f.Append(static_cast<double>(i) / 3.0 - static_cast<double>(seed)));
    if (i % 13 == 0) {
      ARROW_RETURN_NOT_OK(i32.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(i32.Append(static_cast<int32_t>(i * 31 + seed)));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto fa, f.Finish());
  ARROW_ASSIGN_OR_RAISE(auto ia, i32.Finish());
  return RecordBatch::Make(
      arrow::schema({arrow::field("f", arrow::float64()), arrow::field("i", arrow::int32())}),
      fa->length(), {fa, ia});
}

BatchResult MakeListBatch(MemoryPool* pool, int64_t seed) {
  arrow::ListBuilder builder(pool, std::make_shared<arrow::Int32Builder>(pool));
  auto* values = static_cast<arrow::Int32Builder*>(builder.value_builder());
  for (int64_t i = 0; i < 200; ++i) {
    if (i % 10 == 7) {
      ARROW_RETURN_NOT_OK(builder.AppendNull());
      continue;
    }
    ARROW_RETURN_NOT_OK(builder.Append());
    for (int64_t j = 0; j < (i + seed) % 6; ++j) {
      ARROW_RETURN_NOT_OK(values->Append(static_cast<int32_t>(i * 100 + j)));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto array, builder.Finish());
  return RecordBatch::Make(arrow::schema({arrow::field("l", arrow::list(arrow::int32()))}),
                           array->length(), {array});
}

std::shared_ptr<arrow::DataType> StructType() {
  return arrow::struct_({arrow::field("a", arrow::int32()), arrow::field("b", arrow::utf8()),
                         arrow::field("c", arrow::list(arrow::float64()))});
}

BatchResult MakeStructBatch(MemoryPool* pool, int64_t seed) {
  auto list =
      std::make_shared<arrow::ListBuilder>(pool, std::make_shared<arrow::DoubleBuilder>(pool));
  arrow::StructBuilder builder(StructType(), pool,
                               {std::make_shared<arrow::Int32Builder>(pool),
                                std::make_shared<arrow::StringBuilder>(pool), list});
  auto* a = static_cast<arrow::Int32Builder*>(builder.field_builder(0));
  auto* b = static_cast<arrow::StringBuilder*>(builder.field_builder(1));
  auto* c_values = static_cast<arrow::DoubleBuilder*>(list->value_builder());
  for (int64_t i = 0; i < 150; ++i) {
    if (i % 8 == 5) {
      ARROW_RETURN_NOT_OK(builder.AppendNull());
      continue;
    }
    ARROW_RETURN_NOT_OK(builder.Append());
    ARROW_RETURN_NOT_OK(a->Append(static_cast<int32_t>(i + seed)));
    if (i % 3 == 0) {
      ARROW_RETURN_NOT_OK(b->AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(b->Append("s" + std::to_string(i * seed)));
    }
    ARROW_RETURN_NOT_OK(list->Append());
    for (int64_t j = 0; j < i % 4; ++j) ARROW_RETURN_NOT_OK(c_values->Append(0.25 * j));
  }
  ARROW_ASSIGN_OR_RAISE(auto array, builder.Finish());
  return RecordBatch::Make(arrow::schema({arrow::field("st", StructType())}), array->length(),
                           {array});
}

BatchResult MakeNullBatch(MemoryPool* pool, int64_t seed) {
  arrow::NullBuilder builder(pool);
  ARROW_RETURN_NOT_OK(builder.AppendNulls(10 + seed));
  ARROW_ASSIGN_OR_RAISE(auto array, builder.Finish());
  return RecordBatch::Make(arrow::schema({arrow::field("nothing", arrow::null())}), array->length(),
                           {array});
}

BatchResult MakeFixedAndLargeBatch(MemoryPool* pool, int64_t seed) {
  arrow::FixedSizeBinaryBuilder fixed(arrow::fixed_size_binary(5), pool);
  arrow::LargeStringBuilder large(pool);
  arrow::Date32Builder date(pool);
  for (int64_t i = 0; i < 90; ++i) {
    std::string five = std::to_string(10000 + (i * seed) % 90000);
    ARROW_RETURN_NOT_OK(fixed.Append(five.data()));
    ARROW_RETURN_NOT_OK(large.Append(std::string(static_cast<size_t>(i % 17), 'x')));
    ARROW_RETURN_NOT_OK(date.Append(static_cast<int32_t>(18000 + i)));
  }
  std::vector<std::shared_ptr<arrow::Array>> columns(3);
  ARROW_RETURN_NOT_OK(fixed.Finish(&columns[0]));
  ARROW_RETURN_NOT_OK(large.Finish(&columns[1]));
  ARROW_RETURN_NOT_OK(date.Finish(&columns[2]));
  return RecordBatch::Make(arrow::schema({arrow::field("fixed", arrow::fixed_size_binary(5)),
                                          arrow::field("large", arrow::large_utf8()),
                                          arrow::field("date", arrow::date32())}),
                           90, std::move(columns));
}

struct TypeCase {
  std::string name;
  std::function<BatchResult(MemoryPool*, int64_t)> make;
};

void PrintTo(const TypeCase& type_case, std::ostream* os) { *os << type_case.name; }

class PlacementTypes : public ::testing::TestWithParam<TypeCase> {};

// Three batches, each built in the arena right before it is written: nothing is copied, and the
// consumer reads every buffer from the mapping, equal to what was built.
TEST_P(PlacementTypes, ArenaBuiltBatchesRoundTripWithoutCopy) {
  const TypeCase& type_case = GetParam();
  ASSERT_OK_AND_ASSIGN(auto prototype, type_case.make(arrow::default_memory_pool(), 0));
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(prototype->schema(), SmallWriter()));
  std::vector<std::shared_ptr<RecordBatch>> written;
  int64_t body_bytes = 0;
  for (int64_t seed = 1; seed <= 3; ++seed) {
    ASSERT_OK_AND_ASSIGN(auto batch, type_case.make(writer->pool(), seed));
    ASSERT_OK(batch->ValidateFull());
    ASSERT_OK(writer->WriteRecordBatch(*batch));
    body_bytes += BodyBufferBytes(*batch);
    written.push_back(batch);
  }
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  const PlacementStats& stats = writer->stats();
  EXPECT_EQ(stats.record_batches, 3);
  EXPECT_EQ(stats.dictionary_batches, 0);
  EXPECT_EQ(stats.bytes_copied, 0);
  EXPECT_EQ(stats.bytes_in_place, body_bytes);
  EXPECT_GT(stats.metadata_bytes, 0);
  EXPECT_EQ(back.stream->size(), back.size);
  ASSERT_EQ(back.batches.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    SCOPED_TRACE("batch " + std::to_string(i));
    EXPECT_TRUE(back.batches[i]->Equals(*written[i]))
        << "read:\n"
        << back.batches[i]->ToString() << "\nwritten:\n"
        << written[i]->ToString();
    EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[i]));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Types, PlacementTypes,
    ::testing::Values(
        TypeCase{"Mixed", [](MemoryPool* pool,
                             int64_t seed) { return MakeMixedBatch(pool, 500 + 37 * seed, seed); }},
        TypeCase{"StringsWithNulls", MakeStringsBatch}, TypeCase{"Bools", MakeBoolBatch},
        TypeCase{"Float64AndInt32", MakeFloatIntBatch}, TypeCase{"ListInt32", MakeListBatch},
        TypeCase{"Struct", MakeStructBatch}, TypeCase{"NullType", MakeNullBatch},
        TypeCase{"FixedSizeLargeStringDate", MakeFixedAndLargeBatch}),
    [](const ::testing::TestParamInfo<TypeCase>& info) { return info.param.name; });

// ---------------------------------------------------------------------------------------------

TEST(Placement, ArenaBuiltBatchIsReadInPlaceWithoutCopy) {
  auto schema = arrow::schema({arrow::field("x", arrow::int64())});
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, SmallWriter()));
  arrow::Int64Builder builder(writer->pool());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_OK(builder.Append(i));
  ASSERT_OK_AND_ASSIGN(auto column, builder.Finish());
  ASSERT_OK(writer->WriteRecordBatch(*RecordBatch::Make(schema, 1000, {column})));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_EQ(writer->stats().bytes_copied, 0);
  EXPECT_EQ(writer->stats().bytes_in_place, 8000);
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->column(0)->Equals(*column));
  EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[0]));
}

TEST(Placement, HeapBatchIsCopiedOnce) {
  ASSERT_OK_AND_ASSIGN(auto heap_batch, MakeMixedBatch(arrow::default_memory_pool(), 1234, 5));
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK(writer->WriteRecordBatch(*heap_batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  const int64_t body = BodyBufferBytes(*heap_batch);
  EXPECT_GT(body, 0);
  EXPECT_EQ(writer->stats().bytes_copied, body);
  EXPECT_EQ(writer->stats().bytes_in_place, 0);
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->Equals(*heap_batch));
  EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[0]));
}

TEST(Placement, HeapAndArenaBatchesMixInOneStream) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto heap_batch, MakeMixedBatch(arrow::default_memory_pool(), 300, 1));
  ASSERT_OK(writer->WriteRecordBatch(*heap_batch));
  ASSERT_OK_AND_ASSIGN(auto arena_batch, MakeMixedBatch(writer->pool(), 400, 2));
  ASSERT_OK(writer->WriteRecordBatch(*arena_batch));
  ASSERT_OK(writer->WriteRecordBatch(*heap_batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_EQ(writer->stats().bytes_copied, 2 * BodyBufferBytes(*heap_batch));
  EXPECT_EQ(writer->stats().bytes_in_place, BodyBufferBytes(*arena_batch));
  ASSERT_EQ(back.batches.size(), 3u);
  EXPECT_TRUE(back.batches[0]->Equals(*heap_batch));
  EXPECT_TRUE(back.batches[1]->Equals(*arena_batch));
  EXPECT_TRUE(back.batches[2]->Equals(*heap_batch));
}

// Batch 2's arrays exist before batch 1 is written: they lie in front of the gap reserved after
// batch 1, so they are copied (and counted); batch 1 stays in place.
TEST(Placement, InterleavedBuildCopiesOnlyTheEarlyBatch) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto first, MakeMixedBatch(writer->pool(), 640, 1));
  ASSERT_OK_AND_ASSIGN(auto second, MakeMixedBatch(writer->pool(), 480, 2));
  ASSERT_OK(writer->WriteRecordBatch(*first));
  ASSERT_OK(writer->WriteRecordBatch(*second));
  ASSERT_OK_AND_ASSIGN(auto third, MakeMixedBatch(writer->pool(), 100, 3));
  ASSERT_OK(writer->WriteRecordBatch(*third));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_EQ(writer->stats().bytes_in_place, BodyBufferBytes(*first) + BodyBufferBytes(*third));
  EXPECT_EQ(writer->stats().bytes_copied, BodyBufferBytes(*second));
  ASSERT_EQ(back.batches.size(), 3u);
  EXPECT_TRUE(back.batches[0]->Equals(*first));
  EXPECT_TRUE(back.batches[1]->Equals(*second));
  EXPECT_TRUE(back.batches[2]->Equals(*third));
  for (const auto& batch : back.batches) EXPECT_TRUE(AllBuffersInside(*back.stream, *batch));
}

// The same arena batch written twice: the second time its buffers lie before the gap.
TEST(Placement, SameBatchWrittenTwiceIsCopiedTheSecondTime) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(writer->pool(), 256, 9));
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_EQ(writer->stats().bytes_in_place, BodyBufferBytes(*batch));
  EXPECT_EQ(writer->stats().bytes_copied, BodyBufferBytes(*batch));
  ASSERT_EQ(back.batches.size(), 2u);
  EXPECT_TRUE(back.batches[0]->Equals(*batch));
  EXPECT_TRUE(back.batches[1]->Equals(*batch));
}

TEST(Placement, WriteTableRoundTrips) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto a, MakeMixedBatch(writer->pool(), 100, 1));
  ASSERT_OK_AND_ASSIGN(auto b, MakeMixedBatch(writer->pool(), 50, 2));
  ASSERT_OK_AND_ASSIGN(auto table, arrow::Table::FromRecordBatches({a, b}));
  ASSERT_OK(writer->WriteTable(*table));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_OK_AND_ASSIGN(auto read_table, arrow::Table::FromRecordBatches(back.batches));
  EXPECT_TRUE(read_table->Equals(*table));
  EXPECT_EQ(writer->stats().record_batches, 2);
}

TEST(Placement, DictionariesAreCopiedInFrontOfTheirBatch) {
  auto type = arrow::dictionary(arrow::int32(), arrow::utf8());
  auto schema = arrow::schema({arrow::field("d", type), arrow::field("v", arrow::int64())});
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, SmallWriter()));
  std::vector<std::shared_ptr<RecordBatch>> written;
  int64_t batch_body_bytes = 0;
  int64_t dictionary_body_bytes = 0;
  for (int round = 0; round < 2; ++round) {
    arrow::StringBuilder dict_builder(writer->pool());
    for (int i = 0; i < 5; ++i) {
      ASSERT_OK(dict_builder.Append("word" + std::to_string(i + round * 10)));
    }
    ASSERT_OK_AND_ASSIGN(auto dictionary, dict_builder.Finish());
    dictionary_body_bytes += BodyBufferBytes(*RecordBatch::Make(
        arrow::schema({arrow::field("dictionary", arrow::utf8())}), 5, {dictionary}));
    arrow::Int32Builder index_builder(writer->pool());
    arrow::Int64Builder value_builder(writer->pool());
    for (int i = 0; i < 100; ++i) {
      if (i % 9 == 4) {
        ASSERT_OK(index_builder.AppendNull());
      } else {
        ASSERT_OK(index_builder.Append((i * 7 + round) % 5));
      }
      ASSERT_OK(value_builder.Append(i * 1000 + round));
    }
    ASSERT_OK_AND_ASSIGN(auto indices, index_builder.Finish());
    ASSERT_OK_AND_ASSIGN(auto values, value_builder.Finish());
    ASSERT_OK_AND_ASSIGN(auto column,
                         arrow::DictionaryArray::FromArrays(type, indices, dictionary));
    auto batch = RecordBatch::Make(schema, 100, {column, values});
    ASSERT_OK(writer->WriteRecordBatch(*batch));
    batch_body_bytes += BodyBufferBytes(*batch);
    written.push_back(batch);
  }
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  const PlacementStats& stats = writer->stats();
  // A replaced dictionary is a second dictionary message (stream format allows replacement).
  EXPECT_EQ(stats.dictionary_batches, 2);
  EXPECT_EQ(stats.record_batches, 2);
  // The dictionary messages go, with copies of their buffers, into the gap in front of their
  // batch: the batch's own buffers (indices, values) stay where the builders wrote them.
  EXPECT_EQ(stats.bytes_in_place, batch_body_bytes);
  EXPECT_EQ(stats.bytes_copied, dictionary_body_bytes);
  ASSERT_EQ(back.batches.size(), 2u);
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_TRUE(back.batches[i]->Equals(*written[i])) << back.batches[i]->ToString();
    EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[i]));
  }
}

// Body bytes of a dictionary's message: those of a one-column batch holding it.
int64_t DictionaryBodyBytes(const std::shared_ptr<arrow::Array>& dictionary) {
  return BodyBufferBytes(
      *RecordBatch::Make(arrow::schema({arrow::field("dictionary", dictionary->type())}),
                         dictionary->length(), {dictionary}));
}

// Builds `rows` words from `distinct` different ones with a dictionary builder, which writes the
// indices as it goes and the dictionary at Finish: the dictionary lies behind the indices.
arrow::Result<std::shared_ptr<arrow::Array>> BuildWords(MemoryPool* pool, int64_t rows,
                                                        int64_t distinct, const std::string& tag) {
  arrow::StringDictionary32Builder builder(pool);
  for (int64_t i = 0; i < rows; ++i) {
    if (i % 13 == 5) {
      ARROW_RETURN_NOT_OK(builder.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(builder.Append(tag + std::to_string((i * 7) % distinct)));
    }
  }
  return builder.Finish();
}

// Columns built in the order pyarrow's functions build them (indices, then the dictionary; other
// columns before and after): only the dictionaries are copied, whatever the nesting.
TEST(Placement, DictionariesBuiltAfterTheirIndicesCopyOnlyTheDictionaries) {
  auto words = arrow::dictionary(arrow::int32(), arrow::utf8());
  auto schema =
      arrow::schema({arrow::field("before", arrow::int64()), arrow::field("a", words),
                     arrow::field("b", words), arrow::field("nested", arrow::list(words))});
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, SmallWriter()));
  constexpr int64_t kRows = 1000;
  arrow::Int64Builder before(writer->pool());
  for (int64_t i = 0; i < kRows; ++i) ASSERT_OK(before.Append(i));
  ASSERT_OK_AND_ASSIGN(auto before_column, before.Finish());
  ASSERT_OK_AND_ASSIGN(auto a, BuildWords(writer->pool(), kRows, 7, "a"));
  ASSERT_OK_AND_ASSIGN(auto b, BuildWords(writer->pool(), kRows, 50, "bee"));
  ASSERT_OK_AND_ASSIGN(auto values, BuildWords(writer->pool(), kRows * 2, 3, "v"));
  std::vector<int32_t> list_offsets;
  for (int64_t i = 0; i <= kRows; ++i) list_offsets.push_back(static_cast<int32_t>(i * 2));
  arrow::Int32Builder offsets_builder(writer->pool());
  ASSERT_OK(offsets_builder.AppendValues(list_offsets));
  ASSERT_OK_AND_ASSIGN(auto offsets, offsets_builder.Finish());
  ASSERT_OK_AND_ASSIGN(auto nested,
                       arrow::ListArray::FromArrays(*offsets, *values, writer->pool()));
  auto batch = RecordBatch::Make(schema, kRows, {before_column, a, b, nested});
  ASSERT_OK(batch->ValidateFull());
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));

  int64_t dictionary_bytes = 0;
  for (const auto& column : {a, b, values}) {
    dictionary_bytes +=
        DictionaryBodyBytes(std::static_pointer_cast<arrow::DictionaryArray>(column)->dictionary());
  }
  const PlacementStats& stats = writer->stats();
  EXPECT_EQ(stats.dictionary_batches, 3);
  EXPECT_EQ(stats.bytes_copied, dictionary_bytes);
  EXPECT_EQ(stats.bytes_in_place, BodyBufferBytes(*batch));
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->Equals(*batch));
  EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[0]));
}

// Dictionaries too large for the gap take it in turn, as any message does: they stay in place
// and the batch's buffers, now in front of its gap, are copied instead (counted).
TEST(Placement, DictionariesLargerThanTheGapCopyTheBatch) {
  auto words = arrow::dictionary(arrow::int32(), arrow::utf8());
  auto schema = arrow::schema({arrow::field("w", words)});
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto column,
                       BuildWords(writer->pool(), 20000, 10000, "a word long enough "));
  auto batch = RecordBatch::Make(schema, column->length(), {column});
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  const PlacementStats& stats = writer->stats();
  EXPECT_EQ(stats.bytes_copied, BodyBufferBytes(*batch));
  EXPECT_EQ(
      stats.bytes_in_place,
      DictionaryBodyBytes(std::static_pointer_cast<arrow::DictionaryArray>(column)->dictionary()));
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->Equals(*batch));
}

// Slices make Arrow's writer rebase offsets, shift bitmaps and slice values at unaligned
// addresses: whatever is not 8-byte aligned behind the gap is copied; the data must stay equal.
TEST(Placement, SlicedBatchesRoundTrip) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  std::vector<std::shared_ptr<RecordBatch>> written;
  int64_t body_bytes = 0;
  for (int64_t offset :
       {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{8}, int64_t{64}, int64_t{333}}) {
    ASSERT_OK_AND_ASSIGN(auto full, MakeMixedBatch(writer->pool(), 1000, offset + 1));
    auto slice = full->Slice(offset, 500);
    ASSERT_OK(writer->WriteRecordBatch(*slice));
    body_bytes += BodyBufferBytes(*slice);
    written.push_back(slice);
  }
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_EQ(writer->stats().bytes_in_place + writer->stats().bytes_copied, body_bytes);
  EXPECT_GT(writer->stats().bytes_in_place, 0);
  ASSERT_EQ(back.batches.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    SCOPED_TRACE("slice " + std::to_string(i));
    EXPECT_EQ(back.batches[i]->num_rows(), 500);
    EXPECT_TRUE(back.batches[i]->Equals(*written[i]));
    EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[i]));
  }
}

// Zero-row batches have an empty body that placement stretches to the next message: in between
// batches, first, last and alone.
TEST(Placement, ZeroRowBatchesAnywhereInTheStream) {
  ASSERT_OK_AND_ASSIGN(auto empty, RecordBatch::MakeEmpty(MixedSchema()));
  for (const char* layout : {"E", "EE", "EBE", "BEB", "BEEB"}) {
    SCOPED_TRACE(layout);
    ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
    std::vector<std::shared_ptr<RecordBatch>> written;
    for (const char* c = layout; *c != '\0'; ++c) {
      std::shared_ptr<RecordBatch> batch;
      if (*c == 'E') {
        ASSERT_OK_AND_ASSIGN(batch, MakeMixedBatch(writer->pool(), 0, 1));  // built, zero rows
      } else {
        ASSERT_OK_AND_ASSIGN(batch, MakeMixedBatch(writer->pool(), 77, 2));
      }
      ASSERT_OK(writer->WriteRecordBatch(*batch));
      written.push_back(batch);
    }
    ASSERT_OK(writer->WriteRecordBatch(*empty));  // heap-built: its 4-byte offsets are copied
    written.push_back(empty);
    ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
    EXPECT_EQ(writer->stats().bytes_copied, BodyBufferBytes(*empty));
    ASSERT_EQ(back.batches.size(), written.size());
    for (size_t i = 0; i < written.size(); ++i) {
      EXPECT_TRUE(back.batches[i]->Equals(*written[i])) << "batch " << i;
    }
  }
}

TEST(Placement, SchemaOnlyStreamHasNoBatches) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_TRUE(back.batches.empty());
  ASSERT_OK_AND_ASSIGN(auto reader, back.stream->OpenReader());
  EXPECT_TRUE(reader->schema()->Equals(*MixedSchema()));
}

// A string_view column with many variadic buffers has far more metadata than the reserved gap
// (sized from an empty batch): placement takes a larger gap at the front, which puts the
// already-built buffers behind it, so they are copied. The stream must still be valid.
TEST(Placement, ManyVariadicBuffersForceRelocatedMetadata) {
  auto schema = arrow::schema(
      {arrow::field("sv", arrow::utf8_view()), arrow::field("bv", arrow::binary_view())});
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, SmallWriter()));
  std::vector<std::shared_ptr<RecordBatch>> written;
  int64_t body_bytes = 0;
  for (int round = 0; round < 3; ++round) {
    arrow::StringViewBuilder sv(writer->pool());
    arrow::BinaryViewBuilder bv(writer->pool());
    sv.SetBlockSize(64);  // ~one long string per data block: one variadic buffer each
    bv.SetBlockSize(64);
    for (int i = 0; i < 120; ++i) {
      if (i % 10 == 9) {
        ASSERT_OK(sv.AppendNull());
      } else if (i % 3 == 0) {
        ASSERT_OK(sv.Append("short" + std::to_string(i)));  // inline: no data block
      } else {
        ASSERT_OK(sv.Append("a long string that does not fit inline #" + std::to_string(i) + "/" +
                            std::to_string(round)));
      }
      ASSERT_OK(bv.Append(std::string(static_cast<size_t>(20 + i % 30), static_cast<char>(i))));
    }
    ASSERT_OK_AND_ASSIGN(auto sv_array, sv.Finish());
    ASSERT_OK_AND_ASSIGN(auto bv_array, bv.Finish());
    ASSERT_GT(sv_array->data()->buffers.size(), 40u) << "expected many variadic buffers";
    auto batch = RecordBatch::Make(schema, 120, {sv_array, bv_array});
    ASSERT_OK(writer->WriteRecordBatch(*batch));
    body_bytes += BodyBufferBytes(*batch);
    written.push_back(batch);
  }
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  EXPECT_EQ(writer->stats().bytes_in_place + writer->stats().bytes_copied, body_bytes);
  EXPECT_GT(writer->stats().bytes_copied, 0) << "relocation path not exercised";
  ASSERT_EQ(back.batches.size(), written.size());
  for (size_t i = 0; i < written.size(); ++i) {
    EXPECT_TRUE(back.batches[i]->Equals(*written[i])) << "batch " << i;
    EXPECT_TRUE(AllBuffersInside(*back.stream, *back.batches[i]));
  }
}

// Allocations made after the last write (a builder never finished) sit between the last message
// and the end-of-stream marker: they must become part of the last message, not a hole.
TEST(Placement, UnpublishedAllocationsAfterLastWrite) {
  for (bool with_batch : {true, false}) {
    SCOPED_TRACE(with_batch ? "after a batch" : "right after the schema");
    ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
    std::shared_ptr<RecordBatch> batch;
    if (with_batch) {
      ASSERT_OK_AND_ASSIGN(batch, MakeMixedBatch(writer->pool(), 200, 1));
      ASSERT_OK(writer->WriteRecordBatch(*batch));
    }
    arrow::Int64Builder unfinished(writer->pool());
    ASSERT_OK(unfinished.Reserve(3 << 18));  // 6 MiB: past the first commit chunks
    for (int i = 0; i < 1000; ++i) ASSERT_OK(unfinished.Append(i));
    arrow::StringBuilder unfinished_strings(writer->pool());
    ASSERT_OK(unfinished_strings.Append("never published"));
    ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
    ASSERT_EQ(back.batches.size(), with_batch ? 1u : 0u);
    if (with_batch) {
      EXPECT_TRUE(back.batches[0]->Equals(*batch));
    }
    // After Finish the builders cannot grow: the pool refuses, with a Status.
    EXPECT_FALSE(unfinished.Reserve(int64_t{1} << 24).ok());
  }
}

TEST(Placement, FinishedMemfdIsSealedAndImmutable) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(writer->pool(), 3000, 4));
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(auto heap_copy, MakeMixedBatch(arrow::default_memory_pool(), 3000, 4));
  ASSERT_OK_AND_ASSIGN(SealedStream sealed, writer->Finish());
  const int fd = sealed.fd.get();
  ASSERT_GE(fd, 0);

  const int seals = ::fcntl(fd, F_GET_SEALS);
  ASSERT_GE(seals, 0) << std::strerror(errno);
  EXPECT_EQ(seals & test_util::kAllSeals, test_util::kAllSeals) << "seals: " << seals;
  EXPECT_NE(::fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);

  struct stat st{};
  ASSERT_EQ(::fstat(fd, &st), 0);
  EXPECT_EQ(st.st_size, sealed.size);

  const char byte = 'x';
  errno = 0;
  EXPECT_EQ(::pwrite(fd, &byte, 1, 0), -1);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  EXPECT_EQ(::write(fd, &byte, 1), -1);
  EXPECT_EQ(errno, EPERM);
  errno = 0;
  void* writable =
      ::mmap(nullptr, static_cast<size_t>(sealed.size), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  EXPECT_EQ(writable, MAP_FAILED);
  EXPECT_EQ(errno, EPERM);
  if (writable != MAP_FAILED) ::munmap(writable, static_cast<size_t>(sealed.size));
  errno = 0;
  EXPECT_EQ(::ftruncate(fd, sealed.size / 2), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(fd, sealed.size * 2), -1);
  EXPECT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE), -1) << "F_SEAL_SEAL not applied";

  // The producer still reads what it built (now through a read-only private mapping).
  EXPECT_TRUE(batch->Equals(*heap_copy));
  ASSERT_OK(batch->ValidateFull());

  // No more allocations, no more batches.
  uint8_t* out = nullptr;
  EXPECT_FALSE(writer->pool()->Allocate(64, &out).ok());
  EXPECT_ERROR_CONTAINS(writer->WriteRecordBatch(*heap_copy), "finished");
  EXPECT_ERROR_CONTAINS(writer->Finish(), "finished");
  arrow::Int64Builder late(writer->pool());
  EXPECT_FALSE(late.Append(1).ok());
}

// Arrow's own stream reader, over a heap copy of the bytes, reads what the writer wrote.
TEST(Placement, PlainArrowReaderReadsTheBytes) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  std::vector<std::shared_ptr<RecordBatch>> written;
  ASSERT_OK_AND_ASSIGN(auto heap_batch, MakeMixedBatch(arrow::default_memory_pool(), 10, 7));
  for (int64_t seed = 1; seed <= 4; ++seed) {
    ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(writer->pool(), 100 * seed, seed));
    ASSERT_OK(writer->WriteRecordBatch(*batch));
    written.push_back(batch);
  }
  ASSERT_OK(writer->WriteRecordBatch(*heap_batch));
  written.push_back(heap_batch);
  ASSERT_OK_AND_ASSIGN(SealedStream sealed, writer->Finish());
  ASSERT_OK_AND_ASSIGN(auto bytes, test_util::PreadAll(sealed.fd.get()));
  ASSERT_EQ(static_cast<int64_t>(bytes.size()), sealed.size);

  auto buffer = std::make_shared<arrow::Buffer>(bytes.data(), static_cast<int64_t>(bytes.size()));
  auto input = std::make_shared<arrow::io::BufferReader>(buffer);
  ASSERT_OK_AND_ASSIGN(auto reader, arrow::ipc::RecordBatchStreamReader::Open(input));
  EXPECT_TRUE(reader->schema()->Equals(*MixedSchema()));
  for (size_t i = 0; i < written.size(); ++i) {
    ASSERT_OK_AND_ASSIGN(auto batch, reader->Next());
    ASSERT_NE(batch, nullptr) << "stream ended after " << i << " batches";
    ASSERT_OK(batch->ValidateFull());
    EXPECT_TRUE(batch->Equals(*written[i])) << "batch " << i;
  }
  ASSERT_OK_AND_ASSIGN(auto end, reader->Next());
  EXPECT_EQ(end, nullptr);

  // The messages tile the stream exactly: each message starts where the previous one ends, and
  // the walk ends on the end-of-stream marker at size - 8.
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(bytes));
  ASSERT_EQ(messages.size(), written.size() + 1);
  EXPECT_EQ(messages.front().fields.header_type, internal::MessageHeaderType::kSchema);
  EXPECT_EQ(messages.back().body_at + messages.back().body_length, sealed.size - 8);
  for (const auto& message : messages) {
    EXPECT_EQ(message.prefix_at % 8, 0);
    EXPECT_EQ(message.body_at % 8, 0);
    for (int64_t i = 0; i < message.fields.num_buffers; ++i) {
      const int64_t offset = test_util::BufferOffset(bytes, message, i);
      const int64_t length = test_util::BufferLength(bytes, message, i);
      EXPECT_EQ(offset % 8, 0);
      EXPECT_GE(offset, 0);
      EXPECT_LE(offset + length, message.body_length);
    }
  }
}

TEST(Placement, WriterRejectsOtherSchema) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  auto other_schema = arrow::schema({arrow::field("x", arrow::int64())});
  arrow::Int64Builder builder;
  ASSERT_OK(builder.Append(1));
  ASSERT_OK_AND_ASSIGN(auto column, builder.Finish());
  auto batch = RecordBatch::Make(other_schema, 1, {column});
  const arrow::Status status = writer->WriteRecordBatch(*batch);
  ASSERT_FALSE(status.ok());
  EXPECT_TRUE(status.IsInvalid()) << status.ToString();
  EXPECT_NE(status.message().find(other_schema->ToString()), std::string::npos) << status.message();
  EXPECT_NE(status.message().find(MixedSchema()->ToString()), std::string::npos)
      << status.message();

  // The writer is still usable, and the rejected batch left no trace.
  ASSERT_OK_AND_ASSIGN(auto good, MakeMixedBatch(writer->pool(), 10, 1));
  ASSERT_OK(writer->WriteRecordBatch(*good));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->Equals(*good));
}

TEST(Placement, SchemaMetadataDifferenceIsAccepted) {
  auto schema = MixedSchema()->WithMetadata(arrow::key_value_metadata({"k"}, {"v"}));
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, SmallWriter()));
  ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(writer->pool(), 10, 1));  // no metadata
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->schema()->Equals(*schema, /*check_metadata=*/true));
}

TEST(Placement, OpenRejectsNullSchema) {
  EXPECT_ERROR_CONTAINS(SharedStreamWriter::Open(nullptr), "schema");
}

TEST(Placement, SmallCapacityRunsOutWithStatus) {
  WriterOptions options = SmallWriter();
  options.capacity = 4 << 20;
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), options));
  arrow::Int64Builder builder(writer->pool());
  const arrow::Status status = builder.Reserve(1 << 20);  // 8 MiB > 4 MiB
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  // Smaller batches still fit and the stream finishes normally.
  ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(writer->pool(), 1000, 1));
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->Equals(*batch));
}

// A write that fails half way (no room to copy a heap batch in) must leave the writer usable and
// the stream valid, without the failed batch.
TEST(Placement, FailedWriteLeavesAValidStream) {
  WriterOptions options = SmallWriter();
  options.capacity = 4 << 20;
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), options));
  ASSERT_OK_AND_ASSIGN(auto first, MakeMixedBatch(writer->pool(), 100, 1));
  ASSERT_OK(writer->WriteRecordBatch(*first));
  ASSERT_OK_AND_ASSIGN(auto huge, MakeMixedBatch(arrow::default_memory_pool(), 200000, 2));
  ASSERT_GT(BodyBufferBytes(*huge), 4 << 20);
  const arrow::Status status = writer->WriteRecordBatch(*huge);
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  ASSERT_OK_AND_ASSIGN(auto last, MakeMixedBatch(writer->pool(), 50, 3));
  ASSERT_OK(writer->WriteRecordBatch(*last));
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_EQ(back.batches.size(), 2u);
  EXPECT_TRUE(back.batches[0]->Equals(*first));
  EXPECT_TRUE(back.batches[1]->Equals(*last));
}

// A batch that fails after its dictionaries were sent: Arrow's writer counts them as sent and does
// not send them again, so the next batch, which uses them, must still find them in the stream.
TEST(Placement, FailedWriteAfterItsDictionariesLeavesThemInTheStream) {
  WriterOptions options = SmallWriter();
  options.capacity = 4 << 20;
  auto words = arrow::dictionary(arrow::int32(), arrow::utf8());
  auto schema = arrow::schema({arrow::field("w", words), arrow::field("n", arrow::int64())});
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(schema, options));
  ASSERT_OK_AND_ASSIGN(auto column, BuildWords(arrow::default_memory_pool(), 600000, 5, "w"));
  auto make_batch = [&](MemoryPool* pool, int64_t rows) -> BatchResult {
    arrow::Int64Builder n(pool);
    for (int64_t i = 0; i < rows; ++i) ARROW_RETURN_NOT_OK(n.Append(i));
    ARROW_ASSIGN_OR_RAISE(auto numbers, n.Finish());
    return RecordBatch::Make(schema, rows, {column->Slice(0, rows), numbers});
  };
  ASSERT_OK_AND_ASSIGN(auto huge, make_batch(arrow::default_memory_pool(), 600000));
  const arrow::Status status = writer->WriteRecordBatch(*huge);
  EXPECT_TRUE(status.IsOutOfMemory()) << status.ToString();
  ASSERT_OK_AND_ASSIGN(auto last, make_batch(writer->pool(), 100));
  ASSERT_OK(writer->WriteRecordBatch(*last));
  EXPECT_EQ(writer->stats().dictionary_batches, 1);
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_EQ(back.batches.size(), 1u);
  EXPECT_TRUE(back.batches[0]->Equals(*last));
}

// A writer dropped without Finish releases its memfd and mapping.
TEST(Placement, AbandonedWriterReleasesItsFd) {
  const int before = test_util::CountOpenFds();
  {
    ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
    EXPECT_EQ(test_util::CountOpenFds(), before + 1);
    ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(writer->pool(), 100, 1));
    ASSERT_OK(writer->WriteRecordBatch(*batch));
    batch.reset();  // before the writer: its buffers live in the writer's arena
  }
  EXPECT_EQ(test_util::CountOpenFds(), before);
}

TEST(Placement, MemfdCarriesTheWriterName) {
  ASSERT_OK_AND_ASSIGN(auto writer,
                       SharedStreamWriter::Open(MixedSchema(), SmallWriter("named-arena")));
  ASSERT_OK_AND_ASSIGN(SealedStream sealed, writer->Finish());
  char target[256] = {};
  const std::string link = "/proc/self/fd/" + std::to_string(sealed.fd.get());
  const ssize_t n = ::readlink(link.c_str(), target, sizeof(target) - 1);
  ASSERT_GT(n, 0);
  EXPECT_NE(std::string(target, static_cast<size_t>(n)).find("memfd:named-arena"),
            std::string::npos)
      << target;
}

// Producer and consumer share the same pages: the consumer's inode is the producer's memfd.
TEST(Placement, ConsumerSeesTheSameInode) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  ASSERT_OK_AND_ASSIGN(SealedStream sealed, writer->Finish());
  struct stat st{};
  ASSERT_EQ(::fstat(sealed.fd.get(), &st), 0);
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(sealed.fd)));
  EXPECT_EQ(stream->inode(), st.st_ino);
  EXPECT_EQ(stream->device(), st.st_dev);
  EXPECT_EQ((stream->seals() & test_util::kAllSeals), test_util::kAllSeals);
}

// Builders on several threads share pool(); their batches are written one after another.
TEST(Placement, PoolIsSharedByThreads) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(MixedSchema(), SmallWriter()));
  constexpr int kThreads = 4;
  std::vector<std::shared_ptr<RecordBatch>> batches(kThreads);
  std::vector<arrow::Status> statuses(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      auto result = MakeMixedBatch(writer->pool(), 2000 + t, t + 1);
      statuses[t] = result.status();
      if (result.ok()) batches[t] = *result;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_OK(statuses[t]);
    ASSERT_OK(batches[t]->ValidateFull());
    ASSERT_OK(writer->WriteRecordBatch(*batches[t]));
  }
  ASSERT_OK_AND_ASSIGN(ReadBack back, FinishAndRead(*writer));
  ASSERT_EQ(back.batches.size(), static_cast<size_t>(kThreads));
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_OK_AND_ASSIGN(auto expected,
                         MakeMixedBatch(arrow::default_memory_pool(), 2000 + t, t + 1));
    EXPECT_TRUE(back.batches[t]->Equals(*expected)) << "thread " << t;
  }
}

// ---------------------------------------------------------------------------------------------
// flatbuffer_patch: the locator on real messages and on malformed input.

std::shared_ptr<arrow::Buffer> RecordBatchMetadata(const RecordBatch& batch,
                                                   int64_t* num_body_buffers) {
  arrow::ipc::IpcPayload payload;
  auto status =
      arrow::ipc::GetRecordBatchPayload(batch, arrow::ipc::IpcWriteOptions::Defaults(), &payload);
  EXPECT_TRUE(status.ok()) << status.ToString();
  *num_body_buffers = static_cast<int64_t>(payload.body_buffers.size());
  return payload.metadata;
}

TEST(FlatbufferPatch, LocatesBuffersOfRecordBatchMessage) {
  ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(arrow::default_memory_pool(), 100, 1));
  ASSERT_OK_AND_ASSIGN(auto nested, MakeStructBatch(arrow::default_memory_pool(), 1));
  for (const auto& b : {batch, nested}) {
    arrow::ipc::IpcPayload payload;
    ASSERT_OK(
        arrow::ipc::GetRecordBatchPayload(*b, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
    const auto& metadata = *payload.metadata;
    ASSERT_OK_AND_ASSIGN(auto fields,
                         internal::LocateMessageFields(metadata.data(), metadata.size()));
    EXPECT_EQ(fields.header_type, internal::MessageHeaderType::kRecordBatch);
    EXPECT_EQ(fields.num_buffers, static_cast<int64_t>(payload.body_buffers.size()));
    ASSERT_GE(fields.body_length_at, 0);
    int64_t body_length;
    std::memcpy(&body_length, metadata.data() + fields.body_length_at, 8);
    EXPECT_EQ(body_length, payload.body_length);
    ASSERT_GE(fields.buffers_at, 0);
    EXPECT_LE(fields.buffers_at + 16 * fields.num_buffers, metadata.size());
    // Arrow laid the buffers out back to back with 8-byte padding: the lengths match the payload.
    int64_t expected_offset = 0;
    for (int64_t i = 0; i < fields.num_buffers; ++i) {
      int64_t offset, length;
      std::memcpy(&offset, metadata.data() + fields.buffers_at + 16 * i, 8);
      std::memcpy(&length, metadata.data() + fields.buffers_at + 16 * i + 8, 8);
      const auto& buffer = payload.body_buffers[static_cast<size_t>(i)];
      EXPECT_EQ(length, buffer == nullptr ? 0 : buffer->size()) << "buffer " << i;
      EXPECT_EQ(offset, expected_offset) << "buffer " << i;
      expected_offset += (length + 7) / 8 * 8;
    }
  }
}

TEST(FlatbufferPatch, SchemaMessageHasNoBuffers) {
  arrow::ipc::IpcPayload payload;
  arrow::ipc::DictionaryFieldMapper mapper(*MixedSchema());
  ASSERT_OK(arrow::ipc::GetSchemaPayload(*MixedSchema(), arrow::ipc::IpcWriteOptions::Defaults(),
                                         mapper, &payload));
  ASSERT_OK_AND_ASSIGN(auto fields, internal::LocateMessageFields(payload.metadata->data(),
                                                                  payload.metadata->size()));
  EXPECT_EQ(fields.header_type, internal::MessageHeaderType::kSchema);
  EXPECT_EQ(fields.num_buffers, 0);
  EXPECT_EQ(fields.buffers_at, -1);
  EXPECT_EQ(fields.body_length_at, -1);
}

TEST(FlatbufferPatch, DictionaryMessageBuffersAreFound) {
  arrow::StringBuilder builder;
  ASSERT_OK(builder.AppendValues({"a", "bb", "ccc"}));
  ASSERT_OK_AND_ASSIGN(auto dictionary, builder.Finish());
  arrow::ipc::IpcPayload payload;
  ASSERT_OK(arrow::ipc::GetDictionaryPayload(7, dictionary, arrow::ipc::IpcWriteOptions::Defaults(),
                                             &payload));
  ASSERT_OK_AND_ASSIGN(auto fields, internal::LocateMessageFields(payload.metadata->data(),
                                                                  payload.metadata->size()));
  EXPECT_EQ(fields.header_type, internal::MessageHeaderType::kDictionaryBatch);
  EXPECT_EQ(fields.num_buffers, static_cast<int64_t>(payload.body_buffers.size()));
  EXPECT_GE(fields.body_length_at, 0);
}

TEST(FlatbufferPatch, ZeroRowBatchBodyLength) {
  // Numeric columns only: an empty batch has an empty body. (A utf8 column would still carry its
  // single zero offset.)
  auto schema =
      arrow::schema({arrow::field("a", arrow::int64()), arrow::field("b", arrow::float64()),
                     arrow::field("c", arrow::boolean())});
  ASSERT_OK_AND_ASSIGN(auto empty, RecordBatch::MakeEmpty(schema));
  arrow::ipc::IpcPayload payload;
  ASSERT_OK(
      arrow::ipc::GetRecordBatchPayload(*empty, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
  EXPECT_EQ(payload.body_length, 0);
  ASSERT_OK_AND_ASSIGN(auto fields, internal::LocateMessageFields(payload.metadata->data(),
                                                                  payload.metadata->size()));
  EXPECT_EQ(fields.num_buffers, static_cast<int64_t>(payload.body_buffers.size()));
  // Arrow writes bodyLength even when it is 0; were it omitted, the locator would report -1.
  if (fields.body_length_at >= 0) {
    int64_t body_length = -1;
    std::memcpy(&body_length, payload.metadata->data() + fields.body_length_at, 8);
    EXPECT_EQ(body_length, 0);
  }
}

// Runs the locator on an exactly sized heap copy, so that ASan flags any read past the end, and
// checks that a success only reports fields inside the input.
void ExpectLocatorStaysInBounds(const uint8_t* data, size_t size) {
  std::unique_ptr<uint8_t[]> copy(new uint8_t[size == 0 ? 1 : size]);
  if (size > 0) std::memcpy(copy.get(), data, size);
  auto result =
      internal::LocateMessageFields(size == 0 ? nullptr : copy.get(), static_cast<int64_t>(size));
  if (!result.ok()) {
    EXPECT_TRUE(result.status().IsInvalid()) << result.status().ToString();
    return;
  }
  const auto& fields = *result;
  const auto n = static_cast<int64_t>(size);
  if (fields.body_length_at >= 0) {
    EXPECT_LE(fields.body_length_at + 8, n);
  }
  if (fields.num_buffers > 0) {
    EXPECT_GE(fields.buffers_at, 0);
    EXPECT_LE(fields.buffers_at + 16 * fields.num_buffers, n);
  }
  EXPECT_GE(fields.num_buffers, 0);
}

TEST(FlatbufferPatch, EveryPrefixOfAMessageIsRejectedOrInBounds) {
  ASSERT_OK_AND_ASSIGN(auto batch, MakeStructBatch(arrow::default_memory_pool(), 2));
  int64_t num_body_buffers = 0;
  auto metadata = RecordBatchMetadata(*batch, &num_body_buffers);
  ASSERT_OK_AND_ASSIGN(auto full,
                       internal::LocateMessageFields(metadata->data(), metadata->size()));
  const int64_t needed = full.buffers_at + 16 * full.num_buffers;
  int rejected = 0;
  for (int64_t length = 0; length < metadata->size(); ++length) {
    SCOPED_TRACE("prefix length " + std::to_string(length));
    ExpectLocatorStaysInBounds(metadata->data(), static_cast<size_t>(length));
    auto result = internal::LocateMessageFields(metadata->data(), length);
    // Whatever succeeds on a prefix must find the same fields as on the whole message; prefixes
    // that cut into the buffer vector cannot succeed.
    if (result.ok()) {
      EXPECT_GE(length, needed);
      EXPECT_EQ(result->buffers_at, full.buffers_at);
      EXPECT_EQ(result->num_buffers, full.num_buffers);
      EXPECT_EQ(result->body_length_at, full.body_length_at);
    } else {
      ++rejected;
      EXPECT_NE(result.status().message().find("offset"), std::string::npos)
          << result.status().message();
    }
  }
  EXPECT_GT(rejected, 0);
}

TEST(FlatbufferPatch, RandomBytesNeverReadOutOfBounds) {
  std::mt19937_64 rng(20240601);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<size_t> length(0, 200);
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::vector<uint8_t> bytes(length(rng));
    for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
    ExpectLocatorStaysInBounds(bytes.data(), bytes.size());
    if (::testing::Test::HasFailure()) FAIL() << "iteration " << iteration;
  }
}

// Mutations of a real message reach far deeper than random bytes: flipped bytes in offsets,
// vtables and counts, with everything else valid.
TEST(FlatbufferPatch, MutatedMessagesNeverReadOutOfBounds) {
  ASSERT_OK_AND_ASSIGN(auto batch, MakeMixedBatch(arrow::default_memory_pool(), 50, 3));
  int64_t num_body_buffers = 0;
  auto metadata = RecordBatchMetadata(*batch, &num_body_buffers);
  std::vector<uint8_t> original(metadata->data(), metadata->data() + metadata->size());
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<size_t> position(0, original.size() - 1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> mutations(1, 4);
  for (int iteration = 0; iteration < 20000; ++iteration) {
    std::vector<uint8_t> bytes = original;
    for (int m = mutations(rng); m > 0; --m) bytes[position(rng)] = static_cast<uint8_t>(byte(rng));
    ExpectLocatorStaysInBounds(bytes.data(), bytes.size());
    if (::testing::Test::HasFailure()) FAIL() << "iteration " << iteration;
  }
  // Every single byte set to 0xFF.
  for (size_t i = 0; i < original.size(); ++i) {
    std::vector<uint8_t> bytes = original;
    bytes[i] = 0xFF;
    ExpectLocatorStaysInBounds(bytes.data(), bytes.size());
  }
}

}  // namespace
}  // namespace shmarrow
