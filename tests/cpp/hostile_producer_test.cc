// A producer that speaks the protocol and lies (FakeProducer), against the real Consumer. Every
// case: the consumer reports an error naming the problem, never crashes or hangs (reads have
// deadlines), and the process has as many fds open afterwards as before (the fixture checks).
// Some cases came from the fuzz targets (docs/robustness.md): dictionary schemas in ring mode
// (fuzz/ring_fuzz) and compressed bodies (fuzz/stream_fuzz, fuzz/ring_fuzz).
#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/api.h>
#include <arrow/util/compression.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <functional>
#include <limits>
#include <memory>
#include <thread>

#include "flatbuffer_patch.h"
#include "hostile_peer.h"
#include "mapping.h"
#include "ring_queue.h"
#include "schema_match.h"
#include "shmarrow/consumer.h"
#include "shmarrow/error.h"
#include "shmarrow/handover.h"
#include "shmarrow/shared_stream.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow::hostile {
namespace {

using internal::UnixSocket;
using BatchPtr = std::shared_ptr<arrow::RecordBatch>;

constexpr int kRingSeals = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

// ---------------------------------------------------------------------------------------------
// The lying producer.

/// What the producer does for one consumer after reading its Hello.
struct Script {
  std::vector<Datagram> datagrams;  // the Welcome (or whatever stands in for it) first
  bool hang_up = false;  // close right after the last datagram instead of waiting for the consumer
  int answer_after_ms = 0;  // a slow producer: waits this long after the Hello
};

/// Listens on a fresh abstract name and serves the i-th consumer that connects script i, each on
/// its own thread, so that consumers of one producer can be compared.
class FakeProducer {
 public:
  explicit FakeProducer(std::vector<Script> scripts)
      : address_(test_util::UniqueAbstractName("hostile-producer")) {
    auto listener = UnixSocket::Listen(address_, SOCK_SEQPACKET, 0600);
    EXPECT_TRUE(listener.ok()) << listener.status().ToString();
    if (!listener.ok()) return;
    listener_ = std::make_unique<UnixSocket>(std::move(*listener));
    acceptor_ = std::thread([this, scripts = std::move(scripts)]() mutable {
      for (auto& script : scripts) {
        auto accepted = listener_->Accept(kTimeoutMs);
        if (!accepted.ok() || accepted->fd() < 0) return;  // the test connected fewer
        servers_.emplace_back(Serve, std::move(*accepted), std::move(script));
      }
    });
  }
  FakeProducer(const FakeProducer&) = delete;
  ~FakeProducer() {
    if (acceptor_.joinable()) acceptor_.join();
    for (auto& server : servers_) server.join();
  }
  const std::string& address() const { return address_; }

 private:
  static void Serve(UnixSocket socket, Script script) {
    RaiseSendBuffer(socket);
    if (!Receive(socket, 1).ok()) return;  // the Hello (with the consumer's region)
    std::this_thread::sleep_for(std::chrono::milliseconds(script.answer_after_ms));
    for (const auto& datagram : script.datagrams) {
      if (!socket.Send(datagram.bytes, datagram.fds).ok()) return;  // the consumer gave up
    }
    if (!script.hang_up) (void)ClosedByPeer(socket);
  }

  std::string address_;
  std::unique_ptr<UnixSocket> listener_;
  std::thread acceptor_;
  std::vector<std::thread> servers_;
};

// ---------------------------------------------------------------------------------------------
// What it sends.

std::shared_ptr<arrow::Schema> TestSchema() {
  return arrow::schema({arrow::field("i", arrow::int32()), arrow::field("s", arrow::utf8()),
                        arrow::field("l", arrow::list(arrow::int32()))});
}

// Body buffers of TestBatch() in the order of the Message's Buffer structs.
enum TestBuffer { kIValidity, kIData, kSValidity, kSOffsets, kSData, kLValidity, kLOffsets };

BatchPtr TestBatch() {
  arrow::Int32Builder i;
  arrow::StringBuilder s;
  arrow::ListBuilder l(arrow::default_memory_pool(), std::make_shared<arrow::Int32Builder>());
  auto& values = static_cast<arrow::Int32Builder&>(*l.value_builder());
  EXPECT_OK(i.AppendValues({1, 2, 3}));
  EXPECT_OK(s.AppendValues({"a", "bb", "ccc"}));
  EXPECT_OK(l.Append());
  EXPECT_OK(values.AppendValues({1}));
  EXPECT_OK(l.Append());
  EXPECT_OK(values.AppendValues({2, 3}));
  EXPECT_OK(l.Append());
  std::shared_ptr<arrow::Array> ia, sa, la;
  EXPECT_OK(i.Finish(&ia));
  EXPECT_OK(s.Finish(&sa));
  EXPECT_OK(l.Finish(&la));
  return arrow::RecordBatch::Make(TestSchema(), 3, {ia, sa, la});
}

std::shared_ptr<arrow::ipc::Message> BatchMessage(
    const arrow::RecordBatch& batch,
    const arrow::ipc::IpcWriteOptions& options = arrow::ipc::IpcWriteOptions::Defaults()) {
  auto serialized = arrow::ipc::SerializeRecordBatch(batch, options).ValueOrDie();
  arrow::io::BufferReader reader(serialized);
  return arrow::ipc::ReadMessage(&reader).ValueOrDie();
}

/// The bytes of a ring holding one batch as ring mode lays it out: the body at offset 0 (so the
/// Message's buffer offsets are already relative to the ring's start), then the Message.
struct RingImage {
  std::vector<uint8_t> bytes;
  uint64_t metadata_offset = 0;
  uint32_t metadata_length = 0;
  internal::MessageFields fields;

  explicit RingImage(const arrow::ipc::Message& message) {
    const auto& body = *message.body();
    const auto& metadata = *message.metadata();
    bytes.assign(body.data(), body.data() + body.size());
    bytes.resize((bytes.size() + 63) / 64 * 64, 0);
    metadata_offset = bytes.size();
    metadata_length = static_cast<uint32_t>(metadata.size());
    bytes.insert(bytes.end(), metadata.data(), metadata.data() + metadata.size());
    fields = internal::LocateMessageFields(metadata.data(), metadata.size()).ValueOrDie();
  }
  explicit RingImage(const arrow::RecordBatch& batch) : RingImage(*BatchMessage(batch)) {}

