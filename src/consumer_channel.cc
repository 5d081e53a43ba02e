#include "consumer_channel.h"

#include <algorithm>

#include "batch_arena.h"

namespace shmarrow::internal {

void BatchArena::Free() {
  if (target_ != nullptr && target_->channel != nullptr) target_->channel->Release(sequence_);
  this->~BatchArena();
  ::operator delete(static_cast<void*>(this));
}

namespace proto = protocol;

arrow::Status Channel::Hold(uint64_t sequence, bool response, uint32_t credits) {
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

void Channel::Release(uint64_t sequence) {
  std::lock_guard lock(mutex_);
  if (auto it = FindHeld(sequence); it != held_.end()) {
    --(it->response ? held_responses_ : held_published_);
    *it = held_.back();  // the order does not matter
    held_.pop_back();
  }
  if (releases_.attached() && releases_.TryWrite(sequence)) {
    ++released_;
    // Deferred as messages are: a consumer that is behind wakes the producer once per `flush_at`
    // releases, or when it catches up.
    if (!deferring_ || ++unannounced_ >= flush_at_) AnnounceLocked();
    NoteIdleLocked();
    return;
  }
  unsent_.push_back(sequence);
  if (!deferring_ || unsent_.size() >= flush_at_) FlushLocked();
  NoteIdleLocked();
}

void Channel::AttachReleases(ReleaseWriter releases) {
  std::lock_guard lock(mutex_);
  if (unannounced_ > 0) AnnounceLocked();
  releases_ = std::move(releases);
  NoteIdleLocked();
}

void Channel::SetDeferring(bool deferring, size_t flush_at) {
  flush_at = std::max<size_t>(flush_at, 1);
  // (flush_at matters only while deferring.) A release that makes the channel busy meanwhile is
  // sent at the next call, as one after this call would be. Deferring as already is no change
  // either: deferring_ and flush_at_ are written only here, by the consumer's thread, so that
  // thread reads them without the lock.
  if (deferring ? deferring_ && flush_at_ == flush_at : idle_.load(std::memory_order_acquire)) {
    return;
  }
  std::lock_guard lock(mutex_);
  deferring_ = deferring;
  flush_at_ = flush_at;
  if (!deferring_) {
    FlushLocked();
    if (unannounced_ > 0) AnnounceLocked();
  }
  NoteIdleLocked();
}

void Channel::NoteIdleLocked() {
  idle_.store(!deferring_ && unsent_.empty() && unannounced_ == 0, std::memory_order_release);
}

void Channel::AnnounceLocked() {
  if (!releases_.Announce()) {
    unannounced_ = 0;
    return;
  }
  // Batches wait for these credits and no producer thread sleeps. A publishing thread takes the
  // region's releases itself; the I/O thread needs this message. A consumer still behind sends
  // it when it catches up (the releases stay unannounced until then), not while it has batches
  // to read: with a busy publisher, that woke the I/O thread for nothing.
  if (deferring_) return;
  unannounced_ = 0;
  // A full socket holds messages of this consumer, and the producer looks at the region when it
  // reads them; a producer gone has nobody to tell.
  (void)outbox_->TrySend(proto::EncodeRelease(writer_, {}));
}

arrow::Status Channel::Send(std::span<const uint8_t> message, int fd) {
  std::lock_guard lock(mutex_);
  ARROW_ASSIGN_OR_RAISE(bool sent,
                        fd < 0 ? outbox_->TrySend(message) : outbox_->TrySendWithFd(message, fd));
  if (!sent) return arrow::Status::IOError("socket to the producer is full");
  return arrow::Status::OK();
}

int64_t Channel::released() const {
  std::lock_guard lock(mutex_);
  return released_;
}

std::vector<Channel::Held>::iterator Channel::FindHeld(uint64_t sequence) {
  return std::find_if(held_.begin(), held_.end(),
                      [&](const Held& h) { return h.sequence == sequence; });
}

void Channel::FlushLocked() {
  while (!unsent_.empty()) {
    const size_t count = std::min<size_t>(unsent_.size(), proto::kMaxRun);
    std::span<const uint64_t> chunk(unsent_.data() + unsent_.size() - count, count);
    auto sent = outbox_->TrySend(proto::EncodeRelease(writer_, chunk));
    if (sent.ok() && !*sent) return;  // full: try again later
    // Sent, or the producer is gone (then there is nobody left to tell).
    released_ += static_cast<int64_t>(count);
    unsent_.resize(unsent_.size() - count);
  }
}

}  // namespace shmarrow::internal
