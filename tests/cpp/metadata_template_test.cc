// The cached RecordBatch Message, patched per batch, is byte for byte what Arrow's writer
// produces, and batches published through it read back equal. A consumer's remembered layout
// builds each batch of the layout as Arrow's reader does, and leaves to that reader every Message
// that is not the layout's or whose values the reader refuses.
#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/api.h>
#include <arrow/ipc/writer.h>
#include <arrow/util/compression.h>
#include <arrow/util/key_value_metadata.h>
#include <gtest/gtest.h>

#include <array>
#include <cstring>
#include <random>
#include <thread>

#include "flatbuffer_patch.h"
#include "metadata_template.h"
#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

using internal::BatchLayout;
using internal::BodyList;
using internal::ListBody;
using internal::MetadataCache;

constexpr int kTimeoutMs = 10000;  // only ever reached when something is broken

std::shared_ptr<arrow::Schema> MixedSchema() {
  static const auto schema = arrow::schema({
      arrow::field("i64", arrow::int64(), false),
      arrow::field("f64", arrow::float64()),
      arrow::field("i8", arrow::int8()),
      arrow::field("ts", arrow::timestamp(arrow::TimeUnit::NANO)),
      arrow::field("s", arrow::utf8()),
      arrow::field("ls", arrow::large_utf8()),
      arrow::field("l", arrow::list(arrow::int32())),
      arrow::field("st", arrow::struct_({arrow::field("a", arrow::int16()),
                                         arrow::field("b", arrow::binary())})),
  });
  return schema;
}

