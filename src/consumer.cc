#include "shmarrow/consumer.h"

#include <arrow/buffer.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/reader.h>
#include <arrow/util/io_util.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <variant>

#include "address.h"
#include "block_cache.h"
#include "deadline.h"
#include "errno_status.h"
#include "flatbuffer_patch.h"
#include "handover_internal.h"
#include "mapping.h"
#include "memfd.h"
#include "protocol.h"
#include "ring_queue.h"
#include "schema_match.h"
#include "shared_stream_internal.h"
#include "shmarrow/error.h"
#include "shmarrow/handover.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using internal::UnixSocket;

constexpr int kHandshakeTimeoutMs = 10000;
constexpr uint32_t kMaxMetadata = 1 << 20;
constexpr int kControlsWaitMs = 1000;

/// The socket, shared by the consumer and every batch it handed out: a batch dying on any thread
/// tells the producer through it, even after the Consumer object is gone.
class Channel {
 public:
  explicit Channel(UnixSocket socket) : socket_(std::move(socket)) {}

  /// Where the leases of this consumer's batches are made (one per batch, reused).
  const std::shared_ptr<internal::BlockCache>& lease_cache() const { return lease_cache_; }

  int fd() const { return socket_.fd(); }
  UnixSocket& socket() { return socket_; }

  /// Notes that a batch arrived. A producer may not send a sequence this consumer still holds
  /// (its Release would be ambiguous), nor more batches than the credits of their stream (the
  /// published stream, or the answers to requests): each would cost memory, and in sealed mode a
  /// mapping and an fd, without bound.
  arrow::Status Hold(uint64_t sequence, bool response, uint32_t credits) {
    std::lock_guard lock(mutex_);
    if (FindHeld(sequence) != held_.end()) {
      return proto::ProtocolError("batch ", sequence,
                                  " arrived while this consumer still holds batch ", sequence);
    }
    size_t& count = response ? held_responses_ : held_published_;
    if (count >= credits) {
      return proto::ProtocolError("batch ", sequence, " is beyond this consumer's ", credits,
                                  " credits (it holds ", count, " batches of ",
                                  response ? "answers to requests" : "the published stream", ")");
    }
    held_.push_back({sequence, response});
    ++count;
    return arrow::Status::OK();
  }

  /// Tells the producer at once — or, while deferring, with the next `flush_at` releases, or when
  /// the consumer catches up. If the socket is full it waits for the next Flush.
  void Release(uint64_t sequence) {
    std::lock_guard lock(mutex_);
    if (auto it = FindHeld(sequence); it != held_.end()) {
      --(it->response ? held_responses_ : held_published_);
      *it = held_.back();  // the order does not matter
      held_.pop_back();
    }
    unsent_.push_back(sequence);
    if (!deferring_ || unsent_.size() >= flush_at_) FlushLocked();
  }
  /// Deferring is for a consumer that is behind (batches wait to be read): one Release message
  /// then answers several batches. Stopping sends what waits.
  void SetDeferring(bool deferring, size_t flush_at) {
    std::lock_guard lock(mutex_);
    deferring_ = deferring;
    flush_at_ = std::max<size_t>(flush_at, 1);
    if (!deferring_) FlushLocked();
  }
  void Flush() {
    std::lock_guard lock(mutex_);
    FlushLocked();
  }
  arrow::Status Send(std::span<const uint8_t> message) {
    std::lock_guard lock(mutex_);
    ARROW_ASSIGN_OR_RAISE(bool sent, socket_.TrySendDatagram(message, {}));
    if (!sent) return arrow::Status::IOError("socket to the producer is full");
    return arrow::Status::OK();
  }
  int64_t released() const {
    std::lock_guard lock(mutex_);
    return released_;
  }

 private:
  struct Held {
    uint64_t sequence;
    bool response;  // answers a request
  };
  // A flat list: at most the credits of both streams, and nothing allocated per batch.
  std::vector<Held>::iterator FindHeld(uint64_t sequence) {
    return std::find_if(held_.begin(), held_.end(),
                        [&](const Held& h) { return h.sequence == sequence; });
  }

  void FlushLocked() {
    while (!unsent_.empty()) {
      const size_t count = std::min<size_t>(unsent_.size(), proto::kMaxRun);
      std::span<const uint64_t> chunk(unsent_.data() + unsent_.size() - count, count);
      auto sent = socket_.TrySendDatagram(proto::EncodeRelease(writer_, chunk), {});
      if (sent.ok() && !*sent) return;  // full: try again later
      // Sent, or the producer is gone (then there is nobody left to tell).
      released_ += static_cast<int64_t>(count);
      unsent_.resize(unsent_.size() - count);
    }
  }

  UnixSocket socket_;
  const std::shared_ptr<internal::BlockCache> lease_cache_ =
      std::make_shared<internal::BlockCache>();
  mutable std::mutex mutex_;
  proto::Writer writer_;
  std::vector<uint64_t> unsent_;
  bool deferring_ = false;
  size_t flush_at_ = 1;
  int64_t released_ = 0;
  std::vector<Held> held_;
  size_t held_published_ = 0;
  size_t held_responses_ = 0;
};

