#include "shmarrow/producer.h"

#include <arrow/buffer.h>
#include <arrow/ipc/writer.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>

#include "block_cache.h"
#include "deadline.h"
#include "errno_status.h"
#include "flatbuffer_patch.h"
#include "pages.h"
#include "protocol.h"
#include "ring.h"
#include "ring_queue.h"
#include "schema_match.h"
#include "shmarrow/error.h"
#include "shmarrow/stream_writer.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using internal::UnixSocket;

constexpr int64_t kRingBlocks = 1 << 16;
// Consumers' queues live after the ring's circular part, one fixed slot each; past this many
// bytes in all, the remaining consumers get their batches in messages.
constexpr int64_t kMaxQueueArea = int64_t{16} << 20;
constexpr int64_t kSealedCapacity = int64_t{16} << 30;  // virtual; one arena per sealed batch
constexpr int kSocketBuffer = 1 << 20;
// Schema, End and Error messages queued for one consumer that does not read: past this many it is
// disconnected (its batches are bounded by its credits, its requests by max_requests_per_consumer).
constexpr size_t kMaxQueuedControls = 1024;

/// Where a batch's Message flatbuffer lies in the ring.
struct RingLocation {
  int64_t offset = 0;
  int64_t length = 0;
};

/// A batch's Message flatbuffer written into the ring (for all columns or one projection).
struct Placement {
  RingLocation location;
  internal::RingBlock metadata;
};

/// Sealed mode: the arena one batch is built in (a SharedStreamWriter, sealed when published).
struct Loan {
  explicit Loan(std::unique_ptr<SharedStreamWriter> w) : writer(std::move(w)) {}
  std::unique_ptr<SharedStreamWriter> writer;
};

/// Sealed mode's pool(): allocations go to the arena of the loan in use, and each allocation
/// keeps its loan alive until it is freed. A batch built in pool() may so outlive its
/// publication (the caller keeps it after every consumer released it), a schema change or a
/// failed Publish, and its buffers still free into a live arena. A pool lives as long as its
/// producer (the rule of every arrow::MemoryPool: free its buffers before it dies).
class LoanPool final : public arrow::MemoryPool {
 public:
  /// Allocations go to `loan`'s arena from now on (nullptr: allocations fail).
  void Use(std::shared_ptr<Loan> loan) {
    std::shared_ptr<Loan> previous;
    std::lock_guard lock(mutex_);
    previous = std::exchange(current_, std::move(loan));
  }

  arrow::Status Allocate(int64_t size, int64_t alignment, uint8_t** out) override {
    std::lock_guard lock(mutex_);
    if (current_ == nullptr) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
                       "no batch is being built: call Producer::pool() again");
    }
    ARROW_RETURN_NOT_OK(current_->writer->pool()->Allocate(size, alignment, out));
    if (size > 0) owners_[*out] = current_;
    Account(size);
    return arrow::Status::OK();
  }

  arrow::Status Reallocate(int64_t old_size, int64_t new_size, int64_t alignment,
                           uint8_t** ptr) override {
    std::shared_ptr<Loan> owner;
    {
      std::lock_guard lock(mutex_);
      auto it = owners_.find(*ptr);
      if (old_size > 0 && it != owners_.end()) {
        owner = it->second;
        uint8_t* before = *ptr;
        ARROW_RETURN_NOT_OK(owner->writer->pool()->Reallocate(old_size, new_size, alignment, ptr));
        owners_.erase(before);
        if (new_size > 0) owners_[*ptr] = owner;
        Account(new_size - old_size);
        return arrow::Status::OK();
      }
    }
    return Allocate(new_size, alignment, ptr);  // from nothing (a zero-size allocation)
  }

  void Free(uint8_t* buffer, int64_t size, int64_t alignment) override {
    std::shared_ptr<Loan> owner;  // destroyed after the lock is released (maybe the arena too)
    std::lock_guard lock(mutex_);
    auto it = owners_.find(buffer);
    if (size == 0 || it == owners_.end()) return;  // a zero-size allocation
    owner = std::move(it->second);
    owners_.erase(it);
    owner->writer->pool()->Free(buffer, size, alignment);
    Account(-size);
  }

  int64_t bytes_allocated() const override { return bytes_allocated_.load(); }
  int64_t total_bytes_allocated() const override { return total_allocated_.load(); }
  int64_t num_allocations() const override { return num_allocations_.load(); }
  std::string backend_name() const override { return "shmarrow-sealed-loans"; }

 private:
  void Account(int64_t delta) {
    bytes_allocated_ += delta;
    if (delta > 0) {
      total_allocated_ += delta;
      ++num_allocations_;
    }
  }

  std::mutex mutex_;
  std::shared_ptr<Loan> current_;
  std::unordered_map<uint8_t*, std::shared_ptr<Loan>> owners_;
  std::atomic<int64_t> bytes_allocated_{0};
  std::atomic<int64_t> total_allocated_{0};
  std::atomic<int64_t> num_allocations_{0};
};

/// One published batch, shared by every consumer it went to. It pins the batch's memory: in ring
/// mode the buffers (and their ring blocks) are freed when the last holder drops it.
struct Published {
  // Sealed mode: the arena the batch was written to, and its sealed memfd. (The batch's own
  // buffers keep their arena alive through the LoanPool they were allocated from.)
  std::shared_ptr<Loan> loan;
  UniqueFd memfd;
  uint64_t sequence = 0;
  std::shared_ptr<arrow::RecordBatch> batch;
  // Ring mode: the metadata for all columns, for each projection (column indices) consumers
  // asked for, and the buffers that had to be copied into the ring.
  Placement all_columns;
  std::vector<std::pair<std::vector<int>, Placement>> projected;
  std::vector<std::shared_ptr<arrow::Buffer>> copies;
  int64_t bytes_copied = 0;
};

/// A message waiting for its turn on one connection (order matters: a schema goes before the
/// batches that use it).
struct Outgoing {
  proto::Type type = proto::Type::kBatch;
  uint32_t stream = 0;
  std::shared_ptr<Published> batch;             // kBatch
  std::shared_ptr<const arrow::Schema> schema;  // kSchema
  proto::Error error;                           // kError
};

/// The batches one consumer holds (sent, not released yet): at most about twice its credits, so
/// a flat list, which allocates nothing once it has grown.
class HeldBatches {
 public:
  void Add(uint64_t sequence, std::shared_ptr<Published> batch, bool response) {
    entries_.push_back({sequence, std::move(batch), response});
    responses_ += response;
  }
  /// False if `sequence` is not held. The record goes to `released`, for its holder to drop.
  bool Remove(uint64_t sequence, std::vector<std::shared_ptr<Published>>* released) {
    auto it = std::find_if(entries_.begin(), entries_.end(),
                           [&](const Entry& e) { return e.sequence == sequence; });
    if (it == entries_.end()) return false;
    responses_ -= it->response;
    released->push_back(std::move(it->batch));
    *it = std::move(entries_.back());  // the order does not matter
    entries_.pop_back();
    return true;
  }
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

using OutgoingQueue = std::deque<Outgoing, internal::RecyclingAllocator<Outgoing>>;

struct Connection {
  UnixSocket socket;
  uint32_t id = 0;
  bool welcomed = false;
  bool lossy = false;
  bool batch_runs = false;  // ring mode, negotiated: a backlog goes out as one Batches message
  size_t credits = 0;
  std::vector<std::string> projection_names;
  std::vector<int> projection;  // indices in the current schema; empty = all columns
  OutgoingQueue pending;
  // Stream 0 and the answers to requests have credits of their own (`credits` each): a consumer
  // waiting for an answer while it leaves stream 0 unread must still get it.
  size_t pending_batches = 0;    // stream 0
  size_t pending_responses = 0;  // batches answering requests
  HeldBatches held;
  uint64_t dropped_unreported = 0;
  bool waiting_writable = false;
  bool detached = false;  // said Bye: receives nothing more, keeps what it holds until released
  // kFeatureQueue: stream 0 goes through this consumer's queue in the ring (ring_queue.h);
  // unattached: no queue, stream 0 goes in Batch messages.
  int queue_slot = -1;
  proto::QueueWriter queue;
  uint32_t controls_unannounced = 0;  // stream-0 Schema/End sent since the last entry
  bool consumer_waiting = false;      // said Waiting having read all `waiting_at` entries
  uint64_t waiting_at = 0;
  bool dead = false;
  std::string death;                               // why it was dropped
  std::vector<uint32_t> open_requests;             // queued for a worker or running
  std::chrono::steady_clock::time_point accepted;  // for the handshake deadline

