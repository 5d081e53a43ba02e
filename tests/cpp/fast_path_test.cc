// Ring mode's fast path: a backlog travels as one Batches message, a consumer that is behind
// answers several batches with one Release (and never sits on releases once it has caught up),
// and busy-polling reads the same stream.
#include <arrow/api.h>
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "hostile_peer.h"
#include "mapping.h"
#include "protocol.h"
#include "ring_queue.h"
#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using BatchPtr = std::shared_ptr<arrow::RecordBatch>;

constexpr int kTimeoutMs = 10000;  // only ever reached when something is broken

std::string NextAddress() { return test_util::UniqueAbstractName("fast-path"); }

using test_util::PublishValue;
using test_util::ValueOf;
using test_util::ValueSchema;

ProducerOptions RingOptions() {
  ProducerOptions options;
  options.mode = MemoryMode::kRing;
  options.ring_size = int64_t{4} << 20;
  options.name = "fast-path-test";
  options.block_timeout_ms = kTimeoutMs;  // a bug fails the test instead of hanging it
  return options;
}

/// A consumer speaking the protocol by hand, to see the messages themselves.
class RawConsumer {
 public:
  static arrow::Result<RawConsumer> Connect(const std::string& address, uint32_t features,
                                            uint32_t credits) {
    ARROW_ASSIGN_OR_RAISE(auto socket,
                          internal::UnixSocket::Connect(address, SOCK_SEQPACKET, kTimeoutMs));
    RawConsumer raw(std::move(socket));
    proto::Hello hello;
    hello.features = features;
    hello.max_in_flight = credits;
    ARROW_RETURN_NOT_OK(raw.socket_.Send(proto::Encode(raw.writer_, hello), {}));
    ARROW_ASSIGN_OR_RAISE(auto header, raw.Receive());
    if (header.type != proto::Type::kWelcome) return arrow::Status::Invalid("no Welcome");
    ARROW_ASSIGN_OR_RAISE(raw.welcome_, proto::DecodeWelcome(*raw.reader_));
    if (!raw.fds_.empty()) raw.ring_fd_ = std::move(raw.fds_.front());
    return raw;
  }

  /// The next message's header; its payload is left in reader().
  arrow::Result<proto::Header> Receive() {
    ARROW_ASSIGN_OR_RAISE(auto received, socket_.Receive(buffer_, 1, kTimeoutMs));
    if (received.bytes <= 0) return arrow::Status::IOError("nothing received");
    fds_ = std::move(received.fds);
    reader_.emplace(std::span<const uint8_t>(buffer_.data(), received.bytes));
    return reader_->ReadHeader();
  }
  /// The sequences of the next Batch or Batches message, and its type.
  arrow::Result<std::pair<proto::Type, std::vector<uint64_t>>> ReceiveBatches() {
    ARROW_ASSIGN_OR_RAISE(auto header, Receive());
    std::vector<uint64_t> sequences;
    if (header.type == proto::Type::kBatch) {
      ARROW_ASSIGN_OR_RAISE(auto batch, proto::DecodeBatch(*reader_));
      sequences.push_back(batch.sequence);
    } else if (header.type == proto::Type::kBatches) {
      std::vector<proto::Batch> run;
      ARROW_RETURN_NOT_OK(proto::DecodeBatches(*reader_, proto::kMaxRun, &run));
      for (const auto& batch : run) sequences.push_back(batch.sequence);
    } else {
      return arrow::Status::Invalid("expected a batch, got ", proto::TypeName(header.type));
    }
    return std::make_pair(header.type, std::move(sequences));
  }
  arrow::Status Release(const std::vector<uint64_t>& sequences) {
    return socket_.Send(proto::EncodeRelease(writer_, sequences), {});
  }
  arrow::Status SendWaiting(uint64_t entries_read) {
    return socket_.Send(proto::EncodeWaiting(writer_, entries_read), {});
  }
  /// The message of the Error that the next message must be.
  arrow::Result<std::string> ReceiveError() {
    ARROW_ASSIGN_OR_RAISE(auto header, Receive());
    if (header.type != proto::Type::kError) {
      return arrow::Status::Invalid("expected Error, got ", proto::TypeName(header.type));
    }
    ARROW_ASSIGN_OR_RAISE(auto error, proto::DecodeError(*reader_));
    return error.message;
  }
  const proto::Welcome& welcome() const { return welcome_; }
  /// The ring's fd, which came with the Welcome (ring mode).
  int ring_fd() const { return ring_fd_.get(); }