/// The memory of one received batch, as seen by Arrow: the ring (or the batch's memfd) as a
/// buffer whose last reference tells the producer the batch is released.
class LeaseBuffer final : public arrow::Buffer {
 public:
  LeaseBuffer(const std::shared_ptr<arrow::Buffer>& region, uint64_t sequence,
              std::shared_ptr<Channel> channel)
      : arrow::Buffer(region, 0, region->size()),
        sequence_(sequence),
        channel_(std::move(channel)) {}
  ~LeaseBuffer() override { channel_->Release(sequence_); }

 private:
  uint64_t sequence_;
  std::shared_ptr<Channel> channel_;
};

struct EndOfStream {};
/// What a stream delivers, in order.
using Event = std::variant<std::shared_ptr<arrow::RecordBatch>, std::shared_ptr<arrow::Schema>,
                           EndOfStream, arrow::Status>;

struct StreamState {
  explicit StreamState(const std::shared_ptr<internal::BlockCache>& cache)
      : events(internal::RecyclingAllocator<Event>(cache)) {}
  std::shared_ptr<arrow::Schema> schema;
  std::deque<Event, internal::RecyclingAllocator<Event>> events;  // an entry per batch: reused
};

class ConsumerImpl final : public Consumer, public std::enable_shared_from_this<ConsumerImpl> {
 public:
  explicit ConsumerImpl(ConsumerOptions options) : options_(std::move(options)) {}
  ~ConsumerImpl() override;

  arrow::Status Handshake(const std::string& address, UnixSocket socket);
  /// `connected`: a SOCK_STREAM connection to the producer already made (else connects).
  arrow::Status OpenHandover(const std::string& address, UnixSocket* connected = nullptr);

  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    return Next(0, options_.read_timeout_ms, batch);
  }
  arrow::Result<Poll> TryNext(std::shared_ptr<arrow::RecordBatch>* batch) override;
  int fd() const override { return channel_ != nullptr ? channel_->fd() : -1; }
  arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> Request(
      std::string_view request) override;
  ConsumerStats stats() const override {
    ConsumerStats out = stats_;
    out.released = channel_ != nullptr ? channel_->released() : 0;
    return out;
  }
  std::string mode() const override { return mode_; }
  std::shared_ptr<SharedStream> handover_stream() const override { return handover_stream_; }

  /// Next event of `stream`, pumping the socket for up to timeout_ms (-1: forever).
  arrow::Status Next(uint32_t stream, int timeout_ms, std::shared_ptr<arrow::RecordBatch>* batch);
  std::shared_ptr<arrow::Schema> StreamSchema(uint32_t stream) { return Stream(stream).schema; }
  StreamState& Stream(uint32_t id) { return streams_.try_emplace(id, event_cache_).first->second; }

 private:
  /// Takes the next queued event of `stream` without receiving: true with `batch` set for a batch,
  /// true with `batch` null at the end, false when nothing decisive is queued (schema changes
  /// are applied on the way); an error event is returned as the error.
  arrow::Result<bool> TakeQueued(uint32_t stream, std::shared_ptr<arrow::RecordBatch>* batch);
  /// One datagram from the producer. A producer that closes with datagrams of ours unread (it
  /// died, or refused us) resets the connection: the kernel reports ECONNRESET once, ahead of
  /// the datagrams still queued for us, which the next read returns (then end of file).
  arrow::Result<internal::Received> Receive(int timeout_ms);
  /// Receives and handles one message; false if none arrived within timeout_ms.
  arrow::Result<bool> Pump(int timeout_ms);
  /// After a batch was taken: releases are deferred while more batches wait to be read here
  /// (looking for the next one first if the consumer was behind), and sent otherwise.
  void SettleReleases();
  bool HasQueuedBatch() const;
  /// kFeatureQueue: entries the producer wrote and this consumer has not read (an error if the
  /// count is impossible).
  /// Takes every unread entry of the queue into stream 0's events; false if there was none.
  arrow::Result<bool> DrainQueue();
  /// Applies the next `count` stream-0 Schema/End messages, which the producer sent on the
  /// socket before the entry that counts them.
  arrow::Status ApplyControls(uint32_t count);
  /// Before sleeping on the socket: tells the producer how far the queue was read, so that it
  /// sends a Wake with the next entry. False if entries arrived meanwhile (do not sleep).
  arrow::Result<bool> AnnounceWaiting();
  arrow::Status Handle(const uint8_t* data, int64_t size, std::vector<UniqueFd> fds);
  /// Appends the batches `message` describes to `events`.
  arrow::Status Materialize(const proto::Batch& message, uint32_t stream,
                            std::vector<UniqueFd>& fds,
                            std::deque<Event, internal::RecyclingAllocator<Event>>* events);
  std::shared_ptr<LeaseBuffer> MakeLease(const std::shared_ptr<arrow::Buffer>& region,
                                         uint64_t sequence) {
    return std::allocate_shared<LeaseBuffer>(
        internal::RecyclingAllocator<LeaseBuffer>(channel_->lease_cache()), region, sequence,
        channel_);
  }
  arrow::Result<std::shared_ptr<arrow::RecordBatch>> Project(
      std::shared_ptr<arrow::RecordBatch> batch);
  /// Adds a Batch's `dropped` to the stats: only a lossy consumer loses batches, and never more
  /// than can be counted.
  arrow::Status CountDropped(const proto::Batch& message);
  /// The producer's uid (SO_PEERCRED) must be this process's, or one the options allow: anyone
  /// may bind an abstract socket name first.
  arrow::Status CheckProducerUid(const UnixSocket& socket, const std::string& address) const;

  const ConsumerOptions options_;
  std::string mode_ = "handover";
  std::shared_ptr<Channel> channel_;
  std::shared_ptr<arrow::Buffer> ring_;  // ring mode: the whole ring, mapped read-only
  std::shared_ptr<arrow::Schema> schema_;
  const std::shared_ptr<internal::BlockCache> event_cache_ =
      std::make_shared<internal::BlockCache>();
  std::map<uint32_t, StreamState> streams_;  // 0: the published stream; else request ids
  std::shared_ptr<arrow::RecordBatchReader> handover_;
  std::shared_ptr<SharedStream> handover_stream_;
  arrow::Status fatal_;
  uint32_t credits_ = 0;  // batches held at once, per stream class (from Welcome)
  uint32_t next_request_ = 1;
  ConsumerStats stats_;
  std::vector<uint8_t> receive_buffer_ = std::vector<uint8_t>(proto::kMaxMessageSize);
  proto::Writer writer_;
  bool batch_runs_ = false;  // negotiated: Batches messages may arrive
  std::vector<proto::Batch> run_;
  // The last receive found a message already waiting: the consumer is behind the producer.
  bool behind_ = false;
  size_t release_batch_ = 1;               // releases per Release message while behind
  std::vector<uint8_t> metadata_scratch_;  // ring mode: the private copy of a batch's metadata
  // kFeatureQueue: stream 0 arrives through a queue the producer writes in the ring.
  proto::QueueReader queue_;                 // ring mode with kFeatureQueue: stream 0's batches
  uint64_t waiting_announced_ = UINT64_MAX;  // the count last sent in Waiting
  std::deque<Event> controls_;               // stream-0 Schema/End received, applied at their entry
  std::vector<UniqueFd> no_fds_;
};