  Connection(UnixSocket s, const std::shared_ptr<internal::BlockCache>& cache)
      : socket(std::move(s)), pending(internal::RecyclingAllocator<Outgoing>(cache)) {}
  /// Attached: receives what is published.
  bool active() const { return welcomed && !detached && !dead; }
};

/// The metadata placed for `projection` (empty: all columns), or nullptr.
const Placement* FindPlacement(const Published& p, const std::vector<int>& projection) {
  if (projection.empty()) return &p.all_columns;
  for (const auto& [columns, placement] : p.projected) {
    if (columns == projection) return &placement;
  }
  return nullptr;
}

class ProducerImpl;

class ResponseWriterImpl final : public ResponseWriter {
 public:
  ResponseWriterImpl(ProducerImpl* producer, uint32_t connection, uint32_t stream)
      : producer_(producer), connection_(connection), stream_(stream) {}
  ~ResponseWriterImpl() override;
  arrow::MemoryPool* pool() override;
  arrow::Status Write(const std::shared_ptr<arrow::RecordBatch>& batch) override;

 private:
  ProducerImpl* producer_;
  uint32_t connection_;
  uint32_t stream_;
  std::shared_ptr<arrow::Schema> announced_;
  std::shared_ptr<Loan> loan_;
  LoanPool* lane_ = nullptr;  // sealed mode: borrowed from the producer while this lives
  friend class ProducerImpl;
};

class ProducerImpl final : public Producer, public std::enable_shared_from_this<ProducerImpl> {
 public:
  ProducerImpl(std::string address, std::shared_ptr<arrow::Schema> schema, ProducerOptions options)
      : address_(std::move(address)), options_(std::move(options)), schema_(std::move(schema)) {}
  ~ProducerImpl() override { Close(); }

  arrow::Status Start();

  arrow::MemoryPool* pool() override;
  arrow::Status Publish(const std::shared_ptr<arrow::RecordBatch>& batch) override;
  arrow::Status ChangeSchema(std::shared_ptr<arrow::Schema> schema) override;
  arrow::Status End() override;
  void SetRequestHandler(RequestHandler handler) override {
    std::lock_guard lock(mutex_);
    handler_ = std::move(handler);
  }
  arrow::Status WaitForConsumers(int count, int timeout_ms) override;
  arrow::Status WaitUntilDrained(int timeout_ms) override;
  ProducerStats stats() const override;
  std::shared_ptr<arrow::Schema> schema() const override {
    std::lock_guard lock(mutex_);
    return schema_;
  }
  void Close() override;

  // Shared with ResponseWriterImpl.
  /// Puts the batch in shared memory. For the published stream (`for_stream0`), ring mode also
  /// writes the metadata of every projection consumers asked for.
  arrow::Result<std::shared_ptr<Published>> Prepare(
      const std::shared_ptr<arrow::RecordBatch>& batch, std::shared_ptr<Loan>* loan,
      bool for_stream0);
  arrow::Result<std::shared_ptr<Loan>> NewLoan(const std::shared_ptr<arrow::Schema>& schema);
  /// Sealed mode: a LoanPool for one request handler's answers, and back.
  LoanPool* AcquireLane();
  void ReleaseLane(LoanPool* lane);
  arrow::Status SendResponse(uint32_t connection, uint32_t stream,
                             std::shared_ptr<const arrow::Schema> new_schema,
                             std::shared_ptr<Published> batch);
  /// Ring mode: where request handlers allocate (waiting per request_timeout_ms).
  arrow::MemoryPool* request_pool() { return ring_pool_requests_.get(); }

 private:
  template <typename Predicate>
  arrow::Status WaitFor(std::unique_lock<std::mutex>& lock, int timeout_ms, Predicate ready,
                        std::string_view what);
  bool HasRoom() const;  // no non-lossy consumer is a full backlog behind
  int64_t ActiveConsumers() const {
    int64_t count = 0;
    for (const auto& [id, c] : connections_) count += c->active();
    return count;
  }
  void Enqueue(Connection& c, Outgoing out);
  void Pump(Connection& c);
  arrow::Result<bool> SendOne(Connection& c, const Outgoing& out);
  /// Where batch `out` is, as told to `c`.
  arrow::Result<proto::Batch> Describe(Connection& c, const Outgoing& out);
  /// Sends [first, last) (batches of one stream) as one Batches message.
  arrow::Result<bool> SendRun(Connection& c, OutgoingQueue::iterator first,
                              OutgoingQueue::iterator last);
  /// Bookkeeping once batch `out` went to `c`.
  void Sent(Connection& c, const Outgoing& out);
  /// Appends to c's queue in the ring (publishing the new count), counting the controls sent.
  void WriteEntry(Connection& c, proto::QueueEntry entry);
  /// A Wake for a consumer that said Waiting (a full socket means it has messages to read).
  void WakeIfWaiting(Connection& c);
  arrow::Result<RingLocation> LocateFor(Published& p, const std::vector<int>& projection);
  /// Writes the batch's (projected) Message into the ring, pointing at its buffers there.
  arrow::Result<Placement> PlaceInRing(Published& p, const std::vector<int>& projection,
                                       internal::RingPool* pool);
  void Kill(Connection& c, const std::string& why, proto::ErrorCode code);
  void Reap();
  /// Makes epoll report `events` for c's socket; a failure kills c (it would stall unnoticed).
  void Watch(Connection& c, uint32_t events);
  /// Takes c's socket out of the epoll set. A failure (already out) leaves nothing to undo: the
  /// socket's close, when c is reaped, removes it in any case.
  void Unwatch(Connection& c) {
    (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, c.socket.fd(), nullptr);
  }

  void IoLoop();
  /// Closes connections that have not said Hello within handshake_timeout_ms; the milliseconds
  /// until the next such deadline (-1: none).
  int ExpireSilentConnections();
  void AcceptAll();
  bool RefuseForWantOfFds(const arrow::Status& failure);
  void ReadFrom(Connection& c);
  arrow::Status Handle(Connection& c, const uint8_t* data, int64_t size);
  arrow::Status Handshake(Connection& c, const proto::Hello& hello);
  /// Answers a describing Hello (checked like any other) with a Welcome without the ring, then
  /// drops the connection: it never becomes a consumer.
  arrow::Status Describe(Connection& c, const proto::Hello& hello);
  void StartRequest(Connection& c, uint32_t stream, std::string request);
  void RunRequests();  // a worker thread
  /// The handler of `stream` returned: its last answer (End or Error) goes to the requester.
  void FinishRequest(uint32_t connection, uint32_t stream, const arrow::Status& status);

  const std::string address_;
  const ProducerOptions options_;
  // Destroyed last: everything below may hold memory of the ring.
  std::unique_ptr<internal::Ring> ring_;
  std::unique_ptr<internal::RingPool> ring_pool_;           // waits per block_timeout_ms
  std::unique_ptr<internal::RingPool> ring_pool_nowait_;    // for work under mutex_
  std::unique_ptr<internal::RingPool> ring_pool_requests_;  // waits per request_timeout_ms
  // Sealed mode's pools, destroyed after everything below (batches built in them may be held
  // there): the published stream's, and those lent to request handlers.
  LoanPool stream_lane_;
  std::mutex lanes_mutex_;
  std::vector<std::unique_ptr<LoanPool>> lanes_;
  std::vector<LoanPool*> free_lanes_;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::shared_ptr<arrow::Schema> schema_;
  std::shared_ptr<Loan> loan_;  // sealed mode: where pool() builds the next batch
  std::map<uint32_t, std::unique_ptr<Connection>> connections_;
  std::deque<std::shared_ptr<Published>> retained_;
  uint64_t next_sequence_ = 1;
  uint32_t next_connection_ = 1;
  bool ended_ = false;
  bool closed_ = false;
  RequestHandler handler_;
  ProducerStats stats_;
  proto::Writer writer_;  // encodes under mutex_
  // Published records and queue entries are made per batch: their memory is reused.
  const std::shared_ptr<internal::BlockCache> block_cache_ =
      std::make_shared<internal::BlockCache>();
  std::vector<proto::Batch> run_;          // SendRun's entries, reused under mutex_
  std::vector<uint32_t> blocked_streams_;  // Pump's, reused under mutex_
  std::vector<std::shared_ptr<Published>> released_records_;  // by Release, under mutex_
  std::vector<std::shared_ptr<Published>> dying_;  // the I/O thread's, dropped without mutex_
  bool records_dying_ = false;                     // dying_ is being emptied (under mutex_)
  // Ring mode: the consumers' queue slots in the ring's reserved part.
  uint32_t queue_capacity_ = 0;
  int64_t queue_slot_bytes_ = 0;
  std::vector<int> free_queue_slots_;
  std::vector<uint8_t> receive_buffer_ = std::vector<uint8_t>(proto::kMaxMessageSize);
  std::vector<uint64_t> released_;

