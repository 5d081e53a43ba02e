// The consumer's session without a socket (src/consumer_session.h): fed datagrams and fds by the
// test, it yields batches and says what it would send, in the order the protocol prescribes.
#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/api.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <mutex>

#include "consumer_session.h"
#include "mapping.h"
#include "memfd.h"
#include "schema_match.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;

/// Keeps the type and, for Releases, the sequences of every message the session sends.
class RecordingOutbox final : public internal::Outbox {
 public:
  arrow::Result<bool> TrySend(std::span<const uint8_t> message) override {
    if (full) return false;
    std::lock_guard lock(mutex_);
    proto::Reader reader(message);
    ARROW_ASSIGN_OR_RAISE(auto header, reader.ReadHeader());
    types_.push_back(header.type);
    if (header.type == proto::Type::kRelease) {
      ARROW_RETURN_NOT_OK(proto::DecodeRelease(reader, proto::kMaxRun, &released_));
    }
    return true;
  }
  std::vector<proto::Type> types() {
    std::lock_guard lock(mutex_);
    return types_;
  }
  std::vector<uint64_t> released() {
    std::lock_guard lock(mutex_);
    return released_;
  }
  std::atomic<bool> full{false};  // a socket with no room: nothing is sent

 private:
  std::mutex mutex_;
  std::vector<proto::Type> types_;
  std::vector<uint64_t> released_;
};

std::shared_ptr<arrow::RecordBatch> SmallBatch() {
  arrow::Int64Builder builder;
  EXPECT_TRUE(builder.AppendValues({1, 2, 3}).ok());
  return arrow::RecordBatch::Make(arrow::schema({arrow::field("x", arrow::int64())}), 3,
                                  {builder.Finish().ValueOrDie()});
}

/// A sealed memfd holding `batch` as an Arrow IPC stream, as a sealed-mode producer sends it.
UniqueFd SealedStream(const arrow::RecordBatch& batch) {
  auto sink = arrow::io::BufferOutputStream::Create().ValueOrDie();
  auto writer = arrow::ipc::MakeStreamWriter(sink, batch.schema()).ValueOrDie();
  EXPECT_TRUE(writer->WriteRecordBatch(batch).ok());
  EXPECT_TRUE(writer->Close().ok());
  auto bytes = sink->Finish().ValueOrDie();
  auto memfd = internal::Memfd::Create("session-test").ValueOrDie();
  EXPECT_TRUE(memfd.Resize(bytes->size()).ok());
  {
    auto view = internal::Mapping::MapWritable(memfd.fd(), bytes->size()).ValueOrDie();
    std::memcpy(view.data(), bytes->data(), static_cast<size_t>(bytes->size()));
  }
  EXPECT_TRUE(memfd.AddSeals(internal::kImmutableSeals).ok());
  return std::move(memfd).TakeFd();
}

struct SessionTest : ::testing::Test {
  std::shared_ptr<RecordingOutbox> outbox = std::make_shared<RecordingOutbox>();
  internal::ConsumerSession session{ConsumerOptions{}, std::make_shared<internal::Channel>(outbox),
                                    "@test"};
  proto::Writer writer;

  std::span<const uint8_t> SealedWelcome() {
    proto::Welcome welcome;
    welcome.max_in_flight = 2;
    welcome.schema = internal::SerializeSchema(*SmallBatch()->schema()).ValueOrDie();
    return proto::Encode(writer, welcome);
  }
  std::vector<UniqueFd> Fds(UniqueFd fd) {
    std::vector<UniqueFd> fds;
    fds.push_back(std::move(fd));
    return fds;
  }
};

