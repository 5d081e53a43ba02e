// libFuzzer target: the ring-mode consumer path (consumer.cc Materialize). The input is the record
// batch Message flatbuffer a Batch message points at; as Materialize does, it is copied into
// private memory and arrow::ipc::ReadRecordBatch reads it against the stream's schema with the
// ring as body, then the batch is validated (ValidateFull). The ring is fixed (fixtures.h): the
// canonical batch's body followed by patterned bytes. The first input byte picks the schema: the
// ring schema, or one with a dictionary column (which a correct producer never announces, and which
// the consumer refuses since this target found that ReadRecordBatch crashes on it: the same check
// runs here).
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fixtures.h"
#include "flatbuffer_patch.h"
#include "schema_match.h"

namespace {

struct Fixture {
  std::shared_ptr<arrow::Buffer> ring = shmarrow::fuzz::RingBody();
  std::shared_ptr<arrow::Schema> schemas[2] = {shmarrow::fuzz::RingSchema(),
                                               shmarrow::fuzz::DictionarySchema()};
};

const Fixture& Fixed() {
  static const Fixture* fixture = new Fixture();
  return *fixture;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2 || size > (1 << 20)) return -1;
  const Fixture& fixed = Fixed();
  const auto& schema = fixed.schemas[data[0] % 2];
  if (!shmarrow::internal::CheckNoDictionaries(*schema).ok()) return 0;  // as consumer.cc does
  // The metadata in private memory, exactly sized (Materialize copies it out of the ring).
  auto metadata = arrow::AllocateBuffer(static_cast<int64_t>(size - 1)).ValueOrDie();
  std::memcpy(metadata->mutable_data(), data + 1, size - 1);
  // As consumer.cc does (this target found that Arrow allocates what a compressed buffer claims).
  if (!shmarrow::internal::CheckNotCompressed(metadata->data(), metadata->size()).ok()) return 0;
  arrow::io::BufferReader body(fixed.ring);
  auto batch = arrow::ipc::ReadRecordBatch(*metadata, schema, nullptr,
                                           arrow::ipc::IpcReadOptions::Defaults(), &body);
  if (!batch.ok()) return 0;
  if (!(*batch)->ValidateFull().ok()) return 0;
  (void)(*batch)->ToString();
  return 0;
}