  /// Where Buffer struct `index` of the Message lies in `bytes` (offset, then length).
  size_t BufferField(int index) const {
    return metadata_offset + static_cast<size_t>(fields.buffers_at) + 16 * index;
  }
  int64_t BufferOffset(int index) const { return Get<int64_t>(BufferField(index)); }
  void SetBuffer(int index, int64_t offset, int64_t length) {
    std::memcpy(bytes.data() + BufferField(index), &offset, 8);
    std::memcpy(bytes.data() + BufferField(index) + 8, &length, 8);
  }
  template <typename T>
  T Get(size_t at) const {
    T value;
    std::memcpy(&value, bytes.data() + at, sizeof value);
    return value;
  }
  template <typename T>
  void Set(size_t at, T value) {
    std::memcpy(bytes.data() + at, &value, sizeof value);
  }
  /// A memfd holding the image with `seals`.
  UniqueFd Seal(int seals = kRingSeals) const {
    auto fd = test_util::MakeMemfd(bytes, seals);
    EXPECT_TRUE(fd.ok()) << fd.status().ToString();
    return fd.ok() ? std::move(*fd) : UniqueFd();
  }
};

Datagram Welcome(const arrow::Schema& schema, proto::Mode mode, std::vector<int> fds,
                 uint16_t major = proto::kMajorVersion) {
  proto::Writer writer;
  proto::Welcome welcome;
  welcome.major = major;
  welcome.mode = mode;
  welcome.max_in_flight = 4;
  welcome.schema = internal::SerializeSchema(schema).ValueOrDie();
  return Message(proto::Encode(writer, welcome), std::move(fds));
}
Datagram RingWelcome(int ring_fd, const arrow::Schema& schema = *TestSchema()) {
  return Welcome(schema, proto::Mode::kRing, {ring_fd});
}
Datagram SealedWelcome(const arrow::Schema& schema = *TestSchema()) {
  return Welcome(schema, proto::Mode::kSealed, {});
}

Datagram BatchAt(uint64_t sequence, uint64_t metadata_offset, uint32_t metadata_length) {
  proto::Writer writer;
  return Message(
      proto::Encode(writer, 0, proto::Batch{sequence, 0, metadata_offset, metadata_length}));
}
Datagram BatchAt(uint64_t sequence, const RingImage& image) {
  return BatchAt(sequence, image.metadata_offset, image.metadata_length);
}
Datagram SealedBatch(uint64_t sequence, std::vector<int> fds) {
  proto::Writer writer;
  return Message(proto::Encode(writer, 0, proto::Batch{sequence, 0, 0, 0}), std::move(fds));
}
Datagram End() {
  proto::Writer writer;
  return Message(proto::EncodeEnd(writer, 0));
}
Datagram SchemaChange(const arrow::Schema& schema) {
  proto::Writer writer;
  return Message(proto::EncodeSchema(writer, 0, internal::SerializeSchema(schema).ValueOrDie()));
}

/// 1000 equal int32 values: compression makes them much smaller.
BatchPtr Compressible() {
  arrow::Int32Builder values;
  EXPECT_OK(values.AppendValues(std::vector<int32_t>(1000, 7)));
  std::shared_ptr<arrow::Array> array;
  EXPECT_OK(values.Finish(&array));
  return arrow::RecordBatch::Make(arrow::schema({arrow::field("i", arrow::int32())}), 1000,
                                  {array});
}
arrow::ipc::IpcWriteOptions Compressed(arrow::Compression::type codec) {
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.codec = arrow::util::Codec::Create(codec).ValueOrDie();
  return options;
}

/// A complete IPC stream of `batches` (what a sealed Batch's memfd holds).
std::vector<uint8_t> StreamBytes(
    const std::shared_ptr<arrow::Schema>& schema, const std::vector<BatchPtr>& batches,
    const arrow::ipc::IpcWriteOptions& options = arrow::ipc::IpcWriteOptions::Defaults()) {
  auto sink = arrow::io::BufferOutputStream::Create().ValueOrDie();
  auto writer = arrow::ipc::MakeStreamWriter(sink, schema, options).ValueOrDie();
  for (const auto& batch : batches) EXPECT_OK(writer->WriteRecordBatch(*batch));
  EXPECT_OK(writer->Close());
  auto buffer = sink->Finish().ValueOrDie();
  return {buffer->data(), buffer->data() + buffer->size()};
}

UniqueFd SealedStream(const std::vector<uint8_t>& bytes, int seals = test_util::kAllSeals) {
  auto fd = test_util::MakeMemfd(bytes, seals);
  EXPECT_TRUE(fd.ok()) << fd.status().ToString();
  return fd.ok() ? std::move(*fd) : UniqueFd();
}

/// An fd of a kind that is no memfd: a pipe, a regular file, a socket or a directory.
enum class OddKind { kPipe, kRegularFile, kSocket, kDirectory };
const char* Name(OddKind kind) {
  switch (kind) {
    case OddKind::kPipe:
      return "pipe";
    case OddKind::kRegularFile:
      return "regular file";
    case OddKind::kSocket:
      return "socket";
    case OddKind::kDirectory:
      return "directory";
  }
  return "?";
}
constexpr OddKind kOddKinds[] = {OddKind::kPipe, OddKind::kRegularFile, OddKind::kSocket,
                                 OddKind::kDirectory};

/// The fd and, for kinds with two ends, the other end (kept open so the fd stays valid).
std::pair<UniqueFd, UniqueFd> OddFd(OddKind kind) {
  int pair[2] = {-1, -1};
  switch (kind) {
    case OddKind::kPipe:
      EXPECT_EQ(::pipe2(pair, O_CLOEXEC), 0);
      return {UniqueFd(pair[0]), UniqueFd(pair[1])};
    case OddKind::kSocket:
      EXPECT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
      return {UniqueFd(pair[0]), UniqueFd(pair[1])};
    case OddKind::kRegularFile: {
      // Unnamed, in the temp directory; some bytes so that its size is no reason to refuse it.
      const char* tmp = std::getenv("TMPDIR");
      UniqueFd fd(::open(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp",
                         O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
      EXPECT_TRUE(fd) << "O_TMPFILE: " << std::strerror(errno);
      const std::vector<uint8_t> bytes(4096, 1);
      EXPECT_EQ(::write(fd.get(), bytes.data(), bytes.size()), 4096);
      return {std::move(fd), UniqueFd()};
    }
    case OddKind::kDirectory:
      return {UniqueFd(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)), UniqueFd()};
  }
  return {};
}

/// What the consumer says about an fd of this kind where a memfd belongs. A regular file on tmpfs
/// is shared memory too: it answers F_GET_SEALS, without any seal a consumer needs.
std::string ExpectedOddFdError(OddKind kind, int fd) {
  if (kind == OddKind::kRegularFile && ::fcntl(fd, F_GET_SEALS) >= 0) return "F_SEAL_";
  return "is not a memfd";
}

// ---------------------------------------------------------------------------------------------
// The consumer under test.

ConsumerOptions Options(Validation validation = Validation::kFull) {
  ConsumerOptions options;
  options.read_timeout_ms = kTimeoutMs;
  options.validation = validation;
  return options;
}

/// Connects one consumer to a producer serving `script` and reads until an error or the end,
/// holding every batch it read: the error, or OK.
arrow::Status ConnectAndRead(Script script, Validation validation = Validation::kFull) {
  FakeProducer producer({std::move(script)});
  ARROW_ASSIGN_OR_RAISE(auto consumer, Consumer::Connect(producer.address(), Options(validation)));
  std::vector<BatchPtr> held;  // dies before the producer, which waits for the consumer to go
  for (;;) {
    BatchPtr batch;
    ARROW_RETURN_NOT_OK(consumer->ReadNext(&batch));
    if (batch == nullptr) return arrow::Status::OK();
    held.push_back(std::move(batch));
  }
}

/// The same, for a producer that waits for the consumer to hang up after its datagrams.
arrow::Status ConnectAndRead(std::vector<Datagram> datagrams,
                             Validation validation = Validation::kFull) {
  return ConnectAndRead(Script{std::move(datagrams)}, validation);
}

/// Each kind of fd that is no memfd, where `script` puts it in place of one, is refused by name.
void ExpectEveryOddFdRefused(const std::function<std::vector<Datagram>(int fd)>& script) {
  for (OddKind kind : kOddKinds) {
    SCOPED_TRACE(Name(kind));
    auto [fd, other_end] = OddFd(kind);
    ASSERT_TRUE(fd);
    EXPECT_ERROR_CONTAINS(ConnectAndRead(script(fd.get())), ExpectedOddFdError(kind, fd.get()));
  }
}

/// Every case checks that the consumer's process leaks no fd.
class HostileProducer : public ::testing::Test {
 protected:
  void SetUp() override { fds_before_ = test_util::CountOpenFds(); }
  void TearDown() override { ExpectFdsReturnTo(fds_before_); }

 private:
  int fds_before_ = 0;
};

// ---------------------------------------------------------------------------------------------
// The handshake.

TEST_F(HostileProducer, HangsUpBeforeWelcome) {
  EXPECT_ERROR_CONTAINS(ConnectAndRead(Script{{}, /*hang_up=*/true}),
                        "closed the connection during the handshake");
}

TEST_F(HostileProducer, AnswersHelloWithAnotherMessage) {
  EXPECT_ERROR_CONTAINS(ConnectAndRead({End()}), "expected Welcome, got End");
  // A type this version does not know.
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(RawHeader(42, 0, 0, 0))}),
                        "unknown message type 42");
}

TEST_F(HostileProducer, MalformedWelcome) {
  const Datagram good = SealedWelcome();
  std::vector<uint8_t> bad_magic = good.bytes;
  bad_magic[0] ^= 0xFF;
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(bad_magic)}), "bad magic");
  std::vector<uint8_t> flags = good.bytes;
  flags[6] = 1;
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(flags)}), "unknown header flags 1");
  // Cut short, with the header's length left as it was and fixed up to match.
  std::vector<uint8_t> cut(good.bytes.begin(), good.bytes.begin() + 24);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(cut)}), "header announces");
  const uint32_t length = 8;
  std::memcpy(cut.data() + 12, &length, 4);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(cut)}), "before field 'mode'");
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(std::span(good.bytes).first(10))}),
                        "shorter than the 16-byte header");
  // A schema that does not parse.
  proto::Writer writer;
  proto::Welcome welcome;
  welcome.schema = "not an IPC schema";
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Message(proto::Encode(writer, welcome))}),
                        "schema from the peer (17 bytes) does not parse");
}