/// The answer to one request, read through the consumer that sent it.
class ResponseReader final : public arrow::RecordBatchReader {
 public:
  ResponseReader(std::shared_ptr<ConsumerImpl> consumer, uint32_t stream, int timeout_ms)
      : consumer_(std::move(consumer)), stream_(stream), timeout_ms_(timeout_ms) {}
  std::shared_ptr<arrow::Schema> schema() const override {
    return consumer_->StreamSchema(stream_);
  }
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    return consumer_->Next(stream_, timeout_ms_, batch);
  }

 private:
  std::shared_ptr<ConsumerImpl> consumer_;
  uint32_t stream_;
  int timeout_ms_;
};

ConsumerImpl::~ConsumerImpl() {
  if (channel_ == nullptr) return;
  channel_->SetDeferring(false, 1);  // batches still alive release themselves one by one
  // Say Bye: the producer stops sending, and keeps only what batches still alive here hold until
  // they are released (the channel outlives this object for them).
  (void)channel_->Send(proto::EncodeBye(writer_));
}

arrow::Status ConsumerImpl::CheckProducerUid(const UnixSocket& socket,
                                             const std::string& address) const {
  ARROW_ASSIGN_OR_RAISE(auto peer, socket.Peer());
  if (internal::UidAllowed(peer.uid, options_.allowed_uids, options_.allow_any_uid)) {
    return arrow::Status::OK();
  }
  return MakeError(arrow::StatusCode::IOError, ErrorCode::kRefused, "producer at '", address,
                   "' runs as uid ", peer.uid, ", which this consumer (uid ", ::geteuid(),
                   ") does not accept: allow it with allowed_uids or allow_any_uid");
}

arrow::Status ConsumerImpl::OpenHandover(const std::string& address, UnixSocket* connected) {
  std::optional<UnixSocket> own;
  if (connected == nullptr) {
    ARROW_ASSIGN_OR_RAISE(own,
                          UnixSocket::Connect(address, SOCK_STREAM, options_.connect_timeout_ms));
    connected = &*own;
  }
  ARROW_RETURN_NOT_OK(CheckProducerUid(*connected, address));
  // Its handshake: bounded by the read timeout, as the stream protocol's.
  ARROW_ASSIGN_OR_RAISE(UniqueFd fd,
                        internal::ReceiveHandedOverFd(*connected, address,
                                                      options_.read_timeout_ms > 0
                                                          ? options_.read_timeout_ms
                                                          : internal::kHandoverReplyTimeoutMs));
  SharedStreamOptions stream_options;
  stream_options.validation = options_.validation;
  stream_options.require_seals = options_.require_seals;
  ARROW_ASSIGN_OR_RAISE(handover_stream_, SharedStream::Open(std::move(fd), stream_options));
  ARROW_ASSIGN_OR_RAISE(handover_, handover_stream_->OpenReader());
  schema_ = handover_->schema();
  if (options_.expect_schema != nullptr) {
    ARROW_RETURN_NOT_OK(internal::CheckSchema(*options_.expect_schema, *schema_, options_.match));
  }
  if (!options_.columns.empty()) {
    ARROW_ASSIGN_OR_RAISE(auto indices, internal::ProjectionIndices(*schema_, options_.columns));
    schema_ = internal::ProjectSchema(*schema_, indices);
  }
  return arrow::Status::OK();
}

