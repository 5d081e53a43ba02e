// Consumers that misbehave (RawConsumer: the protocol written by hand) against a real Producer,
// in both memory modes, while a well-behaved Consumer reads the same stream. Every case: the
// producer stays up, throws out only the culprit with an error naming what it did, goes on
// serving the good consumer (whose column checksums match what was published), applies its
// limits and back-pressure policy, and has as many fds open afterwards as before.
#include <arrow/api.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <thread>

#include "hostile_peer.h"
#include "schema_match.h"
#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "shmarrow/summary.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow::hostile {
namespace {

using internal::UnixSocket;
using BatchPtr = std::shared_ptr<arrow::RecordBatch>;

constexpr int kCredits = 2;  // the hostile consumers' credits

std::shared_ptr<arrow::Schema> TestSchema() {
  return arrow::schema({arrow::field("a", arrow::int64()), arrow::field("s", arrow::utf8())});
}

arrow::Result<BatchPtr> MakeBatch(arrow::MemoryPool* pool, int64_t seed, int64_t rows = 100) {
  arrow::Int64Builder a(pool);
  arrow::StringBuilder s(pool);
  for (int64_t i = 0; i < rows; ++i) {
    ARROW_RETURN_NOT_OK(a.Append(seed * 1000 + i));
    ARROW_RETURN_NOT_OK(s.Append("row " + std::to_string(seed) + "." + std::to_string(i)));
  }
  std::shared_ptr<arrow::Array> aa, sa;
  ARROW_RETURN_NOT_OK(a.Finish(&aa));
  ARROW_RETURN_NOT_OK(s.Finish(&sa));
  return arrow::RecordBatch::Make(TestSchema(), rows, {aa, sa});
}

/// A consumer written by hand: it sends whatever the test likes.
class RawConsumer {
 public:
  static arrow::Result<RawConsumer> Connect(const std::string& address) {
    ARROW_ASSIGN_OR_RAISE(auto socket, UnixSocket::Connect(address, SOCK_SEQPACKET, 0));
    RaiseSendBuffer(socket);
    return RawConsumer(std::move(socket));
  }

  arrow::Status Send(std::span<const uint8_t> bytes, std::span<const int> fds = {}) {
    return socket_.Send(bytes, fds);
  }
  arrow::Status SendHello(proto::Hello hello) {
    if (hello.max_in_flight == 0) hello.max_in_flight = kCredits;
    // Stream 0 in single Batch messages, which is what it reads (not a queue, not Batches).
    hello.features &= ~(proto::kFeatureQueue | proto::kFeatureBatchRuns);
    return Send(proto::Encode(writer_, hello));
  }
  /// Hello, then the Welcome (the ring fd that comes with it is closed).
  arrow::Result<proto::Welcome> Handshake(proto::Hello hello = {}) {
    ARROW_RETURN_NOT_OK(SendHello(std::move(hello)));
    return ReceiveAs(proto::Type::kWelcome, proto::DecodeWelcome);
  }
  /// The next message, which must be a Batch.
  arrow::Result<proto::Batch> ReceiveBatch() {
    return ReceiveAs(proto::Type::kBatch, proto::DecodeBatch);
  }
  arrow::Status Release(std::vector<uint64_t> sequences) {
    return Send(proto::EncodeRelease(writer_, sequences));
  }
  /// The Error the producer sends when it throws this consumer out (Batch and Schema messages,
  /// and answers to requests, before it are skipped); the connection must close after it.
  arrow::Result<proto::Error> ThrownOut() {
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto message, Receive(socket_, 1));
      if (message.header.type != proto::Type::kError || message.header.stream != 0) continue;
      auto reader = message.reader();
      ARROW_RETURN_NOT_OK(reader.ReadHeader().status());
      ARROW_ASSIGN_OR_RAISE(auto error, proto::DecodeError(reader));
      if (!ClosedByPeer(socket_)) return arrow::Status::Invalid("still connected after the Error");
      return error;
    }
  }
  UnixSocket& socket() { return socket_; }

 private:
  /// The next message, which must be of `type`, decoded by `decode`.
  template <typename Message>
  arrow::Result<Message> ReceiveAs(proto::Type type,
                                   arrow::Result<Message> (*decode)(proto::Reader&)) {
    ARROW_ASSIGN_OR_RAISE(auto message, Receive(socket_, 1));
    if (message.header.type != type) {
      return arrow::Status::Invalid("expected ", proto::TypeName(type), ", got ",
                                    proto::TypeName(message.header.type));
    }
    auto reader = message.reader();
    ARROW_RETURN_NOT_OK(reader.ReadHeader().status());
    return decode(reader);
  }

  explicit RawConsumer(UnixSocket socket) : socket_(std::move(socket)) {}
  UnixSocket socket_;
  proto::Writer writer_;
};

/// Expects `consumer` to be thrown out with an Error of `code` whose message contains `text`.
void ExpectThrownOut(RawConsumer& consumer, proto::ErrorCode code, const std::string& text) {
  auto error = consumer.ThrownOut();
  ASSERT_TRUE(error.ok()) << error.status().ToString();
  EXPECT_EQ(error->code, code) << error->message;
  EXPECT_NE(error->message.find(text), std::string::npos)
      << "'" << error->message << "' does not mention '" << text << "'";
}

