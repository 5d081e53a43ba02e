// Every Status the library returns for a known kind of failure carries its ErrorCode: a code the
// producer sent in an Error message, a timeout, a schema mismatch, a limit, a version mismatch. (A
// producer of another uid refused by the consumer: HostileProducer.ProducerOfAnotherUidIsRefused.)
#include <arrow/api.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <cstring>
#include <thread>
#include <vector>

#include "protocol.h"
#include "schema_match.h"
#include "shmarrow/consumer.h"
#include "shmarrow/error.h"
#include "shmarrow/producer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using internal::UnixSocket;

constexpr int kTimeoutMs = 10000;  // only a bug waits this long

std::shared_ptr<arrow::Schema> TestSchema() {
  return arrow::schema({arrow::field("a", arrow::int64())});
}

std::shared_ptr<Producer> Listen(const std::string& address, ProducerOptions options = {}) {
  auto producer = Producer::Listen(address, TestSchema(), options);
  EXPECT_TRUE(producer.ok()) << producer.status().ToString();
  return producer.ValueOr(nullptr);
}

// Options that wait long enough for any answer: only a bug waits for the timeout.
ConsumerOptions Patient() {
  ConsumerOptions options;
  options.read_timeout_ms = kTimeoutMs;
  return options;
}

// Answers the first Hello at `address` with `answer` and waits for the consumer to hang up.
class OneAnswer {
 public:
  OneAnswer(const std::string& address, std::vector<uint8_t> answer) {
    auto listener = UnixSocket::Listen(address, SOCK_SEQPACKET, 0600);
    EXPECT_TRUE(listener.ok()) << listener.status().ToString();
    if (!listener.ok()) return;
    listener_ = std::make_unique<UnixSocket>(std::move(*listener));
    server_ = std::thread([this, answer = std::move(answer)] {
      auto accepted = listener_->Accept(kTimeoutMs);
      if (!accepted.ok() || accepted->fd() < 0) return;
      std::vector<uint8_t> buffer(proto::kMaxMessageSize);
      if (!accepted->Receive(buffer, 1, kTimeoutMs).ok()) return;  // the Hello, with the region
      if (!accepted->Send(answer, {}).ok()) return;
      (void)accepted->Receive(buffer, 0, kTimeoutMs);  // until the consumer closes
    });
  }
  ~OneAnswer() {
    if (server_.joinable()) server_.join();
  }

 private:
  std::unique_ptr<UnixSocket> listener_;
  std::thread server_;
};

std::vector<uint8_t> ErrorMessage(proto::ErrorCode code, const std::string& text) {
  proto::Writer writer;
  auto bytes = proto::Encode(writer, 0, proto::Error{code, text});
  return {bytes.begin(), bytes.end()};
}

TEST(ErrorCodes, StatusWithoutCodeHasNone) {
  EXPECT_EQ(ErrorCodeOf(arrow::Status::OK()), ErrorCode::kNone);
  EXPECT_EQ(ErrorCodeOf(arrow::Status::IOError("x")), ErrorCode::kNone);
  const auto coded = MakeError(arrow::StatusCode::IOError, ErrorCode::kLimit, "too many: ", 3);
  EXPECT_EQ(ErrorCodeOf(coded), ErrorCode::kLimit);
  EXPECT_EQ(coded.message(), "too many: 3");
  EXPECT_FALSE(ErrorDetailOf(coded)->from_producer());
  EXPECT_TRUE(WithCode(arrow::Status::OK(), ErrorCode::kLimit).ok());
}

// Each code the producer may send arrives in the consumer's Status as it was sent, marked as the
// producer's, with the producer's text; a code the protocol does not define reads as kProtocol.
TEST(ErrorCodes, ProducerErrorKeepsItsCode) {
  const std::pair<uint32_t, ErrorCode> cases[] = {
      {1, ErrorCode::kProtocol}, {2, ErrorCode::kVersion},    {3, ErrorCode::kSchemaMismatch},
      {4, ErrorCode::kLimit},    {5, ErrorCode::kHandler},    {6, ErrorCode::kRefused},
      {7, ErrorCode::kShutdown}, {100, ErrorCode::kProtocol}, {0, ErrorCode::kProtocol}};
  for (const auto& [wire, expected] : cases) {
    const auto address = test_util::UniqueAbstractName("error-code");
    // Written as raw bytes: a hostile producer may send any u32 as the code.
    auto answer = ErrorMessage(proto::ErrorCode::kProtocol, "no, because timeout");
    std::memcpy(answer.data() + proto::kHeaderSize, &wire, sizeof wire);
    OneAnswer producer(address, answer);
    ConsumerOptions options;
    options.read_timeout_ms = kTimeoutMs;
    auto consumer = Consumer::Connect(address, options);
    ASSERT_FALSE(consumer.ok()) << "code " << wire;
    EXPECT_EQ(ErrorCodeOf(consumer.status()), expected) << consumer.status().ToString();
    ASSERT_NE(ErrorDetailOf(consumer.status()), nullptr);
    EXPECT_TRUE(ErrorDetailOf(consumer.status())->from_producer());
    EXPECT_NE(consumer.status().message().find("no, because timeout"), std::string::npos);
  }
}