arrow::Status ConsumerImpl::Handshake(const std::string& address, UnixSocket socket) {
  ARROW_RETURN_NOT_OK(CheckProducerUid(socket, address));
  channel_ = std::make_shared<Channel>(std::move(socket));
  proto::Hello hello;
  if (options_.lossy) hello.flags |= proto::kHelloLossy;
  if (options_.start_at_oldest) hello.flags |= proto::kHelloStartAtOldest;
  if (options_.match == SchemaMatch::kSubset) hello.flags |= proto::kHelloSchemaSubset;
  hello.max_in_flight = static_cast<uint32_t>(std::max(0, options_.max_in_flight));
  hello.columns = options_.columns;
  if (options_.expect_schema != nullptr) {
    ARROW_ASSIGN_OR_RAISE(hello.required_schema,
                          internal::SerializeSchema(*options_.expect_schema));
  }
  // A producer that refuses this consumer (another uid) sends why and closes at once, maybe
  // before the Hello arrived: the send may then fail, but the reason is still there to read.
  const arrow::Status hello_sent = channel_->Send(proto::Encode(writer_, hello));
  // The read timeout bounds the handshake too; reads that poll (0) or wait forever (-1) leave
  // it to a default, since a connection must not hang on a producer that never answers.
  const int handshake_ms =
      options_.read_timeout_ms > 0 ? options_.read_timeout_ms : kHandshakeTimeoutMs;
  auto receiving = Receive(handshake_ms);
  if (!receiving.ok()) return hello_sent.ok() ? receiving.status() : hello_sent;
  auto received = std::move(*receiving);
  if (received.bytes < 0) {
    ARROW_RETURN_NOT_OK(hello_sent);
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "producer at '", address,
                     "' did not answer the handshake within ", handshake_ms, " ms");
  }
  if (received.bytes == 0) {
    ARROW_RETURN_NOT_OK(hello_sent);
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kProducerGone, "producer at '", address,
                     "' closed the connection during the ", "handshake");
  }
  ARROW_ASSIGN_OR_RAISE(
      auto welcome, proto::DecodeHandshakeAnswer(
                        std::span<const uint8_t>(receive_buffer_.data(), received.bytes), address));
  ARROW_ASSIGN_OR_RAISE(schema_, internal::DeserializeSchema(welcome.schema));
  if (options_.expect_schema != nullptr && options_.columns.empty()) {
    ARROW_RETURN_NOT_OK(internal::CheckSchema(*options_.expect_schema, *schema_, options_.match));
  }
  Stream(0).schema = schema_;
  credits_ = welcome.max_in_flight;
  batch_runs_ = welcome.minor >= 1 && (welcome.features & proto::kFeatureBatchRuns) &&
                welcome.mode == proto::Mode::kRing;
  // Bounded by what one Release message carries, whatever credits the producer grants.
  release_batch_ = std::clamp<size_t>(welcome.max_in_flight / 4, 1, proto::kMaxRun);
  if (welcome.mode == proto::Mode::kSealed) {
    mode_ = "sealed";
    if (!received.fds.empty()) return proto::ProtocolError("sealed Welcome with an fd");
    return arrow::Status::OK();
  }
  mode_ = "ring";
  ARROW_RETURN_NOT_OK(internal::CheckNoDictionaries(*schema_));
  if (received.fds.size() != 1) {
    return proto::ProtocolError("ring Welcome carries ", received.fds.size(), " fds, expected 1");
  }
  const int ring_fd = received.fds[0].get();
  ARROW_ASSIGN_OR_RAISE(int seals, internal::GetSeals(ring_fd));
  constexpr int kNoResize = F_SEAL_SHRINK | F_SEAL_GROW;
  constexpr int kNoWrites = F_SEAL_WRITE | F_SEAL_FUTURE_WRITE;
  if ((seals & kNoResize) != kNoResize || (seals & kNoWrites) == 0) {
    return arrow::Status::Invalid("ring memfd fd ", ring_fd, " lacks seals: has ",
                                  internal::SealNames(seals),
                                  ", needs F_SEAL_SHRINK|F_SEAL_GROW and a write seal");
  }
  struct stat st{};
  if (::fstat(ring_fd, &st) != 0) return internal::ErrnoStatus(errno, "fstat(fd ", ring_fd, ")");
  ARROW_ASSIGN_OR_RAISE(auto mapping, internal::Mapping::MapReadOnly(ring_fd, st.st_size));
  ring_ = std::make_shared<internal::MappedBuffer>(std::move(mapping));
  if (welcome.minor >= 1 && (welcome.features & proto::kFeatureQueue) &&
      welcome.queue_capacity > 0) {
    ARROW_ASSIGN_OR_RAISE(
        queue_, proto::QueueReader::Attach(ring_->data(), static_cast<uint64_t>(ring_->size()),
                                           welcome.queue_offset, welcome.queue_capacity));
  }
  return arrow::Status::OK();
}

arrow::Result<internal::Received> ConsumerImpl::Receive(int timeout_ms) {
  auto received = channel_->socket().Receive(receive_buffer_, 1, timeout_ms);
  if (!received.ok() && arrow::internal::ErrnoFromStatus(received.status()) == ECONNRESET) {
    return channel_->socket().Receive(receive_buffer_, 1, 0);
  }
  return received;
}

