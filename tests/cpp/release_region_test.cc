// Protocol 1.3's release region: a consumer writes what it releases into its own region. A
// hostile one writing counts and sequences that break the rules is thrown out with a protocol
// error while good consumers get everything and the producer gets all its memory back; a full
// region falls back to Release messages; releases in the region wake a blocked Publish.
#include <arrow/api.h>
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "consumer_channel.h"
#include "futex.h"
#include "hostile_peer.h"
#include "region_peer.h"
#include "ring_queue.h"
#include "shmarrow/consumer.h"
#include "shmarrow/error.h"
#include "shmarrow/producer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using BatchPtr = std::shared_ptr<arrow::RecordBatch>;
using hostile::Blocking;
using hostile::kTimeoutMs;
using hostile::ReadToEnd;

constexpr int64_t kBatches = 300;

/// Few credits, so that releases matter.
ProducerOptions FewCredits() {
  ProducerOptions options = hostile::RingOptions();
  options.max_in_flight = 8;
  return options;
}

enum class Garbage {
  kCountBackwards,
  kCountPastTheRing,
  kNeverSent,
  kHuge,
  kDuplicate,
  kAlreadyReleased,
  kAnotherConsumers,
  kRandomWords,
};

std::string Name(const testing::TestParamInfo<Garbage>& info) {
  static const char* const kNames[] = {
      "CountBackwards", "CountPastTheRing", "NeverSent",        "Huge",
      "Duplicate",      "AlreadyReleased",  "AnotherConsumers", "RandomWords"};
  return kNames[static_cast<int>(info.param)];
}

class HostileRegion : public testing::TestWithParam<Garbage> {};

/// The hostile consumer: reads its queue and releases each batch through its region like a good
/// one, until, at a random batch, it writes what GetParam() says; then the producer must throw
/// it out. Returns the Error it got.
arrow::Result<proto::Error> BehaveThenBreak(hostile::RegionPeer& peer, Garbage garbage,
                                            uint64_t before_it_joined, uint32_t seed) {
  std::mt19937 random(seed);
  const int64_t break_after = std::uniform_int_distribution<int64_t>(1, kBatches / 2)(random);
  uint64_t written = 0;
  std::vector<uint64_t> released;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  while (static_cast<int64_t>(released.size()) < break_after) {
    if (std::chrono::steady_clock::now() > deadline) {
      return arrow::Status::IOError("only ", released.size(), " batches arrived");
    }
    uint64_t sequence = 0;
    ARROW_ASSIGN_OR_RAISE(bool got, peer.NextSequence(&sequence));
    if (!got) {
      std::this_thread::yield();
      continue;
    }
    peer.WriteRelease(written, sequence, written + 1);
    ++written;
    released.push_back(sequence);
  }
  // The producer reads the region when it publishes: let it read what was written so far, so
  // that a count can go back behind what it read.
  while (peer.ReleasesRead() < written) {
    if (std::chrono::steady_clock::now() > deadline) {
      return arrow::Status::IOError("the producer never read the region");
    }
    std::this_thread::yield();
  }
  switch (garbage) {
    case Garbage::kCountBackwards:
      peer.WriteRelease(written, 0, written - 1);
      break;
    case Garbage::kCountPastTheRing:
      peer.WriteRelease(written, 0, written + internal::kRegionSlots + 1);
      break;
    case Garbage::kNeverSent:
      peer.WriteRelease(written, released.back() + kBatches * 4, written + 1);
      break;
    case Garbage::kHuge:
      peer.WriteRelease(written, UINT64_MAX, written + 1);
      break;
    case Garbage::kDuplicate: {
      uint64_t sequence = 0;
      for (;;) {  // one it holds, twice
        ARROW_ASSIGN_OR_RAISE(bool got, peer.NextSequence(&sequence));
        if (got) break;
        if (std::chrono::steady_clock::now() > deadline) {
          return arrow::Status::IOError("no batch to release twice");
        }
        std::this_thread::yield();
      }
      peer.WriteRelease(written, sequence, written);
      peer.WriteRelease(written + 1, sequence, written + 2);
      break;
    }
    case Garbage::kAlreadyReleased:
      peer.WriteRelease(written, released[released.size() / 2], written + 1);
      break;
    case Garbage::kAnotherConsumers:  // published before it joined: only the others hold it
      peer.WriteRelease(written, before_it_joined, written + 1);
      break;
    case Garbage::kRandomWords:
      for (uint64_t i = 0; i < internal::kRegionSlots; ++i) {
        peer.WriteRelease(i, random(), written + (random() % 3 == 0 ? 1 : random()));
      }
      break;
  }
  return hostile::ErrorBeforeClose(peer.socket());
}