 private:
  explicit RawConsumer(internal::UnixSocket socket) : socket_(std::move(socket)) {}
  internal::UnixSocket socket_;
  proto::Writer writer_;
  std::vector<uint8_t> buffer_ = std::vector<uint8_t>(proto::kMaxMessageSize);
  std::optional<proto::Reader> reader_;
  std::vector<UniqueFd> fds_;  // those of the last message received
  proto::Welcome welcome_;
  UniqueFd ring_fd_;
};

TEST(FastPathTest, ABacklogGoesOutAsOneBatchesMessageWhenAgreed) {
  for (const bool agreed : {true, false}) {
    SCOPED_TRACE(agreed ? "batch runs agreed" : "batch runs not offered");
    const std::string address = NextAddress();
    ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, ValueSchema(), RingOptions()));
    // Without the queue, where stream 0 would not travel in messages at all.
    const uint32_t messages = proto::kAllFeatures & ~proto::kFeatureQueue;
    const uint32_t features = agreed ? messages : messages & ~proto::kFeatureBatchRuns;
    ASSERT_OK_AND_ASSIGN(auto raw, RawConsumer::Connect(address, features, /*credits=*/2));
    EXPECT_EQ((raw.welcome().features & proto::kFeatureBatchRuns) != 0, agreed);
    ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
    // Two go out at once (the credits); two more wait in the producer's queue.
    for (int64_t v = 1; v <= 4; ++v) ASSERT_OK(PublishValue(*producer, v));
    std::vector<uint64_t> first;
    for (int i = 0; i < 2; ++i) {
      ASSERT_OK_AND_ASSIGN(auto got, raw.ReceiveBatches());
      EXPECT_EQ(got.first, proto::Type::kBatch);
      first.insert(first.end(), got.second.begin(), got.second.end());
    }
    ASSERT_EQ(first.size(), 2u);
    ASSERT_OK(raw.Release(first));
    ASSERT_OK_AND_ASSIGN(auto next, raw.ReceiveBatches());
    if (agreed) {
      EXPECT_EQ(next.first, proto::Type::kBatches);
      EXPECT_EQ(next.second, (std::vector<uint64_t>{first[1] + 1, first[1] + 2}));
    } else {
      EXPECT_EQ(next.first, proto::Type::kBatch);
      EXPECT_EQ(next.second, (std::vector<uint64_t>{first[1] + 1}));
      ASSERT_OK_AND_ASSIGN(auto last, raw.ReceiveBatches());
      EXPECT_EQ(last.second, (std::vector<uint64_t>{first[1] + 2}));
    }
    producer->Close();
  }
}

/// Publishes 0, 1, ... `batches` - 1 on a thread (pausing 5 ms after every `pause_every`-th, if
/// set) to a consumer with `options` that starts reading after `late_ms`, and expects them all,
/// in order, then every release back at the producer while the consumer is still connected.
void StreamValuesInOrder(ConsumerOptions options, int64_t batches, int late_ms, int pause_every) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, ValueSchema(), RingOptions()));
  options.read_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  std::thread publisher([&] {
    for (int64_t v = 0; v < batches; ++v) {
      ASSERT_OK(PublishValue(*producer, v));
      if (pause_every > 0 && v % pause_every == 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    ASSERT_OK(producer->End());
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(late_ms));
  int64_t expected = 0;
  for (;;) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    if (batch == nullptr) break;
    ASSERT_EQ(ValueOf(*batch), expected);
    ++expected;
  }
  publisher.join();
  EXPECT_EQ(expected, batches);
  EXPECT_EQ(consumer->stats().released, batches);
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(producer->stats().in_flight, 0);
}

TEST(FastPathTest, ABehindConsumerReadsEverythingInOrderAndTheProducerDrains) {
  // Starts late with few credits, so that the producer is ahead: its queue fills, entries wait
  // in the ring, and releases travel several at a time.
  ConsumerOptions options;
  options.max_in_flight = 8;
  StreamValuesInOrder(options, /*batches=*/2000, /*late_ms=*/50, /*pause_every=*/0);
}

TEST(FastPathTest, ReleasesAreNotHeldBackOnceNoBatchWaitsToBeRead) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, ValueSchema(), RingOptions()));
  ConsumerOptions options;
  options.read_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  constexpr int64_t kBatches = 10;
  for (int64_t v = 0; v < kBatches; ++v) ASSERT_OK(PublishValue(*producer, v));
  // Everything is queued before the first read: the consumer is behind while it reads.
  std::vector<BatchPtr> kept;
  for (int64_t v = 0; v < kBatches; ++v) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    EXPECT_EQ(ValueOf(*batch), v);
    kept.push_back(std::move(batch));
  }
  // The consumer stops reading (it never asks for the end) and drops what it holds: the
  // producer must hear of all of it now, not at the consumer's next read.
  kept.clear();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(consumer->stats().released, kBatches);
}