arrow::Result<bool> ConsumerImpl::Pump(int timeout_ms) {
  ARROW_ASSIGN_OR_RAISE(auto received, Receive(0));
  behind_ = received.bytes >= 0;
  if (!behind_) {
    channel_->SetDeferring(false, release_batch_);  // caught up: the producer hears of everything
    if (timeout_ms == 0) return false;
    if (queue_.attached()) {
      ARROW_ASSIGN_OR_RAISE(bool sleep, AnnounceWaiting());
      if (!sleep) return true;
    }
    ARROW_ASSIGN_OR_RAISE(bool ready, channel_->socket().WaitReadable(timeout_ms));
    if (!ready) return false;
    ARROW_ASSIGN_OR_RAISE(received, Receive(0));
    if (received.bytes < 0) return false;
  }
  if (received.bytes == 0) {
    fatal_ = MakeError(arrow::StatusCode::IOError, ErrorCode::kProducerGone,
                       "producer closed the connection without ending the stream (did it die?)");
    return true;
  }
  auto status = Handle(receive_buffer_.data(), received.bytes, std::move(received.fds));
  // What Handle refuses without a code (Arrow's IPC reader, the flatbuffer patcher) is the
  // producer's message being invalid: a protocol violation. Errno and coded statuses stay so.
  if (status.IsInvalid() && status.detail() == nullptr) {
    status = WithCode(status, ErrorCode::kProtocol);
  }
  if (!status.ok()) fatal_ = status;
  return true;
}

bool ConsumerImpl::HasQueuedBatch() const {
  for (const auto& [id, stream] : streams_) {
    for (const Event& event : stream.events) {
      if (std::holds_alternative<std::shared_ptr<arrow::RecordBatch>>(event)) return true;
    }
  }
  return false;
}

void ConsumerImpl::SettleReleases() {
  if (channel_ == nullptr) return;
  if (fatal_.ok() && !HasQueuedBatch() && (behind_ || queue_.attached())) {
    auto prefetched = queue_.attached() ? DrainQueue() : Pump(0);
    if (!prefetched.ok()) fatal_ = prefetched.status();
  }
  channel_->SetDeferring(HasQueuedBatch(), release_batch_);
}

arrow::Result<bool> ConsumerImpl::DrainQueue() {
  if (!queue_.attached()) return false;
  ARROW_ASSIGN_OR_RAISE(uint64_t unread, queue_.Unread());
  for (uint64_t i = 0; i < unread; ++i) {
    // Copied out first: the producer can write the ring, the consumer checks what it copied.
    const proto::QueueEntry entry = queue_.Next();
    ARROW_RETURN_NOT_OK(ApplyControls(entry.controls_before));
    if (entry.kind == proto::EntryKind::kControls) continue;
    if (entry.kind != proto::EntryKind::kBatch) {
      return proto::ProtocolError("queue entry ", queue_.read() - 1, " has kind ",
                                  static_cast<uint32_t>(entry.kind));
    }
    proto::Batch message;
    message.sequence = entry.sequence;
    message.dropped = entry.dropped;
    message.metadata_offset = entry.metadata_offset;
    message.metadata_length = entry.metadata_length;
    ARROW_RETURN_NOT_OK(CountDropped(message));
    ARROW_RETURN_NOT_OK(Materialize(message, 0, no_fds_, &Stream(0).events));
  }
  return unread > 0;
}

arrow::Status ConsumerImpl::ApplyControls(uint32_t count) {
  // The producer sent them before it wrote the entry, so they are in the socket already; a
  // producer that got the order wrong gets a moment, not a hang.
  const internal::Deadline deadline(kControlsWaitMs);
  while (controls_.size() < count) {
    if (!fatal_.ok()) return fatal_;
    ARROW_ASSIGN_OR_RAISE(auto received, Receive(deadline.remaining_ms()));
    if (received.bytes <= 0) {
      return proto::ProtocolError("a queue entry counts ", count,
                                  " control messages before it, but only ", controls_.size(),
                                  " arrived");
    }
    ARROW_RETURN_NOT_OK(Handle(receive_buffer_.data(), received.bytes, std::move(received.fds)));
  }
  StreamState& stream = Stream(0);
  for (uint32_t i = 0; i < count; ++i) {
    Event control = std::move(controls_.front());
    controls_.pop_front();
    if (auto* schema = std::get_if<std::shared_ptr<arrow::Schema>>(&control)) {
      stream.schema = *schema;
    }
    stream.events.push_back(std::move(control));
  }
  return arrow::Status::OK();
}

arrow::Result<bool> ConsumerImpl::AnnounceWaiting() {
  if (waiting_announced_ != queue_.read()) {
    // A producer gone (or not reading) cannot be told; the socket says so when it is read.
    (void)channel_->Send(proto::EncodeWaiting(writer_, queue_.read()));
    waiting_announced_ = queue_.read();
  }
  ARROW_ASSIGN_OR_RAISE(uint64_t unread, queue_.Unread());
  return unread == 0;
}