  std::unique_ptr<UnixSocket> listener_;
  UniqueFd epoll_;
  UniqueFd wake_;
  UniqueFd spare_fd_;  // given up to accept, and refuse, a connection when out of fds
  std::thread io_thread_;
  // Requests wait here (under mutex_) for one of at most request_threads workers.
  struct RequestJob {
    uint32_t connection;
    uint32_t stream;
    std::string request;
    RequestHandler handler;
  };
  std::deque<RequestJob> request_jobs_;
  std::condition_variable jobs_ready_;
  std::vector<std::thread> request_workers_;
  int idle_workers_ = 0;
  int requests_in_flight_ = 0;  // queued or running, all consumers
};

arrow::Status ProducerImpl::Start() {
  if (options_.mode == MemoryMode::kRing) {
    // A queue holds every batch a consumer may hold (at most the producer's credits) and End.
    queue_capacity_ = static_cast<uint32_t>(
        std::clamp<int64_t>(options_.max_in_flight, 0, proto::kMaxQueueCapacity - 1) + 1);
    queue_slot_bytes_ = static_cast<int64_t>(proto::QueueBytes(queue_capacity_));
    const int64_t slots = std::clamp<int64_t>(kMaxQueueArea / queue_slot_bytes_, 0,
                                              std::max(options_.max_consumers, 0));
    for (int64_t slot = slots - 1; slot >= 0; --slot) {
      free_queue_slots_.push_back(static_cast<int>(slot));
    }
    ARROW_ASSIGN_OR_RAISE(ring_,
                          internal::Ring::Create(options_.name, options_.ring_size, kRingBlocks,
                                                 slots * queue_slot_bytes_, options_.pages));
    stats_.page_size = ring_->page_size();
    ring_pool_ = std::make_unique<internal::RingPool>(ring_.get(), options_.block_timeout_ms);
    ring_pool_nowait_ = std::make_unique<internal::RingPool>(ring_.get(), 0);
    ring_pool_requests_ =
        std::make_unique<internal::RingPool>(ring_.get(), options_.request_timeout_ms);
  } else {
    ARROW_ASSIGN_OR_RAISE(stats_.page_size, internal::ProbePageSize(options_.name, options_.pages));
  }
  ARROW_ASSIGN_OR_RAISE(auto listener,
                        UnixSocket::Listen(address_, SOCK_SEQPACKET, options_.socket_mode));
  listener_ = std::make_unique<UnixSocket>(std::move(listener));
  spare_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return internal::ErrnoStatus(errno, "epoll_create1");
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_) return internal::ErrnoStatus(errno, "eventfd");
  for (auto [fd, tag] : {std::pair{listener_->fd(), uint64_t{0}}, {wake_.get(), uint64_t{1}}}) {
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = tag;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) != 0) {
      return internal::ErrnoStatus(errno, "epoll_ctl(ADD fd ", fd, ")");
    }
  }
  io_thread_ = std::thread([this] { IoLoop(); });
  return arrow::Status::OK();
}

arrow::Result<std::shared_ptr<Loan>> ProducerImpl::NewLoan(
    const std::shared_ptr<arrow::Schema>& schema) {
  WriterOptions writer_options;
  writer_options.capacity = kSealedCapacity;
  writer_options.name = options_.name;
  writer_options.pages = options_.pages;
  ARROW_ASSIGN_OR_RAISE(auto writer, SharedStreamWriter::Open(schema, writer_options));
  return std::make_shared<Loan>(std::move(writer));
}

LoanPool* ProducerImpl::AcquireLane() {
  std::lock_guard lock(lanes_mutex_);
  if (free_lanes_.empty()) {
    lanes_.push_back(std::make_unique<LoanPool>());
    free_lanes_.push_back(lanes_.back().get());
  }
  LoanPool* lane = free_lanes_.back();
  free_lanes_.pop_back();
  return lane;
}

void ProducerImpl::ReleaseLane(LoanPool* lane) {
  lane->Use(nullptr);
  std::lock_guard lock(lanes_mutex_);
  free_lanes_.push_back(lane);
}

arrow::MemoryPool* ProducerImpl::pool() {
  if (ring_pool_ != nullptr) return ring_pool_.get();
  std::lock_guard lock(mutex_);
  if (loan_ == nullptr) {
    auto loan = NewLoan(schema_);
    // Without a fresh memfd the batch is built on the heap; Publish then copies it in once.
    if (!loan.ok()) return arrow::default_memory_pool();
    loan_ = std::move(*loan);
    stream_lane_.Use(loan_);
  }
  return &stream_lane_;
}

arrow::Result<Placement> ProducerImpl::PlaceInRing(Published& p, const std::vector<int>& projection,
                                                   internal::RingPool* pool) {
  std::shared_ptr<arrow::RecordBatch> target = p.batch;
  if (!projection.empty()) {
    ARROW_ASSIGN_OR_RAISE(target, p.batch->SelectColumns(projection));
  }
  arrow::ipc::IpcPayload payload;
  ARROW_RETURN_NOT_OK(arrow::ipc::GetRecordBatchPayload(
      *target, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
  const size_t count = payload.body_buffers.size();
  // Reused: this runs for every batch, on the publishing thread or a request handler's.
  thread_local std::vector<int64_t> offsets, lengths;
  offsets.assign(count, 0);
  lengths.assign(count, 0);
  for (size_t i = 0; i < count; ++i) {
    const auto& buffer = payload.body_buffers[i];
    if (buffer == nullptr || buffer->size() == 0) continue;
    lengths[i] = buffer->size();
    if (ring_->Contains(buffer->data(), buffer->size()) &&
        ring_->OffsetOf(buffer->data()) % 8 == 0) {
      offsets[i] = ring_->OffsetOf(buffer->data());
      continue;
    }
    ARROW_ASSIGN_OR_RAISE(std::shared_ptr<arrow::Buffer> copy,
                          arrow::AllocateBuffer(buffer->size(), pool));
    std::memcpy(copy->mutable_data(), buffer->data(), static_cast<size_t>(buffer->size()));
    offsets[i] = ring_->OffsetOf(copy->data());
    p.copies.push_back(std::move(copy));
    p.bytes_copied += buffer->size();
  }
  Placement placement;
  ARROW_ASSIGN_OR_RAISE(placement.metadata,
                        internal::RingBlock::Allocate(pool, payload.metadata->size()));
  uint8_t* metadata = placement.metadata.data();
  std::memcpy(metadata, payload.metadata->data(), static_cast<size_t>(payload.metadata->size()));
  // Offsets count from byte 0 of the ring: the consumer reads the whole ring as the body.
  ARROW_ASSIGN_OR_RAISE(auto fields, internal::RewriteBufferOffsets(
                                         metadata, placement.metadata.size(), offsets, lengths));
  internal::SetBodyLength(metadata, fields, ring_->size());
  placement.location = {ring_->OffsetOf(metadata), placement.metadata.size()};
  return placement;
}

arrow::Result<std::shared_ptr<Published>> ProducerImpl::Prepare(
    const std::shared_ptr<arrow::RecordBatch>& batch, std::shared_ptr<Loan>* loan,
    bool for_stream0) {
  auto published =
      std::allocate_shared<Published>(internal::RecyclingAllocator<Published>(block_cache_));
  published->batch = batch;
  if (ring_ != nullptr) {
    std::vector<std::vector<int>> projections;
    if (for_stream0) {
      std::lock_guard lock(mutex_);
      for (const auto& [id, c] : connections_) {
        if (!c->active() || c->projection_names.empty()) continue;
        // By name, in this batch's schema: c->projection indexes the schema last sent to c, which
        // is older while a Schema message waits in c's queue. (A consumer whose columns this
        // schema lacks is dropped when that Schema message is sent.)
        auto indices = internal::ProjectionIndices(*batch->schema(), c->projection_names);
        if (indices.ok()) projections.push_back(*std::move(indices));
      }
    }
    // A request handler waits for room in the ring no longer than its request may take.
    internal::RingPool* pool = for_stream0 ? ring_pool_.get() : ring_pool_requests_.get();
    ARROW_ASSIGN_OR_RAISE(published->all_columns, PlaceInRing(*published, {}, pool));
    for (auto& projection : projections) {
      if (FindPlacement(*published, projection) != nullptr) continue;
      ARROW_ASSIGN_OR_RAISE(auto placement, PlaceInRing(*published, projection, pool));
      published->projected.emplace_back(std::move(projection), std::move(placement));
    }
    return published;
  }
  std::shared_ptr<Loan> taken = std::move(*loan);
  if (taken == nullptr || !taken->writer->schema()->Equals(*batch->schema())) {
    // Written to a fresh arena (copied in); the batch's buffers keep theirs alive.
    ARROW_ASSIGN_OR_RAISE(taken, NewLoan(batch->schema()));
  }
  SharedStreamWriter& writer = *taken->writer;
  ARROW_RETURN_NOT_OK(writer.WriteRecordBatch(*batch));
  ARROW_ASSIGN_OR_RAISE(auto sealed, writer.Finish());
  published->memfd = std::move(sealed.fd);
  published->bytes_copied = writer.stats().bytes_copied;
  published->loan = std::move(taken);
  return published;
}

template <typename Predicate>
arrow::Status ProducerImpl::WaitFor(std::unique_lock<std::mutex>& lock, int timeout_ms,
                                    Predicate ready, std::string_view what) {
  const internal::Deadline deadline(timeout_ms);
  deadline.Wait(changed_, lock, [&] { return closed_ || ready(); });
  if (ready()) return arrow::Status::OK();
  if (closed_) {
    return MakeError(arrow::StatusCode::Cancelled, ErrorCode::kClosed,
                     "producer closed while waiting for ", what);
  }
  if (timeout_ms == 0) {
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "no ", what,
                     " (not waiting: fail fast)");
  }
  return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "no ", what, " within ",
                   timeout_ms, " ms");
}