TEST_F(HostileProducer, VersionsFollowTheSpecification) {
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Welcome(*TestSchema(), proto::Mode::kSealed, {}, 2)}),
                        "producer speaks protocol 2.");
  // A newer minor version may append fields: they are ignored, the stream works.
  Datagram newer = SealedWelcome();
  newer.bytes[proto::kHeaderSize + 2] = 7;  // minor (bytes 2-3 of the payload)
  newer.bytes.insert(newer.bytes.end(), {1, 2, 3, 4});
  const auto payload = static_cast<uint32_t>(newer.bytes.size() - proto::kHeaderSize);
  std::memcpy(newer.bytes.data() + 12, &payload, 4);
  EXPECT_OK(ConnectAndRead({newer, End()}));
}

TEST_F(HostileProducer, WrongNumberOfFdsWithWelcome) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({Welcome(*TestSchema(), proto::Mode::kRing, {})}),
                        "ring Welcome carries 0 fds, expected 1");
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({Welcome(*TestSchema(), proto::Mode::kRing, {ring.get(), ring.get()})}),
      "expected at most 1");
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({Welcome(*TestSchema(), proto::Mode::kSealed, {ring.get()})}),
      "sealed Welcome with an fd");
  // SCM_MAX_FD: the kernel delivers what fits the consumer's control buffer and closes the rest.
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({Welcome(*TestSchema(), proto::Mode::kRing,
                              std::vector<int>(internal::kMaxFdsPerMessage, ring.get()))}),
      "the peer sent more fds than expected (1)");
}

TEST_F(HostileProducer, RingThatIsNoSealedMemfd) {
  ExpectEveryOddFdRefused([](int fd) { return std::vector<Datagram>{RingWelcome(fd)}; });
  const RingImage image(*TestBatch());
  // Writable: no seal at all, or only against resizing.
  for (int seals : {0, F_SEAL_SHRINK | F_SEAL_GROW}) {
    const UniqueFd ring = image.Seal(seals);
    EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get())}),
                          "needs F_SEAL_SHRINK|F_SEAL_GROW and a write seal");
  }
  // It may still grow, or shrink under the consumer's mapping (SIGBUS).
  for (int seals : {F_SEAL_SHRINK | F_SEAL_WRITE, F_SEAL_GROW | F_SEAL_WRITE}) {
    const UniqueFd ring = image.Seal(seals);
    EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get())}), "lacks seals");
  }
  const UniqueFd empty = RingImage(*TestBatch()).Seal(0);
  ASSERT_EQ(::ftruncate(empty.get(), 0), 0);
  ASSERT_EQ(::fcntl(empty.get(), F_ADD_SEALS, kRingSeals), 0);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(empty.get())}), "size 0");
}

TEST_F(HostileProducer, RingWelcomeWithDictionarySchemaIsRefused) {
  const auto schema =
      arrow::schema({arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
  const UniqueFd ring = RingImage(*TestBatch()).Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get(), *schema)}), "dictionary");
}

// ---------------------------------------------------------------------------------------------
// Batch messages in ring mode: where the metadata and the buffers are.

TEST_F(HostileProducer, RingMetadataOutsideTheRing) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  const uint64_t size = image.bytes.size();
  const std::pair<uint64_t, uint32_t> lies[] = {
      {size, 1},                                       // just past the end
      {size - 8, 16},                                  // straddles the end
      {std::numeric_limits<uint64_t>::max() - 7, 16},  // offset + length wraps around 2^64
      {0, 0},                                          // empty
      {0, std::numeric_limits<uint32_t>::max()},       // longer than any metadata
  };
  for (const auto& [offset, length] : lies) {
    SCOPED_TRACE(std::to_string(offset) + " +" + std::to_string(length));
    EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, offset, length)}),
                          "is outside the " + std::to_string(size) + "-byte ring");
  }
}

TEST_F(HostileProducer, RingMetadataThatIsNoRecordBatchMessage) {
  RingImage image(*TestBatch());
  // A Schema message where a RecordBatch message belongs.
  const std::string schema = internal::SerializeSchema(*TestSchema()).ValueOrDie();
  const uint64_t schema_at = image.bytes.size();
  image.bytes.insert(image.bytes.end(), schema.begin() + 8, schema.end());  // without the prefix
  const UniqueFd ring = image.Seal();
  const auto schema_length = static_cast<uint32_t>(schema.size() - 8);
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, schema_at, schema_length)}),
      "Header-type of flatbuffer-encoded Message is not RecordBatch");
  // The body's bytes (int32 values), which are no flatbuffer at all.
  EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, 0, 64)}),
                        "is outside the 64-byte message");
}

TEST_F(HostileProducer, RingBuffersOutsideTheRing) {
  const RingImage good(*TestBatch());
  const auto size = static_cast<int64_t>(good.bytes.size());
  const int64_t max = std::numeric_limits<int64_t>::max();
  // What Arrow's reader says (it counts buffers from 1); the consumer adds where the batch is.
  const std::string n = std::to_string(kSData + 1);
  const struct {
    int64_t offset, length;
    std::string error;
  } lies[] = {
      {size + 64, 8,
       "Read out of bounds (offset = " + std::to_string(size + 64) +
           ", size = 8) in file of size " + std::to_string(size)},
      {size - 8, 64, "File too short: expected to be able to read 64 bytes, got 8"},
      {max - 7, 16, "Buffer " + n + " exceeds IPC file area"},  // offset + length overflows
      {8, max, "Buffer " + n + " exceeds IPC file area"},
      {-64, 16, "Negative offset for reading buffer " + n},
      {0, -16, "Negative length for reading buffer " + n},
  };
  const std::string where = "batch 1 (metadata at [" + std::to_string(good.metadata_offset) +
                            ", +" + std::to_string(good.metadata_length) + ") of the " +
                            std::to_string(size) + "-byte ring): ";
  for (const auto& lie : lies) {
    SCOPED_TRACE(std::to_string(lie.offset) + " +" + std::to_string(lie.length));
    RingImage image = good;
    image.SetBuffer(kSData, lie.offset, lie.length);
    const UniqueFd ring = image.Seal();
    const auto status = ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, image)});
    EXPECT_ERROR_CONTAINS(status, where + lie.error);
  }
}

TEST_F(HostileProducer, RingOffsetsPointingOutsideTheirData) {
  const RingImage good(*TestBatch());
  // The string column's last offset, and the list column's, made to point far past their data.
  for (int buffer : {kSOffsets, kLOffsets}) {
    SCOPED_TRACE(buffer == kSOffsets ? "utf8" : "list");
    RingImage image = good;
    image.Set<int32_t>(static_cast<size_t>(good.BufferOffset(buffer)) + 3 * sizeof(int32_t),
                       1 << 30);
    const UniqueFd ring = image.Seal();
    EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, image)}),
                          "record batch 1 is invalid");
    // Validation::kBasic checks the last offset too (it costs O(1)); anything finer is kFull's.
    EXPECT_ERROR_CONTAINS(
        ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, image)}, Validation::kBasic),
        "offsets (1073741824) larger than values");
  }
  // Offsets that stay inside the data but decrease: only full validation sees them.
  RingImage image = good;
  image.Set<int32_t>(static_cast<size_t>(good.BufferOffset(kSOffsets)) + sizeof(int32_t), 5);
  const UniqueFd ring = image.Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, image)}),
                        "record batch 1 is invalid");
  EXPECT_OK(
      ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, image), End()}, Validation::kBasic));
}