class HostileConsumer : public ::testing::TestWithParam<MemoryMode> {
 protected:
  void SetUp() override { fds_before_ = test_util::CountOpenFds(); }
  void TearDown() override {
    good_.reset();
    producer_.reset();
    ExpectFdsReturnTo(fds_before_);
  }

  ProducerOptions Options() const {
    ProducerOptions options;
    options.mode = GetParam();
    options.ring_size = int64_t{4} << 20;
    options.max_in_flight = 4;
    options.block_timeout_ms = kTimeoutMs;  // a bug fails the test instead of hanging it
    options.name = "hostile-consumer-test";
    return options;
  }

  /// The producer, and a well-behaved consumer attached to it; `fds_serving_` counts both.
  void Start(const ProducerOptions& options) {
    auto producer = Producer::Listen(address_, TestSchema(), options);
    ASSERT_TRUE(producer.ok()) << producer.status().ToString();
    producer_ = *producer;
    ConsumerOptions consumer_options;
    consumer_options.read_timeout_ms = kTimeoutMs;
    auto good = Consumer::Connect(address_, consumer_options);
    ASSERT_TRUE(good.ok()) << good.status().ToString();
    good_ = *good;
    // A round trip through the producer's I/O thread (it answers that it has no request
    // handler): the handshake is behind it, and so is its copy of the ring fd it sent.
    EXPECT_ERROR_CONTAINS(good_->Request("sync"), "no request handler");
    fds_serving_ = test_util::CountOpenFds();
  }
  void Start() { Start(Options()); }

  /// Publishes batch `seed`, built in the producer's pool.
  arrow::Status Publish(int64_t seed) {
    ARROW_ASSIGN_OR_RAISE(auto batch, MakeBatch(producer_->pool(), seed));
    ARROW_RETURN_NOT_OK(producer_->Publish(batch));
    sent_.Add(*batch);
    return arrow::Status::OK();
  }

  /// The good consumer reads what was published so far; its checksums must match (batches are
  /// dropped as soon as they are summed, so it holds nothing back).
  void ExpectGoodConsumerReadsEverything() {
    while (received_.batches() < sent_.batches()) {
      BatchPtr batch;
      ASSERT_OK(good_->ReadNext(&batch));
      ASSERT_NE(batch, nullptr);
      received_.Add(*batch);
    }
    EXPECT_EQ(received_.rows(), sent_.rows());
    for (int i = 0; i < TestSchema()->num_fields(); ++i) {
      EXPECT_EQ(received_.checksum(i), sent_.checksum(i)) << "column " << i;
    }
  }

  /// The producer has closed everything the hostile consumers made it open.
  void ExpectProducerFdsBack() { ExpectFdsReturnTo(fds_serving_); }

  const std::string address_ = test_util::UniqueAbstractName("hostile-consumer");
  std::shared_ptr<Producer> producer_;
  std::shared_ptr<Consumer> good_;
  StreamSummary sent_{TestSchema()};
  StreamSummary received_{TestSchema()};
  int fds_serving_ = 0;

 private:
  int fds_before_ = 0;
};

std::string ModeName(const ::testing::TestParamInfo<MemoryMode>& info) {
  return info.param == MemoryMode::kRing ? "Ring" : "Sealed";
}

INSTANTIATE_TEST_SUITE_P(Modes, HostileConsumer,
                         ::testing::Values(MemoryMode::kRing, MemoryMode::kSealed), ModeName);

// ---------------------------------------------------------------------------------------------
// Holding on.

TEST_P(HostileConsumer, NeverReleasingHoldsPublishBackForTheBlockTimeoutOnly) {
  ProducerOptions options = Options();
  options.block_timeout_ms = 100;  // a deadline for Publish, not an expectation of speed
  Start(options);
  std::optional<RawConsumer> hoarder = RawConsumer::Connect(address_).ValueOrDie();
  ASSERT_OK(hoarder->Handshake().status());
  ASSERT_OK(producer_->WaitForConsumers(2, kTimeoutMs));
  // It holds its credits' worth and has as many queued; then Publish waits for room, and gives up.
  arrow::Status failure;
  for (int seed = 0; seed < 4 * kCredits && failure.ok(); ++seed) failure = Publish(seed);
  EXPECT_ERROR_CONTAINS(failure, "no room: a consumer is a full backlog behind within 100 ms");
  EXPECT_EQ(producer_->stats().published, 2 * kCredits);
  ExpectGoodConsumerReadsEverything();
  // Once it goes, what it held returns and publishing goes on.
  hoarder.reset();
  ASSERT_OK(producer_->WaitUntilDrained(kTimeoutMs));
  ASSERT_OK(Publish(100));
  ExpectGoodConsumerReadsEverything();
  ExpectProducerFdsBack();
}