bool ProducerImpl::HasRoom() const {
  for (const auto& [id, c] : connections_) {
    if (c->active() && !c->lossy && c->pending_batches >= c->credits) return false;
  }
  return true;
}

arrow::Status ProducerImpl::Publish(const std::shared_ptr<arrow::RecordBatch>& batch) {
  std::shared_ptr<Loan> loan;
  {
    std::unique_lock lock(mutex_);
    if (closed_) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kClosed, "producer is closed");
    }
    if (ended_) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
                       "the stream has ended; nothing more can be published");
    }
    if (!batch->schema()->Equals(*schema_, /*check_metadata=*/false)) {
      return MakeError(arrow::StatusCode::Invalid, ErrorCode::kSchemaMismatch, "batch schema ",
                       internal::DescribeSchema(*batch->schema()),
                       " differs from the announced schema ", internal::DescribeSchema(*schema_),
                       "; call ChangeSchema first");
    }
    // Back-pressure: a consumer that does not keep up holds the producer back (unless lossy).
    ARROW_RETURN_NOT_OK(WaitFor(
        lock, options_.block_timeout_ms, [this] { return HasRoom(); },
        "room: a consumer is a full backlog behind"));
    loan = std::move(loan_);
    // The lane stops pointing at this arena (allocations in it keep it alive): once the batch
    // is released everywhere its memory returns, without waiting for the next pool() call.
    stream_lane_.Use(nullptr);
  }
  ARROW_ASSIGN_OR_RAISE(auto published, Prepare(batch, &loan, /*for_stream0=*/true));
  std::lock_guard lock(mutex_);
  published->sequence = next_sequence_++;
  stats_.published++;
  stats_.bytes_copied += published->bytes_copied;
  for (auto& [id, c] : connections_) {
    if (!c->active()) continue;
    Outgoing out;
    out.batch = published;
    Enqueue(*c, std::move(out));
    Pump(*c);
  }
  if (options_.retain > 0) {
    retained_.push_back(published);
    if (retained_.size() > static_cast<size_t>(options_.retain)) retained_.pop_front();
  }
  Reap();
  return arrow::Status::OK();
}

arrow::Status ProducerImpl::ChangeSchema(std::shared_ptr<arrow::Schema> schema) {
  if (schema == nullptr) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
                     "ChangeSchema needs a schema");
  }
  // options_, not ring_: Listen checks the first schema here before Start() creates the ring.
  if (options_.mode == MemoryMode::kRing) {
    auto no_dictionaries = internal::CheckNoDictionaries(*schema);
    if (!no_dictionaries.ok()) {
      return arrow::Status::NotImplemented(no_dictionaries.message(), ": use sealed mode");
    }
  }
  std::lock_guard lock(mutex_);
  if (ended_ || closed_) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput, "the stream has ended");
  }
  schema_ = std::move(schema);
  loan_.reset();
  for (auto& [id, c] : connections_) {
    if (!c->active()) continue;
    Outgoing out;
    out.type = proto::Type::kSchema;
    out.schema = schema_;
    Enqueue(*c, std::move(out));
    Pump(*c);
  }
  Reap();
  return arrow::Status::OK();
}

arrow::Status ProducerImpl::End() {
  std::lock_guard lock(mutex_);
  if (ended_) return arrow::Status::OK();
  ended_ = true;
  for (auto& [id, c] : connections_) {
    if (!c->active()) continue;
    Outgoing out;
    out.type = proto::Type::kEnd;
    Enqueue(*c, std::move(out));
    Pump(*c);
  }
  Reap();
  return arrow::Status::OK();
}

void ProducerImpl::Enqueue(Connection& c, Outgoing out) {
  const bool is_batch = out.type == proto::Type::kBatch;
  const bool stream0 = out.stream == 0;
  c.pending.push_back(std::move(out));
  if (!is_batch) {
    const size_t controls = c.pending.size() - c.pending_batches - c.pending_responses;
    if (controls > kMaxQueuedControls) {
      Kill(c,
           "consumer does not read: " + std::to_string(controls) + " messages wait for it (limit " +
               std::to_string(kMaxQueuedControls) + ")",
           proto::ErrorCode::kLimit);
      c.pending.clear();  // what it holds stays until the connection is reaped
      c.pending_batches = 0;
      c.pending_responses = 0;
    }
    return;
  }
  if (!stream0) {
    ++c.pending_responses;
    return;
  }
  ++c.pending_batches;
  if (!c.lossy) return;
  // A lossy consumer loses its oldest queued batches instead of holding the producer back.
  while (c.pending_batches > c.credits) {
    auto oldest = std::find_if(c.pending.begin(), c.pending.end(), [](const Outgoing& o) {
      return o.type == proto::Type::kBatch && o.stream == 0;
    });
    if (oldest == c.pending.end()) break;
    c.pending.erase(oldest);
    --c.pending_batches;
    ++c.dropped_unreported;
    ++stats_.dropped;
  }
}

arrow::Result<RingLocation> ProducerImpl::LocateFor(Published& p,
                                                    const std::vector<int>& projection) {
  if (const Placement* placed = FindPlacement(p, projection)) return placed->location;
  // A projection first seen after the batch was prepared (a late joiner): placed now, without
  // waiting, since the mutex is held.
  ARROW_ASSIGN_OR_RAISE(auto placement, PlaceInRing(p, projection, ring_pool_nowait_.get()));
  const RingLocation location = placement.location;
  p.projected.emplace_back(projection, std::move(placement));
  return location;
}