TEST_P(HostileRegion, OnlyTheWriterIsThrownOutAndEveryBatchComesBack) {
  const uint32_t seed = std::random_device{}();
  SCOPED_TRACE("seed " + std::to_string(seed));
  const std::string address = test_util::UniqueAbstractName("release-region");
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), FewCredits()));
  ASSERT_OK_AND_ASSIGN(auto first, Consumer::Connect(address, Blocking()));
  ASSERT_OK_AND_ASSIGN(auto second, Consumer::Connect(address, Blocking()));
  ASSERT_OK(producer->WaitForConsumers(2, kTimeoutMs));
  auto first_read = std::async(std::launch::async, [&] { return ReadToEnd(*first); });
  auto second_read = std::async(std::launch::async, [&] { return ReadToEnd(*second); });
  // Sequence 1 goes to the good consumers only.
  ASSERT_OK(test_util::PublishValue(*producer, 0));
  ASSERT_OK_AND_ASSIGN(auto peer, hostile::RegionPeer::Welcomed(address));
  ASSERT_OK(peer.SendRegion());
  ASSERT_OK(producer->WaitForConsumers(3, kTimeoutMs));
  auto thrown_out =
      std::async(std::launch::async, [&] { return BehaveThenBreak(peer, GetParam(), 1, seed); });
  for (int64_t i = 1; i < kBatches; ++i) ASSERT_OK(test_util::PublishValue(*producer, i));
  ASSERT_OK(producer->End());

  std::vector<int64_t> expected(kBatches);
  for (int64_t i = 0; i < kBatches; ++i) expected[static_cast<size_t>(i)] = i;
  for (auto* read : {&first_read, &second_read}) {
    ASSERT_EQ(read->wait_for(std::chrono::milliseconds(kTimeoutMs * 3)), std::future_status::ready);
    ASSERT_OK_AND_ASSIGN(auto values, read->get());
    EXPECT_EQ(values, expected);
  }
  ASSERT_EQ(thrown_out.wait_for(std::chrono::milliseconds(kTimeoutMs * 2)),
            std::future_status::ready);
  ASSERT_OK_AND_ASSIGN(auto error, thrown_out.get());
  EXPECT_EQ(error.code, ErrorCode::kProtocol) << error.message;
  EXPECT_NE(error.message.find("release region"), std::string::npos) << error.message;

  first.reset();
  second.reset();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  const ProducerStats stats = producer->stats();
  EXPECT_EQ(stats.in_flight, 0);
  EXPECT_EQ(stats.ring_bytes_in_use, 0);
  EXPECT_EQ(stats.consumers, 0);
}

INSTANTIATE_TEST_SUITE_P(Garbage, HostileRegion,
                         testing::Values(Garbage::kCountBackwards, Garbage::kCountPastTheRing,
                                         Garbage::kNeverSent, Garbage::kHuge, Garbage::kDuplicate,
                                         Garbage::kAlreadyReleased, Garbage::kAnotherConsumers,
                                         Garbage::kRandomWords),
                         Name);

TEST(ReleaseRegion, ReleasesInTheRegionUnblockAPublishWaitingForCredits) {
  const std::string address = test_util::UniqueAbstractName("release-region");
  ProducerOptions options = FewCredits();
  options.max_in_flight = 2;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, test_util::ValueSchema(), options));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, Blocking()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  // Two held, two waiting for credits: the fifth waits for a release.
  for (int64_t i = 0; i < 4; ++i) ASSERT_OK(test_util::PublishValue(*producer, i));
  std::vector<BatchPtr> held(2);
  for (auto& batch : held) ASSERT_OK(consumer->ReadNext(&batch));
  auto fifth =
      std::async(std::launch::async, [&] { return test_util::PublishValue(*producer, 4); });
  EXPECT_EQ(fifth.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout)
      << "Publish did not wait for credits";
  held.clear();  // released through the region
  ASSERT_EQ(fifth.wait_for(std::chrono::milliseconds(kTimeoutMs * 2)), std::future_status::ready);
  ASSERT_OK(fifth.get());
  ASSERT_OK(producer->End());
  ASSERT_OK_AND_ASSIGN(auto values, ReadToEnd(*consumer));
  EXPECT_EQ(values, (std::vector<int64_t>{2, 3, 4}));
}