TEST_F(SessionTest, SealedConversationYieldsBatchesAndReleasesThem) {
  arrow::Status sent;
  ASSERT_TRUE(session.Start(&sent).ok());
  ASSERT_TRUE(sent.ok());
  ASSERT_TRUE(session.Feed(SealedWelcome(), {}).ok());
  EXPECT_EQ(session.mode(), "sealed");
  ASSERT_TRUE(session
                  .Feed(proto::Encode(writer, 0, proto::Batch{7, 0, 0, 0}),
                        Fds(SealedStream(*SmallBatch())))
                  .ok());
  std::shared_ptr<arrow::RecordBatch> batch;
  ASSERT_TRUE(session.Take(0, &batch).ValueOrDie());
  ASSERT_NE(batch, nullptr);
  EXPECT_TRUE(batch->Equals(*SmallBatch()));
  EXPECT_TRUE(outbox->released().empty());  // held while the batch lives
  batch.reset();
  EXPECT_EQ(outbox->released(), std::vector<uint64_t>{7});
  ASSERT_TRUE(session.Feed(proto::EncodeEnd(writer, 0), {}).ok());
  ASSERT_TRUE(session.Take(0, &batch).ValueOrDie());
  EXPECT_EQ(batch, nullptr);  // the end
  session.SendBye();
  EXPECT_EQ(outbox->types(), (std::vector<proto::Type>{proto::Type::kHello, proto::Type::kRelease,
                                                       proto::Type::kBye}));
  EXPECT_EQ(session.stats().batches, 1);
  EXPECT_EQ(session.stats().released, 1);
}

TEST_F(SessionTest, BatchBeforeWelcomeEndsTheSession) {
  auto status = session.Feed(proto::Encode(writer, 0, proto::Batch{1, 0, 0, 0}),
                             Fds(SealedStream(*SmallBatch())));
  ASSERT_FALSE(status.ok());
  EXPECT_FALSE(session.welcomed());
  // Whatever comes next, the session keeps its first error.
  EXPECT_EQ(session.Feed(SealedWelcome(), {}).ToString(), status.ToString());
  EXPECT_EQ(session.fatal().ToString(), status.ToString());
}

TEST_F(SessionTest, WelcomeAfterWelcomeIsAProtocolError) {
  ASSERT_TRUE(session.Feed(SealedWelcome(), {}).ok());
  auto status = session.Feed(SealedWelcome(), {});
  ASSERT_FALSE(status.ok());
  EXPECT_NE(status.message().find("unexpected Welcome"), std::string::npos) << status.ToString();
  EXPECT_EQ(ErrorCodeOf(status), ErrorCode::kProtocol);
}

TEST_F(SessionTest, BatchBeyondTheCreditsIsAProtocolError) {
  ASSERT_TRUE(session.Feed(SealedWelcome(), {}).ok());  // 2 credits
  for (uint64_t sequence = 1; sequence <= 2; ++sequence) {
    ASSERT_TRUE(session
                    .Feed(proto::Encode(writer, 0, proto::Batch{sequence, 0, 0, 0}),
                          Fds(SealedStream(*SmallBatch())))
                    .ok());
  }
  auto status = session.Feed(proto::Encode(writer, 0, proto::Batch{3, 0, 0, 0}),
                             Fds(SealedStream(*SmallBatch())));
  EXPECT_NE(status.message().find("beyond this consumer's 2 credits"), std::string::npos)
      << status.ToString();
  EXPECT_EQ(ErrorCodeOf(status), ErrorCode::kProtocol);
}

// Releases a full socket refused wait for the consumer's next catching up, which sends them
// (a consumer that keeps up calls SetDeferring(false) at every look, without a lock when nothing
// waits); deferred ones go at `flush_at` or then, however often deferring is asked again.
TEST(ChannelTest, ReleasesThatWaitAreSentWhenTheConsumerCatchesUp) {
  auto outbox = std::make_shared<RecordingOutbox>();
  internal::Channel channel(outbox);
  channel.SetDeferring(false, 1);
  outbox->full = true;
  channel.Release(7);
  EXPECT_TRUE(outbox->released().empty());
  outbox->full = false;
  channel.SetDeferring(false, 1);
  EXPECT_EQ(outbox->released(), std::vector<uint64_t>{7});
  EXPECT_EQ(channel.released(), 1);
  channel.SetDeferring(true, 3);
  channel.Release(8);
  channel.SetDeferring(true, 3);  // no change (and no lock)
  channel.Release(9);
  EXPECT_EQ(outbox->released().size(), 1u);
  channel.SetDeferring(false, 3);
  EXPECT_EQ(outbox->released().size(), 3u);
  EXPECT_EQ(channel.released(), 3);
}

}  // namespace
}  // namespace shmarrow