arrow::Result<proto::Batch> ProducerImpl::Describe(Connection& c, const Outgoing& out) {
  proto::Batch message;
  message.sequence = out.batch->sequence;
  message.dropped = c.dropped_unreported;
  if (ring_ != nullptr) {
    static const std::vector<int> kAllColumns;
    ARROW_ASSIGN_OR_RAISE(auto location,
                          LocateFor(*out.batch, out.stream == 0 ? c.projection : kAllColumns));
    message.metadata_offset = static_cast<uint64_t>(location.offset);
    message.metadata_length = static_cast<uint32_t>(location.length);
  }
  return message;
}

arrow::Result<bool> ProducerImpl::SendRun(Connection& c, OutgoingQueue::iterator first,
                                          OutgoingQueue::iterator last) {
  run_.clear();
  for (auto it = first; it != last; ++it) {
    ARROW_ASSIGN_OR_RAISE(auto message, Describe(c, *it));
    message.dropped = it == first ? c.dropped_unreported : 0;
    run_.push_back(message);
  }
  return c.socket.TrySendDatagram(proto::EncodeBatches(writer_, first->stream, run_), {});
}

void ProducerImpl::Sent(Connection& c, const Outgoing& out) {
  c.held.Add(out.batch->sequence, out.batch, /*response=*/out.stream != 0);
  if (out.stream == 0) {
    --c.pending_batches;
  } else {
    --c.pending_responses;
  }
  c.dropped_unreported = 0;
}

arrow::Result<bool> ProducerImpl::SendOne(Connection& c, const Outgoing& out) {
  std::span<const uint8_t> bytes;
  int fd = -1;
  switch (out.type) {
    case proto::Type::kBatch: {
      ARROW_ASSIGN_OR_RAISE(auto message, Describe(c, out));
      if (ring_ == nullptr) fd = out.batch->memfd.get();
      bytes = proto::Encode(writer_, out.stream, message);
      break;
    }
    case proto::Type::kSchema: {
      std::shared_ptr<arrow::Schema> schema = std::const_pointer_cast<arrow::Schema>(out.schema);
      if (out.stream == 0 && !c.projection_names.empty()) {
        // The projection follows the new schema from here on.
        ARROW_ASSIGN_OR_RAISE(c.projection,
                              internal::ProjectionIndices(*schema, c.projection_names));
        schema = internal::ProjectSchema(*schema, c.projection);
      }
      ARROW_ASSIGN_OR_RAISE(auto serialized, internal::SerializeSchema(*schema));
      bytes = proto::EncodeSchema(writer_, out.stream, serialized);
      break;
    }
    case proto::Type::kEnd:
      bytes = proto::EncodeEnd(writer_, out.stream);
      break;
    default:
      bytes = proto::Encode(writer_, out.stream, out.error);
      break;
  }
  std::span<const int> fds;
  if (fd >= 0) fds = std::span<const int>(&fd, 1);
  return c.socket.TrySendDatagram(bytes, fds);
}

void ProducerImpl::Pump(Connection& c) {
  if (c.dead || c.waiting_writable) return;
  const bool was_idle = c.held.empty();
  const uint64_t written_before = c.queue.written();
  // Streams are independent: a stream out of credits waits until a release, and with it
  // everything after it on that stream (its order is kept), while the other streams go on.
  std::vector<uint32_t>& blocked = blocked_streams_;
  blocked.clear();
  for (auto it = c.pending.begin(); it != c.pending.end();) {
    const Outgoing& out = *it;
    if (std::find(blocked.begin(), blocked.end(), out.stream) != blocked.end()) {
      ++it;
      continue;
    }
    const bool is_batch = out.type == proto::Type::kBatch;
    const bool queued = c.queue.attached() && out.stream == 0;
    // The batches that go out now: `out` alone, or with batch runs (or a queue) as many of the
    // batches that follow it on its stream as its credits allow.
    auto last = std::next(it);
    if (is_batch) {
      const size_t holding = out.stream == 0 ? c.held.published() : c.held.responses();
      if (holding >= c.credits) {  // out of credits until a release
        blocked.push_back(out.stream);
        ++it;
        continue;
      }
      const size_t room = std::min<size_t>(c.credits - holding, proto::kMaxRun);
      for (size_t n = 1; (c.batch_runs || queued) && n < room && last != c.pending.end() &&
                         last->type == proto::Type::kBatch && last->stream == out.stream;
           ++n) {
        ++last;
      }
    }
    if (is_batch && queued) {
      for (auto entry = it; entry != last; ++entry) {
        auto described = Describe(c, *entry);
        if (!described.ok()) {
          Kill(c, described.status().message(), proto::ErrorCode::kSchemaMismatch);
          WakeIfWaiting(c);
          return;
        }
        proto::QueueEntry written;
        written.sequence = described->sequence;
        written.dropped = entry == it ? described->dropped : 0;
        written.metadata_offset = described->metadata_offset;
        written.metadata_length = described->metadata_length;
        WriteEntry(c, written);
        Sent(c, *entry);
      }
      it = c.pending.erase(it, last);
      continue;
    }
    auto sent = std::next(it) == last ? SendOne(c, out) : SendRun(c, it, last);
    if (!sent.ok()) {
      const auto code =
          sent.status().IsInvalid() ? proto::ErrorCode::kSchemaMismatch : proto::ErrorCode::kLimit;
      Kill(c, sent.status().message(), code);
      WakeIfWaiting(c);
      return;
    }
    if (!*sent) {  // socket buffer full: continue when it is writable
      c.waiting_writable = true;
      Watch(c, EPOLLIN | EPOLLOUT);
      WakeIfWaiting(c);
      return;
    }
    if (is_batch) {
      for (auto done = it; done != last; ++done) Sent(c, *done);
    } else if (queued) {  // a Schema or End of stream 0: applies before the next entry
      ++c.controls_unannounced;
      if (out.type == proto::Type::kEnd) {
        proto::QueueEntry end;
        end.kind = proto::EntryKind::kControls;
        WriteEntry(c, end);
      }
    }
    it = c.pending.erase(it, last);
  }
  // A consumer that held nothing has most likely read everything and said Waiting (or is about
  // to: then it sees the new entries itself). Reading that here, rather than when the I/O
  // thread next runs, sends the Wake now.
  if (was_idle && c.queue.written() > written_before && !c.consumer_waiting && !c.dead) {
    ReadFrom(c);
  }
  WakeIfWaiting(c);
  changed_.notify_all();
}

void ProducerImpl::WriteEntry(Connection& c, proto::QueueEntry entry) {
  entry.controls_before = std::exchange(c.controls_unannounced, 0);
  c.queue.Write(entry);
}

void ProducerImpl::WakeIfWaiting(Connection& c) {
  if (!c.consumer_waiting || c.dead || c.queue.written() <= c.waiting_at) return;
  c.consumer_waiting = false;
  (void)c.socket.TrySendDatagram(proto::EncodeWake(writer_), {});
}

void ProducerImpl::Watch(Connection& c, uint32_t events) {
  epoll_event event{};
  event.events = events;
  event.data.u64 = c.id + 1;
  if (::epoll_ctl(epoll_.get(), EPOLL_CTL_MOD, c.socket.fd(), &event) != 0) {
    const auto failed = internal::ErrnoStatus(errno, "epoll_ctl(MOD fd ", c.socket.fd(), ")");
    Kill(c, failed.ToString(), proto::ErrorCode::kLimit);
  }
}

void ProducerImpl::Kill(Connection& c, const std::string& why, proto::ErrorCode code) {
  if (c.dead) return;
  c.dead = true;
  c.death = why;
  proto::Error error{code, why};
  (void)c.socket.TrySendDatagram(proto::Encode(writer_, 0, error), {});
  Unwatch(c);
  ::shutdown(c.socket.fd(), SHUT_RDWR);
}

void ProducerImpl::Reap() {
  bool any = false;
  for (auto it = connections_.begin(); it != connections_.end();) {
    if (it->second->dead) {
      // Its requests that wait for a worker are cancelled; running ones find it gone.
      const uint32_t id = it->first;
      const auto cancelled = std::erase_if(
          request_jobs_, [id](const RequestJob& job) { return job.connection == id; });
      requests_in_flight_ -= static_cast<int>(cancelled);
      Unwatch(*it->second);
      if (it->second->queue_slot >= 0) free_queue_slots_.push_back(it->second->queue_slot);
      it = connections_.erase(it);  // what it held is released here
      any = true;
    } else {
      ++it;
    }
  }
  if (any) changed_.notify_all();
}