TEST_F(HostileProducer, RingSchemaChangeWithoutNotice) {
  // Batches of another schema than the one announced, with no Schema message before them.
  arrow::Int32Builder ints;
  ASSERT_OK(ints.AppendValues({1000, 2000, 3000}));
  std::shared_ptr<arrow::Array> values;
  ASSERT_OK(ints.Finish(&values));
  const RingImage image(
      *arrow::RecordBatch::Make(arrow::schema({arrow::field("v", arrow::int32())}), 3, {values}));
  const UniqueFd ring = image.Seal();
  // More fields, and more buffers per field, than the batch has: refused.
  const auto strings =
      arrow::schema({arrow::field("s", arrow::utf8()), arrow::field("t", arrow::utf8())});
  EXPECT_ERROR_CONTAINS(ConnectAndRead({RingWelcome(ring.get(), *strings), BatchAt(1, image)}),
                        "buffer_index out of range");
  // The same layout with narrower values: read as the announced type. The values are wrong, and
  // every read stays inside the buffers the metadata gave (which lie inside the ring).
  const auto narrow = arrow::schema({arrow::field("v", arrow::int16())});
  FakeProducer producer({Script{{RingWelcome(ring.get(), *narrow), BatchAt(1, image)}}});
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), Options()));
  BatchPtr batch;
  ASSERT_OK(consumer->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  auto column = std::static_pointer_cast<arrow::Int16Array>(batch->column(0));
  EXPECT_EQ(column->Value(0), 1000);
  EXPECT_EQ(column->Value(1), 0);  // the high half of 1000
  batch.reset();
  consumer.reset();
}

TEST_F(HostileProducer, RingBatchWithCompressedBodyIsRefused) {
  const BatchPtr batch = Compressible();
  const RingImage image(*BatchMessage(*batch, Compressed(arrow::Compression::LZ4_FRAME)));
  const UniqueFd ring = image.Seal();
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({RingWelcome(ring.get(), *batch->schema()), BatchAt(1, image)}),
      "compression");
}

TEST_F(HostileProducer, RingSchemaChangeToDictionaryIsRefusedNotACrash) {
  // Before the fix: SIGSEGV in arrow::ipc::ResolveDictionaries (null DictionaryMemo).
  const auto schema =
      arrow::schema({arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
  arrow::StringDictionaryBuilder d;
  ASSERT_OK(d.Append("x"));
  std::shared_ptr<arrow::Array> da;
  ASSERT_OK(d.Finish(&da));
  const RingImage image(*arrow::RecordBatch::Make(schema, 1, {da}));
  const UniqueFd ring = image.Seal();
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({RingWelcome(ring.get()), SchemaChange(*schema), BatchAt(1, image)}),
      "dictionary");
}

TEST_F(HostileProducer, RingLiesInTheLayoutOfTheBatchBeforeAreRefusedAsArrowsReaderRefusesThem) {
  // A consumer builds a batch whose Message is the batch before's with other values patched in
  // without asking Arrow's reader again. Whatever a producer writes into those values, and into
  // the bytes they point at, is refused with the very error the first batch of a stream gets.
  const RingImage good(*TestBatch());
  const size_t body_length = good.metadata_offset;
  struct Second {  // where the lying batch's copy of the body and Message are
    size_t body, metadata;
    size_t Node(const RingImage& image, int index) const {
      return metadata + static_cast<size_t>(image.fields.nodes_at) + 16 * index;
    }
    size_t Buffer(const RingImage& image, int index) const {
      return metadata + static_cast<size_t>(image.fields.buffers_at) + 16 * index;
    }
  };
  const struct {
    std::string what;
    std::function<void(RingImage&, const Second&)> lie;
  } lies[] = {
      {"more rows than the buffers hold",
       [](RingImage& image, const Second& at) {
         image.Set<int64_t>(at.metadata + static_cast<size_t>(image.fields.length_at), 100);
         for (int node : {0, 1, 2}) image.Set<int64_t>(at.Node(image, node), 100);
       }},
      {"more nulls than rows",
       [](RingImage& image, const Second& at) { image.Set<int64_t>(at.Node(image, 0) + 8, 4); }},
      {"nulls without a bitmap",
       [](RingImage& image, const Second& at) { image.Set<int64_t>(at.Node(image, 1) + 8, 1); }},
      {"string offsets that decrease",
       [](RingImage& image, const Second& at) {
         const auto offsets = at.body + static_cast<size_t>(image.BufferOffset(kSOffsets));
         image.Set<int32_t>(offsets + sizeof(int32_t), 5);
       }},
      {"a negative first string offset",
       [](RingImage& image, const Second& at) {
         image.Set<int32_t>(at.body + static_cast<size_t>(image.BufferOffset(kSOffsets)), -1);
       }},
      {"string offsets past data of no bytes",
       [](RingImage& image, const Second& at) {
         image.Set<int64_t>(at.Buffer(image, kSData) + 8, 0);
       }},
      {"a negative null count",
       [](RingImage& image, const Second& at) { image.Set<int64_t>(at.Node(image, 0) + 8, -2); }},
      // Nodes: i, s, l, the lists' values.
      {"list values fewer than the lists use",
       [](RingImage& image, const Second& at) { image.Set<int64_t>(at.Node(image, 3), 1); }},
      {"a child of negative length",
       [](RingImage& image, const Second& at) { image.Set<int64_t>(at.Node(image, 3), -1); }},
      {"strings that are no UTF-8",
       [](RingImage& image, const Second& at) {
         image.bytes[at.body + static_cast<size_t>(image.BufferOffset(kSData))] = 0xff;
       }},
      {"list offsets past the values",
       [](RingImage& image, const Second& at) {
         const auto offsets = at.body + static_cast<size_t>(image.BufferOffset(kLOffsets));
         image.Set<int32_t>(offsets + 3 * sizeof(int32_t), 1 << 20);
       }},
      {"a buffer past the ring",
       [](RingImage& image, const Second& at) {
         image.Set<int64_t>(at.Buffer(image, kSData), static_cast<int64_t>(image.bytes.size()));
       }},
      {"a misaligned buffer",
       [](RingImage& image, const Second& at) {
         image.Set<int64_t>(at.Buffer(image, kIData),
                            image.Get<int64_t>(at.Buffer(image, kIData)) + 4);
       }},
  };
  for (const auto& lie : lies) {
    SCOPED_TRACE(lie.what);
    RingImage image = good;
    Second at{};
    at.body = (image.bytes.size() + 63) / 64 * 64;
    image.bytes.resize(at.body);
    image.bytes.insert(image.bytes.end(), good.bytes.begin(), good.bytes.begin() + body_length);
    at.metadata = (image.bytes.size() + 7) / 8 * 8;
    image.bytes.resize(at.metadata);
    image.bytes.insert(image.bytes.end(), good.bytes.begin() + good.metadata_offset,
                       good.bytes.end());
    for (int i = 0; i < image.fields.num_buffers; ++i) {  // the copy points at the copied body
      image.Set<int64_t>(at.Buffer(image, i),
                         image.Get<int64_t>(at.Buffer(image, i)) + static_cast<int64_t>(at.body));
    }
    lie.lie(image, at);
    const UniqueFd ring = image.Seal();
    const Datagram second = BatchAt(2, at.metadata, good.metadata_length);
    const auto first_of_its_layout = ConnectAndRead({RingWelcome(ring.get()), second});
    const auto after_one_of_its_layout =
        ConnectAndRead({RingWelcome(ring.get()), BatchAt(1, image), second});
    EXPECT_FALSE(first_of_its_layout.ok());
    EXPECT_EQ(after_one_of_its_layout.ToString(), first_of_its_layout.ToString());
  }
}

// ---------------------------------------------------------------------------------------------
// Batch messages: slots, fds and sequences.

TEST_F(HostileProducer, ReusedSequenceWhileHeldIsRefused) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({RingWelcome(ring.get()), BatchAt(7, image), BatchAt(7, image), End()}),
      "batch 7 arrived while this consumer still holds batch 7");
}

TEST_F(HostileProducer, MoreBatchesThanCreditsAreRefused) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  std::vector<Datagram> script{RingWelcome(ring.get())};  // 4 credits
  for (uint64_t sequence = 1; sequence <= 4; ++sequence) script.push_back(BatchAt(sequence, image));
  script.push_back(End());
  EXPECT_OK(ConnectAndRead(script));
  script.insert(script.end() - 1, BatchAt(5, image));
  EXPECT_ERROR_CONTAINS(ConnectAndRead(script), "batch 5 is beyond this consumer's 4 credits");
}

TEST_F(HostileProducer, OverlappingSlotsReadTheSameBytes) {
  // Two batches whose metadata and buffers are the same bytes of the ring. The consumer cannot
  // tell this from two batches that share buffers (a batch published twice), and it is harmless:
  // both read what is there, inside the mapping.
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  FakeProducer producer({Script{{RingWelcome(ring.get()), BatchAt(1, image), BatchAt(2, image)}}});
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), Options()));
  BatchPtr first, second;
  ASSERT_OK(consumer->ReadNext(&first));
  ASSERT_OK(consumer->ReadNext(&second));
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_TRUE(first->Equals(*TestBatch()));
  EXPECT_TRUE(second->Equals(*TestBatch()));
  first.reset();
  second.reset();
  consumer.reset();
}