TEST_P(HostileConsumer, BlockedPublishResumesWhenTheHoarderLeaves) {
  Start();
  std::optional<RawConsumer> hoarder = RawConsumer::Connect(address_).ValueOrDie();
  ASSERT_OK(hoarder->Handshake().status());
  ASSERT_OK(producer_->WaitForConsumers(2, kTimeoutMs));
  for (int seed = 0; seed < 2 * kCredits; ++seed) ASSERT_OK(Publish(seed));
  ExpectGoodConsumerReadsEverything();
  arrow::Status blocked;
  std::thread publisher([&] { blocked = Publish(99); });
  // Publish is waiting (block_timeout_ms is 10 s); the hoarder's leaving lets it through.
  EXPECT_EQ(producer_->stats().published, 2 * kCredits);
  hoarder.reset();
  publisher.join();
  EXPECT_OK(blocked);
  ExpectGoodConsumerReadsEverything();
  ExpectProducerFdsBack();
}

TEST_P(HostileConsumer, LossyHoarderLosesBatchesAndHoldsNothingBack) {
  ProducerOptions options = Options();
  options.block_timeout_ms = 0;  // fail fast: any waiting would be an error
  Start(options);
  ASSERT_OK_AND_ASSIGN(auto hoarder, RawConsumer::Connect(address_));
  proto::Hello hello;
  hello.flags = proto::kHelloLossy;
  ASSERT_OK(hoarder.Handshake(hello).status());
  ASSERT_OK(producer_->WaitForConsumers(2, kTimeoutMs));
  constexpr int kPublished = 10;
  for (int seed = 0; seed < kPublished; ++seed) {
    ASSERT_OK(Publish(seed));
    ExpectGoodConsumerReadsEverything();  // the good one is normal: it must keep up
  }
  // It got its credits' worth, has as many queued, and lost the rest (the oldest queued).
  EXPECT_EQ(producer_->stats().dropped, kPublished - 2 * kCredits);
  std::vector<uint64_t> sequences;
  for (int i = 0; i < kCredits; ++i) {
    ASSERT_OK_AND_ASSIGN(auto batch, hoarder.ReceiveBatch());
    EXPECT_EQ(batch.dropped, 0u);
    sequences.push_back(batch.sequence);
  }
  ASSERT_OK(hoarder.Release(sequences));
  ASSERT_OK_AND_ASSIGN(auto next, hoarder.ReceiveBatch());
  EXPECT_EQ(next.dropped, static_cast<uint64_t>(kPublished - 2 * kCredits));
  EXPECT_EQ(next.sequence, sequences.back() + 1 + (kPublished - 2 * kCredits));
}

TEST(HostileConsumerRing, HoarderFillsTheRingThenAllocationFailsNamingIt) {
  const int fds_before = test_util::CountOpenFds();
  {
    const std::string address = test_util::UniqueAbstractName("hostile-ring");
    ProducerOptions options;
    options.mode = MemoryMode::kRing;
    options.ring_size = 64 * 1024;
    options.block_timeout_ms = 0;
    ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), options));
    std::optional<RawConsumer> hoarder = RawConsumer::Connect(address).ValueOrDie();
    proto::Hello hello;
    hello.max_in_flight = 64;
    ASSERT_OK(hoarder->Handshake(hello).status());
    ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
    arrow::Status failure;
    int published = 0;
    for (int seed = 0; seed < 64 && failure.ok(); ++seed) {
      auto batch = MakeBatch(producer->pool(), seed, 200);
      failure = batch.ok() ? producer->Publish(*batch) : batch.status();
      published += failure.ok();
    }
    EXPECT_ERROR_CONTAINS(failure, "ring");
    EXPECT_GE(published, 1);
    EXPECT_GT(producer->stats().ring_bytes_in_use, 0);
    hoarder.reset();
    ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
    EXPECT_TRUE(Eventually([&] { return producer->stats().ring_bytes_in_use == 0; }));
    ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(producer->pool(), 99, 200));
    EXPECT_OK(producer->Publish(batch));
  }
  ExpectFdsReturnTo(fds_before);
}

// ---------------------------------------------------------------------------------------------
// Releases.

TEST_P(HostileConsumer, ReleasingWhatItDoesNotHoldGetsItThrownOut) {
  Start();
  ASSERT_OK(Publish(0));
  {
    ASSERT_OK_AND_ASSIGN(auto liar, RawConsumer::Connect(address_));
    ASSERT_OK(liar.Handshake().status());
    ASSERT_OK(liar.Release({12345}));
    ExpectThrownOut(liar, proto::ErrorCode::kProtocol,
                    "released batch 12345, which this consumer does not hold");
  }
  {
    ASSERT_OK_AND_ASSIGN(auto twice, RawConsumer::Connect(address_));
    ASSERT_OK(twice.Handshake().status());
    ASSERT_OK(producer_->WaitForConsumers(2, kTimeoutMs));
    ASSERT_OK(Publish(1));
    ASSERT_OK_AND_ASSIGN(auto batch, twice.ReceiveBatch());
    ASSERT_OK(twice.Release({batch.sequence}));
    ASSERT_OK(twice.Release({batch.sequence}));
    ExpectThrownOut(
        twice, proto::ErrorCode::kProtocol,
        "released batch " + std::to_string(batch.sequence) + ", which this consumer does not hold");
  }
  {
    // The good consumer's batch: sequences are the producer's, but holding is per connection.
    ASSERT_OK_AND_ASSIGN(auto other, RawConsumer::Connect(address_));
    ASSERT_OK(other.Handshake().status());
    ASSERT_OK(other.Release({1}));
    ExpectThrownOut(other, proto::ErrorCode::kProtocol, "released batch 1, which");
  }
  ASSERT_OK(Publish(2));
  ExpectGoodConsumerReadsEverything();
  EXPECT_EQ(producer_->stats().consumers, 1);
  ASSERT_OK(producer_->WaitUntilDrained(kTimeoutMs));
  ExpectProducerFdsBack();
}

