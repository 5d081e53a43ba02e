// Fixed inputs shared by the fuzz targets and the seed generator (make_seeds.cc): the schemas and
// the canonical batch whose body starts the session targets' ring.
#pragma once

#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/api.h>

#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <memory>
#include <vector>

namespace shmarrow::fuzz {

/// Aborts (a finding for libFuzzer) when a status that must be OK is not.
inline void Check(const arrow::Status& status, const char* what) {
  if (!status.ok()) {
    std::fprintf(stderr, "fuzz fixture: %s: %s\n", what, status.ToString().c_str());
    std::abort();
  }
}
template <typename T>
T Unwrap(arrow::Result<T> result, const char* what) {
  Check(result.status(), what);
  return std::move(result).ValueUnsafe();
}

/// The ring target's main schema: fixed-width, variable-length, nested and view layouts.
inline std::shared_ptr<arrow::Schema> RingSchema() {
  return arrow::schema({
      arrow::field("i", arrow::int32()),
      arrow::field("s", arrow::utf8()),
      arrow::field("l", arrow::list(arrow::int64())),
      arrow::field("st", arrow::struct_({arrow::field("d", arrow::float64()),
                                         arrow::field("b", arrow::boolean())})),
      arrow::field("v", arrow::utf8_view()),
      arrow::field("u", arrow::dense_union({arrow::field("x", arrow::int8()),
                                            arrow::field("y", arrow::large_utf8())})),
  });
}

/// A schema with a dictionary column: ring mode's producer refuses to publish one, but the consumer
/// must not crash when a (buggy) producer announces it anyway.
inline std::shared_ptr<arrow::Schema> DictionarySchema() {
  return arrow::schema({arrow::field("i", arrow::int32()),
                        arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
}

/// A few rows of RingSchema(), with nulls; strings longer than 12 bytes so views use data buffers.
inline std::shared_ptr<arrow::RecordBatch> CanonicalBatch() {
  auto* pool = arrow::default_memory_pool();
  arrow::Int32Builder i;
  arrow::StringBuilder s;
  auto l_values = std::make_shared<arrow::Int64Builder>();
  arrow::ListBuilder l(pool, l_values);
  auto d = std::make_shared<arrow::DoubleBuilder>();
  auto b = std::make_shared<arrow::BooleanBuilder>();
  arrow::StructBuilder st(
      arrow::struct_({arrow::field("d", arrow::float64()), arrow::field("b", arrow::boolean())}),
      pool, {d, b});
  arrow::StringViewBuilder v;
  auto ux = std::make_shared<arrow::Int8Builder>();
  auto uy = std::make_shared<arrow::LargeStringBuilder>();
  arrow::DenseUnionBuilder u(pool, {ux, uy},
                             arrow::dense_union({arrow::field("x", arrow::int8()),
                                                 arrow::field("y", arrow::large_utf8())}));
  constexpr int kRows = 6;
  for (int row = 0; row < kRows; ++row) {
    Check(row == 2 ? i.AppendNull() : i.Append(row * 7), "i");
    Check(row == 3 ? s.AppendNull() : s.Append(std::string(static_cast<size_t>(row), 'a' + row)),
          "s");
    if (row == 1) {
      Check(l.AppendNull(), "l");
    } else {
      Check(l.Append(), "l");
      for (int k = 0; k < row; ++k) Check(l_values->Append(row * 100 + k), "l values");
    }
    Check(st.Append(row != 4), "st");
    Check(d->Append(row * 0.5), "st.d");
    Check(b->Append(row % 2 == 0), "st.b");
    Check(row == 5 ? v.AppendNull() : v.Append(std::string(static_cast<size_t>(row * 5), 'v')),
          "v");
    if (row % 2 == 0) {
      Check(u.Append(0), "u");
      Check(ux->Append(static_cast<int8_t>(row)), "u.x");
    } else {
      Check(u.Append(1), "u");
      Check(uy->Append(std::string(static_cast<size_t>(row), 'y')), "u.y");
    }
  }
  std::vector<std::shared_ptr<arrow::Array>> columns(6);
  Check(i.Finish(&columns[0]), "finish i");
  Check(s.Finish(&columns[1]), "finish s");
  Check(l.Finish(&columns[2]), "finish l");
  Check(st.Finish(&columns[3]), "finish st");
  Check(v.Finish(&columns[4]), "finish v");
  Check(u.Finish(&columns[5]), "finish u");
  auto batch = arrow::RecordBatch::Make(RingSchema(), kRows, columns);
  Check(batch->ValidateFull(), "canonical batch");
  return batch;
}

/// RingSchema's first four fields (number, string, list, struct of a number and booleans): types
/// a consumer's remembered layout (src/metadata_template.h's BatchLayout) builds and checks
/// itself, which ring_fuzz thus reaches; RingSchema's views and unions go to Arrow's reader.
inline std::shared_ptr<arrow::Schema> LayoutSchema() {
  const auto ring = RingSchema();
  return arrow::schema(arrow::FieldVector(ring->fields().begin(), ring->fields().begin() + 4));
}

/// CanonicalBatch's first four columns. Arrow's writer lays a batch's buffers out column by
/// column, so its body is a prefix of the canonical batch's, and its Message points into the ring
/// as that batch's does.
inline std::shared_ptr<arrow::RecordBatch> LayoutBatch() {
  return Unwrap(CanonicalBatch()->SelectColumns({0, 1, 2, 3}), "layout batch");
}

/// A record batch as Arrow's writer encodes it: the Message flatbuffer and the body.
struct EncodedBatch {
  std::shared_ptr<arrow::Buffer> metadata;  // without continuation marker and length prefix
  std::shared_ptr<arrow::Buffer> body;
};
inline EncodedBatch Encode(const arrow::RecordBatch& batch) {
  auto serialized =
      Unwrap(arrow::ipc::SerializeRecordBatch(batch, arrow::ipc::IpcWriteOptions::Defaults()),
             "serialize");
  arrow::io::BufferReader reader(serialized);
  auto message = Unwrap(arrow::ipc::ReadMessage(&reader), "read message");
  return {message->metadata(), message->body()};
}

/// Layout of the session targets' ring (session_fixture.h): RingBody() at 0 (the canonical batch's
/// body, then patterned bytes); the in-ring queue at kQueueOffset; at kMetadataOffset the
/// canonical batch's metadata (session_fuzz), or the metadata a ring_fuzz input supplies.
inline constexpr int64_t kQueueOffset = 12 * 1024;
inline constexpr uint32_t kQueueCapacity = 4;
inline constexpr int64_t kMetadataOffset = 16 * 1024;
inline constexpr int64_t kMaxMetadata = 1 << 20;
inline constexpr int64_t kFixtureRingSize = kMetadataOffset + kMaxMetadata;

/// The ring's first 16 KiB: the canonical batch's body at offset 0, then patterned bytes up to 16 KiB.
inline std::shared_ptr<arrow::Buffer> RingBody() {
  auto encoded = Encode(*CanonicalBatch());
  constexpr int64_t kRingSize = 16 * 1024;
  auto ring = Unwrap(arrow::AllocateBuffer(kRingSize), "allocate ring");
  for (int64_t k = 0; k < kRingSize; ++k)
    ring->mutable_data()[k] = static_cast<uint8_t>(k * 37 + 11);
  std::memcpy(ring->mutable_data(), encoded.body->data(),
              static_cast<size_t>(std::min<int64_t>(encoded.body->size(), kRingSize)));
  return std::shared_ptr<arrow::Buffer>(std::move(ring));
}

}  // namespace shmarrow::fuzz
