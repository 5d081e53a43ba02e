// Writes the seed corpora of the fuzz targets: fuzz_make_seeds OUT_DIR creates
// OUT_DIR/{protocol,handshake,flatbuffer,stream,ring,session}_fuzz/ with one file per seed, all
// generated here: every protocol message type encoded with proto::Writer, Hellos of each minor
// version, small Arrow IPC streams and messages of the fixture schemas, and whole conversations in
// each mode. (fuzz/run_bounded.sh adds arrow-testing files at run time, uncommitted.)
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <arrow/util/compression.h>

#include "fixtures.h"
#include "protocol.h"
#include "ring_queue.h"
#include "schema_match.h"

namespace fs = std::filesystem;
namespace proto = shmarrow::internal::protocol;
using shmarrow::fuzz::Check;
using shmarrow::fuzz::Unwrap;

namespace {

fs::path out_dir;

void Write(const std::string& target, const std::string& name, const void* data, size_t size) {
  const fs::path dir = out_dir / target;
  fs::create_directories(dir);
  std::ofstream(dir / name, std::ios::binary)
      .write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
}
void Write(const std::string& target, const std::string& name, std::span<const uint8_t> bytes) {
  Write(target, name, bytes.data(), bytes.size());
}
void Write(const std::string& target, const std::string& name, const arrow::Buffer& buffer) {
  Write(target, name, buffer.data(), static_cast<size_t>(buffer.size()));
}

std::shared_ptr<arrow::RecordBatch> DictionaryBatch() {
  arrow::Int32Builder i;
  arrow::StringDictionaryBuilder d;
  for (int row = 0; row < 4; ++row) {
    Check(i.Append(row), "i");
    Check(d.Append(row % 2 == 0 ? "even" : "odd"), "d");
  }
  std::shared_ptr<arrow::Array> ia, da;
  Check(i.Finish(&ia), "i");
  Check(d.Finish(&da), "d");
  return arrow::RecordBatch::Make(shmarrow::fuzz::DictionarySchema(), 4, {ia, da});
}

arrow::ipc::IpcWriteOptions Compressed() {
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.codec = Unwrap(arrow::util::Codec::Create(arrow::Compression::LZ4_FRAME), "codec");
  return options;
}

std::shared_ptr<arrow::Buffer> Stream(
    const std::shared_ptr<arrow::Schema>& schema,
    const std::vector<std::shared_ptr<arrow::RecordBatch>>& batches,
    const arrow::ipc::IpcWriteOptions& options = arrow::ipc::IpcWriteOptions::Defaults()) {
  auto sink = Unwrap(arrow::io::BufferOutputStream::Create(), "sink");
  auto writer = Unwrap(arrow::ipc::MakeStreamWriter(sink, schema, options), "writer");
  for (const auto& batch : batches) Check(writer->WriteRecordBatch(*batch), "write");
  Check(writer->Close(), "close");
  return Unwrap(sink->Finish(), "finish");
}

void ProtocolSeeds(const std::string& schema_bytes) {
  proto::Writer w;
  proto::Hello hello;
  Write("protocol_fuzz", "hello-plain", proto::Encode(w, hello));
  hello.flags = proto::kHelloLossy | proto::kHelloSchemaSubset;
  hello.max_in_flight = 8;
  hello.columns = {"i", "s"};
  hello.required_schema = schema_bytes;
  Write("protocol_fuzz", "hello-full", proto::Encode(w, hello));
  proto::Welcome welcome;
  welcome.schema = schema_bytes;
  welcome.max_consumers = 4;
  welcome.max_in_flight = 16;
  Write("protocol_fuzz", "welcome-sealed", proto::Encode(w, welcome));
  welcome.mode = proto::Mode::kRing;
  welcome.ring_size = 1 << 26;
  Write("protocol_fuzz", "welcome-ring", proto::Encode(w, welcome));
  Write("protocol_fuzz", "batch-sealed", proto::Encode(w, 0, proto::Batch{7, 0, 0, 0}));
  Write("protocol_fuzz", "batch-ring", proto::Encode(w, 0, proto::Batch{9, 2, 4096, 312}));
  const proto::Batch run[] = {{10, 1, 4096, 312}, {11, 0, 8192, 312}};
  Write("protocol_fuzz", "batches-ring", proto::EncodeBatches(w, 0, run));
  Write("protocol_fuzz", "wake", proto::EncodeWake(w));
  Write("protocol_fuzz", "waiting", proto::EncodeWaiting(w, 12));
  Write("protocol_fuzz", "region", proto::EncodeRegion(w));
  const uint64_t sequences[] = {1, 2, 3};
  Write("protocol_fuzz", "release", proto::EncodeRelease(w, sequences));
  Write("protocol_fuzz", "schema", proto::EncodeSchema(w, 5, schema_bytes));
  Write("protocol_fuzz", "end", proto::EncodeEnd(w, 5));
  Write("protocol_fuzz", "error",
        proto::Encode(w, 5, proto::Error{proto::ErrorCode::kHandler, "no"}));
  Write("protocol_fuzz", "request", proto::EncodeRequest(w, 5, "SELECT 1"));
  Write("protocol_fuzz", "bye", proto::EncodeBye(w));
}

/// A session_fuzz input (its format: session_fuzz.cc): options, then one record per step.
class Conversation {
 public:
  explicit Conversation(uint8_t options) : bytes_(1, static_cast<char>(options)) {}
  enum Op : uint8_t {
    kDatagram = 0,
    kWithSealed = 1,
    kWithRing = 2,
    kQueueEntry = 4,
    kPollQueue = 5,
    kRelease = 6,
    kRequest = 8,
    kMaySleep = 9,
    kProducerCounts = 10,
    kProducerReleaseWords = 11
  };
  Conversation& Step(uint8_t op, std::span<const uint8_t> bytes = {}) {
    bytes_.push_back(static_cast<char>(op));
    bytes_.push_back(static_cast<char>(bytes.size() & 0xff));
    bytes_.push_back(static_cast<char>(bytes.size() >> 8));
    bytes_.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return *this;
  }
  Conversation& Entry(const proto::QueueEntry& entry) {
    return Step(kQueueEntry, {reinterpret_cast<const uint8_t*>(&entry), sizeof entry});
  }
  void Write(const std::string& name) const {
    ::Write("session_fuzz", name, bytes_.data(), bytes_.size());
  }

