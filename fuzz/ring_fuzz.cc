// libFuzzer target: a ring-mode batch through the real consumer session (src/consumer_session.h,
// its RingSource). The input is the record batch Message flatbuffer a Batch message points at: it
// is written into the fixture ring (session_fixture.h; the canonical batch's body at offset 0,
// then patterned bytes), and a session welcomed in ring mode is fed a Batch message pointing at
// it; a batch it yields must pass ValidateFull (whose checks the session makes, or proves, for
// every batch it delivers). The first input byte's lowest bit picks the announced schema: the
// ring schema, or one with a dictionary column (which a correct producer never announces, and
// which the session refuses since this target found that ReadRecordBatch crashes on it); its
// third bit overrides that with the layout schema (fixtures.h's LayoutSchema: only types whose
// batches BatchLayout builds and checks itself). Its second bit sends the canonical batch (of
// that schema) first, so that the input is read against that batch's remembered layout
// (src/metadata_template.h's BatchLayout) where it matches it.
#include <cstdint>
#include <cstring>

#include "schema_match.h"
#include "session_fixture.h"

namespace {

namespace proto = shmarrow::internal::protocol;
using shmarrow::fuzz::Unwrap;

std::string WelcomeFor(const std::shared_ptr<arrow::Schema>& schema) {
  proto::Welcome welcome;
  welcome.mode = proto::Mode::kRing;
  welcome.ring_size = shmarrow::fuzz::kFixtureRingSize;
  welcome.max_in_flight = 1;
  welcome.schema = Unwrap(shmarrow::internal::SerializeSchema(*schema), "schema");
  proto::Writer writer;
  auto bytes = proto::Encode(writer, welcome);
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

const std::string& Welcome(uint8_t selector) {
  static const std::string* welcomes[3] = {
      new std::string(WelcomeFor(shmarrow::fuzz::RingSchema())),
      new std::string(WelcomeFor(shmarrow::fuzz::DictionarySchema())),
      new std::string(WelcomeFor(shmarrow::fuzz::LayoutSchema()))};
  return *welcomes[(selector & 4) != 0 ? 2 : selector % 2];
}

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2 || size - 1 > static_cast<size_t>(shmarrow::fuzz::kMaxMetadata)) return -1;
  auto& fixture = shmarrow::fuzz::Fixture();
  std::memcpy(fixture.ring.data() + shmarrow::fuzz::kMetadataOffset, data + 1, size - 1);
  auto session = shmarrow::fuzz::SessionFixture::NewSession({});
  std::vector<shmarrow::UniqueFd> fds;
  fds.push_back(shmarrow::fuzz::Dup(fixture.ring_fd.get()));
  if (!session->Feed(Bytes(Welcome(data[0])), std::move(fds)).ok()) return 0;
  proto::Batch batch;
  batch.sequence = 1;
  batch.metadata_offset = shmarrow::fuzz::kMetadataOffset;
  batch.metadata_length = static_cast<uint32_t>(size - 1);
  proto::Writer writer;
  std::shared_ptr<arrow::RecordBatch> out;
  if ((data[0] & 2) != 0) {
    // The canonical batch, read and released: the session then knows its layout. (Its Message
    // goes where the input's will, which the session copied out before reading.)
    static const std::shared_ptr<arrow::Buffer> canonicals[2] = {
        shmarrow::fuzz::Encode(*shmarrow::fuzz::CanonicalBatch()).metadata,
        shmarrow::fuzz::Encode(*shmarrow::fuzz::LayoutBatch()).metadata};
    const auto& canonical = canonicals[(data[0] & 4) != 0 ? 1 : 0];
    proto::Batch first = batch;
    first.metadata_length = static_cast<uint32_t>(canonical->size());
    std::memcpy(fixture.ring.data() + shmarrow::fuzz::kMetadataOffset, canonical->data(),
                static_cast<size_t>(canonical->size()));
    if (!session->Feed(proto::Encode(writer, 0, first), {}).ok()) return 0;
    if (!Unwrap(session->Take(0, &out), "take") || out == nullptr) std::abort();
    out.reset();
    std::memcpy(fixture.ring.data() + shmarrow::fuzz::kMetadataOffset, data + 1, size - 1);
    batch.sequence = 2;
  }
  if (!session->Feed(proto::Encode(writer, 0, batch), {}).ok()) return 0;
  // A batch the session accepted is delivered, and valid.
  if (!Unwrap(session->Take(0, &out), "take") || out == nullptr) std::abort();
  shmarrow::fuzz::Check(out->ValidateFull(), "a delivered batch");
  (void)out->ToString();
  return 0;
}