// ---------------------------------------------------------------------------------------------
// Garbage.

struct Garbage {
  const char* what;
  bool after_hello;  // sent once welcomed, or instead of the Hello
  std::vector<uint8_t> bytes;
  proto::ErrorCode code;
  std::string error;
};

std::vector<uint8_t> Bytes(std::span<const uint8_t> bytes) { return {bytes.begin(), bytes.end()}; }

std::vector<Garbage> GarbageCases() {
  proto::Writer w;
  std::vector<Garbage> out;
  const auto protocol = proto::ErrorCode::kProtocol;
  const uint64_t one = 1;
  out.push_back({"release before hello", false, Bytes(proto::EncodeRelease(w, {&one, 1})), protocol,
                 "expected Hello, got Release"});
  out.push_back({"random bytes", false, std::vector<uint8_t>(100, 0xA5), protocol, "bad magic"});
  proto::Hello major;
  major.major = 2;
  out.push_back({"another major version", false, Bytes(proto::Encode(w, major)),
                 proto::ErrorCode::kVersion, "protocol version 2."});
  proto::Hello bad_schema;
  bad_schema.required_schema = "garbage";
  out.push_back({"unparsable required schema", false, Bytes(proto::Encode(w, bad_schema)), protocol,
                 "schema from the peer (7 bytes) does not parse"});
  proto::Hello no_column;
  no_column.columns = {"nope"};
  out.push_back({"unknown column", false, Bytes(proto::Encode(w, no_column)),
                 proto::ErrorCode::kSchemaMismatch, "nope"});
  out.push_back({"short datagram", true, std::vector<uint8_t>(10, 0), protocol,
                 "10-byte message is shorter than the 16-byte header"});
  out.push_back(
      {"unknown type", true, RawHeader(77, 0, 0, 0), protocol, "unknown message type 77"});
  out.push_back({"header flags", true, RawHeader(9, 4, 0, 0), protocol, "unknown header flags 4"});
  out.push_back({"length mismatch", true, RawHeader(9, 0, 0, 8), protocol, "header announces 8"});
  std::vector<uint8_t> truncated = Bytes(proto::EncodeRelease(w, {&one, 1}));
  const uint32_t three = 3;
  std::memcpy(truncated.data() + proto::kHeaderSize, &three, 4);
  out.push_back({"truncated release", true, truncated, protocol, "before field 'sequence'"});
  const std::vector<uint64_t> many(5000, 1);
  out.push_back({"release flood", true, Bytes(proto::EncodeRelease(w, many)), protocol,
                 "Release of 5000 batches (limit 4096)"});
  out.push_back({"second hello", true, Bytes(proto::Encode(w, proto::Hello{})), protocol,
                 "unexpected Hello from a consumer"});
  out.push_back({"producer's message", true, Bytes(proto::EncodeEnd(w, 0)), protocol,
                 "unexpected End from a consumer"});
  out.push_back({"request on stream 0", true, Bytes(proto::EncodeRequest(w, 0, "x")), protocol,
                 "Request on stream 0"});
  out.push_back({"oversized", true, OversizedDatagram(9).bytes, protocol,
                 "is longer than 262144 bytes (MSG_TRUNC)"});
  return out;
}

TEST_P(HostileConsumer, GarbageGetsOnlyTheSenderThrownOut) {
  Start();
  for (const Garbage& garbage : GarbageCases()) {
    SCOPED_TRACE(garbage.what);
    ASSERT_OK_AND_ASSIGN(auto sender, RawConsumer::Connect(address_));
    if (garbage.after_hello) ASSERT_OK(sender.Handshake().status());
    ASSERT_OK(sender.Send(garbage.bytes));
    ExpectThrownOut(sender, garbage.code, garbage.error);
  }
  {
    // An fd where none belongs: the producer's receive has no room for one.
    ASSERT_OK_AND_ASSIGN(auto sender, RawConsumer::Connect(address_));
    ASSERT_OK(sender.Handshake().status());
    proto::Writer w;
    const int fds[] = {sender.socket().fd()};
    ASSERT_OK(sender.Send(proto::EncodeBye(w), fds));
    ExpectThrownOut(sender, proto::ErrorCode::kProtocol, "peer sent 1 fds, expected at most 0");
  }
  {
    // On SOCK_SEQPACKET an empty datagram reads as the peer hanging up: closed, no Error.
    ASSERT_OK_AND_ASSIGN(auto sender, RawConsumer::Connect(address_));
    ASSERT_OK(sender.Handshake().status());
    ASSERT_OK(sender.Send({}));
    EXPECT_TRUE(ClosedByPeer(sender.socket()));
  }
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
  EXPECT_EQ(producer_->stats().consumers, 1);
  ExpectProducerFdsBack();
}