 private:
  std::string bytes_;
};

/// The queue header's words from byte 24 (ring_queue.h), as a producer writes them.
std::vector<uint8_t> ReleaseWords(uint64_t releases_read, uint64_t wait_block, uint32_t held_back) {
  std::vector<uint8_t> words(24);
  std::memcpy(words.data(), &releases_read, 8);
  std::memcpy(words.data() + 8, &wait_block, 8);
  std::memcpy(words.data() + 16, &held_back, 4);
  return words;
}

void SessionSeeds(const std::string& schema_bytes, uint32_t metadata_length) {
  proto::Writer w;
  proto::Welcome welcome;
  welcome.schema = schema_bytes;
  welcome.max_in_flight = 4;
  const uint64_t offset = shmarrow::fuzz::kMetadataOffset;
  // Sealed: batches, a schema change, a request answered, the end.
  Conversation(0)
      .Step(Conversation::kDatagram, proto::Encode(w, welcome))
      .Step(Conversation::kWithSealed, proto::Encode(w, 0, proto::Batch{1, 0, 0, 0}))
      .Step(Conversation::kWithSealed, proto::Encode(w, 0, proto::Batch{2, 0, 0, 0}))
      .Step(Conversation::kDatagram, proto::EncodeSchema(w, 0, schema_bytes))
      .Step(Conversation::kWithSealed, proto::Encode(w, 0, proto::Batch{3, 0, 0, 0}))
      .Step(Conversation::kRelease)
      .Step(Conversation::kRequest)
      .Step(Conversation::kDatagram, proto::EncodeSchema(w, 1, schema_bytes))
      .Step(Conversation::kWithSealed, proto::Encode(w, 1, proto::Batch{4, 0, 0, 0}))
      .Step(Conversation::kDatagram, proto::EncodeEnd(w, 1))
      .Step(Conversation::kDatagram, proto::EncodeEnd(w, 0))
      .Write("sealed");
  // Ring, lossy, batches on the socket: one Batch, a run of two, the end.
  welcome.mode = proto::Mode::kRing;
  welcome.ring_size = shmarrow::fuzz::kFixtureRingSize;
  const proto::Batch run[] = {{2, 1, offset, metadata_length}, {3, 0, offset, metadata_length}};
  Conversation(1)
      .Step(Conversation::kWithRing, proto::Encode(w, welcome))
      .Step(Conversation::kDatagram,
            proto::Encode(w, 0, proto::Batch{1, 0, offset, metadata_length}))
      .Step(Conversation::kRelease)
      .Step(Conversation::kDatagram, proto::EncodeBatches(w, 0, run))
      .Step(Conversation::kRelease)
      .Step(Conversation::kDatagram, proto::EncodeEnd(w, 0))
      .Write("ring");
  // Ring with the in-ring queue: a batch, a schema change before the next, the end.
  welcome.queue_offset = shmarrow::fuzz::kQueueOffset;
  welcome.queue_capacity = shmarrow::fuzz::kQueueCapacity;
  proto::QueueEntry entry;
  entry.metadata_length = metadata_length;
  entry.metadata_offset = offset;
  Conversation queue(0);
  queue.Step(Conversation::kWithRing, proto::Encode(w, welcome));
  entry.sequence = 1;
  queue.Entry(entry).Step(Conversation::kPollQueue).Step(Conversation::kRelease);
  entry.sequence = 2;
  entry.controls_before = 1;
  queue.Step(Conversation::kDatagram, proto::EncodeSchema(w, 0, schema_bytes))
      .Entry(entry)
      .Step(Conversation::kPollQueue)
      .Step(Conversation::kRelease);
  entry.kind = proto::EntryKind::kControls;
  queue.Step(Conversation::kDatagram, proto::EncodeEnd(w, 0))
      .Entry(entry)
      .Step(Conversation::kPollQueue)
      .Write("ring-queue");
  // 1.3, the region agreed: looks before sleeping around a batch and the producer's counts, and
  // releases into the region while the producer's words say it read one, batches are held back,
  // and its wait block is at the start of the ring.
  entry = proto::QueueEntry{};
  entry.metadata_length = metadata_length;
  entry.metadata_offset = offset;
  entry.sequence = 1;
  Conversation region(0);
  region.Step(Conversation::kWithRing, proto::Encode(w, welcome))
      .Step(Conversation::kMaySleep)
      .Entry(entry)
      .Step(Conversation::kMaySleep)
      .Step(Conversation::kPollQueue)
      .Step(Conversation::kProducerCounts)
      .Step(Conversation::kMaySleep)
      .Step(Conversation::kProducerReleaseWords, ReleaseWords(1, 0, 1))
      .Step(Conversation::kRelease)
      .Write("ring-wake-region");
}

}  // namespace

