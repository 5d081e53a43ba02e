#include <arrow/api.h>
#include <gtest/gtest.h>

#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"

namespace shmarrow {
namespace {

TEST(Placement, ArenaBuiltBatchIsReadInPlaceWithoutCopy) {
  auto schema = arrow::schema({arrow::field("x", arrow::int64())});
  auto writer = SharedStreamWriter::Open(schema).ValueOrDie();
  arrow::Int64Builder builder(writer->pool());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_TRUE(builder.Append(i).ok());
  auto column = builder.Finish().ValueOrDie();
  ASSERT_TRUE(writer->WriteRecordBatch(*arrow::RecordBatch::Make(schema, 1000, {column})).ok());
  auto sealed = writer->Finish().ValueOrDie();
  EXPECT_EQ(writer->stats().bytes_copied, 0);

  auto stream = SharedStream::Open(std::move(sealed.fd)).ValueOrDie();
  auto reader = stream->OpenReader().ValueOrDie();
  auto batch = reader->Next().ValueOrDie();
  ASSERT_NE(batch, nullptr);
  EXPECT_TRUE(batch->column(0)->Equals(*column));
  EXPECT_TRUE(AllBuffersInside(*stream, *batch));
  EXPECT_EQ(reader->Next().ValueOrDie(), nullptr);
}

}  // namespace
}  // namespace shmarrow