TEST(ErrorCodes, ProducerShutdownMidStream) {
  const auto address = test_util::UniqueAbstractName("error-shutdown");
  auto producer = Listen(address);
  ASSERT_NE(producer, nullptr);
  ConsumerOptions options = Patient();
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  producer->Close();
  std::shared_ptr<arrow::RecordBatch> batch;
  const auto status = consumer->ReadNext(&batch);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(ErrorCodeOf(status), ErrorCode::kShutdown) << status.ToString();
  EXPECT_TRUE(ErrorDetailOf(status)->from_producer());
}

TEST(ErrorCodes, Timeouts) {
  const auto address = test_util::UniqueAbstractName("error-timeout");
  auto producer = Listen(address);
  ASSERT_NE(producer, nullptr);
  const auto waited = producer->WaitForConsumers(1, 0);
  EXPECT_EQ(ErrorCodeOf(waited), ErrorCode::kTimeout) << waited.ToString();
  ConsumerOptions options;
  // The read timeout bounds the handshake too: long enough for a loaded machine's producer.
  options.read_timeout_ms = 500;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  std::shared_ptr<arrow::RecordBatch> batch;
  const auto read = consumer->ReadNext(&batch);
  EXPECT_EQ(ErrorCodeOf(read), ErrorCode::kTimeout) << read.ToString();
  EXPECT_EQ(read.message(), "no message from the producer within 500 ms");
}

TEST(ErrorCodes, SchemaMismatch) {
  const auto address = test_util::UniqueAbstractName("error-schema");
  auto producer = Listen(address);
  ASSERT_NE(producer, nullptr);
  // The consumer's expectation, refused by the producer.
  ConsumerOptions options = Patient();
  options.expect_schema = arrow::schema({arrow::field("a", arrow::utf8())});
  auto refused = Consumer::Connect(address, options);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(ErrorCodeOf(refused.status()), ErrorCode::kSchemaMismatch)
      << refused.status().ToString();
  EXPECT_TRUE(ErrorDetailOf(refused.status())->from_producer());
  // A batch that does not fit the producer's schema, refused locally.
  auto other = arrow::RecordBatch::Make(arrow::schema({arrow::field("b", arrow::int8())}), 0,
                                        {arrow::MakeArrayOfNull(arrow::int8(), 0).ValueOrDie()});
  const auto published = producer->Publish(other);
  EXPECT_EQ(ErrorCodeOf(published), ErrorCode::kSchemaMismatch) << published.ToString();
  EXPECT_FALSE(ErrorDetailOf(published)->from_producer());
  // The consumer's own check (the single hand-over has no producer to ask).
  const auto checked =
      internal::CheckSchema(*options.expect_schema, *TestSchema(), SchemaMatch::kSubset);
  EXPECT_EQ(ErrorCodeOf(checked), ErrorCode::kSchemaMismatch) << checked.ToString();
}

TEST(ErrorCodes, ConsumerLimit) {
  const auto address = test_util::UniqueAbstractName("error-limit");
  ProducerOptions producer_options;
  producer_options.max_consumers = 1;
  auto producer = Listen(address, producer_options);
  ASSERT_NE(producer, nullptr);
  ConsumerOptions options = Patient();
  ASSERT_OK_AND_ASSIGN(auto first, Consumer::Connect(address, options));
  auto second = Consumer::Connect(address, options);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(ErrorCodeOf(second.status()), ErrorCode::kLimit) << second.status().ToString();
  EXPECT_NE(second.status().message().find("limit 1"), std::string::npos);
}

// The producer's Welcome names another major version: the consumer refuses it itself.
TEST(ErrorCodes, VersionMismatch) {
  const auto address = test_util::UniqueAbstractName("error-version");
  proto::Welcome welcome;
  welcome.major = proto::kMajorVersion + 1;
  proto::Writer writer;
  auto bytes = proto::Encode(writer, welcome);
  OneAnswer producer(address, {bytes.begin(), bytes.end()});
  ConsumerOptions options = Patient();
  auto consumer = Consumer::Connect(address, options);
  ASSERT_FALSE(consumer.ok());
  EXPECT_EQ(ErrorCodeOf(consumer.status()), ErrorCode::kVersion) << consumer.status().ToString();
  EXPECT_FALSE(ErrorDetailOf(consumer.status())->from_producer());
}

}  // namespace
}  // namespace shmarrow