/// Every message type a datagram can name, in every state of a connection: before Hello, attached,
/// and after Bye while still holding a batch. Each is handled as the protocol says or gets only
/// its sender thrown out, naming what it sent.
TEST_P(HostileConsumer, EveryMessageTypeInEveryState) {
  Start();
  proto::Writer w;
  const std::string schema = internal::SerializeSchema(*TestSchema()).ValueOrDie();
  const proto::Batch batch{999, 0, 0, 0};
  const uint64_t unheld = 999;
  const std::vector<std::pair<proto::Type, std::vector<uint8_t>>> messages = {
      {proto::Type::kHello, Bytes(proto::Encode(w, proto::Hello{}))},
      {proto::Type::kWelcome, Bytes(proto::Encode(w, proto::Welcome{}))},
      {proto::Type::kBatch, Bytes(proto::Encode(w, 0, batch))},
      {proto::Type::kRelease, Bytes(proto::EncodeRelease(w, {&unheld, 1}))},
      {proto::Type::kSchema, Bytes(proto::EncodeSchema(w, 0, schema))},
      {proto::Type::kEnd, Bytes(proto::EncodeEnd(w, 0))},
      {proto::Type::kError, Bytes(proto::Encode(w, 0, proto::Error{}))},
      {proto::Type::kRequest, Bytes(proto::EncodeRequest(w, 5, "x"))},
      {proto::Type::kBye, Bytes(proto::EncodeBye(w))},
      {proto::Type::kBatches, Bytes(proto::EncodeBatches(w, 0, {&batch, 1}))},
      {proto::Type::kWake, Bytes(proto::EncodeWake(w))},
      {proto::Type::kWaiting, Bytes(proto::EncodeWaiting(w, 0))},
  };
  enum class State { kBeforeHello, kAttached, kAfterBye };
  for (const State state : {State::kBeforeHello, State::kAttached, State::kAfterBye}) {
    for (const auto& [type, bytes] : messages) {
      const std::string name = proto::TypeName(type);
      SCOPED_TRACE(name + " in state " + std::to_string(static_cast<int>(state)));
      ASSERT_OK_AND_ASSIGN(auto sender, RawConsumer::Connect(address_));
      if (state != State::kBeforeHello) ASSERT_OK(sender.Handshake().status());
      if (state == State::kAfterBye) {
        ASSERT_OK(Publish(static_cast<int64_t>(type)));  // it holds this batch after its Bye
        ASSERT_OK(sender.ReceiveBatch().status());
        ASSERT_OK(sender.Send(proto::EncodeBye(w)));
      }
      ASSERT_OK(sender.Send(bytes));
      if (state == State::kBeforeHello) {
        if (type == proto::Type::kHello) {
          EXPECT_OK(Receive(sender.socket(), 1).status());  // the Welcome
        } else {
          ExpectThrownOut(sender, proto::ErrorCode::kProtocol, "expected Hello, got " + name);
        }
      } else if (state == State::kAfterBye) {
        ExpectThrownOut(sender, proto::ErrorCode::kProtocol,
                        type == proto::Type::kRelease ? "released batch 999"
                                                      : "protocol: " + name + " after Bye");
      } else if (type == proto::Type::kRequest) {
        ASSERT_OK_AND_ASSIGN(auto answer, Receive(sender.socket(), 1));
        EXPECT_EQ(answer.header.type, proto::Type::kError);
        EXPECT_EQ(answer.header.stream, 5u);
      } else if (type == proto::Type::kBye) {
        EXPECT_TRUE(ClosedByPeer(sender.socket()));  // held nothing: gone at once
      } else {
        const std::string expected =
            type == proto::Type::kRelease ? "released batch 999, which this consumer does not hold"
            : type == proto::Type::kWaiting ? "Waiting without a queue"
                                            : "unexpected " + name + " from a consumer";
        ExpectThrownOut(sender, proto::ErrorCode::kProtocol, expected);
      }
      ExpectGoodConsumerReadsEverything();
    }
  }
  ExpectProducerFdsBack();
  EXPECT_EQ(producer_->stats().consumers, 1);
}

// ---------------------------------------------------------------------------------------------
// Floods and strangers.

