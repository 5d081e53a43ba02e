// The producer's parts that run without a socket: the handshake (a pure function from a Hello
// and a view of the producer to a Welcome or a refusal) and the request pool's limits.
#include <gtest/gtest.h>

#include <arrow/api.h>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <set>
#include <utility>

#include "handshake.h"
#include "protocol.h"
#include "request_pool.h"
#include "schema_match.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using internal::Handshake;
using internal::HandshakeOutcome;

std::shared_ptr<arrow::Schema> Current() {
  return arrow::schema({arrow::field("i", arrow::int32()), arrow::field("s", arrow::utf8()),
                        arrow::field("l", arrow::int64())});
}

std::shared_ptr<internal::Published> Retained(std::shared_ptr<arrow::Schema> schema) {
  auto published = std::make_shared<internal::Published>();
  published->batch = arrow::RecordBatch::MakeEmpty(std::move(schema)).ValueOrDie();
  return published;
}

/// A producer as the handshake sees it: ring mode, one consumer attached, a queue free, and
/// three retained batches, the oldest of an older schema (without "l").
struct View {
  ProducerOptions options;
  std::deque<std::shared_ptr<internal::Published>> retained;
  internal::ProducerView view;

  View() {
    options.max_consumers = 2;
    options.max_in_flight = 8;
    retained = {Retained(arrow::schema(
                    {arrow::field("i", arrow::int32()), arrow::field("s", arrow::utf8())})),
                Retained(Current()), Retained(Current())};
    view.schema = Current();
    view.options = &options;
    view.mode = proto::Mode::kRing;
    view.ring_size = 1 << 20;
    view.consumers = 1;
    view.queue_free = true;
    view.queue_capacity = 9;
    view.consumer_id = 5;
    view.retained = &retained;
  }
  arrow::Result<HandshakeOutcome> Answer(const proto::Hello& hello) const {
    proto::Writer writer;
    return Handshake(proto::Encode(writer, hello), view);
  }
};

HandshakeOutcome Outcome(const arrow::Result<HandshakeOutcome>& result) {
  EXPECT_TRUE(result.ok()) << result.status().ToString();
  return result.ok() ? *result : HandshakeOutcome{};
}

TEST(HandshakeTest, AnotherMajorVersionIsRefusedNamingBoth) {
  View v;
  proto::Hello hello;
  hello.major = proto::kMajorVersion + 1;
  auto outcome = Outcome(v.Answer(hello));
  ASSERT_TRUE(outcome.refusal.has_value());
  EXPECT_EQ(outcome.refusal->code, proto::ErrorCode::kVersion);
  EXPECT_NE(outcome.refusal->message.find("protocol version " +
                                          std::to_string(proto::kMajorVersion + 1) + "."),
            std::string::npos)
      << outcome.refusal->message;
  EXPECT_NE(outcome.refusal->message.find("(major versions must match)"), std::string::npos);
}

TEST(HandshakeTest, AtMaxConsumersOnlyADescriberIsAnswered) {
  View v;
  v.view.consumers = v.options.max_consumers;
  auto refused = Outcome(v.Answer(proto::Hello{}));
  ASSERT_TRUE(refused.refusal.has_value());
  EXPECT_EQ(refused.refusal->code, proto::ErrorCode::kLimit);
  EXPECT_EQ(refused.refusal->message, "producer already serves 2 consumers (limit 2)");

  proto::Hello describe;
  describe.flags = proto::kHelloDescribe;
  describe.columns = {"s"};
  auto described = Outcome(v.Answer(describe));
  ASSERT_FALSE(described.refusal.has_value());
  EXPECT_TRUE(described.admission.describe);
  EXPECT_FALSE(described.admission.wants_queue);
  EXPECT_EQ(described.admission.welcome.features, proto::kFeatureDescribe);
  auto schema = internal::DeserializeSchema(described.admission.welcome.schema);
  ASSERT_TRUE(schema.ok());
  EXPECT_EQ((*schema)->num_fields(), 1);
  EXPECT_EQ((*schema)->field(0)->name(), "s");
}

TEST(HandshakeTest, QueueAndBatchRunsOnlyForMinor1InRingMode) {
  View v;
  auto current = Outcome(v.Answer(proto::Hello{}));
  ASSERT_FALSE(current.refusal.has_value());
  EXPECT_TRUE(current.admission.wants_queue);
  EXPECT_TRUE(current.admission.terms.batch_runs);
  EXPECT_TRUE(current.admission.welcome.features & proto::kFeatureQueue);

  proto::Hello old;
  old.minor = 0;
  auto minor0 = Outcome(v.Answer(old));
  EXPECT_FALSE(minor0.admission.wants_queue);
  EXPECT_FALSE(minor0.admission.terms.batch_runs);
  EXPECT_EQ(minor0.admission.welcome.features & ~proto::FeaturesOf(0), 0u);

  v.view.queue_free = false;
  EXPECT_FALSE(Outcome(v.Answer(proto::Hello{})).admission.wants_queue);

  v.view.mode = proto::Mode::kSealed;
  v.view.ring_size = 0;
  auto sealed = Outcome(v.Answer(proto::Hello{}));
  EXPECT_FALSE(sealed.admission.wants_queue);
  EXPECT_FALSE(sealed.admission.terms.batch_runs);
  EXPECT_EQ(sealed.admission.welcome.mode, proto::Mode::kSealed);
}