TEST_F(HostileProducer, FdsWhereNoneBelong) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({RingWelcome(ring.get()), Message(BatchAt(1, image).bytes, {ring.get()})}),
      "ring Batch carries an fd");
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), Message(End().bytes, {ring.get()})}),
                        "End carried 1 fds");
}

TEST_F(HostileProducer, SealedBatchWithWrongNumberOfFds) {
  const UniqueFd stream = SealedStream(StreamBytes(TestSchema(), {TestBatch()}));
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), SealedBatch(1, {})}),
                        "sealed Batch 1 carries 0 fds, expected 1");
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(), SealedBatch(1, {stream.get(), stream.get()})}),
      "expected at most 1");
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(),
                      SealedBatch(1, std::vector<int>(internal::kMaxFdsPerMessage, stream.get()))}),
      "the peer sent more fds than expected (1)");
}

TEST_F(HostileProducer, SealedBatchThatIsNoSealedMemfd) {
  ExpectEveryOddFdRefused(
      [](int fd) { return std::vector<Datagram>{SealedWelcome(), SealedBatch(1, {fd})}; });
  const auto bytes = StreamBytes(TestSchema(), {TestBatch()});
  // Writable: unsealed, or sealed against writes only through new mappings.
  const UniqueFd unsealed = SealedStream(bytes, 0);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), SealedBatch(1, {unsealed.get()})}),
                        "missing F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE");
  const UniqueFd future_write =
      SealedStream(bytes, F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), SealedBatch(1, {future_write.get()})}),
                        "missing F_SEAL_WRITE");
}

TEST_F(HostileProducer, SealedStreamThatLies) {
  const auto bytes = StreamBytes(TestSchema(), {TestBatch()});
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(bytes));
  ASSERT_EQ(messages.size(), 2u);
  // Body buffer past the end of the memfd.
  std::vector<uint8_t> past_end = bytes;
  test_util::SetBufferOffset(past_end, messages[1], kSData, static_cast<int64_t>(bytes.size()));
  const UniqueFd lie = SealedStream(past_end);
  const auto status = ConnectAndRead({SealedWelcome(), SealedBatch(1, {lie.get()})});
  EXPECT_ERROR_CONTAINS(status, "batch 1 (a sealed memfd of " + std::to_string(bytes.size()));
  EXPECT_ERROR_CONTAINS(status, "Read out of bounds");
  // Metadata length past the end of the memfd.
  std::vector<uint8_t> long_metadata = bytes;
  const int32_t huge = std::numeric_limits<int32_t>::max() - 8;
  std::memcpy(long_metadata.data() + messages[1].prefix_at + 4, &huge, 4);
  const UniqueFd lie2 = SealedStream(long_metadata);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), SealedBatch(1, {lie2.get()})}),
                        "metadata bytes, but only read");
  // Cut off in the middle of the batch.
  const UniqueFd cut =
      SealedStream(std::vector<uint8_t>(bytes.begin(), bytes.begin() + messages[1].body_at + 8));
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), SealedBatch(1, {cut.get()})}),
                        "for message body, got 8");
}

TEST_F(HostileProducer, SealedStreamWithCompressedBodyIsRefused) {
  const BatchPtr batch = Compressible();
  const UniqueFd fd =
      SealedStream(StreamBytes(batch->schema(), {batch}, Compressed(arrow::Compression::ZSTD)));
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(*batch->schema()), SealedBatch(1, {fd.get()})}), "compression");
}

// ---------------------------------------------------------------------------------------------
// Messages after the handshake.

TEST_F(HostileProducer, TruncatedOversizedAndUnknownMessages) {
  proto::Writer writer;
  const Datagram batch = SealedBatch(1, {});
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(), Message(std::span(batch.bytes).first(20))}),
      "header announces");
  std::vector<uint8_t> short_batch(batch.bytes.begin(), batch.bytes.begin() + 28);
  const uint32_t length = 12;
  std::memcpy(short_batch.data() + 12, &length, 4);
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), Message(short_batch)}),
                        "before field 'dropped'");
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), Message(RawHeader(200, 0, 0, 0))}),
                        "unknown message type 200");
  for (auto type : {proto::Type::kHello, proto::Type::kRelease, proto::Type::kRequest,
                    proto::Type::kBye, proto::Type::kWelcome}) {
    EXPECT_ERROR_CONTAINS(
        ConnectAndRead({SealedWelcome(), Message(RawHeader(static_cast<uint16_t>(type), 0, 0, 0))}),
        std::string("unexpected ") + proto::TypeName(type) + " from a producer");
  }
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), Message(proto::EncodeEnd(writer, 9))}),
                        "End for unknown stream 9");
  // Longer than any message may be: the socket truncates it and the consumer says so.
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead(
          {SealedWelcome(), OversizedDatagram(static_cast<uint16_t>(proto::Type::kSchema))}),
      "is longer than 262144 bytes (MSG_TRUNC)");
}

TEST_F(HostileProducer, ErrorFromTheProducerIsReported) {
  proto::Writer writer;
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(),
                      Message(proto::Encode(
                          writer, 0, proto::Error{proto::ErrorCode::kShutdown, "going away"}))}),
      "producer: going away");
}

TEST_F(HostileProducer, DisconnectsMidStream) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  FakeProducer producer({Script{{RingWelcome(ring.get()), BatchAt(1, image)}, /*hang_up=*/true}});
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), Options()));
  BatchPtr batch;
  ASSERT_OK(consumer->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  BatchPtr next;
  EXPECT_ERROR_CONTAINS(consumer->ReadNext(&next),
                        "producer closed the connection without ending the stream");
  // What arrived before stays readable: the mapping is the consumer's own.
  EXPECT_TRUE(batch->Equals(*TestBatch()));
}

TEST_F(HostileProducer, FallsSilent) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  FakeProducer producer({Script{{RingWelcome(ring.get())}}});
  ConsumerOptions options = Options();
  options.read_timeout_ms = 50;  // a deadline, not an expectation of speed
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), options));
  BatchPtr batch;
  EXPECT_ERROR_CONTAINS(consumer->ReadNext(&batch), "no message from the producer within 50 ms");
  ASSERT_OK_AND_ASSIGN(auto poll, consumer->TryNext(&batch));
  EXPECT_EQ(poll, Consumer::Poll::kPending);
}

// ---------------------------------------------------------------------------------------------
// One consumer lied to, another served: each connection stands alone.

TEST_F(HostileProducer, OtherConsumersOfTheSameProducerKeepGoing) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  FakeProducer producer({
      Script{{RingWelcome(ring.get()), BatchAt(1, image.bytes.size(), 64)}},  // lies
      Script{{RingWelcome(ring.get()), BatchAt(1, image), End()}},            // does not
  });
  ASSERT_OK_AND_ASSIGN(auto lied_to, Consumer::Connect(producer.address(), Options()));
  ASSERT_OK_AND_ASSIGN(auto served, Consumer::Connect(producer.address(), Options()));
  BatchPtr batch;
  EXPECT_ERROR_CONTAINS(lied_to->ReadNext(&batch), "outside the");
  ASSERT_OK(served->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  EXPECT_TRUE(batch->Equals(*TestBatch()));
  batch.reset();
  ASSERT_OK(served->ReadNext(&batch));
  EXPECT_EQ(batch, nullptr);
  EXPECT_ERROR_CONTAINS(lied_to->ReadNext(&batch), "outside the");  // the error is final
}

// ---------------------------------------------------------------------------------------------
// The ring's trust model (docs/design.md): what validation at receipt does and does not cover.