/// Hellos as consumers of each minor version send them: plain, with every wish, describing.
void HandshakeSeeds(const std::string& schema_bytes) {
  proto::Writer w;
  for (uint16_t minor = 0; minor <= proto::kMinorVersion; ++minor) {
    const std::string version = "hello-1." + std::to_string(minor);
    proto::Hello hello;
    hello.minor = minor;
    hello.features = proto::FeaturesOf(minor);
    Write("handshake_fuzz", version + "-plain", proto::Encode(w, hello));
    hello.flags = proto::kHelloLossy | proto::kHelloSchemaSubset | proto::kHelloStartAtOldest;
    hello.max_in_flight = 4;
    hello.columns = {"s", "i"};
    hello.required_schema = schema_bytes;
    Write("handshake_fuzz", version + "-full", proto::Encode(w, hello));
    proto::Hello describe;
    describe.minor = minor;
    describe.features = proto::FeaturesOf(minor) | proto::kFeatureDescribe;
    describe.flags = proto::kHelloDescribe;
    describe.columns = {"i"};
    Write("handshake_fuzz", version + "-describe", proto::Encode(w, describe));
  }
}

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT_DIR\n", argv[0]);
    return 2;
  }
  out_dir = argv[1];
  auto canonical = shmarrow::fuzz::CanonicalBatch();
  auto dictionary = DictionaryBatch();
  const auto schema_bytes =
      Unwrap(shmarrow::internal::SerializeSchema(*canonical->schema()), "schema");
  ProtocolSeeds(schema_bytes);
  SessionSeeds(schema_bytes,
               static_cast<uint32_t>(shmarrow::fuzz::Encode(*canonical).metadata->size()));
  HandshakeSeeds(schema_bytes);

  // Sealed-mode memfd contents: whole IPC streams.
  auto ring_stream = Stream(canonical->schema(), {canonical, canonical->Slice(2, 3)});
  auto dict_stream = Stream(dictionary->schema(), {dictionary, dictionary->Slice(1, 2)});
  auto empty_stream = Stream(canonical->schema(), {});
  Write("stream_fuzz", "ring-schema", *ring_stream);
  Write("stream_fuzz", "dictionary", *dict_stream);
  Write("stream_fuzz", "empty", *empty_stream);
  // Regression: compressed bodies are refused before Arrow allocates their claimed sizes.
  Write("stream_fuzz", "regression-compressed",
        *Stream(canonical->schema(), {canonical}, Compressed()));

  // Message flatbuffers (schema, dictionary batch, record batches) out of those streams.
  int index = 0;
  for (const auto& stream : {ring_stream, dict_stream}) {
    auto reader =
        arrow::ipc::MessageReader::Open(std::make_shared<arrow::io::BufferReader>(stream));
    for (;;) {
      auto message = Unwrap(reader->ReadNextMessage(), "message");
      if (message == nullptr) break;
      Write("flatbuffer_fuzz", "message-" + std::to_string(index++), *message->metadata());
    }
  }

  // Ring: selector byte + record batch flatbuffer whose buffers lie in the fixed ring.
  auto ring_seed = [](uint8_t selector, const arrow::Buffer& metadata, const std::string& name) {
    std::string bytes(1, static_cast<char>(selector));
    bytes.append(reinterpret_cast<const char*>(metadata.data()),
                 static_cast<size_t>(metadata.size()));
    Write("ring_fuzz", name, bytes.data(), bytes.size());
  };
  ring_seed(0, *shmarrow::fuzz::Encode(*canonical).metadata, "canonical");
  ring_seed(0, *shmarrow::fuzz::Encode(*canonical->Slice(0, 0)).metadata, "empty");
  // After the canonical batch: the same Message (its layout, remembered), and a shorter batch.
  ring_seed(2, *shmarrow::fuzz::Encode(*canonical).metadata, "layout-again");
  ring_seed(2, *shmarrow::fuzz::Encode(*canonical->Slice(0, 1)).metadata, "layout-shorter");
  // The layout schema, whose batches the consumer builds and checks itself after the first.
  const auto layout = shmarrow::fuzz::LayoutBatch();
  ring_seed(4 | 2, *shmarrow::fuzz::Encode(*layout).metadata, "checked-layout-again");
  ring_seed(4 | 2, *shmarrow::fuzz::Encode(*layout->Slice(0, 1)).metadata,
            "checked-layout-shorter");
  // Regressions: a dictionary schema (null DictionaryMemo crash) and a compressed body (allocation
  // of the claimed uncompressed sizes), both refused by the consumer since.
  ring_seed(1, *shmarrow::fuzz::Encode(*dictionary).metadata, "regression-dictionary");
  auto compressed = Unwrap(arrow::ipc::SerializeRecordBatch(*canonical, Compressed()), "compress");
  arrow::io::BufferReader compressed_reader(compressed);
  auto compressed_message = Unwrap(arrow::ipc::ReadMessage(&compressed_reader), "message");
  ring_seed(0, *compressed_message->metadata(), "regression-compressed");
  return 0;
}