arrow::Status ConsumerImpl::Handle(const uint8_t* data, int64_t size, std::vector<UniqueFd> fds) {
  proto::Reader reader(std::span<const uint8_t>(data, static_cast<size_t>(size)));
  ARROW_ASSIGN_OR_RAISE(auto header, reader.ReadHeader());
  if (header.type != proto::Type::kBatch && !fds.empty()) {
    return proto::ProtocolError(proto::TypeName(header.type), " carried ", fds.size(), " fds");
  }
  if (header.stream != 0 && streams_.count(header.stream) == 0) {
    return proto::ProtocolError(proto::TypeName(header.type), " for unknown stream ",
                                header.stream);
  }
  StreamState& stream = Stream(header.stream);
  switch (header.type) {
    case proto::Type::kBatch: {
      ARROW_ASSIGN_OR_RAISE(auto message, proto::DecodeBatch(reader));
      ARROW_RETURN_NOT_OK(CountDropped(message));
      return Materialize(message, header.stream, fds, &stream.events);
    }
    case proto::Type::kBatches: {
      if (!batch_runs_) {
        return proto::ProtocolError("Batches message, but batch runs were not agreed");
      }
      ARROW_RETURN_NOT_OK(proto::DecodeBatches(reader, proto::kMaxRun, &run_));
      for (size_t i = 0; i < run_.size(); ++i) {
        auto status = CountDropped(run_[i]);
        if (status.ok()) status = Materialize(run_[i], header.stream, fds, &stream.events);
        if (!status.ok()) {
          // The producer may reuse what this consumer will never read.
          for (size_t j = i + 1; j < run_.size(); ++j) channel_->Release(run_[j].sequence);
          return status;
        }
      }
      return arrow::Status::OK();
    }
    case proto::Type::kSchema: {
      ARROW_ASSIGN_OR_RAISE(auto bytes, proto::DecodeSchema(reader));
      ARROW_ASSIGN_OR_RAISE(auto schema, internal::DeserializeSchema(bytes));
      if (mode_ == "ring") ARROW_RETURN_NOT_OK(internal::CheckNoDictionaries(*schema));
      if (header.stream == 0 && options_.expect_schema != nullptr && options_.columns.empty()) {
        auto suits = internal::CheckSchema(*options_.expect_schema, *schema, options_.match);
        if (!suits.ok()) return suits.WithMessage("schema change: ", suits.message());
      }
      if (queue_.attached() && header.stream == 0) {  // applies at the entry that counts it
        controls_.emplace_back(std::move(schema));
        return arrow::Status::OK();
      }
      stream.schema = std::move(schema);
      stream.events.emplace_back(stream.schema);
      return arrow::Status::OK();
    }
    case proto::Type::kEnd:
      ARROW_RETURN_NOT_OK(reader.ExpectEnd("End"));
      if (queue_.attached() && header.stream == 0) {  // applies at the entry that counts it
        controls_.emplace_back(EndOfStream{});
      } else {
        stream.events.emplace_back(EndOfStream{});
      }
      return arrow::Status::OK();
    case proto::Type::kWake:  // the queue has entries: read by the caller's next look at it
      if (!queue_.attached()) return proto::ProtocolError("Wake without a queue");
      return reader.ExpectEnd("Wake");
    case proto::Type::kError: {
      ARROW_ASSIGN_OR_RAISE(auto error, proto::DecodeError(reader));
      auto status = WithCode(arrow::Status::IOError("producer: ", proto::Printable(error.message)),
                             proto::WireErrorCode(error.code), /*from_producer=*/true);
      if (header.stream == 0) return status;  // fatal
      stream.events.emplace_back(status);
      return arrow::Status::OK();
    }
    default:
      return proto::ProtocolError("unexpected ", proto::TypeName(header.type), " from a producer");
  }
}