TEST_F(HostileProducer, RingRewrittenAfterValidationIsWhyRingModeIsForTrustedProducers) {
  // The producer keeps a writable mapping of the ring (F_SEAL_FUTURE_WRITE, as the real one).
  const RingImage image(*TestBatch());
  UniqueFd ring = image.Seal(0);
  ASSERT_OK_AND_ASSIGN(auto writable,
                       internal::Mapping::MapWritable(ring.get(), image.bytes.size()));
  ASSERT_EQ(::fcntl(ring.get(), F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE), 0);
  FakeProducer producer({Script{{RingWelcome(ring.get()), BatchAt(1, image)}}});
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), Options()));
  BatchPtr batch;
  ASSERT_OK(consumer->ReadNext(&batch));  // validated in full: it was sound when it arrived
  ASSERT_NE(batch, nullptr);
  EXPECT_TRUE(batch->Equals(*TestBatch()));
  // Afterwards the producer rewrites a value and a string offset in place.
  std::memcpy(writable.data() + image.BufferOffset(kIData), "\x2a\0\0\0", 4);
  const int32_t far = 1 << 30;
  std::memcpy(writable.data() + image.BufferOffset(kSOffsets) + 3 * sizeof(int32_t), &far, 4);
  // The consumer sees both changes: a new value, and an offset that now points far outside the
  // string data (and the mapping). Reading that string would read out of bounds; validating
  // again shows it. Sealed mode is the answer to producers that are not trusted.
  EXPECT_EQ(std::static_pointer_cast<arrow::Int32Array>(batch->column(0))->Value(0), 42);
  EXPECT_ERROR_CONTAINS(batch->ValidateFull(), "ffset");
  // What it cannot change: the metadata was copied, so buffers stay where they were checked.
  EXPECT_EQ(batch->num_rows(), 3);
  EXPECT_EQ(batch->column_data(1)->buffers[2]->size(), 6);
  batch.reset();
  consumer.reset();
}

// ---------------------------------------------------------------------------------------------
// The queue in the ring (protocol 1.1): entries the producer writes where the consumer reads.

/// A ring holding `batch` and, after it, a queue of `capacity` entries whose header counts
/// `written` entries: `entries` in slots 0, 1, ...
struct QueuedRing {
  RingImage image;
  uint64_t queue_offset = 0;
  QueuedRing(const arrow::RecordBatch& batch, uint32_t capacity, uint64_t written,
             const std::vector<proto::QueueEntry>& entries)
      : image(batch) {
    image.bytes.resize((image.bytes.size() + 63) / 64 * 64, 0);
    queue_offset = image.bytes.size();
    image.bytes.resize(queue_offset + proto::kQueueHeaderSize + capacity * proto::kQueueEntrySize,
                       0);
    image.Set<uint64_t>(queue_offset, written);
    for (size_t i = 0; i < entries.size(); ++i) {
      std::memcpy(
          image.bytes.data() + queue_offset + proto::kQueueHeaderSize + i * proto::kQueueEntrySize,
          &entries[i], sizeof entries[i]);
    }
  }
  /// An entry for the batch of the image.
  proto::QueueEntry BatchEntry(uint64_t sequence) const {
    proto::QueueEntry entry;
    entry.sequence = sequence;
    entry.metadata_offset = image.metadata_offset;
    entry.metadata_length = image.metadata_length;
    return entry;
  }
};

Datagram QueueWelcome(int ring_fd, uint64_t queue_offset, uint32_t capacity) {
  proto::Writer writer;
  proto::Welcome welcome;
  welcome.mode = proto::Mode::kRing;
  welcome.max_in_flight = 4;
  welcome.queue_offset = queue_offset;
  welcome.queue_capacity = capacity;
  welcome.schema = internal::SerializeSchema(*TestSchema()).ValueOrDie();
  return Message(proto::Encode(writer, welcome), {ring_fd});
}

TEST_F(HostileProducer, QueueTheConsumerReadsInPlaceOfMessages) {
  // The well-formed case first: the batch arrives through the queue, the stream ends there.
  const QueuedRing tmp(*TestBatch(), 5, 0, {});
  proto::QueueEntry end;
  end.kind = proto::EntryKind::kControls;
  end.controls_before = 1;
  const QueuedRing ring(*TestBatch(), 5, 2, {tmp.BatchEntry(1), end});
  const UniqueFd fd = ring.image.Seal();
  EXPECT_OK(ConnectAndRead({QueueWelcome(fd.get(), ring.queue_offset, 5), End()}));
}

TEST_F(HostileProducer, QueueOutsideTheRingOrMisaligned) {
  const QueuedRing ring(*TestBatch(), 5, 0, {});
  const UniqueFd fd = ring.image.Seal();
  for (uint64_t offset :
       {ring.queue_offset + 8, uint64_t{1} << 40, static_cast<uint64_t>(ring.image.bytes.size())}) {
    EXPECT_ERROR_CONTAINS(ConnectAndRead({QueueWelcome(fd.get(), offset, 5)}), "does not fit the");
  }
  EXPECT_ERROR_CONTAINS(ConnectAndRead({QueueWelcome(fd.get(), ring.queue_offset, 1u << 30)}),
                        "queue of 1073741824 entries");
}

TEST_F(HostileProducer, QueueCountingMoreEntriesThanItHolds) {
  const QueuedRing ring(*TestBatch(), 5, 6, {});  // 6 unread in a queue of 5
  const UniqueFd fd = ring.image.Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({QueueWelcome(fd.get(), ring.queue_offset, 5)}),
                        "the queue counts 6 entries written, but this consumer read 0");
}

TEST_F(HostileProducer, QueueEntryOfAnUnknownKind) {
  const QueuedRing tmp(*TestBatch(), 5, 0, {});
  proto::QueueEntry entry = tmp.BatchEntry(1);
  entry.kind = static_cast<proto::EntryKind>(9);
  const QueuedRing ring(*TestBatch(), 5, 1, {entry});
  const UniqueFd fd = ring.image.Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({QueueWelcome(fd.get(), ring.queue_offset, 5)}),
                        "queue entry 0 has kind 9");
}

TEST_F(HostileProducer, QueueEntryCountingControlMessagesNeverSent) {
  const QueuedRing tmp(*TestBatch(), 5, 0, {});
  proto::QueueEntry entry = tmp.BatchEntry(1);
  entry.controls_before = 2;
  const QueuedRing ring(*TestBatch(), 5, 1, {entry});
  const UniqueFd fd = ring.image.Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({QueueWelcome(fd.get(), ring.queue_offset, 5)}),
                        "counts 2 control messages before it, but only 0 arrived");
}

TEST_F(HostileProducer, QueueEntryWithMetadataOutsideTheRing) {
  const QueuedRing tmp(*TestBatch(), 5, 0, {});
  proto::QueueEntry entry = tmp.BatchEntry(1);
  entry.metadata_offset = uint64_t{1} << 40;
  const QueuedRing ring(*TestBatch(), 5, 1, {entry});
  const UniqueFd fd = ring.image.Seal();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({QueueWelcome(fd.get(), ring.queue_offset, 5)}),
                        "is outside the");
}

TEST_F(HostileProducer, WakeWithoutAQueue) {
  proto::Writer writer;
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), Message(proto::EncodeWake(writer))}),
                        "Wake without a queue");
}

// ---------------------------------------------------------------------------------------------
// Issue 17: type confusion in sealed mode, sparse memfds, credentials, smaller lies.

BatchPtr OneColumn(const std::shared_ptr<arrow::DataType>& type, const std::string& name = "rand") {
  auto array = arrow::MakeArrayOfNull(type, 3).ValueOrDie();
  return arrow::RecordBatch::Make(arrow::schema({arrow::field(name, type)}), 3, {array});
}

