// A consumer's protocol state without a socket, in the manner of Arrow's StreamDecoder: it is fed
// the producer's datagrams (with their fds) and the in-ring queue when asked, and yields each
// stream's batches, schema changes, end and errors; what it says to the producer goes out through
// its Channel. The I/O loop (consumer.cc) does the socket work around it; the fuzzers drive it
// directly.
#pragma once

#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "batch_source.h"
#include "consumer_channel.h"
#include "futex.h"
#include "ring_queue.h"
#include "shmarrow/consumer.h"

namespace shmarrow::internal {

class ConsumerSession {
 public:
  /// `address` names the producer in errors; `minor` is the protocol version spoken (an older
  /// one only to test a newer producer's fallback).
  ConsumerSession(ConsumerOptions options, std::shared_ptr<Channel> channel, std::string address,
                  uint16_t minor = protocol::kMinorVersion);

  /// Sends the Hello: an error if it cannot be built; `sent` says how sending went (a producer
  /// that refuses this consumer may close before the Hello arrives, and its answer says more).
  [[nodiscard]] arrow::Status Start(arrow::Status* sent);
  /// One datagram from the producer, with the fds it carried: first the answer to the Hello, then
  /// the streams. An error is fatal: it is kept (fatal()) and nothing more is taken.
  [[nodiscard]] arrow::Status Feed(std::span<const uint8_t> datagram, std::vector<UniqueFd> fds);
  /// The producer closed the connection.
  void FeedClosed();
  /// The I/O around the session failed: it ends with `status`.
  void Fail(arrow::Status status) {
    if (fatal_.ok()) fatal_ = std::move(status);
  }
  /// OK, or why the session ended.
  const arrow::Status& fatal() const { return fatal_; }
  bool welcomed() const { return source_ != nullptr; }

  /// Ring mode with kFeatureQueue: stream 0's batches arrive through a queue in the ring.
  bool has_queue() const { return queue_.attached(); }
  /// Takes the queue's unread entries into stream 0's events, up to and including the first batch
  /// (one at a time: a batch's objects are made just before it is read, and freed before the
  /// next's are made, which keeps the allocator on its fast path); false if there was none. An
  /// entry whose control messages (Schema, End on the socket) were not all fed yet waits for
  /// them: awaiting_controls() until more datagrams are fed (or ControlsMissing()).
  [[nodiscard]] arrow::Result<bool> PollQueue();
  bool awaiting_controls() const { return pending_entry_.has_value(); }
  /// Ends the session: the producer did not send the control messages the waiting entry counts.
  [[nodiscard]] arrow::Status ControlsMissing();
  /// Before sleeping: tells the producer how far the queue was read, so that it sends a Wake with
  /// the next entry. False if entries arrived meanwhile (do not sleep).
  [[nodiscard]] arrow::Result<bool> AnnounceWaiting();

  /// Protocol 1.3 (kFeatureWakeRegion agreed): the producer is told of sleeps and releases
  /// through the region, wakes through the queue header, and counts there what it sent on the
  /// socket.
  bool wake_region() const { return wake_region_; }
  /// The producer sent datagrams that were not fed yet (by its count, which only says when to
  /// read the socket).
  bool SocketMessagesPending() const { return queue_.messages() != fed_; }
  /// Says this consumer sleeps, woken as `mode` says, then looks again (the producer's stores and
  /// this announcement are both sequentially consistent: one of them sees the other). The wake
  /// word's value to wait on, or nothing if the queue (or, but for kSocket, the datagram count)
  /// has news (do not sleep).
  std::optional<uint32_t> AnnounceSleep(SleepMode mode);
  void AnnounceAwake() { region_.Announce(SleepWord(SleepMode::kAwake, 0)); }
  const uint32_t* wake_word() const { return queue_.wake_word(); }