void ProducerImpl::IoLoop() {
  epoll_event events[64];
  for (;;) {
    int wait_ms;
    {
      std::lock_guard lock(mutex_);
      wait_ms = ExpireSilentConnections();
      Reap();
    }
    const int n = ::epoll_wait(epoll_.get(), events, 64, wait_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return;
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == 1) {
        uint64_t ignored;
        (void)::read(wake_.get(), &ignored, sizeof ignored);
        std::lock_guard lock(mutex_);
        if (closed_) return;
        continue;
      }
      if (tag == 0) {
        AcceptAll();
        continue;
      }
      {
        std::lock_guard lock(mutex_);
        auto it = connections_.find(static_cast<uint32_t>(tag - 1));
        if (it == connections_.end() || it->second->dead) continue;
        Connection& c = *it->second;
        if (events[i].events & EPOLLOUT) {
          c.waiting_writable = false;
          Watch(c, EPOLLIN);
          Pump(c);
        }
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) ReadFrom(c);
        dying_.swap(released_records_);
        records_dying_ = !dying_.empty();
      }
      if (dying_.empty()) continue;
      // Released batches (their Arrow objects, their ring blocks) are freed without the mutex,
      // which Publish needs meanwhile; WaitUntilDrained waits for them.
      dying_.clear();
      std::lock_guard lock(mutex_);
      records_dying_ = false;
      changed_.notify_all();
    }
    std::lock_guard lock(mutex_);
    Reap();
  }
}

void ProducerImpl::AcceptAll() {
  for (;;) {
    auto accepted = listener_->Accept(0);
    if (!accepted.ok() && RefuseForWantOfFds(accepted.status())) continue;
    if (!accepted.ok() || accepted->fd() < 0) return;
    UnixSocket socket = std::move(*accepted);
    auto peer = socket.Peer();
    const bool allowed =
        peer.ok() && internal::UidAllowed(peer->uid, options_.allowed_uids, options_.allow_any_uid);
    std::lock_guard lock(mutex_);
    if (!allowed) {
      ++stats_.consumers_refused;
      proto::Error error{proto::ErrorCode::kRefused,
                         "uid " + (peer.ok() ? std::to_string(peer->uid) : std::string("?")) +
                             " may not connect to this producer"};
      (void)socket.TrySendDatagram(proto::Encode(writer_, 0, error), {});
      continue;
    }
    // max_consumers only counts consumers past the handshake: without a bound of their own,
    // connections that never say Hello would hold an fd each here, as many as a peer opens. At
    // the bound the oldest silent one makes room: silent connections cannot keep a real
    // consumer out, which says Hello as soon as it connects (read below, at once).
    Connection* oldest = nullptr;
    int64_t waiting = 0;
    for (const auto& [id, c] : connections_) {
      if (c->welcomed || c->dead) continue;
      ++waiting;
      if (oldest == nullptr) oldest = c.get();  // ids grow with time
    }
    if (oldest != nullptr && waiting >= options_.max_consumers) {
      Kill(*oldest,
           "closed without a Hello: " + std::to_string(waiting) +
               " connections were waiting to say Hello (limit " +
               std::to_string(options_.max_consumers) + ") and this was the oldest",
           proto::ErrorCode::kLimit);
    }
    const int size = kSocketBuffer;
    ::setsockopt(socket.fd(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    auto c = std::make_unique<Connection>(std::move(socket), block_cache_);
    c->id = next_connection_++;
    c->accepted = std::chrono::steady_clock::now();
    epoll_event event{};
    event.events = EPOLLIN;
    event.data.u64 = c->id + 1;
    if (::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, c->socket.fd(), &event) != 0) continue;
    Connection& added = *connections_.emplace(c->id, std::move(c)).first->second;
    ReadFrom(added);
  }
}

int ProducerImpl::ExpireSilentConnections() {
  const auto now = std::chrono::steady_clock::now();
  const auto limit = std::chrono::milliseconds(std::max(options_.handshake_timeout_ms, 1));
  int next_ms = -1;
  for (auto& [id, c] : connections_) {
    if (c->welcomed || c->dead) continue;
    const auto deadline = c->accepted + limit;
    if (deadline <= now) {
      Kill(*c, "no Hello within " + std::to_string(limit.count()) + " ms",
           proto::ErrorCode::kLimit);
      continue;
    }
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - now).count();
    if (next_ms < 0 || left < next_ms) next_ms = static_cast<int>(left);
  }
  return next_ms;
}

/// accept() failed with EMFILE or ENFILE: the connection stays queued, so the listener stays
/// readable (the I/O thread would spin) and its consumer would wait for a Welcome. Gives up the
/// spare fd to take the connection and refuse it with an error naming the limit; true if it did.
bool ProducerImpl::RefuseForWantOfFds(const arrow::Status& failure) {
  const int err = arrow::internal::ErrnoFromStatus(failure);
  if ((err != EMFILE && err != ENFILE) || !spare_fd_) return false;
  spare_fd_.reset();
  bool refused = false;
  {  // the connection closes before the spare is taken again
    auto accepted = listener_->Accept(0);
    refused = accepted.ok() && accepted->fd() >= 0;
    if (refused) {
      std::lock_guard lock(mutex_);
      ++stats_.consumers_refused;
      proto::Error error{proto::ErrorCode::kRefused,
                         std::string("producer out of file descriptors (accept: ") +
                             std::strerror(err) + "): its RLIMIT_NOFILE" +
                             (err == ENFILE ? " or the system's file limit" : "") + " is reached"};
      (void)accepted->TrySendDatagram(proto::Encode(writer_, 0, error), {});
    }
  }
  spare_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return refused;
}

void ProducerImpl::ReadFrom(Connection& c) {
  while (!c.dead) {
    auto received = c.socket.Receive(receive_buffer_, /*max_fds=*/0, /*timeout_ms=*/0);
    if (!received.ok()) {
      Kill(c, received.status().message(), proto::ErrorCode::kProtocol);
      return;
    }
    if (received->bytes < 0) return;  // drained
    if (received->bytes == 0) {       // the consumer went away: what it held returns
      c.dead = true;
      return;
    }
    auto status = Handle(c, receive_buffer_.data(), received->bytes);
    if (!status.ok()) Kill(c, status.message(), proto::ErrorCode::kProtocol);
  }
}

arrow::Status ProducerImpl::Handle(Connection& c, const uint8_t* data, int64_t size) {
  proto::Reader reader(std::span<const uint8_t>(data, static_cast<size_t>(size)));
  ARROW_ASSIGN_OR_RAISE(auto header, reader.ReadHeader());
  if (!c.welcomed) {
    if (header.type != proto::Type::kHello) {
      return proto::ProtocolError("expected Hello, got ", proto::TypeName(header.type));
    }
    ARROW_ASSIGN_OR_RAISE(auto hello, proto::DecodeHello(reader));
    return Handshake(c, hello);
  }
  // After Bye a consumer only returns what it holds: a Request would start work for nobody.
  if (c.detached && header.type != proto::Type::kRelease) {
    return proto::ProtocolError(proto::TypeName(header.type), " after Bye");
  }
  switch (header.type) {
    case proto::Type::kRelease: {
      released_.clear();
      ARROW_RETURN_NOT_OK(proto::DecodeRelease(reader, 4096, &released_));
      for (uint64_t sequence : released_) {
        if (!c.held.Remove(sequence, &released_records_)) {
          return proto::ProtocolError("released batch ", sequence,
                                      ", which this consumer does not hold");
        }
      }
      if (c.detached && c.held.empty()) c.dead = true;
      Pump(c);
      changed_.notify_all();
      return arrow::Status::OK();
    }
    case proto::Type::kRequest: {
      if (header.stream == 0) return proto::ProtocolError("Request on stream 0");
      ARROW_ASSIGN_OR_RAISE(auto request, proto::DecodeRequest(reader));
      StartRequest(c, header.stream, std::move(request));
      return arrow::Status::OK();
    }
    case proto::Type::kWaiting: {
      if (!c.queue.attached()) return proto::ProtocolError("Waiting without a queue");
      ARROW_ASSIGN_OR_RAISE(uint64_t read, proto::DecodeWaiting(reader));
      if (read > c.queue.written()) {
        return proto::ProtocolError("Waiting after reading ", read, " queue entries, but ",
                                    c.queue.written(), " were written");
      }
      c.consumer_waiting = true;
      c.waiting_at = read;
      WakeIfWaiting(c);  // entries written since it looked
      return arrow::Status::OK();
    }
    case proto::Type::kBye:
      c.detached = true;
      c.pending.clear();
      c.pending_batches = 0;
      c.pending_responses = 0;
      c.dead = c.held.empty();
      changed_.notify_all();
      return arrow::Status::OK();
    default:
      return proto::ProtocolError("unexpected ", proto::TypeName(header.type), " from a consumer");
  }
}