TEST_P(HostileConsumer, ConnectionFloodMeetsTheLimits) {
  ProducerOptions options = Options();
  options.max_consumers = 3;
  Start(options);
  {
    // Two more consumers fill the limit; every further one is refused by name.
    std::vector<RawConsumer> attached;
    for (int i = 0; i < 2; ++i) {
      attached.push_back(RawConsumer::Connect(address_).ValueOrDie());
      ASSERT_OK(attached.back().Handshake().status());
    }
    for (int i = 0; i < 20; ++i) {
      ASSERT_OK_AND_ASSIGN(auto refused, RawConsumer::Connect(address_));
      ASSERT_OK(refused.SendHello({}));
      ExpectThrownOut(refused, proto::ErrorCode::kLimit, "already serves 3 consumers (limit 3)");
    }
  }
  ExpectProducerFdsBack();
  {
    // Connections that never say Hello have a limit of their own: at the limit the oldest makes
    // room, so silent connections cannot keep a real consumer out.
    std::vector<RawConsumer> silent;
    for (int i = 0; i < options.max_consumers; ++i) {
      silent.push_back(RawConsumer::Connect(address_).ValueOrDie());
    }
    ASSERT_OK_AND_ASSIGN(auto one_more, RawConsumer::Connect(address_));
    ExpectThrownOut(silent.front(), proto::ErrorCode::kLimit,
                    "3 connections were waiting to say Hello (limit 3) and this was the oldest");
    ConsumerOptions real;
    real.read_timeout_ms = kTimeoutMs;
    for (int i = 0; i < 5; ++i) {  // each pushes out the oldest silent one, and is served
      ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address_, real));
      EXPECT_NE(consumer->schema(), nullptr);
    }
  }
  ExpectProducerFdsBack();
  // Many connections that come and go, leaving at every step of the handshake.
  // (Those the limits refuse see their connection close early: what they send may fail.)
  for (int i = 0; i < 300; ++i) {
    ASSERT_OK_AND_ASSIGN(auto brief, RawConsumer::Connect(address_));
    if (i % 3 >= 1) (void)brief.SendHello({});
    if (i % 3 == 2) (void)Receive(brief.socket(), 1);  // the Welcome, or a refusal
  }
  ExpectProducerFdsBack();
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
  EXPECT_EQ(producer_->stats().consumers, 1);
}

TEST_P(HostileConsumer, AnotherUidIsRefusedByItsCredentials) {
  if (::geteuid() != 0) {
    GTEST_SKIP() << "needs root to connect from another uid (fork + setuid(65534))";
  }
  Start();
  // Everything the child needs is prepared here: after fork() it only makes system calls (this
  // process has other threads).
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, address_.data(), address_.size());
  addr.sun_path[0] = '\0';  // abstract: no socket file whose mode could refuse the child first
  const auto addr_len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + address_.size());
  proto::Writer w;
  const std::vector<uint8_t> hello = Bytes(proto::Encode(w, proto::Hello{}));
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    const int s = ::socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (s < 0 || ::connect(s, reinterpret_cast<sockaddr*>(&addr), addr_len) != 0) ::_exit(11);
    (void)::send(s, hello.data(), hello.size(), MSG_NOSIGNAL);  // may fail: refused already
    char reply[512];
    ssize_t n = ::recv(s, reply, sizeof reply, 0);
    if (n < 0 && errno == ECONNRESET) n = ::recv(s, reply, sizeof reply, 0);  // then the Error
    if (n < 20) ::_exit(12);
    uint16_t type;
    uint32_t code;
    std::memcpy(&type, reply + 4, 2);
    std::memcpy(&code, reply + proto::kHeaderSize, 4);
    if (type != static_cast<uint16_t>(proto::Type::kError)) ::_exit(13);
    if (code != static_cast<uint32_t>(proto::ErrorCode::kRefused)) ::_exit(14);
    static constexpr char kText[] = "uid 65534 may not connect";
    const char* begin = reply;
    const char* end = reply + n;
    ::_exit(std::search(begin, end, kText, kText + sizeof kText - 1) != end ? 0 : 15);
  }
  int status = 0;
  ASSERT_TRUE(Eventually([&] { return ::waitpid(child, &status, WNOHANG) == child; }))
      << "the child hung";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "see the child's exit codes above";
  EXPECT_EQ(producer_->stats().consumers_refused, 1);
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
  ExpectProducerFdsBack();
}

// ---------------------------------------------------------------------------------------------
// Issue 17: silent connections, old peers, repeated columns, request floods, unread answers, fds.

int CountThreads() {
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    (void)entry;
    ++count;
  }
  return count;
}

TEST_P(HostileConsumer, SilentConnectionIsClosedAtTheHandshakeDeadline) {
  ProducerOptions options = Options();
  options.handshake_timeout_ms = 100;
  Start(options);
  {
    ASSERT_OK_AND_ASSIGN(auto silent, RawConsumer::Connect(address_));
    ExpectThrownOut(silent, proto::ErrorCode::kLimit, "no Hello within 100 ms");
  }
  ExpectProducerFdsBack();
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
}