  /// Takes the next event of `stream`: true with `batch` set for a batch, true with `batch` null
  /// at the end, false when nothing decisive was fed yet (schema changes are applied on the way);
  /// an error event is returned as the error.
  [[nodiscard]] arrow::Result<bool> Take(uint32_t stream,
                                         std::shared_ptr<arrow::RecordBatch>* batch);
  /// A batch of any stream waits to be taken.
  bool HasQueuedBatch() const;

  /// Sends a request; its answer is the returned stream.
  [[nodiscard]] arrow::Result<uint32_t> StartRequest(std::string_view request);
  /// True once the answer on `stream` has begun (its schema, or its end); its error if it failed.
  [[nodiscard]] arrow::Result<bool> RequestAnswered(uint32_t stream);
  std::shared_ptr<arrow::Schema> StreamSchema(uint32_t stream) { return Stream(stream).schema; }
  /// Tells the producer this consumer leaves.
  void SendBye();

  /// Stream 0's schema as delivered (projected).
  const std::shared_ptr<arrow::Schema>& schema() const { return schema_; }
  ConsumerStats stats() const;
  /// "ring" or "sealed" once welcomed.
  const std::string& mode() const { return mode_; }
  /// Releases per Release message while the consumer is behind.
  size_t release_batch() const { return release_batch_; }

 private:
  struct StreamState {
    explicit StreamState(const std::shared_ptr<BlockCache>& cache)
        : events(RecyclingAllocator<ConsumerEvent>(cache)) {}
    std::shared_ptr<arrow::Schema> schema;
    EventQueue events;
  };
  StreamState& Stream(uint32_t id) { return streams_.try_emplace(id, event_cache_).first->second; }

  arrow::Status Welcome(std::span<const uint8_t> datagram, std::vector<UniqueFd> fds);
  arrow::Status Handle(std::span<const uint8_t> datagram, std::vector<UniqueFd> fds);
  /// PollQueue's work, without its keeping of errors.
  arrow::Result<bool> TakeFromQueue();
  /// Appends the batches `message` describes to `stream`'s events.
  arrow::Status Materialize(const protocol::Batch& message, uint32_t stream,
                            std::vector<UniqueFd>& fds);
  /// Adds a Batch's `dropped` to the stats: only a lossy consumer loses batches, and never more
  /// than can be counted.
  arrow::Status CountDropped(const protocol::Batch& message);

  const ConsumerOptions options_;
  const std::shared_ptr<Channel> channel_;
  const std::string address_;
  const uint16_t minor_;
  RegionWriter region_;       // made and sent after a Welcome that agreed on it
  bool wake_region_ = false;  // agreed in the Welcome
  uint64_t fed_ = 0;          // datagrams fed after the Welcome
  std::string mode_;
  std::unique_ptr<BatchSource> source_;  // from the Welcome
  std::shared_ptr<arrow::Schema> schema_;
  const std::shared_ptr<BlockCache> event_cache_ = std::make_shared<BlockCache>();
  std::map<uint32_t, StreamState> streams_;  // 0: the published stream; else request ids
  arrow::Status fatal_;
  uint32_t credits_ = 0;  // batches held at once, per stream class (from Welcome)
  uint32_t next_request_ = 1;
  ConsumerStats stats_;
  protocol::Writer writer_;
  bool batch_runs_ = false;  // negotiated: Batches messages may arrive
  std::vector<protocol::Batch> run_;
  size_t release_batch_ = 1;
  protocol::QueueReader queue_;
  // The entry read from the queue whose control messages have not all arrived.
  std::optional<protocol::QueueEntry> pending_entry_;
  uint64_t waiting_announced_ = UINT64_MAX;  // the count last sent in Waiting
  std::deque<ConsumerEvent> controls_;       // stream-0 Schema/End received, applied at their entry
  std::vector<UniqueFd> no_fds_;
};

/// Consumer::Connect speaking protocol version 1.`minor` (to test a newer producer's fallback).
[[nodiscard]] arrow::Result<std::shared_ptr<Consumer>> ConnectSpeaking(
    const std::string& address, const ConsumerOptions& options, uint16_t minor);

}  // namespace shmarrow::internal