arrow::Status ProducerImpl::Handshake(Connection& c, const proto::Hello& hello) {
  if (hello.major != proto::kMajorVersion) {
    Kill(c,
         "protocol version " + std::to_string(hello.major) + "." + std::to_string(hello.minor) +
             " is not supported: this producer speaks " + std::to_string(proto::kMajorVersion) +
             "." + std::to_string(proto::kMinorVersion) + " (major versions must match)",
         proto::ErrorCode::kVersion);
    return arrow::Status::OK();
  }
  const bool describe =
      (hello.flags & proto::kHelloDescribe) && (hello.features & proto::kFeatureDescribe);
  const int64_t welcomed = ActiveConsumers();
  if (!describe && welcomed >= options_.max_consumers) {
    Kill(c,
         "producer already serves " + std::to_string(welcomed) + " consumers (limit " +
             std::to_string(options_.max_consumers) + ")",
         proto::ErrorCode::kLimit);
    return arrow::Status::OK();
  }
  auto refuse = [&](const arrow::Status& status) {
    Kill(c, status.message(), proto::ErrorCode::kSchemaMismatch);
    return arrow::Status::OK();
  };
  std::shared_ptr<arrow::Schema> expected;
  const auto match =
      hello.flags & proto::kHelloSchemaSubset ? SchemaMatch::kSubset : SchemaMatch::kExact;
  if (!hello.required_schema.empty()) {
    ARROW_ASSIGN_OR_RAISE(expected, internal::DeserializeSchema(hello.required_schema));
    auto status = internal::CheckSchema(*expected, *schema_, match);
    if (!status.ok()) return refuse(status);
  }
  if (!hello.columns.empty()) {
    auto indices = internal::ProjectionIndices(*schema_, hello.columns);
    if (!indices.ok()) return refuse(indices.status());
  }
  if (describe) return Describe(c, hello);
  // Retained batches to replay (start at oldest): they may predate a schema change, so the
  // consumer is welcomed with the schema of the first one and told of each change in between.
  // Only the newest run of batches whose schema suits this consumer is replayed.
  std::vector<std::shared_ptr<Published>> replay;
  if (hello.flags & proto::kHelloStartAtOldest) {
    for (const auto& published : retained_) {
      const auto& schema = *published->batch->schema();
      const bool suits =
          (expected == nullptr || internal::CheckSchema(*expected, schema, match).ok()) &&
          (hello.columns.empty() || internal::ProjectionIndices(schema, hello.columns).ok());
      if (suits) {
        replay.push_back(published);
      } else {
        replay.clear();
      }
    }
  }
  const std::shared_ptr<arrow::Schema> first_schema =
      replay.empty() ? schema_ : replay.front()->batch->schema();
  std::shared_ptr<arrow::Schema> schema = first_schema;
  if (!hello.columns.empty()) {
    ARROW_ASSIGN_OR_RAISE(c.projection, internal::ProjectionIndices(*first_schema, hello.columns));
    c.projection_names = hello.columns;
    schema = internal::ProjectSchema(*first_schema, c.projection);
  }
  c.lossy = hello.flags & proto::kHelloLossy;
  c.batch_runs = ring_ != nullptr &&
                 (hello.features & proto::FeaturesOf(hello.minor) & proto::kFeatureBatchRuns);
  c.credits = static_cast<size_t>(options_.max_in_flight);
  if (hello.max_in_flight > 0) c.credits = std::min<size_t>(c.credits, hello.max_in_flight);

  proto::Welcome welcome;
  welcome.features = hello.features & proto::FeaturesOf(hello.minor);
  if (!c.batch_runs) welcome.features &= ~proto::kFeatureBatchRuns;
  welcome.mode = ring_ != nullptr ? proto::Mode::kRing : proto::Mode::kSealed;
  welcome.consumer_id = c.id;
  welcome.ring_size = ring_ != nullptr ? static_cast<uint64_t>(ring_->size()) : 0;
  welcome.max_consumers = static_cast<uint32_t>(options_.max_consumers);
  welcome.max_in_flight = static_cast<uint32_t>(c.credits);
  if (ring_ != nullptr && (welcome.features & proto::kFeatureQueue) && !free_queue_slots_.empty() &&
      c.credits < queue_capacity_) {
    c.queue_slot = free_queue_slots_.back();
    free_queue_slots_.pop_back();
    uint8_t* slot = ring_->reserved() + c.queue_slot * queue_slot_bytes_;
    c.queue = proto::QueueWriter(slot, queue_capacity_);
    welcome.queue_offset = static_cast<uint64_t>(ring_->OffsetOf(slot));
    welcome.queue_capacity = queue_capacity_;
  }
  if (!c.queue.attached()) welcome.features &= ~proto::kFeatureQueue;
  ARROW_ASSIGN_OR_RAISE(welcome.schema, internal::SerializeSchema(*schema));
  UniqueFd ring_fd;
  if (ring_ != nullptr) {
    ARROW_ASSIGN_OR_RAISE(ring_fd, ring_->ConsumerFd());
  }
  const int fd = ring_fd.get();
  std::span<const int> fds;
  if (fd >= 0) fds = std::span<const int>(&fd, 1);
  ARROW_ASSIGN_OR_RAISE(bool sent, c.socket.TrySendDatagram(proto::Encode(writer_, welcome), fds));
  if (!sent) return arrow::Status::IOError("consumer's socket is full during the handshake");
  c.welcomed = true;
  ++stats_.consumers_total;
  std::shared_ptr<arrow::Schema> announced = first_schema;
  auto announce = [&](const std::shared_ptr<arrow::Schema>& next) {
    if (next->Equals(*announced, /*check_metadata=*/false)) return;
    announced = next;
    Outgoing out;
    out.type = proto::Type::kSchema;
    out.schema = next;
    Enqueue(c, std::move(out));
  };
  for (const auto& published : replay) {
    announce(published->batch->schema());
    Outgoing out;
    out.batch = published;
    Enqueue(c, std::move(out));
  }
  announce(schema_);
  if (ended_) {
    Outgoing out;
    out.type = proto::Type::kEnd;
    Enqueue(c, std::move(out));
  }
  Pump(c);
  changed_.notify_all();
  return arrow::Status::OK();
}

void ProducerImpl::StartRequest(Connection& c, uint32_t stream, std::string request) {
  Outgoing refusal;
  refusal.type = proto::Type::kError;
  refusal.stream = stream;
  refusal.error.code = proto::ErrorCode::kHandler;
  const auto in_flight = static_cast<int>(c.open_requests.size());
  if (!handler_) {
    refusal.error.message = "this producer has no request handler";
  } else if (std::count(c.open_requests.begin(), c.open_requests.end(), stream) > 0) {
    refusal.error.message = "request " + std::to_string(stream) + " is already in flight";
  } else if (in_flight >= options_.max_requests_per_consumer) {
    refusal.error = {proto::ErrorCode::kLimit,
                     "this consumer already has " + std::to_string(in_flight) +
                         " requests in flight (limit " +
                         std::to_string(options_.max_requests_per_consumer) + ")"};
  } else if (requests_in_flight_ >= options_.max_requests) {
    refusal.error = {proto::ErrorCode::kLimit, "the producer already has " +
                                                   std::to_string(requests_in_flight_) +
                                                   " requests in flight (limit " +
                                                   std::to_string(options_.max_requests) + ")"};
  }
  if (!refusal.error.message.empty()) {
    Enqueue(c, std::move(refusal));
    Pump(c);
    return;
  }
  c.open_requests.push_back(stream);
  ++requests_in_flight_;
  request_jobs_.push_back({c.id, stream, std::move(request), handler_});
  if (idle_workers_ == 0 &&
      request_workers_.size() < static_cast<size_t>(std::max(options_.request_threads, 1))) {
    request_workers_.emplace_back([this] { RunRequests(); });
  }
  jobs_ready_.notify_one();
}