/// Sealed mode: the memfd carries a stream of its own schema; whatever differs from the announced
/// one (Welcome, or a Schema message) is refused naming both, never yielded under the wrong type.
TEST_F(HostileProducer, SealedMemfdOfAnotherSchemaThanAnnounced) {
  const auto announced = arrow::schema({arrow::field("rand", arrow::int32())});
  const BatchPtr dictionary = [] {
    arrow::StringBuilder value_builder;
    arrow::Int32Builder index_builder;
    EXPECT_OK(value_builder.Append("x"));
    EXPECT_OK(index_builder.AppendValues({0, 0, 0}));
    std::shared_ptr<arrow::Array> values, indices;
    EXPECT_OK(value_builder.Finish(&values));
    EXPECT_OK(index_builder.Finish(&indices));
    auto array = arrow::DictionaryArray::FromArrays(
                     arrow::dictionary(arrow::int32(), arrow::utf8()), indices, values)
                     .ValueOrDie();
    return arrow::RecordBatch::Make(arrow::schema({arrow::field("rand", array->type())}), 3,
                                    {array});
  }();
  const auto extra = arrow::RecordBatch::Make(
      arrow::schema({arrow::field("rand", arrow::int32()), arrow::field("x", arrow::int32())}), 3,
      {OneColumn(arrow::int32())->column(0), OneColumn(arrow::int32())->column(0)});
  const std::vector<std::pair<const char*, BatchPtr>> lies = {
      {"utf8", OneColumn(arrow::utf8())},
      {"int64", OneColumn(arrow::int64())},
      {"renamed", OneColumn(arrow::int32(), "other")},
      {"extra column", extra},
      {"dictionary", dictionary},
  };
  for (const auto& [what, batch] : lies) {
    SCOPED_TRACE(what);
    const UniqueFd memfd = SealedStream(StreamBytes(batch->schema(), {batch}));
    EXPECT_ERROR_CONTAINS(
        ConnectAndRead({SealedWelcome(*announced), SealedBatch(1, {memfd.get()})}),
        "protocol: the memfd holds a batch of schema (");
    EXPECT_ERROR_CONTAINS(
        ConnectAndRead({SealedWelcome(*announced), SealedBatch(1, {memfd.get()})}),
        "but the producer announced (rand: int32)");
  }
  // A Schema message announcing int64, then a memfd still holding int32.
  const BatchPtr int32 = OneColumn(arrow::int32());
  const UniqueFd memfd = SealedStream(StreamBytes(int32->schema(), {int32}));
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(*announced),
                      SchemaChange(*arrow::schema({arrow::field("rand", arrow::int64())})),
                      SealedBatch(1, {memfd.get()})}),
      "the memfd holds a batch of schema (rand: int32), but the producer announced (rand: int64)");
  // The honest case still reads.
  EXPECT_OK(ConnectAndRead({SealedWelcome(*announced), SealedBatch(1, {memfd.get()}), End()}));
}

/// A consumer that expects a schema refuses a Schema message that changes to another one.
TEST_F(HostileProducer, SchemaChangeAwayFromTheExpectedSchemaIsRefused) {
  const auto expected = arrow::schema({arrow::field("rand", arrow::int32())});
  FakeProducer producer(
      {Script{{SealedWelcome(*expected),
               SchemaChange(*arrow::schema({arrow::field("rand", arrow::utf8())}))}}});
  ConsumerOptions options = Options();
  options.expect_schema = expected;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), options));
  BatchPtr batch;
  EXPECT_ERROR_CONTAINS(consumer->ReadNext(&batch), "schema change: schema mismatch (exact)");
}

/// The single hand-over: the expected schema is checked against the memfd's own.
TEST_F(HostileProducer, HandoverOfAnotherSchemaThanExpected) {
  const std::string address = test_util::UniqueAbstractName("hostile-handover");
  const BatchPtr utf8 = OneColumn(arrow::utf8());
  const UniqueFd memfd = SealedStream(StreamBytes(utf8->schema(), {utf8}));
  ServeOptions serve;
  serve.accept_timeout_ms = kTimeoutMs;
  std::thread server([&] { (void)ServeFd(address, memfd.get(), serve); });
  ConsumerOptions options = Options();
  options.connect_timeout_ms = kTimeoutMs;
  options.expect_schema = arrow::schema({arrow::field("rand", arrow::int32())});
  EXPECT_ERROR_CONTAINS(Consumer::Connect(address, options).status(),
                        "field 0: expected 'rand: int32', producer has 'rand: string'");
  server.join();
}

/// A memfd whose buffers lie in holes (never written: they cost the producer nothing) is refused
/// before the consumer reads, and so commits, them: sealed Batch and single hand-over.
TEST_F(HostileProducer, SparseMemfdIsRefusedBeforeItsHolesAreRead) {
  constexpr int64_t kValue = int64_t{32} << 20;
  arrow::StringBuilder builder;
  ASSERT_OK(builder.Append(std::string(kValue, 'x')));
  std::shared_ptr<arrow::Array> array;
  ASSERT_OK(builder.Finish(&array));
  const auto schema = arrow::schema({arrow::field("s", arrow::utf8())});
  const auto bytes = StreamBytes(schema, {arrow::RecordBatch::Make(schema, 1, {array})});
  auto sparse = [&]() -> UniqueFd {
    UniqueFd fd(::memfd_create("hostile-sparse", MFD_CLOEXEC | MFD_ALLOW_SEALING));
    EXPECT_TRUE(fd);
    EXPECT_EQ(::pwrite(fd.get(), bytes.data(), bytes.size(), 0),
              static_cast<ssize_t>(bytes.size()));
    // The value's pages become a hole again, as if never written.
    const auto value = std::search_n(bytes.begin(), bytes.end(), 8192, 'x') - bytes.begin();
    const int64_t hole = (value + 4095) / 4096 * 4096;
    EXPECT_EQ(
        ::fallocate(fd.get(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, hole, kValue - 8192), 0);
    EXPECT_EQ(::fcntl(fd.get(), F_ADD_SEALS, test_util::kAllSeals), 0);
    return fd;
  };
  const char* kRefusal = "bytes allocated (st_blocks): the rest are holes the producer never wrote";
  const UniqueFd in_batch = sparse();
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(*schema), SealedBatch(1, {in_batch.get()})}),
                        kRefusal);
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(sparse()));
  EXPECT_LT(stream->allocated_bytes(), kValue / 2);
  ASSERT_OK_AND_ASSIGN(auto reader, stream->OpenReader());
  BatchPtr batch;
  EXPECT_ERROR_CONTAINS(reader->ReadNext(&batch), kRefusal);
  // Written memfds (as every producer writes them) read as before.
  const UniqueFd written = SealedStream(bytes);
  EXPECT_OK(ConnectAndRead({SealedWelcome(*schema), SealedBatch(1, {written.get()}), End()}));
}

/// A consumer that is not lossy loses no batch: a `dropped` is a lie; a lossy one counts them,
/// but not past what a counter holds.
TEST_F(HostileProducer, DroppedThatCannotBeTrue) {
  const BatchPtr batch = TestBatch();
  const UniqueFd memfd = SealedStream(StreamBytes(TestSchema(), {batch}));
  proto::Writer writer;
  auto dropped = [&](uint64_t sequence, uint64_t count) {
    return Message(proto::Encode(writer, 0, proto::Batch{sequence, count, 0, 0}), {memfd.get()});
  };
  EXPECT_ERROR_CONTAINS(
      ConnectAndRead({SealedWelcome(), dropped(1, 3)}),
      "protocol: batch 1 says 3 batches were dropped, but this consumer is not lossy");
  FakeProducer producer(
      {Script{{SealedWelcome(), dropped(1, uint64_t{1} << 62), dropped(2, uint64_t{1} << 62)}}});
  ConsumerOptions options = Options();
  options.lossy = true;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), options));
  std::vector<BatchPtr> held;
  arrow::Status status;
  while (status.ok()) {
    BatchPtr next;
    status = consumer->ReadNext(&next);
    held.push_back(next);
  }
  EXPECT_ERROR_CONTAINS(status,
                        "protocol: batch 2 says 4611686018427387904 batches were dropped, "
                        "after 4611686018427387904: more than were ever published");
  EXPECT_EQ(ErrorCodeOf(status), ErrorCode::kProtocol);
  EXPECT_EQ(consumer->stats().dropped, int64_t{1} << 62);
}

/// A batch on a request's stream before that stream's Schema (which the consumer needs to read
/// it): a protocol error, in both modes (ring mode would read it against no schema at all).
TEST_F(HostileProducer, RequestBatchBeforeItsSchema) {
  const RingImage image(*TestBatch());
  const UniqueFd ring = image.Seal();
  proto::Writer writer;
  FakeProducer producer({Script{
      {RingWelcome(ring.get()),
       Message(proto::Encode(writer, 1,
                             proto::Batch{1, 0, image.metadata_offset, image.metadata_length}))}}});
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(producer.address(), Options()));
  EXPECT_ERROR_CONTAINS(consumer->Request("x").status(),
                        "protocol: batch 1 on stream 1 before the stream's Schema");
}