/// A 1.0 consumer neither offers nor receives 1.1's features (batch runs, the queue).
TEST_P(HostileConsumer, HelloOfVersion10GetsOnly10Features) {
  Start();
  ASSERT_OK_AND_ASSIGN(auto old, RawConsumer::Connect(address_));
  proto::Hello hello;
  hello.minor = 0;
  hello.max_in_flight = kCredits;
  hello.features = proto::kAllFeatures;  // claims everything, 1.1 included
  proto::Writer w;
  ASSERT_OK(old.Send(proto::Encode(w, hello)));
  ASSERT_OK_AND_ASSIGN(auto message, Receive(old.socket(), 1));
  ASSERT_EQ(message.header.type, proto::Type::kWelcome);
  auto reader = message.reader();
  ASSERT_OK(reader.ReadHeader().status());
  ASSERT_OK_AND_ASSIGN(auto welcome, proto::DecodeWelcome(reader));
  EXPECT_EQ(welcome.features, proto::FeaturesOf(0));
  EXPECT_EQ(welcome.queue_capacity, 0u);
  ASSERT_OK(Publish(0));
  ASSERT_OK_AND_ASSIGN(auto batch, old.ReceiveBatch());  // a Batch message, not a queue entry
  EXPECT_GT(batch.sequence, 0u);
  ExpectGoodConsumerReadsEverything();
}

/// A projection naming a column twice (4,096 times: 262 KB of metadata per batch) is refused.
TEST_P(HostileConsumer, ProjectionNamingAColumnTwiceIsRefused) {
  Start();
  for (const int copies : {2, 4096}) {
    ASSERT_OK_AND_ASSIGN(auto greedy, RawConsumer::Connect(address_));
    proto::Hello hello;
    hello.columns.assign(copies, "a");
    ASSERT_OK(greedy.SendHello(hello));
    ExpectThrownOut(greedy, proto::ErrorCode::kSchemaMismatch,
                    "projection asks for column 'a' more than once");
  }
  ExpectProducerFdsBack();
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
}

/// A request flood: requests beyond a consumer's limit, and beyond the producer's, are refused
/// with Error code 4; handlers run on a bounded pool of threads; a consumer that leaves has its
/// waiting requests cancelled; the good consumer is served all along.
TEST_P(HostileConsumer, RequestFloodIsBoundedPerConsumerAndProducer) {
  ProducerOptions options = Options();
  options.max_requests_per_consumer = 4;
  options.max_requests = 6;
  options.request_threads = 2;
  Start(options);
  std::promise<void> open;
  std::shared_future<void> gate = open.get_future().share();
  std::atomic<int> calls{0}, running{0}, most_running{0};
  producer_->SetRequestHandler([&](std::string_view, ResponseWriter& response) {
    ++calls;
    const int now = ++running;
    for (int seen = most_running; now > seen && !most_running.compare_exchange_weak(seen, now);) {
    }
    (void)gate.wait_for(std::chrono::milliseconds(kTimeoutMs));
    --running;
    ARROW_ASSIGN_OR_RAISE(auto batch, MakeBatch(response.pool(), 7, 10));
    return response.Write(batch);
  });
  const int threads_before = CountThreads();
  auto flood = [&](RawConsumer& consumer, uint32_t first, int count) {
    proto::Writer w;
    for (int i = 0; i < count; ++i) {
      ASSERT_OK(consumer.Send(proto::EncodeRequest(w, first + i, "rows=100000")));
    }
  };
  // The refusals each consumer reads, by stream, until `count` have come.
  auto refusals = [&](RawConsumer& consumer, int count) {
    std::vector<std::string> out;
    while (static_cast<int>(out.size()) < count) {
      auto message = Receive(consumer.socket(), 1);
      if (!message.ok()) break;
      if (message->header.type != proto::Type::kError || message->header.stream == 0) continue;
      auto reader = message->reader();
      EXPECT_OK(reader.ReadHeader().status());
      auto error = proto::DecodeError(reader);
      EXPECT_OK(error.status());
      EXPECT_EQ(error->code, proto::ErrorCode::kLimit) << error->message;
      out.push_back(error->message);
    }
    return out;
  };
  // `consumer` sends `count` requests; `refused` of them are refused naming `limit`.
  auto expect_refused = [&](RawConsumer& consumer, int count, int refused,
                            const std::string& limit) {
    flood(consumer, 1, count);
    const auto errors = refusals(consumer, refused);
    ASSERT_EQ(static_cast<int>(errors.size()), refused);
    EXPECT_NE(errors.front().find(limit), std::string::npos) << errors.front();
  };
  ASSERT_OK_AND_ASSIGN(auto hoarder, RawConsumer::Connect(address_));
  ASSERT_OK(hoarder.Handshake().status());
  expect_refused(hoarder, 300, 296, "this consumer already has 4 requests in flight (limit 4)");
  ASSERT_OK_AND_ASSIGN(auto second, RawConsumer::Connect(address_));
  ASSERT_OK(second.Handshake().status());
  expect_refused(second, 4, 2, "the producer already has 6 requests in flight (limit 6)");
  // Meanwhile the good consumer is served, and no request started a thread of its own.
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
  EXPECT_LE(CountThreads(), threads_before + options.request_threads);
  // The hoarder leaves while both workers run its first two requests: the two waiting are
  // cancelled, never run.
  ASSERT_TRUE(Eventually([&] { return running.load() == options.request_threads; }));
  {
    RawConsumer gone = std::move(hoarder);
  }
  ASSERT_TRUE(Eventually([&] { return producer_->stats().consumers == 2; }));
  open.set_value();
  // The second consumer's two requests are answered (a Schema, a Batch, an End each).
  proto::Writer w;
  int ends = 0;
  while (ends < 2) {
    ASSERT_OK_AND_ASSIGN(auto message, Receive(second.socket(), 1));
    if (message.header.type == proto::Type::kBatch) {
      auto reader = message.reader();
      ASSERT_OK(reader.ReadHeader().status());
      ASSERT_OK_AND_ASSIGN(auto batch, proto::DecodeBatch(reader));
      ASSERT_OK(second.Release({batch.sequence}));
    }
    ends += message.header.type == proto::Type::kEnd && message.header.stream != 0;
  }
  EXPECT_EQ(calls.load(), 4);  // 2 of the hoarder's (running when it left), 2 of the second's
  EXPECT_LE(most_running.load(), options.request_threads);
  EXPECT_LE(CountThreads(), threads_before + options.request_threads);
  // A hoarder's handler woken by the gate may not have left it yet while the second's requests
  // were answered by the other worker: closing joins the workers before the gate and counters
  // they use go out of scope.
  producer_->Close();
  EXPECT_EQ(calls.load(), 4);
}