arrow::Status ConsumerImpl::CountDropped(const proto::Batch& message) {
  if (message.dropped == 0) return arrow::Status::OK();
  if (!options_.lossy) {
    return proto::ProtocolError("batch ", message.sequence, " says ", message.dropped,
                                " batches were dropped, but this consumer is not lossy");
  }
  if (message.dropped > static_cast<uint64_t>(INT64_MAX - stats_.dropped)) {
    return proto::ProtocolError("batch ", message.sequence, " says ", message.dropped,
                                " batches were dropped, after ", stats_.dropped,
                                ": more than were ever published");
  }
  stats_.dropped += static_cast<int64_t>(message.dropped);
  return arrow::Status::OK();
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> ConsumerImpl::Project(
    std::shared_ptr<arrow::RecordBatch> batch) {
  if (options_.columns.empty()) return batch;
  ARROW_ASSIGN_OR_RAISE(auto indices,
                        internal::ProjectionIndices(*batch->schema(), options_.columns));
  return batch->SelectColumns(indices);
}

arrow::Status ConsumerImpl::Materialize(
    const proto::Batch& message, uint32_t stream, std::vector<UniqueFd>& fds,
    std::deque<Event, internal::RecyclingAllocator<Event>>* events) {
  if (Stream(stream).schema == nullptr) {  // an answer to a request starts with its Schema
    return proto::ProtocolError("batch ", message.sequence, " on stream ", stream,
                                " before the stream's Schema");
  }
  if (mode_ == "sealed") {
    if (fds.size() != 1) {
      return proto::ProtocolError("sealed Batch ", message.sequence, " carries ", fds.size(),
                                  " fds, expected 1");
    }
    ARROW_RETURN_NOT_OK(channel_->Hold(message.sequence, stream != 0, credits_));
    SharedStreamOptions stream_options;
    stream_options.validation = options_.validation;
    auto opened = SharedStream::Open(std::move(fds[0]), stream_options);
    if (!opened.ok()) {  // released all the same: the producer may reuse it
      channel_->Release(message.sequence);
      return opened.status().WithMessage("batch ", message.sequence, ": ",
                                         opened.status().message());
    }
    auto lease = MakeLease((*opened)->buffer(), message.sequence);
    const int64_t size = lease->size();
    const arrow::Status read = [&]() -> arrow::Status {
      ARROW_ASSIGN_OR_RAISE(auto reader,
                            internal::OpenValidatedStream(std::move(lease), options_.validation,
                                                          (*opened)->allocated_bytes()));
      for (;;) {
        ARROW_ASSIGN_OR_RAISE(auto batch, reader->Next());
        if (batch == nullptr) return arrow::Status::OK();
        if (stream == 0) {
          ARROW_ASSIGN_OR_RAISE(batch, Project(std::move(batch)));
        }
        // The memfd carries its own schema: it must be the one announced for this stream (the
        // one the consumer reports), or readers would see types they were not told of.
        const auto& announced = Stream(stream).schema;
        if (!batch->schema()->Equals(*announced, /*check_metadata=*/false)) {
          return proto::ProtocolError(
              "the memfd holds a batch of schema ", internal::DescribeSchema(*batch->schema()),
              ", but the producer announced ", internal::DescribeSchema(*announced));
        }
        events->emplace_back(std::move(batch));
      }
    }();
    if (!read.ok()) {  // Arrow's message names a buffer or an offset, not the batch
      return read.WithMessage("batch ", message.sequence, " (a sealed memfd of ", size,
                              " bytes): ", read.message());
    }
    return arrow::Status::OK();
  }
  if (!fds.empty()) return proto::ProtocolError("ring Batch carries an fd");
  ARROW_RETURN_NOT_OK(channel_->Hold(message.sequence, stream != 0, credits_));
  auto lease = MakeLease(ring_, message.sequence);
  const auto ring_size = static_cast<uint64_t>(ring_->size());
  if (message.metadata_length == 0 || message.metadata_length > kMaxMetadata ||
      message.metadata_offset > ring_size ||
      message.metadata_length > ring_size - message.metadata_offset) {
    return proto::ProtocolError("batch ", message.sequence, " metadata at [",
                                message.metadata_offset, ", +", message.metadata_length,
                                ") is outside the ", ring_size, "-byte ring");
  }
  // The metadata is copied out of the ring before Arrow parses and checks it, so the producer
  // cannot change it between the check and the use. (Arrow keeps nothing of it: the batch
  // points into the body only, so one private buffer serves every batch.)
  if (metadata_scratch_.size() < message.metadata_length) {
    metadata_scratch_.resize(std::max<size_t>(message.metadata_length, 4096));
  }
  std::memcpy(metadata_scratch_.data(), ring_->data() + message.metadata_offset,
              message.metadata_length);
  const arrow::Buffer metadata(metadata_scratch_.data(), message.metadata_length);
  // Before Arrow reads it: decompression would allocate whatever size each buffer claims.
  if (auto plain = internal::CheckNotCompressed(metadata.data(), metadata.size()); !plain.ok()) {
    return plain.WithMessage("batch ", message.sequence, ": ", plain.message());
  }
  arrow::io::BufferReader body(lease);
  lease.reset();
  const auto& schema = Stream(stream).schema;
  auto read = arrow::ipc::ReadRecordBatch(metadata, schema, nullptr,
                                          arrow::ipc::IpcReadOptions::Defaults(), &body);
  if (!read.ok()) {  // Arrow's message names the buffer, not the batch nor where it is
    return read.status().WithMessage(
        "batch ", message.sequence, " (metadata at [", message.metadata_offset, ", +",
        message.metadata_length, ") of the ", ring_size, "-byte ring): ", read.status().message());
  }
  std::shared_ptr<arrow::RecordBatch> batch = *std::move(read);
  ARROW_RETURN_NOT_OK(
      internal::ValidateBatch(*batch, options_.validation, static_cast<int64_t>(message.sequence)));
  events->emplace_back(std::move(batch));
  return arrow::Status::OK();
}

arrow::Status ConsumerImpl::Next(uint32_t stream, int timeout_ms,
                                 std::shared_ptr<arrow::RecordBatch>* batch) {
  batch->reset();
  if (handover_ != nullptr) {
    ARROW_RETURN_NOT_OK(handover_->ReadNext(batch));
    if (*batch != nullptr) {
      ARROW_ASSIGN_OR_RAISE(*batch, Project(std::move(*batch)));
      ++stats_.batches;
    }
    return arrow::Status::OK();
  }
  const internal::Deadline deadline(timeout_ms);
  // Busy-polling spins on non-blocking receives before it sleeps: no wake-up latency.
  const auto spin_until = std::chrono::steady_clock::now() +
                          std::chrono::microseconds(std::max(0, options_.busy_poll_us));
  for (int round = 0;; ++round) {
    ARROW_ASSIGN_OR_RAISE(bool decided, TakeQueued(stream, batch));
    if (decided) {
      SettleReleases();
      return arrow::Status::OK();
    }
    if (!fatal_.ok()) return fatal_;
    ARROW_ASSIGN_OR_RAISE(bool drained, DrainQueue());
    if (drained) continue;
    const bool spin = options_.busy_poll_us > 0 && std::chrono::steady_clock::now() < spin_until;
    // A spinning consumer with a queue looks at the ring; the socket (requests' answers, the
    // producer going away) every 64th round.
    if (spin && queue_.attached() && round % 64 != 0) continue;
    ARROW_ASSIGN_OR_RAISE(bool got, Pump(spin ? 0 : deadline.remaining_ms()));
    if (spin) continue;
    if (!got && deadline.expired()) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout,
                       "no message from the producer within ", timeout_ms, " ms");
    }
  }
}