TEST(HandshakeTest, CreditsAreTheLesserOfBothLimits) {
  View v;
  proto::Hello hello;
  hello.max_in_flight = 3;
  EXPECT_EQ(Outcome(v.Answer(hello)).admission.terms.credits, 3u);
  hello.max_in_flight = 100;
  auto outcome = Outcome(v.Answer(hello));
  EXPECT_EQ(outcome.admission.terms.credits, 8u);
  EXPECT_EQ(outcome.admission.welcome.max_in_flight, 8u);
}

TEST(HandshakeTest, UnknownColumnsAndAMismatchedSchemaAreRefused) {
  View v;
  proto::Hello hello;
  hello.columns = {"nope"};
  auto columns = Outcome(v.Answer(hello));
  ASSERT_TRUE(columns.refusal.has_value());
  EXPECT_EQ(columns.refusal->code, proto::ErrorCode::kSchemaMismatch);

  proto::Hello required;
  required.required_schema =
      internal::SerializeSchema(*arrow::schema({arrow::field("i", arrow::utf8())})).ValueOrDie();
  auto schema = Outcome(v.Answer(required));
  ASSERT_TRUE(schema.refusal.has_value());
  EXPECT_EQ(schema.refusal->code, proto::ErrorCode::kSchemaMismatch);
}

TEST(HandshakeTest, ReplayStartsAtTheNewestRunOfSuitableBatches) {
  View v;
  proto::Hello all;
  all.flags = proto::kHelloStartAtOldest;
  auto everything = Outcome(v.Answer(all));
  EXPECT_EQ(everything.admission.replay.size(), 3u);
  EXPECT_EQ(everything.admission.first_schema->num_fields(), 2);  // the oldest batch's

  proto::Hello projected = all;
  projected.columns = {"l"};  // the oldest batch lacks it
  auto newer = Outcome(v.Answer(projected));
  ASSERT_EQ(newer.admission.replay.size(), 2u);
  EXPECT_EQ(newer.admission.replay.front(), v.retained[1]);
  EXPECT_EQ(newer.admission.terms.projection, std::vector<int>{2});
  auto welcomed = internal::DeserializeSchema(newer.admission.welcome.schema);
  ASSERT_TRUE(welcomed.ok());
  EXPECT_TRUE((*welcomed)->Equals(*arrow::schema({arrow::field("l", arrow::int64())})));

  EXPECT_TRUE(Outcome(v.Answer(proto::Hello{})).admission.replay.empty());
}

TEST(HandshakeTest, AnythingButAHelloIsAProtocolError) {
  View v;
  proto::Writer writer;
  auto result = Handshake(proto::EncodeBye(writer), v.view);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.status().message().find("expected Hello, got"), std::string::npos)
      << result.status().ToString();
  EXPECT_FALSE(Handshake({}, v.view).ok());
}

TEST(RequestPoolTest, LimitsPerConsumerAndPerProducerAndOneWorker) {
  ProducerOptions options;
  options.request_threads = 1;
  options.max_requests_per_consumer = 2;
  options.max_requests = 3;
  std::mutex mutex;
  std::condition_variable changed;
  bool open = false;
  int running = 0;
  int most_running = 0;
  std::set<std::pair<uint32_t, uint32_t>> ran;
  internal::RequestPool* self = nullptr;
  internal::RequestPool pool(options, [&](internal::RequestPool::Job& job) {
    {
      std::unique_lock lock(mutex);
      most_running = std::max(most_running, ++running);
      changed.wait(lock, [&] { return open; });
      --running;
      ran.insert({job.consumer, job.stream});
    }
    self->Finished(job.consumer, job.stream);
    changed.notify_all();
  });
  self = &pool;
  RequestHandler handler = [](std::string_view, ResponseWriter&) { return arrow::Status::OK(); };
  auto submit = [&](uint32_t consumer, uint32_t stream, RequestHandler h) {
    return pool.Submit({consumer, stream, "q", std::move(h)});
  };

  EXPECT_FALSE(submit(1, 1, handler).has_value());
  EXPECT_FALSE(submit(1, 2, handler).has_value());
  auto expect_refused = [](const std::optional<proto::Error>& refusal, proto::ErrorCode code,
                           const std::string& message) {
    ASSERT_TRUE(refusal.has_value()) << message;
    EXPECT_EQ(refusal->code, code);
    EXPECT_EQ(refusal->message, message);
  };
  expect_refused(submit(1, 1, handler), proto::ErrorCode::kHandler,
                 "request 1 is already in flight");
  expect_refused(submit(1, 3, handler), proto::ErrorCode::kLimit,
                 "this consumer already has 2 requests in flight (limit 2)");
  EXPECT_FALSE(submit(2, 1, handler).has_value());
  expect_refused(submit(2, 2, handler), proto::ErrorCode::kLimit,
                 "the producer already has 3 requests in flight (limit 3)");
  expect_refused(submit(3, 1, nullptr), proto::ErrorCode::kHandler,
                 "this producer has no request handler");

  pool.Cancel(2);  // its queued request never runs and no longer counts
  EXPECT_FALSE(submit(3, 1, handler).has_value());

  {
    std::unique_lock lock(mutex);
    open = true;
    changed.notify_all();
    changed.wait(lock, [&] { return ran.size() == 3; });
  }
  pool.Stop();
  const std::set<std::pair<uint32_t, uint32_t>> expected{{1, 1}, {1, 2}, {3, 1}};
  EXPECT_EQ(ran, expected);
  EXPECT_EQ(most_running, 1);
  // Finished freed every slot: no limit refuses it any more, only the stop.
  expect_refused(submit(1, 1, handler), proto::ErrorCode::kShutdown, "producer closed");
}

}  // namespace
}  // namespace shmarrow
