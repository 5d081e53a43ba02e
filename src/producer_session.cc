#include "producer_session.h"

#include <sys/socket.h>

#include <algorithm>

#include "schema_match.h"

namespace shmarrow::internal {
namespace {

// Schema, End and Error messages queued for one consumer that does not read: past this many it is
// disconnected (its batches are bounded by its credits, its requests by max_requests_per_consumer).
constexpr size_t kMaxQueuedControls = 1024;

}  // namespace

void HeldBatches::Add(uint64_t sequence, std::shared_ptr<Published> batch, bool response) {
  entries_.push_back({sequence, std::move(batch), response});
  responses_ += response;
}

bool HeldBatches::Remove(uint64_t sequence, std::vector<std::shared_ptr<Published>>* released) {
  auto it = std::find_if(entries_.begin(), entries_.end(),
                         [&](const Entry& e) { return e.sequence == sequence; });
  if (it == entries_.end()) return false;
  responses_ -= it->response;
  released->push_back(std::move(it->batch));
  *it = std::move(entries_.back());  // the order does not matter
  entries_.pop_back();
  return true;
}

Session::Session(UnixSocket socket, uint32_t id, const std::shared_ptr<BlockCache>& cache,
                 int handshake_timeout_ms)
    : socket_(std::move(socket)),
      id_(id),
      handshake_deadline_(handshake_timeout_ms),
      pending_(RecyclingAllocator<Outgoing>(cache)) {}

void Session::Welcomed(Terms terms) {
  state_ = SessionState::kStreaming;
  lossy_ = terms.lossy;
  batch_runs_ = terms.batch_runs;
  credits_ = terms.credits;
  projection_names_ = std::move(terms.projection_names);
  projection_ = std::move(terms.projection);
  if (terms.queue) {
    queue_slot_ = terms.queue->index;
    queue_ = proto::QueueWriter(terms.queue->address, terms.queue_capacity);
    region_agreed_ = terms.region_agreed;
    if (region_agreed_) queue_.StoreWaitBlock(terms.wait_block);
  }
}

void Session::ForgetPending() {
  pending_.clear();
  pending_batches_ = 0;
  pending_responses_ = 0;
  pending_other_streams_ = 0;
}

OutgoingQueue::iterator Session::ErasePending(OutgoingQueue::iterator first,
                                              OutgoingQueue::iterator last) {
  const auto count = std::distance(first, last);
  if (first->stream != 0) pending_other_streams_ -= static_cast<size_t>(count);
  if (first != pending_.begin()) return pending_.erase(first, last);
  // Usually the oldest entries go (those sent): popped, cheaper than erase's general case.
  for (auto n = count; n > 0; --n) pending_.pop_front();
  return pending_.begin();
}

size_t Session::Enqueue(SendTools& tools, Outgoing&& out) {
  const bool is_batch = out.type == proto::Type::kBatch;
  const bool stream0 = out.stream == 0;
  pending_other_streams_ += !stream0;
  pending_.push_back(std::move(out));
  if (!is_batch) {
    const size_t controls = pending_.size() - pending_batches_ - pending_responses_;
    if (controls > kMaxQueuedControls) {
      Kill(tools.writer,
           "consumer does not read: " + std::to_string(controls) + " messages wait for it (limit " +
               std::to_string(kMaxQueuedControls) + ")",
           proto::ErrorCode::kLimit);
      ForgetPending();  // what it holds stays until the connection is reaped
    }
    return 0;
  }
  if (!stream0) {
    ++pending_responses_;
    return 0;
  }
  ++pending_batches_;
  if (!lossy_) return 0;
  // A lossy consumer loses its oldest queued batches instead of holding the producer back.
  size_t dropped = 0;
  while (pending_batches_ > credits_) {
    auto oldest = std::find_if(pending_.begin(), pending_.end(), [](const Outgoing& o) {
      return o.type == proto::Type::kBatch && o.stream == 0;
    });
    if (oldest == pending_.end()) break;
    pending_.erase(oldest);
    --pending_batches_;
    ++dropped_unreported_;
    ++dropped;
  }
  return dropped;
}

arrow::Result<proto::Batch> Session::Describe(SendTools& tools, const Outgoing& out) {
  proto::Batch message;
  message.sequence = out.batch->sequence;
  message.dropped = dropped_unreported_;
  static const std::vector<int> kAllColumns;
  ARROW_ASSIGN_OR_RAISE(
      auto location, tools.memory->Locate(*out.batch, out.stream == 0 ? projection_ : kAllColumns));
  if (location) {
    message.metadata_offset = static_cast<uint64_t>(location->offset);
    message.metadata_length = static_cast<uint32_t>(location->length);
  }
  return message;
}

arrow::Result<bool> Session::SendRun(SendTools& tools, OutgoingQueue::iterator first,
                                     OutgoingQueue::iterator last) {
  tools.run.clear();
  for (auto it = first; it != last; ++it) {
    ARROW_ASSIGN_OR_RAISE(auto message, Describe(tools, *it));
    message.dropped = it == first ? dropped_unreported_ : 0;
    tools.run.push_back(message);
  }
  return Send(proto::EncodeBatches(tools.writer, first->stream, tools.run), {});
}

void Session::Sent(Outgoing& out) {
  const uint64_t sequence = out.batch->sequence;
  held_.Add(sequence, std::move(out.batch), /*response=*/out.stream != 0);
  if (out.stream == 0) {
    --pending_batches_;
  } else {
    --pending_responses_;
  }
  dropped_unreported_ = 0;
}

arrow::Result<bool> Session::SendOne(SendTools& tools, const Outgoing& out) {
  std::span<const uint8_t> bytes;
  int fd = -1;
  switch (out.type) {
    case proto::Type::kBatch: {
      ARROW_ASSIGN_OR_RAISE(auto message, Describe(tools, out));
      fd = out.batch->memfd.get();  // sealed mode: the batch's own memfd
      bytes = proto::Encode(tools.writer, out.stream, message);
      break;
    }
    case proto::Type::kSchema: {
      std::shared_ptr<arrow::Schema> schema = std::const_pointer_cast<arrow::Schema>(out.schema);
      if (out.stream == 0 && !projection_names_.empty()) {
        // The projection follows the new schema from here on.
        ARROW_ASSIGN_OR_RAISE(projection_, ProjectionIndices(*schema, projection_names_));
        schema = ProjectSchema(*schema, projection_);
      }
      ARROW_ASSIGN_OR_RAISE(auto serialized, SerializeSchema(*schema));
      bytes = proto::EncodeSchema(tools.writer, out.stream, serialized);
      break;
    }
    case proto::Type::kEnd:
      bytes = proto::EncodeEnd(tools.writer, out.stream);
      break;
    default:
      bytes = proto::Encode(tools.writer, out.stream, out.error);
      break;
  }
  std::span<const int> fds;
  if (fd >= 0) fds = std::span<const int>(&fd, 1);
  return Send(bytes, fds);
}

arrow::Result<bool> Session::Send(std::span<const uint8_t> bytes, std::span<const int> fds) {
  // Counted before it can be read: a consumer that polls its fd and finds it readable must find
  // the count moved too, or it neither reads nor sleeps until this thread (likely preempted by
  // that very wake-up) runs again. A datagram that did not go out is taken back.
  if (region_agreed_) queue_.CountMessage();
  auto sent = socket_.TrySendDatagram(bytes, fds);
  if (region_agreed_ && !(sent.ok() && *sent)) queue_.UncountMessage();
  return sent;
}

const uint32_t* Session::WakeSleeper(proto::Writer& writer) {
  if (!region_.attached()) return nullptr;
  // Sequentially consistent after the stores to the queue header: a consumer that announced
  // its sleep before looking at the counts is seen here, or saw them move.
  const uint64_t sleep = region_.Load();
  const auto mode = static_cast<SleepMode>(sleep >> 32);
  // Only the sleep announced since the last wake-up is answered: a consumer that leaves its word
  // set (or writes anything) costs at most one wake-up per look, and nothing else.
  if (mode == SleepMode::kAwake || static_cast<uint32_t>(sleep) != queue_.wake()) return nullptr;
  const uint32_t* word = queue_.Wake();
  if (mode == SleepMode::kFutex) return word;
  if (mode == SleepMode::kSocket) {
    // A full socket means the consumer has messages to read, and wakes anyway.
    (void)Send(proto::EncodeWake(writer), {});
  }
  return nullptr;
}

Pumped Session::Pump(SendTools& tools) {
  if (dead() || waiting_writable_) return Pumped::kDone;
  const bool was_idle = held_.empty();
  const uint64_t written_before = queue_.written();
  // Streams are independent: a stream out of credits waits until a release, and with it
  // everything after it on that stream (its order is kept), while the other streams go on.
  std::vector<uint32_t>& blocked = tools.blocked;
  blocked.clear();
  for (auto it = pending_.begin(); it != pending_.end();) {
    const Outgoing& out = *it;
    if (std::find(blocked.begin(), blocked.end(), out.stream) != blocked.end()) {
      ++it;
      continue;
    }
    const bool is_batch = out.type == proto::Type::kBatch;
    const bool queued = queue_.attached() && out.stream == 0;
    // The batches that go out now: `out` alone, or with batch runs (or a queue) as many of the
    // batches that follow it on its stream as its credits allow.
    auto last = std::next(it);
    if (is_batch) {
      const size_t holding = out.stream == 0 ? held_.published() : held_.responses();
      if (holding >= credits_) {  // out of credits until a release
        blocked.push_back(out.stream);
        // Nothing after it is on another stream: all of it waits too (no walk through a backlog).
        if (out.stream == 0 && pending_other_streams_ == 0) break;
        ++it;
        continue;
      }
      const size_t room = std::min<size_t>(credits_ - holding, proto::kMaxRun);
      for (size_t n = 1; (batch_runs_ || queued) && n < room && last != pending_.end() &&
                         last->type == proto::Type::kBatch && last->stream == out.stream;
           ++n) {
        ++last;
      }
    }
    if (is_batch && queued) {
      for (auto entry = it; entry != last; ++entry) {
        auto described = Describe(tools, *entry);
        if (!described.ok()) {
          Kill(tools.writer, described.status().message(), proto::ErrorCode::kSchemaMismatch);
          return Pumped::kDone;
        }
        proto::QueueEntry written;
        written.sequence = described->sequence;
        written.dropped = entry == it ? described->dropped : 0;
        written.metadata_offset = described->metadata_offset;
        written.metadata_length = described->metadata_length;
        WriteEntry(written);
        Sent(*entry);
      }
      it = ErasePending(it, last);
      continue;
    }
    auto sent = std::next(it) == last ? SendOne(tools, out) : SendRun(tools, it, last);
    if (!sent.ok()) {
      const auto code =
          sent.status().IsInvalid() ? proto::ErrorCode::kSchemaMismatch : proto::ErrorCode::kLimit;
      Kill(tools.writer, sent.status().message(), code);
      return Pumped::kDone;
    }
    if (!*sent) {  // socket buffer full: continue when it is writable
      waiting_writable_ = true;
      return Pumped::kWaitWritable;
    }
    if (is_batch) {
      for (auto done = it; done != last; ++done) Sent(*done);
    } else if (queued) {  // a Schema or End of stream 0: applies before the next entry
      ++controls_unannounced_;
      if (out.type == proto::Type::kEnd) {
        proto::QueueEntry end;
        end.kind = proto::EntryKind::kControls;
        WriteEntry(end);
      }
    }
    it = ErasePending(it, last);
  }
  held_back_ = !blocked.empty();
  if (region_agreed_) queue_.StoreHeldBack(held_back_);
  // A consumer that held nothing has most likely read everything and said Waiting (or is about
  // to: then it sees the new entries itself). Reading that now, rather than when the I/O thread
  // next runs, sends the Wake now.
  if (const uint32_t* word = WakeSleeper(tools.writer)) {
    // The wake word moved already: a futex wake made later still finds the consumer asleep or
    // lets it see the new value.
    if (tools.defer_wakes) {
      tools.wakes.push_back(word);
    } else {
      FutexWake(word);
    }
  }
  if (!region_.attached() && was_idle && queue_.written() > written_before && !consumer_waiting_ &&
      !dead()) {
    return Pumped::kReadWanted;
  }
  return Pumped::kDone;
}

void Session::WriteEntry(proto::QueueEntry entry) {
  entry.controls_before = std::exchange(controls_unannounced_, 0);
  queue_.Write(entry);
}

void Session::WakeIfWaiting(proto::Writer& writer) {
  if (!consumer_waiting_ || dead() || queue_.written() <= waiting_at_) return;
  consumer_waiting_ = false;
  (void)Send(proto::EncodeWake(writer), {});
}

void Session::Kill(proto::Writer& writer, const std::string& why, proto::ErrorCode code) {
  if (dead()) return;
  state_ = SessionState::kDead;
  proto::Error error{code, why};
  (void)Send(proto::Encode(writer, 0, error), {});
  // Fails only on a socket already shut down or reset by the peer: the session is dead either way.
  (void)::shutdown(socket_.fd(), SHUT_RDWR);
  if (const uint32_t* word = WakeSleeper(writer)) FutexWake(word);  // to read the Error
}

arrow::Status Session::ReleaseOne(uint64_t sequence, const char* how,
                                  std::vector<std::shared_ptr<Published>>* released) {
  if (!held_.Remove(sequence, released)) {
    return proto::ProtocolError("released batch ", sequence,
                                ", which this consumer does not hold (", how, ")");
  }
  if (state_ == SessionState::kDetached && held_.empty()) state_ = SessionState::kDead;
  return arrow::Status::OK();
}

arrow::Status Session::Release(std::span<const uint64_t> sequences,
                               std::vector<std::shared_ptr<Published>>* released) {
  for (uint64_t sequence : sequences) {
    ARROW_RETURN_NOT_OK(ReleaseOne(sequence, "in a Release message", released));
  }
  return arrow::Status::OK();
}

void Session::AttachRegion(proto::Writer& writer, RegionReader region) {
  region_ = std::move(region);
  // It may have announced a sleep before its region was read, past what was already sent (if
  // nothing was, there is nothing to wake it for: a consumer waiting on fd() must not see it
  // readable).
  if (queue_.written() > 0 || queue_.messages() > 0) {
    if (const uint32_t* word = WakeSleeper(writer)) FutexWake(word);
  }
}

arrow::Status Session::DrainRegion(std::vector<std::shared_ptr<Published>>* released) {
  if (!region_.attached() || dead()) return arrow::Status::OK();
  const uint64_t written = region_.ReleasesWritten();
  if (written == region_releases_read_) return arrow::Status::OK();
  if (written < region_releases_read_ || written - region_releases_read_ > kRegionSlots) {
    return proto::ProtocolError("the release region counts ", written,
                                " releases written, but the producer read ", region_releases_read_,
                                " of a ring of ", kRegionSlots, " slots");
  }
  while (region_releases_read_ < written) {
    // Read once into a local: the consumer may rewrite the slot while it is checked.
    const uint64_t sequence = region_.Released(region_releases_read_);
    ARROW_RETURN_NOT_OK(ReleaseOne(sequence, "in the release region", released));
    ++region_releases_read_;
  }
  queue_.StoreReleasesRead(region_releases_read_);
  return arrow::Status::OK();
}

arrow::Status Session::Waiting(proto::Writer& writer, uint64_t read) {
  if (!queue_.attached()) return proto::ProtocolError("Waiting without a queue");
  if (read > queue_.written()) {
    return proto::ProtocolError("Waiting after reading ", read, " queue entries, but ",
                                queue_.written(), " were written");
  }
  consumer_waiting_ = true;
  waiting_at_ = read;
  WakeIfWaiting(writer);  // entries written since it looked
  return arrow::Status::OK();
}

void Session::Bye() {
  ForgetPending();
  state_ = held_.empty() ? SessionState::kDead : SessionState::kDetached;
}

}  // namespace shmarrow::internal