arrow::Result<bool> ConsumerImpl::TakeQueued(uint32_t stream,
                                             std::shared_ptr<arrow::RecordBatch>* batch) {
  auto& events = Stream(stream).events;
  while (!events.empty()) {
    Event event = std::move(events.front());
    if (std::holds_alternative<EndOfStream>(event)) return true;  // stays queued: end is final
    events.pop_front();
    if (auto* schema = std::get_if<std::shared_ptr<arrow::Schema>>(&event)) {
      if (stream == 0) {
        schema_ = options_.columns.empty()
                      ? *schema
                      : internal::ProjectSchema(
                            **schema, internal::ProjectionIndices(**schema, options_.columns)
                                          .ValueOr(std::vector<int>{}));
        ++stats_.schema_changes;
      }
      continue;
    }
    if (auto* status = std::get_if<arrow::Status>(&event)) {
      const arrow::Status error = *status;
      streams_.erase(stream);
      return error;
    }
    *batch = std::get<std::shared_ptr<arrow::RecordBatch>>(std::move(event));
    ++stats_.batches;
    return true;
  }
  return false;
}

arrow::Result<Consumer::Poll> ConsumerImpl::TryNext(std::shared_ptr<arrow::RecordBatch>* batch) {
  batch->reset();
  if (handover_ != nullptr) {
    ARROW_RETURN_NOT_OK(Next(0, 0, batch));
    return *batch != nullptr ? Poll::kBatch : Poll::kEnd;
  }
  for (;;) {  // without blocking: what was received, the queue, then the socket
    ARROW_ASSIGN_OR_RAISE(bool decided, TakeQueued(0, batch));
    if (decided) {
      SettleReleases();
      return *batch != nullptr ? Poll::kBatch : Poll::kEnd;
    }
    if (!fatal_.ok()) return fatal_;
    ARROW_ASSIGN_OR_RAISE(bool drained, DrainQueue());
    if (drained) continue;
    ARROW_ASSIGN_OR_RAISE(bool got, Pump(0));
    if (got) continue;
    // fd() becomes readable with the producer's Wake once the queue has something.
    if (queue_.attached()) {
      ARROW_ASSIGN_OR_RAISE(bool sleep, AnnounceWaiting());
      if (!sleep) continue;
    }
    return Poll::kPending;
  }
}

arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> ConsumerImpl::Request(
    std::string_view request) {
  if (channel_ == nullptr) {
    return arrow::Status::NotImplemented("the single hand-over has no requests");
  }
  const uint32_t stream = next_request_++;
  Stream(stream);
  ARROW_RETURN_NOT_OK(channel_->Send(proto::EncodeRequest(writer_, stream, request)));
  // The answer starts with its schema, or with an error.
  const internal::Deadline deadline(options_.read_timeout_ms < 0 ? kHandshakeTimeoutMs * 6
                                                                 : options_.read_timeout_ms);
  while (Stream(stream).schema == nullptr) {
    auto& events = Stream(stream).events;
    if (!events.empty()) {
      if (auto* status = std::get_if<arrow::Status>(&events.front())) {
        auto error = *status;
        streams_.erase(stream);
        return error;
      }
      break;  // ended without batches
    }
    if (!fatal_.ok()) return fatal_;
    if (deadline.expired()) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "no answer to request ",
                       stream, " in time");
    }
    ARROW_RETURN_NOT_OK(Pump(100).status());
  }
  if (Stream(stream).schema == nullptr) Stream(stream).schema = arrow::schema({});
  return std::make_shared<ResponseReader>(shared_from_this(), stream, options_.read_timeout_ms);
}

}  // namespace

arrow::Result<std::shared_ptr<Consumer>> Consumer::Connect(const std::string& address,
                                                           const ConsumerOptions& options) {
  if (internal::IsFlightAddress(address)) {
    // Flight is a library of its own, so that a user of shared memory links no gRPC.
    return arrow::Status::NotImplemented(
        "'", address, "' is an Arrow Flight address; Consumer::Connect reads UNIX sockets only: ",
        "link shmarrow::flight (libshmarrow_flight) and call shmarrow::ConnectAny "
        "(shmarrow/connect.h)");
  }
  auto consumer = std::make_shared<ConsumerImpl>(options);
  // A producer of the single hand-over listens on a SOCK_STREAM socket instead. Connecting to
  // its filesystem socket with the wrong type fails with EPROTOTYPE; abstract names are looked
  // up per socket type, so there it is ECONNREFUSED, as when nobody listens: try a stream
  // connection too (that connection then receives the hand-over, consuming no extra client).
  const bool abstract = !address.empty() && address[0] == '@';
  const internal::Deadline deadline(options.connect_timeout_ms);
  for (;;) {
    auto socket = UnixSocket::Connect(address, SOCK_SEQPACKET, 0);
    if (socket.ok()) {
      ARROW_RETURN_NOT_OK(consumer->Handshake(address, std::move(*socket)));
      return consumer;
    }
    const int err = arrow::internal::ErrnoFromStatus(socket.status());
    if (err == EPROTOTYPE) {
      ARROW_RETURN_NOT_OK(consumer->OpenHandover(address));
      return consumer;
    }
    if (abstract && err == ECONNREFUSED) {
      auto stream = UnixSocket::Connect(address, SOCK_STREAM, 0);
      if (stream.ok()) {
        ARROW_RETURN_NOT_OK(consumer->OpenHandover(address, &*stream));
        return consumer;
      }
    }
    const bool nobody_listens = err == ENOENT || err == ECONNREFUSED;
    if (!nobody_listens || deadline.expired()) return socket.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace shmarrow