/// A batch of `rows` rows, built in `pool`; `null_share` of the values null (0: no bitmaps).
arrow::Result<std::shared_ptr<arrow::RecordBatch>> RandomBatch(arrow::MemoryPool* pool,
                                                               std::mt19937& rng, int64_t rows,
                                                               double null_share) {
  std::unique_ptr<arrow::ArrayBuilder> builder;
  ARROW_RETURN_NOT_OK(arrow::MakeBuilder(pool, arrow::struct_(MixedSchema()->fields()), &builder));
  auto& root = static_cast<arrow::StructBuilder&>(*builder);
  std::bernoulli_distribution null(null_share);
  std::uniform_int_distribution<int> small(0, 5);
  for (int64_t r = 0; r < rows; ++r) {
    ARROW_RETURN_NOT_OK(root.Append());
    ARROW_RETURN_NOT_OK(static_cast<arrow::Int64Builder*>(root.field_builder(0))->Append(r));
    auto* f64 = static_cast<arrow::DoubleBuilder*>(root.field_builder(1));
    ARROW_RETURN_NOT_OK(null(rng) ? f64->AppendNull() : f64->Append(r * 0.5));
    auto* i8 = static_cast<arrow::Int8Builder*>(root.field_builder(2));
    ARROW_RETURN_NOT_OK(null(rng) ? i8->AppendNull() : i8->Append(static_cast<int8_t>(r)));
    auto* ts = static_cast<arrow::TimestampBuilder*>(root.field_builder(3));
    ARROW_RETURN_NOT_OK(null(rng) ? ts->AppendNull() : ts->Append(r * 1000));
    const std::string text(static_cast<size_t>(small(rng)), 'x');
    auto* s = static_cast<arrow::StringBuilder*>(root.field_builder(4));
    ARROW_RETURN_NOT_OK(null(rng) ? s->AppendNull() : s->Append(text));
    auto* ls = static_cast<arrow::LargeStringBuilder*>(root.field_builder(5));
    ARROW_RETURN_NOT_OK(null(rng) ? ls->AppendNull() : ls->Append(text));
    auto* l = static_cast<arrow::ListBuilder*>(root.field_builder(6));
    if (null(rng)) {
      ARROW_RETURN_NOT_OK(l->AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(l->Append());
      auto* values = static_cast<arrow::Int32Builder*>(l->value_builder());
      for (int v = small(rng); v > 0; --v) ARROW_RETURN_NOT_OK(values->Append(v));
    }
    auto* st = static_cast<arrow::StructBuilder*>(root.field_builder(7));
    auto* a = static_cast<arrow::Int16Builder*>(st->field_builder(0));
    auto* b = static_cast<arrow::BinaryBuilder*>(st->field_builder(1));
    if (null(rng)) {
      ARROW_RETURN_NOT_OK(st->AppendNull());  // appends a null to each child too
    } else {
      ARROW_RETURN_NOT_OK(st->Append());
      ARROW_RETURN_NOT_OK(a->Append(static_cast<int16_t>(r)));
      ARROW_RETURN_NOT_OK(b->Append(text));
    }
  }
  std::shared_ptr<arrow::Array> array;
  ARROW_RETURN_NOT_OK(root.Finish(&array));
  return arrow::RecordBatch::FromStructArray(array).Map(
      [](std::shared_ptr<arrow::RecordBatch> batch) {
        return batch->ReplaceSchema(MixedSchema()).ValueOrDie();
      });
}

/// Arrow's Message for `batch`, its buffer offsets set to `offsets` and its body length to
/// `body_length`, as the ring's Messages are.
std::vector<uint8_t> ArrowMessage(const arrow::RecordBatch& batch,
                                  const std::vector<int64_t>& offsets,
                                  const std::vector<int64_t>& lengths, int64_t body_length) {
  arrow::ipc::IpcPayload payload;
  EXPECT_OK(
      arrow::ipc::GetRecordBatchPayload(batch, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
  std::vector<uint8_t> bytes(payload.metadata->data(),
                             payload.metadata->data() + payload.metadata->size());
  auto fields = internal::RewriteBufferOffsets(bytes.data(), static_cast<int64_t>(bytes.size()),
                                               offsets, lengths);
  EXPECT_OK(fields);  // also checks that ListBody gave the lengths Arrow's writer gives
  if (fields.ok()) internal::SetBodyLength(bytes.data(), *fields, body_length);
  return bytes;
}

TEST(MetadataTemplate, PatchedMessagesEqualArrowsWriterByteForByte) {
  std::mt19937 rng(12);
  MetadataCache cache;
  BodyList body;
  int patched = 0;
  int remembered = 0;
  const int64_t row_counts[] = {1, 2, 7, 8, 9, 63, 64, 65, 200, 513};
  const double null_shares[] = {0.0, 0.3, 1.0};
  for (int round = 0; round < 3; ++round) {
    for (int64_t rows : row_counts) {
      for (double nulls : null_shares) {
        ASSERT_OK_AND_ASSIGN(auto batch,
                             RandomBatch(arrow::default_memory_pool(), rng, rows, nulls));
        if (round == 1) {  // an equal schema object of its own, as a binding may import
          ASSERT_OK_AND_ASSIGN(batch, batch->ReplaceSchema(arrow::schema(MixedSchema()->fields())));
        }
        ASSERT_TRUE(ListBody(*batch, &body)) << rows << " rows";
        std::vector<int64_t> offsets;
        for (size_t i = 0; i < body.buffer_lengths.size(); ++i) {
          offsets.push_back(static_cast<int64_t>(i) * 4096 + rows * 8);
        }
        const int64_t body_length = 1 << 20;
        const auto expected = ArrowMessage(*batch, offsets, body.buffer_lengths, body_length);
        std::vector<uint8_t> message;
        if (!cache.Write(*batch, body, offsets, body_length, &message)) {
          arrow::ipc::IpcPayload payload;
          ASSERT_OK(arrow::ipc::GetRecordBatchPayload(
              *batch, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
          cache.Remember(*batch, body, *payload.metadata);
          ++remembered;
          ASSERT_TRUE(cache.Write(*batch, body, offsets, body_length, &message))
              << "Arrow's Message for " << rows << " rows was not cached";
        }
        ++patched;
        EXPECT_EQ(message, expected) << rows << " rows, null share " << nulls;
      }
    }
  }
  EXPECT_EQ(patched, 90);
  EXPECT_EQ(remembered, 1) << "one Message serves every batch of the layout";
}

TEST(MetadataTemplate, ExactlySizedBuffersAndLongerOnesBothMatch) {
  // Buffers exactly as long as the values (as a producer building by hand makes them) and
  // buffers much longer (Arrow then describes only the prefix in use).
  MetadataCache cache;
  BodyList body;
  for (int64_t spare : {int64_t{0}, int64_t{1000}}) {
    for (int64_t rows : {1, 3, 100}) {
      ASSERT_OK_AND_ASSIGN(auto values, arrow::AllocateBuffer(rows * 8 + spare));
      ASSERT_OK_AND_ASSIGN(auto bitmap, arrow::AllocateBuffer((rows + 7) / 8 + spare));
      std::memset(bitmap->mutable_data(), 0xff, static_cast<size_t>(bitmap->size()));
      bitmap->mutable_data()[0] = 0xfe;  // row 0 is null
      auto data =
          arrow::ArrayData::Make(arrow::int64(), rows, {std::move(bitmap), std::move(values)}, 1);
      auto batch = arrow::RecordBatch::Make(arrow::schema({arrow::field("v", arrow::int64())}),
                                            rows, {arrow::MakeArray(data)});
      ASSERT_TRUE(ListBody(*batch, &body));
      const std::vector<int64_t> offsets = {64, 128};
      const auto expected = ArrowMessage(*batch, offsets, body.buffer_lengths, 4096);
      arrow::ipc::IpcPayload payload;
      ASSERT_OK(arrow::ipc::GetRecordBatchPayload(*batch, arrow::ipc::IpcWriteOptions::Defaults(),
                                                  &payload));
      cache.Remember(*batch, body, *payload.metadata);
      std::vector<uint8_t> message;
      ASSERT_TRUE(cache.Write(*batch, body, offsets, 4096, &message));
      EXPECT_EQ(message, expected) << rows << " rows, " << spare << " spare bytes";
    }
  }
}

TEST(MetadataTemplate, AThreadSeesWhatAnotherThreadRemembered) {
  // Each thread patches its own copy of the cached Message: another thread's Remember (a schema
  // change) replaces it there before the next batch.
  auto batch_of = [](const std::shared_ptr<arrow::DataType>& type) {
    auto values = arrow::MakeArrayOfNull(type, 3).ValueOrDie();
    return arrow::RecordBatch::Make(arrow::schema({arrow::field("v", type)}), 3, {values});
  };
  auto remember = [](MetadataCache& cache, const arrow::RecordBatch& batch, BodyList* body) {
    arrow::ipc::IpcPayload payload;
    ASSERT_OK(arrow::ipc::GetRecordBatchPayload(batch, arrow::ipc::IpcWriteOptions::Defaults(),
                                                &payload));
    cache.Remember(batch, *body, *payload.metadata);
  };
  const auto ints = batch_of(arrow::int64());
  const auto doubles = batch_of(arrow::float64());
  MetadataCache cache;
  BodyList int_body;
  BodyList double_body;
  ASSERT_TRUE(ListBody(*ints, &int_body));
  ASSERT_TRUE(ListBody(*doubles, &double_body));
  remember(cache, *ints, &int_body);
  const std::vector<int64_t> offsets(int_body.buffer_lengths.size(), 64);
  std::vector<uint8_t> message;
  ASSERT_TRUE(cache.Write(*ints, int_body, offsets, 4096, &message));  // this thread's copy
  std::thread([&] { remember(cache, *doubles, &double_body); }).join();
  EXPECT_FALSE(cache.Write(*ints, int_body, offsets, 4096, &message));
  EXPECT_EQ(cache.MessageSize(*ints, int_body), -1);
  ASSERT_TRUE(cache.Write(*doubles, double_body, offsets, 4096, &message));
  EXPECT_EQ(cache.MessageSize(*doubles, double_body), static_cast<int64_t>(message.size()));
  EXPECT_EQ(message, ArrowMessage(*doubles, offsets, double_body.buffer_lengths, 4096));
}

TEST(MetadataTemplate, BatchesArrowRewritesAreLeftToArrow) {
  std::mt19937 rng(5);
  BodyList body;
  ASSERT_OK_AND_ASSIGN(auto batch, RandomBatch(arrow::default_memory_pool(), rng, 20, 0.2));
  EXPECT_TRUE(ListBody(*batch, &body));
  EXPECT_FALSE(ListBody(*batch->Slice(3, 5), &body)) << "sliced";
  EXPECT_FALSE(ListBody(*batch->Slice(0, 0), &body)) << "empty";
  arrow::Int8Builder indices;
  ASSERT_OK(indices.AppendValues({0, 1, 0}));
  arrow::StringBuilder words;
  ASSERT_OK(words.AppendValues({"a", "b"}));
  ASSERT_OK_AND_ASSIGN(auto index_array, indices.Finish());
  ASSERT_OK_AND_ASSIGN(auto word_array, words.Finish());
  ASSERT_OK_AND_ASSIGN(auto dictionary, arrow::DictionaryArray::FromArrays(
                                            arrow::dictionary(arrow::int8(), arrow::utf8()),
                                            index_array, word_array));
  auto with_dictionary = arrow::RecordBatch::Make(
      arrow::schema({arrow::field("d", dictionary->type())}), 3, {dictionary});
  EXPECT_FALSE(ListBody(*with_dictionary, &body)) << "dictionary";
  arrow::BooleanBuilder flag_builder;
  ASSERT_OK(flag_builder.AppendValues(std::vector<bool>{true, false}));
  ASSERT_OK_AND_ASSIGN(auto flags, flag_builder.Finish());
  EXPECT_FALSE(ListBody(
      *arrow::RecordBatch::Make(arrow::schema({arrow::field("b", arrow::boolean())}), 2, {flags}),
      &body))
      << "boolean";
}

TEST(MetadataTemplate, RingBatchesOfEveryShapeReadBackEqual) {
  const std::string address = test_util::UniqueAbstractName("metadata");
  ProducerOptions options;
  options.mode = MemoryMode::kRing;
  options.ring_size = 8 << 20;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, MixedSchema(), options));
  ConsumerOptions consumer_options;
  consumer_options.read_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, consumer_options));
  // A projection's Message comes from Arrow's writer, placed after the whole batch's (whose
  // copies of heap-built buffers it must leave alone).
  ConsumerOptions projected_options = consumer_options;
  projected_options.columns = {"s", "l"};
  ASSERT_OK_AND_ASSIGN(auto projected, Consumer::Connect(address, projected_options));
  ASSERT_OK(producer->WaitForConsumers(2, kTimeoutMs));
  std::mt19937 rng(7);
  std::vector<std::shared_ptr<arrow::RecordBatch>> sent;
  for (int i = 0; i < 60; ++i) {
    const int64_t rows = std::array<int64_t, 5>{1, 2, 17, 100, 0}[i % 5];
    // Built in the ring and on the heap (copied in), whole or sliced.
    arrow::MemoryPool* pool = i % 3 == 0 ? arrow::default_memory_pool() : producer->pool();
    ASSERT_OK_AND_ASSIGN(auto batch, RandomBatch(pool, rng, rows + 4, (i % 4) * 0.25));
    batch = i % 7 == 6 ? batch->Slice(2, rows) : batch->Slice(0, rows + 4);
    ASSERT_OK(producer->Publish(batch));
    sent.push_back(batch);
    std::shared_ptr<arrow::RecordBatch> received;
    ASSERT_OK(consumer->ReadNext(&received));
    ASSERT_NE(received, nullptr);
    std::shared_ptr<arrow::RecordBatch> received_columns;
    ASSERT_OK(projected->ReadNext(&received_columns));
    ASSERT_NE(received_columns, nullptr);
    ASSERT_OK_AND_ASSIGN(auto columns, batch->SelectColumns({4, 6}));
    EXPECT_TRUE(received_columns->Equals(*columns)) << "batch " << i << ", projected";
    EXPECT_TRUE(received->Equals(*batch)) << "batch " << i << "\n"
                                          << received->ToString() << "\n"
                                          << batch->ToString();
  }
}

/// A ring's worth of bytes holding batches' bodies where a producer would put them, and the
/// Messages that describe them there.
struct Body {
  std::shared_ptr<arrow::Buffer> bytes = arrow::AllocateBuffer(1 << 20).ValueOrDie();
  int64_t used = 0;

  /// Copies `batch`'s body in (each buffer 8-aligned) and returns its Message pointing there.
  std::vector<uint8_t> Place(const arrow::RecordBatch& batch) {
    arrow::ipc::IpcPayload payload;
    EXPECT_OK(arrow::ipc::GetRecordBatchPayload(batch, arrow::ipc::IpcWriteOptions::Defaults(),
                                                &payload));
    std::vector<int64_t> offsets, lengths;
    for (const auto& buffer : payload.body_buffers) {
      const int64_t length = buffer == nullptr ? 0 : buffer->size();
      used = (used + 63) / 64 * 64;
      EXPECT_LE(used + length, bytes->size());
      if (length > 0) std::memcpy(bytes->mutable_data() + used, buffer->data(), length);
      offsets.push_back(used);
      lengths.push_back(length);
      used += length;
    }
    return ArrowMessage(batch, offsets, lengths, used);
  }
};

arrow::Result<std::shared_ptr<arrow::RecordBatch>> ArrowRead(
    const std::vector<uint8_t>& message, const std::shared_ptr<arrow::Schema>& schema,
    const std::shared_ptr<arrow::Buffer>& body) {
  arrow::io::BufferReader reader(body);
  return arrow::ipc::ReadRecordBatch(arrow::Buffer(message.data(), message.size()), schema, nullptr,
                                     arrow::ipc::IpcReadOptions::Defaults(), &reader);
}

std::shared_ptr<arrow::RecordBatch> Build(BatchLayout& layout, const std::vector<uint8_t>& message,
                                          const std::shared_ptr<arrow::Schema>& schema,
                                          const std::shared_ptr<arrow::Buffer>& body) {
  // A block too small for every object: the rest come from the heap, as a consumer's may.
  auto arena = internal::BatchArena::Create(256);
  // The batch keeps the body, as a consumer's keeps the ring.
  arena->Lease(std::make_shared<const internal::LeaseTarget>(internal::LeaseTarget{nullptr, body}),
               0);
  return layout.Build(message.data(), static_cast<int64_t>(message.size()), schema, *body,
                      arena.get());
}

/// The same objects: lengths, null counts, and buffers at the same bytes.
void ExpectSameData(const arrow::ArrayData& built, const arrow::ArrayData& read,
                    const std::string& where) {
  EXPECT_TRUE(built.type->Equals(*read.type)) << where;
  EXPECT_EQ(built.length, read.length) << where;
  EXPECT_EQ(built.null_count.load(), read.null_count.load()) << where;
  EXPECT_EQ(built.offset, read.offset) << where;
  ASSERT_EQ(built.buffers.size(), read.buffers.size()) << where;
  for (size_t i = 0; i < built.buffers.size(); ++i) {
    const auto& a = built.buffers[i];
    const auto& b = read.buffers[i];
    ASSERT_EQ(a == nullptr, b == nullptr) << where << " buffer " << i;
    if (a == nullptr) continue;
    EXPECT_EQ(a->size(), b->size()) << where << " buffer " << i;
    if (a->size() > 0) EXPECT_EQ(a->data(), b->data()) << where << " buffer " << i;
  }
  ASSERT_EQ(built.child_data.size(), read.child_data.size()) << where;
  for (size_t i = 0; i < built.child_data.size(); ++i) {
    ExpectSameData(*built.child_data[i], *read.child_data[i], where + "." + std::to_string(i));
  }
}

TEST(BatchLayout, BuildsEachBatchOfTheLayoutAsArrowsReaderDoes) {
  std::mt19937 rng(3);
  BatchLayout layout;
  Body body;
  int remembered = 0;
  for (int round = 0; round < 40; ++round) {
    const int64_t rows = std::array<int64_t, 6>{1, 2, 9, 64, 65, 300}[round % 6];
    ASSERT_OK_AND_ASSIGN(auto batch,
                         RandomBatch(arrow::default_memory_pool(), rng, rows, (round % 4) * 0.25));
    body.used = 0;
    const auto message = body.Place(*batch);
    ASSERT_OK_AND_ASSIGN(auto read, ArrowRead(message, MixedSchema(), body.bytes));
    auto built = Build(layout, message, MixedSchema(), body.bytes);
    if (built == nullptr) {
      layout.Remember(arrow::Buffer(message.data(), message.size()), MixedSchema());
      ++remembered;
      built = Build(layout, message, MixedSchema(), body.bytes);
    }
    ASSERT_NE(built, nullptr) << rows << " rows: the remembered layout was not followed";
    EXPECT_EQ(built->schema(), read->schema());
    ASSERT_EQ(built->num_rows(), read->num_rows());
    for (int c = 0; c < read->num_columns(); ++c) {
      ExpectSameData(*built->column_data(c), *read->column_data(c),
                     "round " + std::to_string(round) + " column " + std::to_string(c));
    }
    EXPECT_OK(built->ValidateFull());
    EXPECT_TRUE(layout.Valid(*built)) << "round " << round << ": a valid batch was doubted";
    EXPECT_TRUE(built->Equals(*batch));
  }
  EXPECT_EQ(remembered, 1) << "one Message describes every batch of the layout";
}

/// A layout remembered from a batch (10 rows, with nulls), and the Message `good` of the next
/// batch of that layout (12 rows) in the same body, with helpers to write lies into it.
struct NextOfLayout {
  Body body;
  std::shared_ptr<arrow::RecordBatch> first, second;
  std::vector<uint8_t> good;
  BatchLayout layout;
  internal::MessageFields fields;

  NextOfLayout() {
    std::mt19937 rng(5);
    first = RandomBatch(arrow::default_memory_pool(), rng, 10, 0.3).ValueOrDie();
    const auto remembered = body.Place(*first);
    second = RandomBatch(arrow::default_memory_pool(), rng, 12, 0.3).ValueOrDie();
    good = body.Place(*second);
    layout.Remember(arrow::Buffer(remembered.data(), remembered.size()), MixedSchema());
    fields = internal::LocateMessageFields(good.data(), good.size()).ValueOrDie();
  }
  /// Where Buffer struct `i` and FieldNode struct `i` are in the Message.
  size_t buffer_at(int i) const { return static_cast<size_t>(fields.buffers_at) + 16 * i; }
  size_t node_at(int i) const { return static_cast<size_t>(fields.nodes_at) + 16 * i; }
  /// The int64 of `good` at `at`.
  int64_t load(size_t at) const {
    int64_t value;
    std::memcpy(&value, good.data() + at, sizeof value);
    return value;
  }
  /// `good` with `value` written at `at`.
  std::vector<uint8_t> with(size_t at, int64_t value) const {
    auto message = good;
    std::memcpy(message.data() + at, &value, sizeof value);
    return message;
  }
};

TEST(BatchLayout, LeavesEveryOtherMessageToArrowsReader) {
  NextOfLayout next;
  auto& [body, first, second, good, layout, fields] = next;
  auto buffer_at = [&](int i) { return next.buffer_at(i); };
  auto node_at = [&](int i) { return next.node_at(i); };
  auto with = [&](size_t at, int64_t value) { return next.with(at, value); };
  ASSERT_NE(Build(layout, good, MixedSchema(), body.bytes), nullptr);
  // Not the layout: another schema object, a byte changed outside the values, another size.
  EXPECT_EQ(Build(layout, good, arrow::schema(MixedSchema()->fields()), body.bytes), nullptr);
  // (The root offset, a vtable's, the two vectors' counts.)
  for (size_t at : {size_t{0}, size_t{4}, static_cast<size_t>(fields.nodes_at) - 4,
                    static_cast<size_t>(fields.buffers_at) - 1}) {
    auto message = good;
    message[at] ^= 1;
    EXPECT_EQ(Build(layout, message, MixedSchema(), body.bytes), nullptr) << "byte " << at;
  }
  auto longer = good;
  longer.resize(longer.size() + 8);
  EXPECT_EQ(Build(layout, longer, MixedSchema(), body.bytes), nullptr);
  // Values Arrow's reader refuses: Build leaves them to it (and the reader does refuse them).
  // The string column's values, after two buffers each of i64, f64, i8, ts and the string
  // column's validity and offsets: Arrow's reader looks at a buffer only if it has bytes.
  const int s_data = 10;
  ASSERT_EQ(first->schema()->field(4)->name(), "s");
  ASSERT_GT(second->column_data(4)->buffers[2]->size(), 0);
  const std::vector<std::pair<std::string, std::vector<uint8_t>>> refused = {
      {"misaligned buffer", with(buffer_at(s_data), 4)},
      {"buffer past the body", with(buffer_at(s_data), body.bytes->size())},
      {"buffer straddling the body's end", with(buffer_at(s_data), body.bytes->size() - 8)},
      {"negative offset", with(buffer_at(s_data), -64)},
      {"negative length", with(buffer_at(s_data) + 8, -8)},
      {"column longer than the batch", with(node_at(0), 13)},
      {"batch longer than its columns", with(static_cast<size_t>(fields.length_at), 13)},
  };
  for (const auto& [what, message] : refused) {
    EXPECT_EQ(Build(layout, message, MixedSchema(), body.bytes), nullptr) << what;
    EXPECT_FALSE(ArrowRead(message, MixedSchema(), body.bytes).ok()) << what;
  }
  // Values only validation can judge: built like Arrow's reader's batch, refused alike.
  const std::vector<std::pair<std::string, std::vector<uint8_t>>> invalid = {
      // Nodes: i64, f64, i8, ts, s, ls, l, its values, st, st.a, st.b.
      {"more values than the buffer holds", with(node_at(9), 4000)},
      {"more nulls than values", with(node_at(1) + 8, 13)},
      {"a null count the bitmap does not have", with(node_at(1) + 8, 12)},
      {"string offsets past the data", with(buffer_at(s_data) + 8, 0)},
  };
  for (const auto& [what, message] : invalid) {
    auto built = Build(layout, message, MixedSchema(), body.bytes);
    auto read = ArrowRead(message, MixedSchema(), body.bytes);
    ASSERT_TRUE(read.ok()) << what << ": " << read.status().ToString();
    ASSERT_NE(built, nullptr) << what;
    const auto built_status = built->ValidateFull();
    const auto read_status = (*read)->ValidateFull();
    EXPECT_FALSE(read_status.ok()) << what;
    EXPECT_EQ(built_status.ToString(), read_status.ToString()) << what;
  }
}

// What BatchLayout::Valid checks per batch in place of ValidateFull: a lie in each value it
// checks is doubted (so the consumer asks ValidateFull), and ValidateFull refuses the batch built
// from it with the very message it gives the batch Arrow's reader makes of the same Message.
TEST(BatchLayout, ValidDoubtsEveryLieInWhatChangesPerBatch) {
  NextOfLayout next;
  auto& [body, first, second, good, layout, fields] = next;
  auto buffer_at = [&](int i) { return next.buffer_at(i); };
  auto node_at = [&](int i) { return next.node_at(i); };
  auto load = [&](size_t at) { return next.load(at); };
  auto with = [&](size_t at, int64_t value) { return next.with(at, value); };
  // Nodes: i64, f64, i8, ts, s, ls, l, its values, st, st.a, st.b. Buffers: two each for i64,
  // f64, i8, ts; three for s (8, 9, 10) and ls (11, 12, 13); l 14, 15; its values 16, 17; st 18;
  // st.a 19, 20; st.b 21, 22, 23.
  constexpr int kF64Bitmap = 2, kSOffsets = 9, kSData = 10, kLsData = 13, kLOffsets = 15;
  ASSERT_GT(load(node_at(1) + 8), 0) << "f64 has nulls";
  for (int b : {kSData, kLsData}) ASSERT_GT(load(buffer_at(b) + 8), 0) << "buffer " << b;
  ASSERT_GT(load(node_at(7)), 0) << "the lists have values";
  // Each case is judged with the Message and body as given, then the body is restored.
  auto judge = [&](const std::string& what, const std::vector<uint8_t>& message,
                   bool arrow_refuses = true) {
    auto built = Build(layout, message, MixedSchema(), body.bytes);
    auto read = ArrowRead(message, MixedSchema(), body.bytes);
    ASSERT_NE(built, nullptr) << what;
    ASSERT_TRUE(read.ok()) << what << ": " << read.status().ToString();
    EXPECT_FALSE(layout.Valid(*built)) << what;
    const auto read_status = (*read)->ValidateFull();
    EXPECT_EQ(built->ValidateFull().ToString(), read_status.ToString()) << what;
    if (arrow_refuses) EXPECT_FALSE(read_status.ok()) << what;
  };
  // Lies in the Message.
  judge("more values than the buffer holds", with(node_at(9), 4000));
  judge("more nulls than values", with(node_at(1) + 8, 13));
  judge("a null count the bitmap does not have", with(node_at(1) + 8, load(node_at(1) + 8) + 1));
  judge("a negative null count", with(node_at(1) + 8, -2));
  judge("an unknown null count (-1)", with(node_at(1) + 8, -1), /*arrow_refuses=*/false);
  judge("a negative length of a child", with(node_at(7), -1));
  judge("a struct's child shorter than the struct", with(node_at(10), 5));
  judge("string offsets past the data", with(buffer_at(kSData) + 8, 0));
  judge("large string offsets past the data", with(buffer_at(kLsData) + 8, 0));
  judge("list offsets past the values", with(node_at(7), 0));
  judge("too few string offsets", with(buffer_at(kSOffsets) + 8, 8));
  // Lies in the body: bytes of buffer `index` from `at` replaced by `bytes`, then restored.
  auto in_body = [&](const std::string& what, int index, int64_t at, std::vector<uint8_t> bytes) {
    uint8_t* where = body.bytes->mutable_data() + load(buffer_at(index)) + at;
    std::vector<uint8_t> saved(where, where + bytes.size());
    std::memcpy(where, bytes.data(), bytes.size());
    judge(what, good);
    std::memcpy(where, saved.data(), saved.size());
  };
  auto int32s = [](std::initializer_list<int32_t> values) {
    std::vector<uint8_t> bytes(values.size() * 4);
    std::memcpy(bytes.data(), std::data(values), bytes.size());
    return bytes;
  };
  in_body("a bitmap with a null more", kF64Bitmap, 0,
          {static_cast<uint8_t>(body.bytes->data()[load(buffer_at(kF64Bitmap))] ^ 1)});
  in_body("a negative first string offset", kSOffsets, 0, int32s({-1}));
  in_body("string offsets out of order", kSOffsets, 0, int32s({1, 0}));
  in_body("list offsets out of order", kLOffsets, 0, int32s({1, 0}));
  in_body("a string that is not UTF-8", kSData, 0, {0xff});
  // Valid left the body as it was: the Message judged as a whole is valid again.
  auto built = Build(layout, good, MixedSchema(), body.bytes);
  ASSERT_NE(built, nullptr);
  EXPECT_TRUE(layout.Valid(*built));
}

// ValidateFull checks each value of some types (a time within a day, a decimal within its
// precision), which Valid leaves to it: a layout holding one is always doubted.
TEST(BatchLayout, ValidLeavesTypesWithCheckedValuesToValidateFull) {
  const auto schema = arrow::schema({arrow::field("t", arrow::time32(arrow::TimeUnit::SECOND)),
                                     arrow::field("n", arrow::int64())});
  auto make = [&](int32_t seconds) {
    arrow::Time32Builder times(arrow::time32(arrow::TimeUnit::SECOND),
                               arrow::default_memory_pool());
    arrow::Int64Builder numbers;
    EXPECT_OK(times.Append(seconds));
    EXPECT_OK(numbers.Append(1));
    return arrow::RecordBatch::Make(schema, 1,
                                    {times.Finish().ValueOrDie(), numbers.Finish().ValueOrDie()});
  };
  Body body;
  const auto valid = body.Place(*make(5));
  const auto past_midnight = body.Place(*make(90000));
  BatchLayout layout;
  layout.Remember(arrow::Buffer(valid.data(), valid.size()), schema);
  auto built = Build(layout, valid, schema, body.bytes);
  ASSERT_NE(built, nullptr);
  EXPECT_FALSE(layout.Valid(*built));
  EXPECT_OK(built->ValidateFull());
  built = Build(layout, past_midnight, schema, body.bytes);
  ASSERT_NE(built, nullptr);
  EXPECT_FALSE(layout.Valid(*built));
  EXPECT_FALSE(built->ValidateFull().ok());
}

TEST(BatchLayout, OnlyMessagesWithNothingBesidesTheValuesAreRemembered) {
  std::mt19937 rng(9);
  ASSERT_OK_AND_ASSIGN(auto batch, RandomBatch(arrow::default_memory_pool(), rng, 5, 0.3));
  auto isolated = [&](const arrow::ipc::IpcPayload& payload) {
    const auto& m = *payload.metadata;
    auto fields = internal::LocateMessageFields(m.data(), m.size());
    return fields.ok() && internal::PatchedValuesIsolated(m.data(), m.size(), *fields);
  };
  arrow::ipc::IpcPayload plain;
  ASSERT_OK(
      arrow::ipc::GetRecordBatchPayload(*batch, arrow::ipc::IpcWriteOptions::Defaults(), &plain));
  EXPECT_TRUE(isolated(plain));
  arrow::ipc::IpcPayload with_metadata;
  ASSERT_OK(arrow::ipc::GetRecordBatchPayload(*batch, arrow::key_value_metadata({"k"}, {"v"}),
                                              arrow::ipc::IpcWriteOptions::Defaults(),
                                              &with_metadata));
  EXPECT_FALSE(isolated(with_metadata)) << "custom metadata";
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  ASSERT_OK_AND_ASSIGN(options.codec, arrow::util::Codec::Create(arrow::Compression::LZ4_FRAME));
  arrow::ipc::IpcPayload compressed;
  ASSERT_OK(arrow::ipc::GetRecordBatchPayload(*batch, options, &compressed));
  EXPECT_FALSE(isolated(compressed)) << "compression";
}

}  // namespace
}  // namespace shmarrow