TEST(ReleaseRegion, ReleasesInTheRegionUnblockAnAllocationWaitingForTheRing) {
  const std::string address = test_util::UniqueAbstractName("release-region");
  ProducerOptions options = FewCredits();
  options.ring_size = 1 << 20;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, test_util::ValueSchema(), options));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, Blocking()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  // Most of the ring in one batch the consumer holds; the next cannot fit until it lets go.
  auto big = [&](int64_t rows) {
    arrow::Int64Builder builder(producer->pool());
    EXPECT_TRUE(builder.AppendEmptyValues(rows).ok());
    return arrow::RecordBatch::Make(test_util::ValueSchema(), rows,
                                    {builder.Finish().ValueOrDie()});
  };
  const int64_t rows = (int64_t{600} << 10) / 8;
  ASSERT_OK(producer->Publish(big(rows)));
  BatchPtr held;
  ASSERT_OK(consumer->ReadNext(&held));
  auto second = std::async(std::launch::async, [&] { return producer->Publish(big(rows)); });
  EXPECT_EQ(second.wait_for(std::chrono::milliseconds(50)), std::future_status::timeout)
      << "the allocation did not wait for the ring";
  held.reset();  // released through the region: no message wakes the producer's I/O thread
  ASSERT_EQ(second.wait_for(std::chrono::milliseconds(kTimeoutMs * 2)), std::future_status::ready);
  ASSERT_OK(second.get());
  BatchPtr next;
  ASSERT_OK(consumer->ReadNext(&next));
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->num_rows(), rows);
}

TEST(ReleaseRegion, ReleasedBatchesGiveTheirMemoryBackToADrainAndToStats) {
  const std::string address = test_util::UniqueAbstractName("release-region");
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), FewCredits()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, Blocking()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  // Each round: batches built in the ring, read, released through the region; the producer
  // takes the releases only when asked (no Publish follows), and must then free what they held.
  auto read_and_release = [&](int64_t first) {
    for (int64_t i = first; i < first + 3; ++i) ASSERT_OK(test_util::PublishValue(*producer, i));
    for (int64_t i = first; i < first + 3; ++i) {
      BatchPtr batch;
      ASSERT_OK(consumer->ReadNext(&batch));
      ASSERT_NE(batch, nullptr);
      EXPECT_EQ(test_util::ValueOf(*batch), i);
    }
  };
  read_and_release(0);
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(producer->pool()->bytes_allocated(), 0);
  read_and_release(3);
  const ProducerStats stats = producer->stats();
  EXPECT_EQ(stats.in_flight, 0);
  EXPECT_EQ(stats.ring_bytes_in_use, 0);
}

/// Records what a channel sends.
class RecordingOutbox final : public internal::Outbox {
 public:
  arrow::Result<bool> TrySend(std::span<const uint8_t> message) override {
    proto::Reader reader(message);
    auto header = reader.ReadHeader();
    if (!header.ok() || header->type != proto::Type::kRelease) return true;
    std::vector<uint64_t> sequences;
    if (!proto::DecodeRelease(reader, proto::kMaxRun, &sequences).ok()) return true;
    messages.push_back(std::move(sequences));
    return true;
  }
  std::vector<std::vector<uint64_t>> messages;
};

TEST(ReleaseRegion, AFullRegionFallsBackToReleaseMessages) {
  auto outbox = std::make_shared<RecordingOutbox>();
  auto channel = std::make_shared<internal::Channel>(outbox);
  ASSERT_OK_AND_ASSIGN(auto region, internal::RegionWriter::Create());
  // A ring whose queue header says nothing was read, and that no batch waits for credits.
  auto ring = std::make_shared<std::vector<uint8_t>>(4096);
  uint8_t* header = ring->data();
  channel->AttachReleases(
      internal::ReleaseWriter(region.mapping(), ring, ring->data(), ring->size(), header));
  const uint64_t slots = internal::kRegionSlots;
  for (uint64_t sequence = 1; sequence <= slots + 2; ++sequence) channel->Release(sequence);
  // The region took as many as it has slots; the rest went in messages.
  EXPECT_EQ(outbox->messages, (std::vector<std::vector<uint64_t>>{{slots + 1}, {slots + 2}}));
  EXPECT_EQ(channel->released(), static_cast<int64_t>(slots + 2));
  // The producer read them all: the region has room again.
  std::memcpy(header + proto::kQueueReleasesReadOffset, &slots, sizeof slots);
  channel->Release(slots + 3);
  EXPECT_EQ(outbox->messages.size(), 2u);
  // Batches wait for credits: the release is in the region, and an empty Release says so.
  const uint32_t held_back = 1;
  std::memcpy(header + proto::kQueueHeldBackOffset, &held_back, sizeof held_back);
  channel->Release(slots + 4);
  ASSERT_EQ(outbox->messages.size(), 3u);
  EXPECT_TRUE(outbox->messages.back().empty());
  // What the producer would find: every sequence written in the region, in order.
  const auto* count =
      reinterpret_cast<const uint64_t*>(region.mapping()->data() + internal::kRegionReleasesOffset);
  EXPECT_EQ(*count, slots + 2);
  // A count of releases read that no consumer wrote is no room at all.
  const uint64_t impossible = slots * 5;
  std::memcpy(header + proto::kQueueReleasesReadOffset, &impossible, sizeof impossible);
  channel->Release(slots + 5);
  EXPECT_EQ(outbox->messages.back(), (std::vector<uint64_t>{slots + 5}));
}

}  // namespace
}  // namespace shmarrow
