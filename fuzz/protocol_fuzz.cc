// libFuzzer target: every decoder of a SOCK_SEQPACKET datagram (src/protocol.{h,cc}), on both the
// consumer's side (Welcome, Batch, Schema, End, Error) and the producer's (Hello, Release, Request,
// Bye), plus the schema bytes that Hello, Welcome and Schema carry (DeserializeSchema).
// Invariants beyond "no crash": a message that decodes completely re-encodes to the same bytes.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "protocol.h"
#include "schema_match.h"

namespace proto = shmarrow::internal::protocol;

namespace {

void Same(std::span<const uint8_t> a, std::span<const uint8_t> b, const char* what) {
  if (a.size() != b.size() || std::memcmp(a.data(), b.data(), a.size()) != 0) {
    std::fprintf(stderr, "protocol_fuzz: %s does not re-encode to the bytes it was decoded from\n",
                 what);
    std::abort();
  }
}

void Schema(const std::string& bytes) {
  if (!bytes.empty()) (void)shmarrow::internal::DeserializeSchema(bytes);
}

/// Every decoder on the payload, whatever the header says: each must fail cleanly or succeed.
void EveryDecoder(std::span<const uint8_t> payload) {
  {
    proto::Reader r(payload);
    (void)proto::DecodeHello(r);
  }
  {
    proto::Reader r(payload);
    (void)proto::DecodeWelcome(r);
  }
  {
    proto::Reader r(payload);
    (void)proto::DecodeBatch(r);
  }
  {
    proto::Reader r(payload);
    std::vector<proto::Batch> out;
    (void)proto::DecodeBatches(r, proto::kMaxRun, &out);
  }
  {
    proto::Reader r(payload);
    (void)proto::DecodeWaiting(r);
  }
  {
    proto::Reader r(payload);
    std::vector<uint64_t> out;
    (void)proto::DecodeRelease(r, 4096, &out);
  }
  {
    proto::Reader r(payload);
    (void)proto::DecodeSchema(r);
  }
  {
    proto::Reader r(payload);
    (void)proto::DecodeError(r);
  }
  {
    proto::Reader r(payload);
    (void)proto::DecodeRequest(r);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > proto::kMaxMessageSize) return -1;  // the socket never delivers more
  // An exactly sized copy, so that ASan sees any read past the datagram.
  std::vector<uint8_t> datagram(data, data + size);
  const std::span<const uint8_t> input(datagram);
  if (size >= proto::kHeaderSize) EveryDecoder(input.subspan(proto::kHeaderSize));

  proto::Reader reader(input);
  auto header = reader.ReadHeader();
  if (!header.ok()) return 0;
  proto::Writer w;
  const uint32_t stream = header->stream;
  switch (header->type) {
    case proto::Type::kHello: {  // producer side
      auto m = proto::DecodeHello(reader);
      if (!m.ok()) break;
      Schema(m->required_schema);
      if (m->major == proto::kMajorVersion && m->minor == proto::kMinorVersion && stream == 0) {
        Same(proto::Encode(w, *m), input, "Hello");
      }
      break;
    }
    case proto::Type::kWelcome: {  // consumer side
      auto m = proto::DecodeWelcome(reader);
      if (!m.ok()) break;
      Schema(m->schema);
      if (m->major == proto::kMajorVersion && m->minor == proto::kMinorVersion && stream == 0) {
        Same(proto::Encode(w, *m), input, "Welcome");
      }
      break;
    }
    case proto::Type::kBatch: {
      auto m = proto::DecodeBatch(reader);
      if (m.ok()) Same(proto::Encode(w, stream, *m), input, "Batch");
      break;
    }
    case proto::Type::kBatches: {
      std::vector<proto::Batch> run;
      if (proto::DecodeBatches(reader, proto::kMaxRun, &run).ok()) {
        Same(proto::EncodeBatches(w, stream, run), input, "Batches");
      }
      break;
    }
    case proto::Type::kRelease: {
      std::vector<uint64_t> sequences;
      if (proto::DecodeRelease(reader, 4096, &sequences).ok() && stream == 0) {
        Same(proto::EncodeRelease(w, sequences), input, "Release");
      }
      break;
    }
    case proto::Type::kSchema: {
      auto m = proto::DecodeSchema(reader);
      if (!m.ok()) break;
      Schema(*m);
      Same(proto::EncodeSchema(w, stream, *m), input, "Schema");
      break;
    }
    case proto::Type::kEnd:
      if (reader.ExpectEnd("End").ok()) Same(proto::EncodeEnd(w, stream), input, "End");
      break;
    case proto::Type::kError: {
      auto m = proto::DecodeError(reader);
      if (m.ok() && m->message.size() <= proto::kMaxMessageSize / 2) {
        Same(proto::Encode(w, stream, *m), input, "Error");
      }
      break;
    }
    case proto::Type::kRequest: {
      auto m = proto::DecodeRequest(reader);
      if (m.ok()) Same(proto::EncodeRequest(w, stream, *m), input, "Request");
      break;
    }
    case proto::Type::kBye:
      if (reader.ExpectEnd("Bye").ok() && stream == 0) Same(proto::EncodeBye(w), input, "Bye");
      break;
    case proto::Type::kWake:
      if (reader.ExpectEnd("Wake").ok() && stream == 0) Same(proto::EncodeWake(w), input, "Wake");
      break;
    case proto::Type::kWaiting: {
      auto m = proto::DecodeWaiting(reader);
      if (m.ok() && stream == 0) Same(proto::EncodeWaiting(w, *m), input, "Waiting");
      break;
    }
    case proto::Type::kRegion:
      if (reader.ExpectEnd("Region").ok() && stream == 0) {
        Same(proto::EncodeRegion(w), input, "Region");
      }
      break;
  }
  (void)proto::TypeName(header->type);
  return 0;
}