/// Requests to a producer without a handler, never reading the refusals: what waits for the
/// consumer is bounded, and the consumer is disconnected rather than buffered for. (Its socket
/// is full, so the Error saying why cannot reach it: it sees the connection close.)
TEST_P(HostileConsumer, UnreadAnswersGetTheConsumerDisconnected) {
  Start();
  {
    ASSERT_OK_AND_ASSIGN(auto deaf, RawConsumer::Connect(address_));
    ASSERT_OK(deaf.Handshake().status());
    proto::Writer w;
    int sent = 0;
    for (; sent < 1000000; ++sent) {
      if (!deaf.Send(proto::EncodeRequest(w, static_cast<uint32_t>(sent + 1), "x")).ok()) break;
    }
    EXPECT_LT(sent, 1000000) << "the producer kept buffering refusals for a consumer not reading";
    EXPECT_TRUE(ClosedByPeer(deaf.socket()));
  }
  ExpectProducerFdsBack();
  ASSERT_OK(Publish(0));
  ExpectGoodConsumerReadsEverything();
  EXPECT_EQ(producer_->stats().consumers, 1);
}

/// Sealed mode, RLIMIT_NOFILE 256: a consumer sending 3,000 requests and reading nothing costs
/// the producer no more fds than its limits allow; the good consumer gets every batch. In a
/// child process, whose fd limit can be lowered alone.
TEST(HostileConsumerSealed, RequestBacklogNeverCostsTheProducerItsFds) {
  const std::string address = test_util::UniqueAbstractName("hostile-fds");
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    const rlimit limit{256, 256};
    if (::setrlimit(RLIMIT_NOFILE, &limit) != 0) ::_exit(10);
    ProducerOptions options;
    options.mode = MemoryMode::kSealed;
    options.block_timeout_ms = kTimeoutMs;
    options.request_timeout_ms = 200;
    auto producer = Producer::Listen(address, TestSchema(), options);
    if (!producer.ok()) ::_exit(11);
    (*producer)->SetRequestHandler([](std::string_view, ResponseWriter& response) {
      for (int i = 0; i < 4; ++i) {
        ARROW_ASSIGN_OR_RAISE(auto batch, MakeBatch(response.pool(), i, 1000));
        ARROW_RETURN_NOT_OK(response.Write(batch));
      }
      return arrow::Status::OK();
    });
    ConsumerOptions good_options;
    good_options.read_timeout_ms = kTimeoutMs;
    auto good = Consumer::Connect(address, good_options);
    auto hoarder = RawConsumer::Connect(address);
    proto::Hello lossy;  // holds nothing of stream 0 back: only its requests are in the way
    lossy.flags = proto::kHelloLossy;
    if (!good.ok() || !hoarder.ok() || !hoarder->Handshake(lossy).ok()) ::_exit(12);
    proto::Writer w;
    for (uint32_t i = 1; i <= 3000; ++i) {
      if (!hoarder->Send(proto::EncodeRequest(w, i, "rows=1000")).ok()) break;
    }
    StreamSummary sent(TestSchema()), received(TestSchema());
    for (int seed = 0; seed < 50; ++seed) {
      auto batch = MakeBatch((*producer)->pool(), seed);
      if (!batch.ok() || !(*producer)->Publish(*batch).ok()) ::_exit(13);
      sent.Add(**batch);
      BatchPtr read;
      if (!(*good)->ReadNext(&read).ok() || read == nullptr) ::_exit(14);
      received.Add(*read);
    }
    for (int i = 0; i < TestSchema()->num_fields(); ++i) {
      if (received.checksum(i) != sent.checksum(i)) ::_exit(15);
    }
    if (test_util::CountOpenFds() > 200) ::_exit(16);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "10 setrlimit, 11 listen, 12 connect, 13 publish, "
                                       "14 read, 15 checksums, 16 fds";
}

}  // namespace
}  // namespace shmarrow::hostile
