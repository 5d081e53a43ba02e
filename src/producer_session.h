// One consumer as the producer sees it: what waits to be sent to it, its credits, the batches it
// holds, its queue in the ring, and the sends themselves. Everything here runs under the
// producer's mutex.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "block_cache.h"
#include "deadline.h"
#include "futex.h"
#include "producer_memory.h"
#include "protocol.h"
#include "ring_queue.h"
#include "unix_socket.h"

namespace shmarrow::internal {

/// A message waiting for its turn on one connection (order matters: a schema goes before the
/// batches that use it).
struct Outgoing {
  proto::Type type = proto::Type::kBatch;
  uint32_t stream = 0;
  std::shared_ptr<Published> batch;             // kBatch
  std::shared_ptr<const arrow::Schema> schema;  // kSchema
  proto::Error error;                           // kError
};

using OutgoingQueue = std::deque<Outgoing, RecyclingAllocator<Outgoing>>;

/// The batches one consumer holds (sent, not released yet): at most about twice its credits, so
/// a flat list, which allocates nothing once it has grown.
class HeldBatches {
 public:
  void Add(uint64_t sequence, std::shared_ptr<Published> batch, bool response);
  /// False if `sequence` is not held. The record goes to `released`, for its holder to drop.
  bool Remove(uint64_t sequence, std::vector<std::shared_ptr<Published>>* released);
  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  /// Held answers to requests, and held batches of the published stream.
  size_t responses() const { return responses_; }
  size_t published() const { return entries_.size() - responses_; }

 private:
  struct Entry {
    uint64_t sequence;
    std::shared_ptr<Published> batch;
    bool response;
  };
  std::vector<Entry> entries_;
  size_t responses_ = 0;
};

enum class SessionState {
  kHandshaking,  // connected, no Hello yet
  kStreaming,    // welcomed: receives what is published
  kDetached,     // said Bye: receives nothing more, keeps what it holds until released
  kDead,         // to be closed; what it holds returns when it is reaped
};

/// What Pump leaves to its caller.
enum class Pumped {
  kDone,
  kWaitWritable,  // the socket is full: go on when it is writable
  kReadWanted,    // entries went to a consumer that held nothing: read its Waiting now
};

/// The producer's parts a session sends with, and buffers reused across sends.
struct SendTools {
  ProducerMemory* memory = nullptr;
  proto::Writer writer;
  std::vector<proto::Batch> run;  // SendRun's entries
  std::vector<uint32_t> blocked;  // Pump's streams out of credits
  // While set, Pump leaves the futex wakes of sleeping consumers in `wakes`, for its caller to
  // make once the producer's mutex is released (Publish: the I/O thread does not then wait behind
  // the system calls, nor behind a publishing thread that a woken consumer preempted).
  bool defer_wakes = false;
  std::vector<const uint32_t*> wakes;
};

class Session {
 public:
  Session(UnixSocket socket, uint32_t id, const std::shared_ptr<BlockCache>& cache,
          int handshake_timeout_ms);

  uint32_t id() const { return id_; }
  UnixSocket& socket() { return socket_; }
  SessionState state() const { return state_; }
  bool dead() const { return state_ == SessionState::kDead; }
  /// Attached: receives what is published.
  bool active() const { return state_ == SessionState::kStreaming; }
  /// When a connection that has not said Hello is closed.
  const Deadline& handshake_deadline() const { return handshake_deadline_; }
  const std::vector<std::string>& projection_names() const { return projection_names_; }
  int queue_slot() const { return queue_slot_; }

  /// The terms the handshake agreed; the session streams from now on.
  struct Terms {
    bool lossy = false;
    bool batch_runs = false;  // ring mode, negotiated: a backlog goes out as one Batches message
    size_t credits = 0;
    std::vector<std::string> projection_names;
    std::vector<int> projection;  // indices in the first schema sent; empty = all columns
    std::optional<QueueSlot> queue;
    uint32_t queue_capacity = 0;
    // 1.3 with the queue: the consumer's region comes in a Region message, first after the
    // Welcome; the queue header says where the producer's wait block is.
    bool region_agreed = false;
    uint64_t wait_block = 0;
  };
  void Welcomed(Terms terms);
  /// A describer got its answer: closed when reaped (the Welcome stays readable in its socket).
  void Described() { state_ = SessionState::kDead; }
  /// The peer closed its end: what it held returns.
  void Gone() { state_ = SessionState::kDead; }

  /// Queues a message; the oldest batches a lossy consumer gets no credit for are dropped (the
  /// count is returned). A consumer that lets too many controls pile up is killed.
  size_t Enqueue(SendTools& tools, Outgoing&& out);
  /// Sends what its credits and its socket allow.
  Pumped Pump(SendTools& tools);
  /// A Wake for a consumer that said Waiting (a full socket means it has messages to read).
  void WakeIfWaiting(proto::Writer& writer);
  /// Sends an Error and shuts the socket; the session is closed when reaped.
  void Kill(proto::Writer& writer, const std::string& why, proto::ErrorCode code);
  /// The socket is writable again.
  void Writable() { waiting_writable_ = false; }