TEST(FastPathTest, BusyPollingReadsTheSameStream) {
  ConsumerOptions options;
  options.busy_poll_us = 2000;  // shorter than the pauses: it spins, then sleeps, then spins
  StreamValuesInOrder(options, /*batches=*/200, /*late_ms=*/0, /*pause_every=*/50);
}

TEST(FastPathTest, AQueueIsAgreedInRingModeAndWakesAWaitingConsumer) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, ValueSchema(), RingOptions()));
  ASSERT_OK_AND_ASSIGN(auto raw, RawConsumer::Connect(address, proto::kAllFeatures, 4));
  EXPECT_NE(raw.welcome().features & proto::kFeatureQueue, 0u);
  // Slots are sized for the producer's credits, and End.
  EXPECT_EQ(raw.welcome().queue_capacity, static_cast<uint32_t>(RingOptions().max_in_flight + 1));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(raw.SendWaiting(0));  // read nothing yet, about to sleep
  ASSERT_OK(PublishValue(*producer, 7));
  ASSERT_OK_AND_ASSIGN(auto header, raw.Receive());
  EXPECT_EQ(header.type, proto::Type::kWake);
  producer->Close();
}

// Each consumer gets the one queue slot its predecessor left, count and entries still there: the
// producer resets it before the Welcome, or the consumer may read those entries as its own (whose
// batches were released, their ring bytes reused). It looks at once, as a quick consumer would.
TEST(FastPathTest, AReusedQueueSlotIsEmptyWhenTheNextConsumerIsWelcomed) {
  const std::string address = NextAddress();
  ProducerOptions options = RingOptions();
  options.max_consumers = 1;  // one queue slot, so every consumer reuses it
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, ValueSchema(), options));
  internal::Mapping ring;  // mapped once: the consumers that follow look at it without delay
  constexpr int kConsumers = 300;
  for (int i = 0; i < kConsumers; ++i) {
    // The one before is gone (closed at the end of its turn): its batch and its queue slot
    // returned.
    ASSERT_TRUE(hostile::Eventually([&] { return producer->stats().consumers == 0; }));
    ASSERT_OK_AND_ASSIGN(auto raw, RawConsumer::Connect(address, proto::kAllFeatures, 4));
    const proto::Welcome& welcome = raw.welcome();
    ASSERT_NE(welcome.queue_capacity, 0u) << "consumer " << i << " got no queue";
    if (ring.data() == nullptr) {
      ASSERT_OK_AND_ASSIGN(ring, internal::Mapping::MapReadOnly(
                                     raw.ring_fd(), static_cast<int64_t>(welcome.ring_size)));
    }
    ASSERT_OK_AND_ASSIGN(
        auto queue, proto::QueueReader::Attach(ring.data(), welcome.ring_size, welcome.queue_offset,
                                               welcome.queue_capacity));
    ASSERT_OK_AND_ASSIGN(uint64_t unread, queue.Unread());
    ASSERT_EQ(unread, 0u) << "consumer " << i << " finds its predecessor's entries in its queue";
    // An entry for this consumer, which the next one must not see.
    ASSERT_OK(PublishValue(*producer, i));
    ASSERT_TRUE(hostile::Eventually([&] { return queue.Unread().ValueOr(0) == 1; }));
  }
  producer->Close();
}

TEST(FastPathTest, WaitingThatLiesGetsTheConsumerThrownOut) {
  for (const bool with_queue : {true, false}) {
    SCOPED_TRACE(with_queue ? "claims more than was written" : "no queue");
    const std::string address = NextAddress();
    ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, ValueSchema(), RingOptions()));
    const uint32_t features =
        with_queue ? proto::kAllFeatures : proto::kAllFeatures & ~proto::kFeatureQueue;
    ASSERT_OK_AND_ASSIGN(auto raw, RawConsumer::Connect(address, features, 4));
    ASSERT_OK(raw.SendWaiting(1000));
    ASSERT_OK_AND_ASSIGN(auto error, raw.ReceiveError());
    EXPECT_NE(error.find(with_queue ? "Waiting after reading 1000 queue entries, but 0 were written"
                                    : "Waiting without a queue"),
              std::string::npos)
        << error;
    EXPECT_EQ(producer->stats().consumers, 0);
    producer->Close();
  }
}

}  // namespace
}  // namespace shmarrow