/// The consumer's timeout bounds its handshake too, whichever way.
TEST_F(HostileProducer, HandshakeTimeoutFollowsTheReadTimeout) {
  {
    FakeProducer producer({Script{{SealedWelcome(), End()}, false, /*answer_after_ms=*/300}});
    ConsumerOptions options = Options();
    options.read_timeout_ms = 50;
    EXPECT_ERROR_CONTAINS(Consumer::Connect(producer.address(), options).status(),
                          "did not answer the handshake within 50 ms");
  }
  {
    // The single hand-over's wait for its fd too (a listener that never sends).
    const std::string address = test_util::UniqueAbstractName("hostile-silent-handover");
    ASSERT_OK_AND_ASSIGN(auto listener, UnixSocket::Listen(address, SOCK_STREAM, 0600));
    ConsumerOptions options = Options();
    options.read_timeout_ms = 50;
    EXPECT_ERROR_CONTAINS(Consumer::Connect(address, options).status(),
                          "sent nothing within 50 ms");
  }
  // A producer slower than the default (10 s) is served when the timeout allows it: scaled down,
  // a producer answering after 300 ms to a consumer with 2 s.
  FakeProducer producer({Script{{SealedWelcome(), End()}, false, /*answer_after_ms=*/300}});
  ConsumerOptions options = Options();
  options.read_timeout_ms = 2000;
  EXPECT_OK(Consumer::Connect(producer.address(), options).status());
}

/// A peer's text reaches terminals and Python: control characters and bytes that are not UTF-8
/// are escaped; field names that are not UTF-8 are refused (Arrow's format requires UTF-8).
TEST_F(HostileProducer, PeerTextIsEscapedAndNamesMustBeUtf8) {
  proto::Writer writer;
  const std::string text = "bell\a escape\x1b[2J c1\xc2\x9b bad\xff\xfe end";
  const std::string printable = "bell\\x07 escape\\x1b[2J c1\\xc2\\x9b bad\\xff\\xfe end";
  auto error = [&](uint32_t stream) {
    return Message(proto::Encode(writer, stream, proto::Error{proto::ErrorCode::kShutdown, text}));
  };
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), error(0)}), "producer: " + printable);
  {
    FakeProducer producer({Script{{error(0)}}});
    EXPECT_ERROR_CONTAINS(Consumer::Connect(producer.address(), Options()).status(),
                          "refused: " + printable);
  }
  const auto bad_name = arrow::schema({arrow::field("a\xff", arrow::int32())});
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(*bad_name)}),
                        "field name 'a\\xff' is not valid UTF-8");
  EXPECT_ERROR_CONTAINS(ConnectAndRead({SealedWelcome(), SchemaChange(*bad_name)}),
                        "field name 'a\\xff' is not valid UTF-8");
  // In the memfd's own stream (what the single hand-over reads).
  const auto batch = OneColumn(arrow::int32(), "a\xff");
  ASSERT_OK_AND_ASSIGN(auto stream,
                       SharedStream::Open(SealedStream(StreamBytes(batch->schema(), {batch}))));
  EXPECT_ERROR_CONTAINS(stream->OpenReader().status(), "is not valid UTF-8");
}

/// Anyone may bind an abstract name first: a consumer takes only producers of its own uid, or of
/// uids it allows (SO_PEERCRED), in the stream protocol and the single hand-over alike.
TEST_F(HostileProducer, ProducerOfAnotherUidIsRefused) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to listen as another uid (fork + setuid(65534))";
  }
  for (const int type : {SOCK_SEQPACKET, SOCK_STREAM}) {
    SCOPED_TRACE(type == SOCK_STREAM ? "single hand-over" : "stream protocol");
    const std::string address = test_util::UniqueAbstractName("hostile-squatter");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, address.data(), address.size());
    addr.sun_path[0] = '\0';
    const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address.size());
    int ready[2];
    ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {  // only system calls: this process has other threads
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
      const int s = ::socket(AF_UNIX, type, 0);
      if (s < 0 || ::bind(s, reinterpret_cast<const sockaddr*>(&addr), addr_len) != 0 ||
          ::listen(s, 8) != 0) {
        ::_exit(11);
      }
      (void)!::write(ready[1], "r", 1);
      for (int i = 0; i < 2; ++i) {  // two consumers: refused, then allowed
        const int c = ::accept(s, nullptr, nullptr);
        if (c < 0) ::_exit(12);
        char buffer[512];
        if (type == SOCK_SEQPACKET) (void)!::recv(c, buffer, sizeof buffer, 0);  // the Hello
        ::close(c);
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    char byte;
    ASSERT_EQ(::read(ready[0], &byte, 1), 1);
    ::close(ready[0]);
    ConsumerOptions options = Options();
    options.read_timeout_ms = 1000;
    const auto refused = Consumer::Connect(address, options).status();
    EXPECT_ERROR_CONTAINS(refused,
                          "runs as uid 65534, which this consumer (uid 0) does not accept");
    EXPECT_EQ(ErrorCodeOf(refused), ErrorCode::kRefused);
    options.allowed_uids = {65534};
    // Allowed: the squatter is talked to (and then hangs up, which is its own failure).
    auto allowed = Consumer::Connect(address, options);
    ASSERT_FALSE(allowed.ok());
    EXPECT_EQ(allowed.status().message().find("does not accept"), std::string::npos)
        << allowed.status().ToString();
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  }
}

/// Every message type in place of the Welcome, and after a sealed Welcome: what belongs there is
/// taken, everything else is refused naming it.
TEST_F(HostileProducer, EveryMessageTypeBeforeAndAfterTheWelcome) {
  proto::Writer w;
  const proto::Batch batch{999, 0, 0, 0};
  const uint64_t sequence = 999;
  auto bytes = [](std::span<const uint8_t> span) { return Message(span); };
  const std::vector<std::pair<proto::Type, Datagram>> messages = {
      {proto::Type::kHello, bytes(proto::Encode(w, proto::Hello{}))},
      {proto::Type::kWelcome, SealedWelcome()},
      {proto::Type::kBatch, bytes(proto::Encode(w, 0, batch))},
      {proto::Type::kRelease, bytes(proto::EncodeRelease(w, {&sequence, 1}))},
      {proto::Type::kSchema, SchemaChange(*TestSchema())},
      {proto::Type::kEnd, End()},
      {proto::Type::kError,
       bytes(proto::Encode(w, 0, proto::Error{proto::ErrorCode::kLimit, "no"}))},
      {proto::Type::kRequest, bytes(proto::EncodeRequest(w, 0, "x"))},
      {proto::Type::kBye, bytes(proto::EncodeBye(w))},
      {proto::Type::kBatches, bytes(proto::EncodeBatches(w, 0, {&batch, 1}))},
      {proto::Type::kWake, bytes(proto::EncodeWake(w))},
      {proto::Type::kWaiting, bytes(proto::EncodeWaiting(w, 0))},
  };
  for (const auto& [type, datagram] : messages) {
    const std::string name = proto::TypeName(type);
    SCOPED_TRACE(name);
    // In place of the Welcome.
    const arrow::Status first = ConnectAndRead({datagram, End()});
    if (type == proto::Type::kWelcome) {
      EXPECT_OK(first);
    } else if (type == proto::Type::kError) {
      EXPECT_ERROR_CONTAINS(first, "refused: no");
      EXPECT_TRUE(ErrorDetailOf(first) != nullptr && ErrorDetailOf(first)->from_producer());
    } else {
      EXPECT_ERROR_CONTAINS(first, "protocol: expected Welcome, got " + name);
      EXPECT_EQ(ErrorCodeOf(first), ErrorCode::kProtocol);
    }
    // After the Welcome.
    const arrow::Status after = ConnectAndRead({SealedWelcome(), datagram, End()});
    switch (type) {
      case proto::Type::kSchema:
      case proto::Type::kEnd:
        EXPECT_OK(after);
        break;
      case proto::Type::kBatch:
        EXPECT_ERROR_CONTAINS(after, "sealed Batch 999 carries 0 fds, expected 1");
        break;
      case proto::Type::kError:
        EXPECT_ERROR_CONTAINS(after, "producer: no");
        EXPECT_TRUE(ErrorDetailOf(after) != nullptr && ErrorDetailOf(after)->from_producer());
        break;
      case proto::Type::kBatches:
        EXPECT_ERROR_CONTAINS(after, "Batches message, but batch runs were not agreed");
        break;
      case proto::Type::kWake:
        EXPECT_ERROR_CONTAINS(after, "Wake without a queue");
        break;
      default:
        EXPECT_ERROR_CONTAINS(after, "unexpected " + name + " from a producer");
    }
  }
}

}  // namespace
}  // namespace shmarrow::hostile
