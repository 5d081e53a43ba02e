#include "consumer_session.h"

#include <algorithm>

#include "consumer_checks.h"
#include "flatbuffer_patch.h"
#include "ring_source.h"
#include "schema_match.h"
#include "sealed_source.h"
#include "shmarrow/error.h"

namespace shmarrow::internal {

namespace proto = protocol;

ConsumerSession::ConsumerSession(ConsumerOptions options, std::shared_ptr<Channel> channel,
                                 std::string address, uint16_t minor)
    : options_(std::move(options)),
      channel_(std::move(channel)),
      address_(std::move(address)),
      minor_(minor) {}

arrow::Status ConsumerSession::Start(arrow::Status* sent) {
  proto::Hello hello;
  hello.minor = minor_;
  hello.features = proto::FeaturesOf(minor_);
  if (options_.lossy) hello.flags |= proto::kHelloLossy;
  if (options_.start_at_oldest) hello.flags |= proto::kHelloStartAtOldest;
  if (options_.match == SchemaMatch::kSubset) hello.flags |= proto::kHelloSchemaSubset;
  hello.max_in_flight = static_cast<uint32_t>(std::max(0, options_.max_in_flight));
  hello.columns = options_.columns;
  if (options_.expect_schema != nullptr) {
    ARROW_ASSIGN_OR_RAISE(hello.required_schema, SerializeSchema(*options_.expect_schema));
  }
  *sent = channel_->Send(proto::Encode(writer_, hello));
  return arrow::Status::OK();
}

arrow::Status ConsumerSession::Feed(std::span<const uint8_t> datagram, std::vector<UniqueFd> fds) {
  if (!fatal_.ok()) return fatal_;
  arrow::Status status;
  if (!welcomed()) {
    status = Welcome(datagram, std::move(fds));
  } else {
    ++fed_;
    status = Handle(datagram, std::move(fds));
    // What Handle refuses without a code (Arrow's IPC reader, the flatbuffer patcher) is the
    // producer's message being invalid: a protocol violation. Errno and coded statuses stay so.
    if (status.IsInvalid() && status.detail() == nullptr) {
      status = WithCode(status, ErrorCode::kProtocol);
    }
  }
  fatal_ = status;
  return status;
}

void ConsumerSession::FeedClosed() {
  Fail(MakeError(arrow::StatusCode::IOError, ErrorCode::kProducerGone,
                 "producer closed the connection without ending the stream (did it die?)"));
}

arrow::Status ConsumerSession::Welcome(std::span<const uint8_t> datagram,
                                       std::vector<UniqueFd> fds) {
  ARROW_ASSIGN_OR_RAISE(auto welcome, proto::DecodeHandshakeAnswer(datagram, address_));
  ARROW_ASSIGN_OR_RAISE(schema_, DeserializeSchema(welcome.schema));
  if (options_.expect_schema != nullptr && options_.columns.empty()) {
    ARROW_RETURN_NOT_OK(CheckSchema(*options_.expect_schema, *schema_, options_.match));
  }
  Stream(0).schema = schema_;
  credits_ = welcome.max_in_flight;
  batch_runs_ = welcome.minor >= 1 && (welcome.features & proto::kFeatureBatchRuns) &&
                welcome.mode == proto::Mode::kRing;
  // Half the credits: a consumer that is behind wakes a producer waiting for its releases once per
  // this many, with as many batches still to read meanwhile (each wake costs both a context
  // switch). Bounded by what one Release message carries, whatever credits the producer grants.
  release_batch_ = std::clamp<size_t>(welcome.max_in_flight / 2, 1, proto::kMaxRun);
  if (welcome.mode == proto::Mode::kSealed) {
    mode_ = "sealed";
    if (!fds.empty()) return proto::ProtocolError("sealed Welcome with an fd");
    source_ =
        std::make_unique<SealedSource>(channel_, credits_, options_.validation, options_.columns);
    return arrow::Status::OK();
  }
  mode_ = "ring";
  ARROW_RETURN_NOT_OK(CheckNoDictionaries(*schema_));
  if (fds.size() != 1) {
    return proto::ProtocolError("ring Welcome carries ", fds.size(), " fds, expected 1");
  }
  ARROW_ASSIGN_OR_RAISE(auto ring,
                        RingSource::Open(fds[0].get(), channel_, credits_, options_.validation));
  if (welcome.minor >= 1 && (welcome.features & proto::kFeatureQueue) &&
      welcome.queue_capacity > 0) {
    const auto& mapped = ring->ring();
    ARROW_ASSIGN_OR_RAISE(
        queue_, proto::QueueReader::Attach(mapped->data(), static_cast<uint64_t>(mapped->size()),
                                           welcome.queue_offset, welcome.queue_capacity));
  }
  // Only with a queue: otherwise the socket path of 1.1 (it works either way).
  wake_region_ =
      welcome.minor >= 3 && (welcome.features & proto::kFeatureWakeRegion) && queue_.attached();
  if (wake_region_) {
    // The Region message goes first, before anything else this consumer says; the producer
    // keeps the fd, the mapping stays here (and with the channel, for batches released later).
    ARROW_ASSIGN_OR_RAISE(region_, RegionWriter::Create());
    // Not sent (the producer already ended and left, say): the exchange of 1.1, which the
    // producer keeps until a Region arrives; the socket tells the rest when it is read.
    wake_region_ = channel_->Send(proto::EncodeRegion(writer_), region_.fd()).ok();
    region_.CloseFd();
  }
  if (wake_region_) {
    const auto& mapped = ring->ring();
    channel_->AttachReleases(ReleaseWriter(region_.mapping(), mapped, mapped->data(),
                                           static_cast<uint64_t>(mapped->size()), queue_.header()));
  }
  source_ = std::move(ring);
  return arrow::Status::OK();
}

arrow::Status ConsumerSession::Handle(std::span<const uint8_t> datagram,
                                      std::vector<UniqueFd> fds) {
  proto::Reader reader(datagram);
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
      return Materialize(message, header.stream, fds);
    }
    case proto::Type::kBatches: {
      if (!batch_runs_) {
        return proto::ProtocolError("Batches message, but batch runs were not agreed");
      }
      ARROW_RETURN_NOT_OK(proto::DecodeBatches(reader, proto::kMaxRun, &run_));
      for (size_t i = 0; i < run_.size(); ++i) {
        auto status = CountDropped(run_[i]);
        if (status.ok()) status = Materialize(run_[i], header.stream, fds);
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
      ARROW_ASSIGN_OR_RAISE(auto schema, DeserializeSchema(bytes));
      if (mode_ == "ring") ARROW_RETURN_NOT_OK(CheckNoDictionaries(*schema));
      if (header.stream == 0 && options_.expect_schema != nullptr && options_.columns.empty()) {
        auto suits = CheckSchema(*options_.expect_schema, *schema, options_.match);
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
      if (header.stream == 0) {  // fatal, after what the queue holds that was sent before it
        // (a producer that ended and closed at once: the End is read, not lost to its Error)
        if (queue_.attached()) {
          while (TakeFromQueue().ValueOr(false)) {
          }
        }
        return status;
      }
      stream.events.emplace_back(status);
      return arrow::Status::OK();
    }
    default:
      return proto::ProtocolError("unexpected ", proto::TypeName(header.type), " from a producer");
  }
}

arrow::Status ConsumerSession::Materialize(const proto::Batch& message, uint32_t stream,
                                           std::vector<UniqueFd>& fds) {
  StreamState& state = Stream(stream);
  if (state.schema == nullptr) {  // an answer to a request starts with its Schema
    return proto::ProtocolError("batch ", message.sequence, " on stream ", stream,
                                " before the stream's Schema");
  }
  return source_->Materialize(message, stream, state.schema, fds, &state.events);
}

arrow::Status ConsumerSession::CountDropped(const proto::Batch& message) {
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

arrow::Result<bool> ConsumerSession::PollQueue() {
  if (!fatal_.ok()) return fatal_;
  if (!queue_.attached()) return false;
  auto took = TakeFromQueue();
  if (!took.ok()) fatal_ = took.status();
  return took;
}

arrow::Result<bool> ConsumerSession::TakeFromQueue() {
  bool took = false;
  for (;;) {
    if (!pending_entry_.has_value()) {
      ARROW_ASSIGN_OR_RAISE(uint64_t unread, queue_.Unread());
      if (unread == 0) return took;
      // Copied out first: the producer can write the ring, the consumer checks what it copied.
      pending_entry_ = queue_.Next();
    }
    // The producer sent the entry's control messages before it wrote the entry: they are on
    // their way, and the caller feeds them.
    if (controls_.size() < pending_entry_->controls_before) return took;
    const proto::QueueEntry entry = *pending_entry_;
    pending_entry_.reset();
    took = true;
    StreamState& stream = Stream(0);
    for (uint32_t i = 0; i < entry.controls_before; ++i) {
      ConsumerEvent control = std::move(controls_.front());
      controls_.pop_front();
      if (auto* schema = std::get_if<std::shared_ptr<arrow::Schema>>(&control)) {
        stream.schema = *schema;
      }
      stream.events.push_back(std::move(control));
    }
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
    ARROW_RETURN_NOT_OK(Materialize(message, 0, no_fds_));
    return true;
  }
}

arrow::Status ConsumerSession::ControlsMissing() {
  if (!fatal_.ok()) return fatal_;
  fatal_ = proto::ProtocolError(
      "a queue entry counts ", pending_entry_.has_value() ? pending_entry_->controls_before : 0,
      " control messages before it, but only ", controls_.size(), " arrived");
  return fatal_;
}

arrow::Result<bool> ConsumerSession::AnnounceWaiting() {
  if (waiting_announced_ != queue_.read()) {
    // A producer gone (or not reading) cannot be told; the socket says so when it is read.
    (void)channel_->Send(proto::EncodeWaiting(writer_, queue_.read()));
    waiting_announced_ = queue_.read();
  }
  ARROW_ASSIGN_OR_RAISE(uint64_t unread, queue_.Unread());
  return unread == 0;
}

arrow::Result<bool> ConsumerSession::Take(uint32_t stream,
                                          std::shared_ptr<arrow::RecordBatch>* batch) {
  auto& events = Stream(stream).events;
  while (!events.empty()) {
    ConsumerEvent event = std::move(events.front());
    if (std::holds_alternative<EndOfStream>(event)) return true;  // stays queued: end is final
    events.pop_front();
    if (auto* schema = std::get_if<std::shared_ptr<arrow::Schema>>(&event)) {
      if (stream == 0) {
        schema_ =
            options_.columns.empty()
                ? *schema
                : ProjectSchema(
                      **schema,
                      ProjectionIndices(**schema, options_.columns).ValueOr(std::vector<int>{}));
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

std::optional<uint32_t> ConsumerSession::AnnounceSleep(SleepMode mode) {
  const uint32_t wake = queue_.wake();
  region_.Announce(SleepWord(mode, wake));
  const auto unread = queue_.Unread();
  // A datagram counted makes the fd readable once sent: a consumer that waits on its fd need
  // not look again (it could only spin while the producer's sendmsg completes).
  if (!unread.ok() || *unread > 0 || (mode != SleepMode::kSocket && SocketMessagesPending())) {
    AnnounceAwake();
    return std::nullopt;
  }
  return wake;
}

bool ConsumerSession::HasQueuedBatch() const {
  for (const auto& [id, stream] : streams_) {
    for (const ConsumerEvent& event : stream.events) {
      if (std::holds_alternative<std::shared_ptr<arrow::RecordBatch>>(event)) return true;
    }
  }
  return false;
}

arrow::Result<uint32_t> ConsumerSession::StartRequest(std::string_view request) {
  const uint32_t stream = next_request_++;
  Stream(stream);
  ARROW_RETURN_NOT_OK(channel_->Send(proto::EncodeRequest(writer_, stream, request)));
  return stream;
}

arrow::Result<bool> ConsumerSession::RequestAnswered(uint32_t stream) {
  StreamState& state = Stream(stream);
  if (state.schema != nullptr) return true;
  if (state.events.empty()) return false;
  if (auto* status = std::get_if<arrow::Status>(&state.events.front())) {
    const arrow::Status error = *status;
    streams_.erase(stream);
    return error;
  }
  state.schema = arrow::schema({});  // ended without batches
  return true;
}

void ConsumerSession::SendBye() {
  // Releases after Bye go in messages, behind it: a producer that has them all has read Bye.
  channel_->AttachReleases(ReleaseWriter());
  (void)channel_->Send(proto::EncodeBye(writer_));
}

ConsumerStats ConsumerSession::stats() const {
  ConsumerStats out = stats_;
  out.released = channel_->released();
  return out;
}

}  // namespace shmarrow::internal