  /// Batches wait for this consumer's credits (then 1.3 tells it in its queue header).
  bool held_back() const { return held_back_; }
  /// 1.3: the Region message is due (the first message after the Welcome, with one fd).
  bool awaiting_region() const { return region_agreed_ && !region_.attached(); }
  /// The consumer's region arrived: from now on its sleeps and releases are read there.
  void AttachRegion(proto::Writer& writer, RegionReader region);
  /// Takes the releases the consumer wrote into its region since the last look (one load when
  /// there are none). Any value there is untrusted: a count that goes backwards or past the
  /// ring, or a sequence this consumer does not hold, is a protocol error.
  [[nodiscard]] arrow::Status DrainRegion(std::vector<std::shared_ptr<Published>>* released);
  /// Its releases are worth reading on a Publish: batches wait for its credits, or it holds half
  /// of them. (Each look at a region the consumer writes to is a cache miss.)
  bool ReleasesWanted() const {
    return region_.attached() && !dead() && (held_back_ || held_.published() * 2 >= credits_);
  }
  /// The region's count of releases as a futex word to sleep on (futex.h), if it has one.
  std::optional<FutexWatch> ReleasesWatch() const {
    if (!region_.attached() || dead()) return std::nullopt;
    return region_.ReleasesWatch();
  }
  // What the consumer said after the handshake.
  [[nodiscard]] arrow::Status Release(std::span<const uint64_t> sequences,
                                      std::vector<std::shared_ptr<Published>>* released);
  [[nodiscard]] arrow::Status ReleaseOne(uint64_t sequence, const char* how,
                                         std::vector<std::shared_ptr<Published>>* released);
  [[nodiscard]] arrow::Status Waiting(proto::Writer& writer, uint64_t read);
  void Bye();

  /// No non-lossy attached consumer may be a full backlog behind for Publish to go on.
  bool Backlogged() const { return active() && !lossy_ && pending_batches_ >= credits_; }
  /// Room for one more answer to a request.
  bool ResponseRoom() const { return pending_responses_ < credits_; }
  /// Held or waiting batches.
  size_t in_flight() const { return held_.size() + pending_batches_ + pending_responses_; }

 private:
  arrow::Result<bool> SendOne(SendTools& tools, const Outgoing& out);
  /// Sends [first, last) (batches of one stream) as one Batches message.
  arrow::Result<bool> SendRun(SendTools& tools, OutgoingQueue::iterator first,
                              OutgoingQueue::iterator last);
  /// Where batch `out` is, as told to this consumer.
  arrow::Result<proto::Batch> Describe(SendTools& tools, const Outgoing& out);
  /// Bookkeeping once batch `out` was sent: its record moves to the held batches (`out` is
  /// erased next).
  void Sent(Outgoing& out);
  /// Appends to the queue in the ring (publishing the new count), counting the controls sent.
  void WriteEntry(proto::QueueEntry entry);
  /// Every datagram after the Welcome goes out here: 1.3 counts it in the queue header.
  arrow::Result<bool> Send(std::span<const uint8_t> bytes, std::span<const int> fds);
  /// 1.3: wakes the consumer if its region says it sleeps and nobody woke it since; the publishing
  /// thread does this itself, after the queue header's counts moved. A futex sleeper's word is
  /// returned, moved on, for the caller to FutexWake; nullptr when there is none to wake.
  [[nodiscard]] const uint32_t* WakeSleeper(proto::Writer& writer);
  void ForgetPending();
  /// Erases [first, last) of pending_, entries of one stream.
  OutgoingQueue::iterator ErasePending(OutgoingQueue::iterator first, OutgoingQueue::iterator last);

  UnixSocket socket_;
  const uint32_t id_;
  SessionState state_ = SessionState::kHandshaking;
  const Deadline handshake_deadline_;
  bool lossy_ = false;
  bool batch_runs_ = false;
  size_t credits_ = 0;
  std::vector<std::string> projection_names_;
  std::vector<int> projection_;  // indices in the schema last sent; empty = all columns
  OutgoingQueue pending_;
  // Stream 0 and the answers to requests have credits of their own (`credits_` each): a consumer
  // waiting for an answer while it leaves stream 0 unread must still get it.
  size_t pending_batches_ = 0;        // stream 0
  size_t pending_responses_ = 0;      // batches answering requests
  size_t pending_other_streams_ = 0;  // entries of pending_ not on stream 0
  HeldBatches held_;
  uint64_t dropped_unreported_ = 0;
  bool waiting_writable_ = false;
  // kFeatureQueue: stream 0 goes through this consumer's queue in the ring (ring_queue.h);
  // unattached: no queue, stream 0 goes in Batch messages.
  int queue_slot_ = -1;
  proto::QueueWriter queue_;
  uint32_t controls_unannounced_ = 0;  // stream-0 Schema/End sent since the last entry
  bool region_agreed_ = false;         // 1.3: datagrams are counted, a Region is due
  bool held_back_ = false;             // the last Pump left batches for want of credits
  RegionReader region_;                // read-only, untrusted
  uint64_t region_releases_read_ = 0;
  bool consumer_waiting_ = false;  // said Waiting having read all `waiting_at_` entries
  uint64_t waiting_at_ = 0;
};

}  // namespace shmarrow::internal