void ProducerImpl::RunRequests() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_workers_;
    jobs_ready_.wait(lock, [this] { return closed_ || !request_jobs_.empty(); });
    --idle_workers_;
    if (closed_) return;
    RequestJob job = std::move(request_jobs_.front());
    request_jobs_.pop_front();
    lock.unlock();
    arrow::Status status;
    {
      ResponseWriterImpl response(this, job.connection, job.stream);
      status = job.handler(job.request, response);
    }
    lock.lock();
    FinishRequest(job.connection, job.stream, status);
  }
}

void ProducerImpl::FinishRequest(uint32_t connection, uint32_t stream,
                                 const arrow::Status& status) {
  --requests_in_flight_;
  auto it = connections_.find(connection);
  if (it == connections_.end() || it->second->dead) return;
  Connection& requester = *it->second;
  std::erase(requester.open_requests, stream);
  Outgoing out;
  out.stream = stream;
  out.type = status.ok() ? proto::Type::kEnd : proto::Type::kError;
  out.error = {proto::ErrorCode::kHandler, status.ToString()};
  Enqueue(requester, std::move(out));
  Pump(requester);
}

arrow::Status ProducerImpl::SendResponse(uint32_t connection, uint32_t stream,
                                         std::shared_ptr<const arrow::Schema> new_schema,
                                         std::shared_ptr<Published> batch) {
  std::unique_lock lock(mutex_);
  auto find = [&]() -> Connection* {
    auto it = connections_.find(connection);
    return it == connections_.end() || !it->second->active() ? nullptr : it->second.get();
  };
  ARROW_RETURN_NOT_OK(WaitFor(
      lock, options_.request_timeout_ms,
      [&] {
        Connection* c = find();
        return c == nullptr || c->pending_responses < c->credits;
      },
      "room: the requester is a full backlog behind"));
  Connection* c = find();
  if (c == nullptr) {
    return MakeError(arrow::StatusCode::Cancelled, ErrorCode::kClosed,
                     "the requesting consumer went away");
  }
  batch->sequence = next_sequence_++;
  stats_.bytes_copied += batch->bytes_copied;
  if (new_schema != nullptr) {
    Outgoing out;
    out.type = proto::Type::kSchema;
    out.stream = stream;
    out.schema = std::move(new_schema);
    Enqueue(*c, std::move(out));
  }
  Outgoing out;
  out.stream = stream;
  out.batch = std::move(batch);
  Enqueue(*c, std::move(out));
  Pump(*c);
  return arrow::Status::OK();
}

ResponseWriterImpl::~ResponseWriterImpl() {
  if (lane_ != nullptr) producer_->ReleaseLane(lane_);
}

arrow::MemoryPool* ResponseWriterImpl::pool() {
  if (producer_->request_pool() != nullptr) return producer_->request_pool();
  if (loan_ == nullptr) {
    auto loan = producer_->NewLoan(producer_->schema());
    if (!loan.ok()) return arrow::default_memory_pool();  // copied in at Write
    loan_ = std::move(*loan);
    if (lane_ == nullptr) lane_ = producer_->AcquireLane();
    lane_->Use(loan_);
  }
  return lane_;
}

arrow::Status ResponseWriterImpl::Write(const std::shared_ptr<arrow::RecordBatch>& batch) {
  ARROW_ASSIGN_OR_RAISE(auto published, producer_->Prepare(batch, &loan_, /*for_stream0=*/false));
  std::shared_ptr<const arrow::Schema> new_schema;
  if (announced_ == nullptr || !announced_->Equals(*batch->schema())) {
    announced_ = batch->schema();
    new_schema = announced_;
  }
  return producer_->SendResponse(connection_, stream_, std::move(new_schema), std::move(published));
}

arrow::Status ProducerImpl::Describe(Connection& c, const proto::Hello& hello) {
  proto::Welcome welcome;
  welcome.features = hello.features & proto::kFeatureDescribe;
  welcome.mode = ring_ != nullptr ? proto::Mode::kRing : proto::Mode::kSealed;
  welcome.consumer_id = c.id;
  welcome.ring_size = ring_ != nullptr ? static_cast<uint64_t>(ring_->size()) : 0;
  welcome.max_consumers = static_cast<uint32_t>(options_.max_consumers);
  welcome.max_in_flight = static_cast<uint32_t>(options_.max_in_flight);
  std::shared_ptr<arrow::Schema> schema = schema_;
  if (!hello.columns.empty()) {
    ARROW_ASSIGN_OR_RAISE(auto projection, internal::ProjectionIndices(*schema_, hello.columns));
    schema = internal::ProjectSchema(*schema_, projection);
  }
  ARROW_ASSIGN_OR_RAISE(welcome.schema, internal::SerializeSchema(*schema));
  ARROW_ASSIGN_OR_RAISE(bool sent, c.socket.TrySendDatagram(proto::Encode(writer_, welcome), {}));
  if (!sent) return arrow::Status::IOError("describer's socket is full during the handshake");
  c.dead = true;  // closed when reaped; the Welcome already queued in its socket stays readable
  return arrow::Status::OK();
}

arrow::Status ProducerImpl::WaitForConsumers(int count, int timeout_ms) {
  std::unique_lock lock(mutex_);
  return WaitFor(
      lock, timeout_ms, [&] { return ActiveConsumers() >= count; },
      std::to_string(count) + " consumers");
}

arrow::Status ProducerImpl::WaitUntilDrained(int timeout_ms) {
  std::unique_lock lock(mutex_);
  return WaitFor(
      lock, timeout_ms,
      [&] {
        Reap();  // a connection that just died returns what it held now, not on the I/O thread
        if (records_dying_) return false;
        for (const auto& [id, c] : connections_) {
          if (!c->held.empty() || c->pending_batches + c->pending_responses > 0) {
            return false;
          }
        }
        return true;
      },
      "drain: consumers still hold batches");
}

ProducerStats ProducerImpl::stats() const {
  std::lock_guard lock(mutex_);
  ProducerStats out = stats_;
  out.consumers = ActiveConsumers();
  out.in_flight = 0;
  for (const auto& [id, c] : connections_) {
    out.in_flight +=
        static_cast<int64_t>(c->held.size() + c->pending_batches + c->pending_responses);
  }
  out.ring_bytes_in_use = ring_ != nullptr ? ring_->bytes_in_use() : 0;
  return out;
}

void ProducerImpl::Close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    if (epoll_) {
      for (auto& [id, c] : connections_) Kill(*c, "producer closed", proto::ErrorCode::kShutdown);
    }
    changed_.notify_all();
  }
  if (wake_) {
    const uint64_t one = 1;
    (void)::write(wake_.get(), &one, sizeof one);
  }
  if (io_thread_.joinable()) io_thread_.join();
  if (ring_ != nullptr) ring_->Close();  // allocations blocked on a full ring give up
  jobs_ready_.notify_all();
  // Workers start only on the I/O thread, which has ended: the list no longer changes.
  for (auto& worker : request_workers_) worker.join();
  std::lock_guard lock(mutex_);
  request_jobs_.clear();
  connections_.clear();
  retained_.clear();
  loan_.reset();
  listener_.reset();  // removes the socket file
}

}  // namespace

arrow::Result<std::shared_ptr<Producer>> Producer::Listen(const std::string& address,
                                                          std::shared_ptr<arrow::Schema> schema,
                                                          const ProducerOptions& options) {
  if (schema == nullptr) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput, "Producer needs a schema");
  }
  auto producer = std::make_shared<ProducerImpl>(address, schema, options);
  ARROW_RETURN_NOT_OK(producer->ChangeSchema(schema));  // checks the schema fits the mode
  ARROW_RETURN_NOT_OK(producer->Start());
  return producer;
}

}  // namespace shmarrow
