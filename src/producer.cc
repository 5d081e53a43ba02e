#include "shmarrow/producer.h"

#include <algorithm>
#include <optional>

#include "deadline.h"
#include "producer_impl.h"
#include "schema_match.h"
#include "shmarrow/error.h"

namespace shmarrow {
namespace internal {
namespace {

// The longest a producer thread sleeps before it looks at the consumers' regions again.
constexpr int kWaitSliceMs = 5;
// Released records Publish drops: as many as it makes (malloc's cache then neither runs dry nor
// overflows); a burst is worked off once it would pin too much.
constexpr size_t kFreedPerPublish = 1;
// Released records kept for later at most (each pins its batch's memory, in sealed mode an fd).
constexpr size_t kMaxDeferredReleases = 256;

/// Hands one request's answers to the producer: built in the handler's memory, sent on its
/// stream.
class ResponseWriterImpl final : public ResponseWriter {
 public:
  ResponseWriterImpl(ProducerImpl* producer, uint32_t consumer, uint32_t stream)
      : producer_(producer),
        consumer_(consumer),
        stream_(stream),
        memory_(producer->memory().ForHandler()) {}

  arrow::MemoryPool* pool() override { return memory_->pool(producer_->schema()); }

  arrow::Status Write(const std::shared_ptr<arrow::RecordBatch>& batch) override {
    ARROW_ASSIGN_OR_RAISE(auto published, memory_->Prepare(batch));
    std::shared_ptr<const arrow::Schema> new_schema;
    if (announced_ == nullptr || !announced_->Equals(*batch->schema())) {
      announced_ = batch->schema();
      new_schema = announced_;
    }
    return producer_->SendResponse(consumer_, stream_, std::move(new_schema), std::move(published));
  }

 private:
  ProducerImpl* producer_;
  uint32_t consumer_;
  uint32_t stream_;
  std::shared_ptr<arrow::Schema> announced_;
  std::unique_ptr<HandlerMemory> memory_;
};

}  // namespace

ProducerImpl::ProducerImpl(std::string address, std::shared_ptr<arrow::Schema> schema,
                           ProducerOptions options)
    : address_(std::move(address)),
      options_(std::move(options)),
      schema_(std::move(schema)),
      handler_(options_.request_handler) {}

arrow::Status ProducerImpl::Start() {
  ARROW_ASSIGN_OR_RAISE(memory_, ProducerMemory::Create(options_));
  if (uint32_t* block = memory_->wait_block()) wait_word_ = block;
  // A full ring waits as Publish does, looking at the release regions.
  memory_->SetWaitHook([this](int slice_ms, const std::function<bool()>& ready) {
    std::unique_lock lock(mutex_);
    FreeReleased(SIZE_MAX);  // the space waited for
    if (!closed_) WaitSlice(lock, slice_ms, ready);
  });
  stats_.page_size = memory_->page_size();
  send_.memory = memory_.get();
  requests_ =
      std::make_unique<RequestPool>(options_, [this](RequestPool::Job& job) { RunRequest(job); });
  ARROW_RETURN_NOT_OK(poller_.Open(address_, options_.socket_mode));
  io_thread_ = std::thread([this] { IoLoop(); });
  return arrow::Status::OK();
}

void ProducerImpl::SetRequestHandler(RequestHandler handler) {
  std::lock_guard lock(mutex_);
  handler_ = std::move(handler);
}

std::shared_ptr<arrow::Schema> ProducerImpl::schema() const {
  std::lock_guard lock(mutex_);
  return schema_;
}

arrow::MemoryPool* ProducerImpl::pool() {
  // Asked for once per batch built: no lock where the answer never changes.
  if (arrow::MemoryPool* fixed = memory_->FixedStreamPool()) return fixed;
  std::lock_guard lock(mutex_);
  return memory_->StreamPool(schema_);
}

void ProducerImpl::Notify() {
  if (std::atomic_ref<uint32_t>(wait_word_[1]).load() == 0) return;  // nobody waits
  std::atomic_ref<uint32_t>(wait_word_[0]).fetch_add(1);
  FutexWake(wait_word_);
}

bool ProducerImpl::Drain(Session& s) {
  const size_t before = drained_.size();
  auto status = s.DrainRegion(&drained_);
  if (!status.ok()) Kill(s, status.message(), proto::ErrorCode::kProtocol);
  return drained_.size() > before;
}

bool ProducerImpl::DrainRegions() {
  bool any = false;
  bool killed = false;
  for (auto& [id, s] : sessions_) {
    const bool was_dead = s->dead();
    if (Drain(*s)) {
      any = true;
      // What waited for its credits goes now. Only then: a Pump that writes nothing would
      // still wake a consumer asleep since the last entry, for nothing.
      if (s->held_back()) Converse(*s, /*read_first=*/false);
    }
    killed |= !was_dead && s->dead();
  }
  DeferReleased();
  if (killed) Reap();
  if (any) Notify();  // other threads may wait for the room or the drain this made
  return any;
}

void ProducerImpl::DeferReleased() {
  for (auto& record : drained_) releasing_.push_back(std::move(record));
  drained_.clear();
}

void ProducerImpl::FreeReleased(size_t records) {
  size_t freed = 0;
  while (!releasing_.empty() && (freed < records || releasing_.size() > kMaxDeferredReleases)) {
    // Only a count of the work done: the I/O thread may drop another copy meanwhile.
    freed += releasing_.front().use_count() == 1;
    releasing_.pop_front();  // the ring's blocks come back here, without a thread hop
  }
}

template <typename Predicate>
void ProducerImpl::WaitSlice(std::unique_lock<std::mutex>& lock, int slice_ms, Predicate ready) {
  std::atomic_ref<uint32_t> waiters(wait_word_[1]);
  waiters.fetch_add(1);
  // Announced, then a last look (both sequentially consistent, as a consumer's release and its
  // look at the waiters): a release written meanwhile is seen here or wakes the futex. The
  // I/O thread and other producer threads change the word under the mutex held here. Each sleep
  // adds one to it, so that a consumer wakes each sleep once, not once per release.
  const uint32_t seen = std::atomic_ref<uint32_t>(wait_word_[0]).fetch_add(1) + 1;
  // The regions' counts too, read before they are drained: a release written after that look
  // ends the sleep at once, even if the consumer's wake came before the sleep began.
  thread_local std::vector<FutexWatch> watches;
  watches.assign(1, FutexWatch{wait_word_, seen, nullptr});
  for (const auto& [id, s] : sessions_) {
    if (auto watch = s->ReleasesWatch()) watches.push_back(*std::move(watch));
  }
  if (!DrainRegions() && !ready()) {
    lock.unlock();
    // An error here (none is expected for a mapped word) only ends this slice early.
    (void)FutexWaitAny(watches, slice_ms);
    lock.lock();
  }
  watches.clear();  // the regions' mappings are not kept past the wait
  waiters.fetch_sub(1);
}

template <typename Predicate>
arrow::Status ProducerImpl::WaitFor(std::unique_lock<std::mutex>& lock, int timeout_ms,
                                    Predicate ready, std::string_view what) {
  DrainRegions();
  bool is_ready = ready();
  // The clock is read only when the first look finds it not ready (a Publish with room reads none).
  std::optional<Deadline> deadline;
  if (!closed_ && !is_ready) deadline.emplace(timeout_ms);
  while (!closed_ && !is_ready && !deadline->expired()) {
    // In slices: a consumer's release that wakes nobody (it looked before the announcement,
    // or it is hostile) costs at most one slice.
    WaitSlice(lock, deadline->Slice(kWaitSliceMs), [&] { return closed_ || ready(); });
    DrainRegions();
    is_ready = ready();
  }
  if (is_ready) return arrow::Status::OK();
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
  return std::none_of(sessions_.begin(), sessions_.end(),
                      [](const auto& entry) { return entry.second->Backlogged(); });
}

bool ProducerImpl::ReleasesWanted() const {
  return std::any_of(sessions_.begin(), sessions_.end(),
                     [](const auto& entry) { return entry.second->ReleasesWanted(); });
}

int64_t ProducerImpl::ActiveConsumers() const {
  return std::count_if(sessions_.begin(), sessions_.end(),
                       [](const auto& entry) { return entry.second->active(); });
}

arrow::Status ProducerImpl::Publish(const std::shared_ptr<arrow::RecordBatch>& batch) {
  std::shared_ptr<Loan> loan;
  std::vector<std::vector<int>> projections;  // what consumers ask for, by column index
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
                       DescribeSchema(*batch->schema()), " differs from the announced schema ",
                       DescribeSchema(*schema_), "; call ChangeSchema first");
    }
    // Back-pressure: a consumer that does not keep up holds the producer back (unless lossy).
    // The regions are read (by WaitFor) only when room or credits run short: a ring that fills
    // meanwhile reads them as it waits.
    if (!HasRoom() || ReleasesWanted()) {
      ARROW_RETURN_NOT_OK(WaitFor(
          lock, options_.block_timeout_ms, [this] { return HasRoom(); },
          "room: a consumer is a full backlog behind"));
    }
    // Just before this batch's own allocations, which reuse what this frees.
    FreeReleased(kFreedPerPublish);
    loan = memory_->TakeStreamLoan();
    // Taken under this lock rather than a second one (a consumer joining before the batch is
    // delivered gets its projection placed then).
    for (const auto& [id, s] : sessions_) {
      if (!s->active() || s->projection_names().empty()) continue;
      // By name, in this batch's schema: a session's projection indexes the schema last sent to
      // it, which is older while a Schema message waits in its queue. (A consumer whose columns
      // this schema lacks is dropped when that Schema message is sent.)
      auto indices = ProjectionIndices(*batch->schema(), s->projection_names());
      if (indices.ok()) projections.push_back(*std::move(indices));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto published,
                        memory_->PrepareForStream(batch, std::move(loan), std::move(projections)));
  // The sleeping consumers' futex wakes, made after the mutex is released; the buffers swap with
  // send_'s, so that neither allocates once grown.
  thread_local std::vector<const uint32_t*> wakes;
  {
    std::lock_guard lock(mutex_);
    published->sequence = next_sequence_++;
    stats_.published++;
    stats_.bytes_copied += published->bytes_copied;
    send_.defer_wakes = true;
    for (auto& [id, s] : sessions_) {
      if (!s->active()) continue;
      Outgoing out;
      out.batch = published;
      Deliver(*s, std::move(out));
    }
    send_.defer_wakes = false;
    wakes.clear();
    wakes.swap(send_.wakes);
    if (options_.retain > 0) {
      retained_.push_back(published);
      if (retained_.size() > static_cast<size_t>(options_.retain)) retained_.pop_front();
    }
    Reap();  // a reaped consumer's queue slot stays in the ring: a wake there is only spurious
  }
  for (const uint32_t* word : wakes) FutexWake(word);
  return arrow::Status::OK();
}

arrow::Status ProducerImpl::ChangeSchema(std::shared_ptr<arrow::Schema> schema) {
  if (schema == nullptr) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput,
                     "ChangeSchema needs a schema");
  }
  // options_, not memory_: Listen checks the first schema here before Start() makes the memory.
  if (options_.mode == MemoryMode::kRing) {
    auto no_dictionaries = CheckNoDictionaries(*schema);
    if (!no_dictionaries.ok()) {
      return arrow::Status::NotImplemented(no_dictionaries.message(), ": use sealed mode");
    }
  }
  std::lock_guard lock(mutex_);
  if (ended_ || closed_) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput, "the stream has ended");
  }
  schema_ = std::move(schema);
  if (memory_ != nullptr) memory_->ForgetStreamLoan();
  for (auto& [id, s] : sessions_) {
    if (!s->active()) continue;
    Outgoing out;
    out.type = proto::Type::kSchema;
    out.schema = schema_;
    Deliver(*s, std::move(out));
  }
  Reap();
  return arrow::Status::OK();
}

arrow::Status ProducerImpl::End() {
  std::lock_guard lock(mutex_);
  if (ended_) return arrow::Status::OK();
  ended_ = true;
  for (auto& [id, s] : sessions_) {
    if (!s->active()) continue;
    Outgoing out;
    out.type = proto::Type::kEnd;
    Deliver(*s, std::move(out));
  }
  Reap();
  return arrow::Status::OK();
}

void ProducerImpl::Enqueue(Session& s, Outgoing&& out) {
  stats_.dropped += static_cast<int64_t>(s.Enqueue(send_, std::move(out)));
}

void ProducerImpl::Deliver(Session& s, Outgoing&& out) {
  Enqueue(s, std::move(out));
  Converse(s, /*read_first=*/false);
}

void ProducerImpl::Kill(Session& s, const std::string& why, proto::ErrorCode code) {
  s.Kill(send_.writer, why, code);
}

void ProducerImpl::Reap() {
  bool any = false;
  for (auto it = sessions_.begin(); it != sessions_.end();) {
    Session& s = *it->second;
    if (s.dead()) {
      // Its requests that wait for a worker are cancelled; running ones find it gone.
      requests_->Cancel(s.id());
      poller_.Remove(s.socket().fd());
      if (s.queue_slot() >= 0) memory_->ReleaseQueue(s.queue_slot());
      it = sessions_.erase(it);  // what it held is released here
      any = true;
    } else {
      ++it;
    }
  }
  if (any) Notify();
}

void ProducerImpl::RunRequest(RequestPool::Job& job) {
  arrow::Status status;
  {
    ResponseWriterImpl response(this, job.consumer, job.stream);
    status = job.handler(job.request, response);
  }
  std::lock_guard lock(mutex_);
  requests_->Finished(job.consumer, job.stream);
  auto it = sessions_.find(job.consumer);
  if (it == sessions_.end() || it->second->dead()) return;
  Outgoing out;
  out.stream = job.stream;
  out.type = status.ok() ? proto::Type::kEnd : proto::Type::kError;
  out.error = {proto::ErrorCode::kHandler, status.ToString()};
  Deliver(*it->second, std::move(out));
}

arrow::Status ProducerImpl::SendResponse(uint32_t consumer, uint32_t stream,
                                         std::shared_ptr<const arrow::Schema> new_schema,
                                         std::shared_ptr<Published> batch) {
  std::unique_lock lock(mutex_);
  auto find = [&]() -> Session* {
    auto it = sessions_.find(consumer);
    return it == sessions_.end() || !it->second->active() ? nullptr : it->second.get();
  };
  ARROW_RETURN_NOT_OK(WaitFor(
      lock, options_.request_timeout_ms,
      [&] {
        Session* s = find();
        return s == nullptr || s->ResponseRoom();
      },
      "room: the requester is a full backlog behind"));
  Session* s = find();
  if (s == nullptr) {
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
    Enqueue(*s, std::move(out));
  }
  Outgoing out;
  out.stream = stream;
  out.batch = std::move(batch);
  Deliver(*s, std::move(out));
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
        auto drained = [&] {
          Reap();  // a connection that just died returns what it held now, not on the I/O thread
          FreeReleased(SIZE_MAX);
          return !records_dying_ &&
                 std::all_of(sessions_.begin(), sessions_.end(),
                             [](const auto& entry) { return entry.second->in_flight() == 0; });
        };
        if (!drained()) return false;
        // Then what consumers said is taken now, not on the I/O thread: a release in a region
        // is seen before the messages sent ahead of it (a Bye, the connection's close).
        for (auto& [id, s] : sessions_) Converse(*s, /*read_first=*/true);
        released_records_.clear();
        return drained();
      },
      "drain: consumers still hold batches");
}

ProducerStats ProducerImpl::stats() const {
  std::lock_guard lock(mutex_);
  // Releases written into regions count as soon as they are there: taken now, as a wait would.
  const_cast<ProducerImpl*>(this)->DrainRegions();
  const_cast<ProducerImpl*>(this)->FreeReleased(SIZE_MAX);  // ring_bytes_in_use counts them
  ProducerStats out = stats_;
  out.consumers = ActiveConsumers();
  out.in_flight = 0;
  for (const auto& [id, s] : sessions_) out.in_flight += static_cast<int64_t>(s->in_flight());
  out.ring_bytes_in_use = memory_->bytes_in_use();
  return out;
}

void ProducerImpl::Close() {
  {
    std::lock_guard lock(mutex_);
    if (closed_) return;
    closed_ = true;
    if (poller_.opened()) {
      for (auto& [id, s] : sessions_) Kill(*s, "producer closed", proto::ErrorCode::kShutdown);
    }
    Notify();
  }
  if (poller_.opened()) poller_.Wake();
  if (io_thread_.joinable()) io_thread_.join();
  if (memory_ != nullptr) memory_->Close();  // allocations blocked on a full ring give up
  if (requests_ != nullptr) requests_->Stop();
  std::lock_guard lock(mutex_);
  sessions_.clear();
  retained_.clear();
  releasing_.clear();
  if (memory_ != nullptr) memory_->ForgetStreamLoan();
  poller_.CloseListener();  // removes the socket file
}

}  // namespace internal

arrow::Result<std::shared_ptr<Producer>> Producer::Listen(const std::string& address,
                                                          std::shared_ptr<arrow::Schema> schema,
                                                          const ProducerOptions& options) {
  if (schema == nullptr) {
    return MakeError(arrow::StatusCode::Invalid, ErrorCode::kBadInput, "Producer needs a schema");
  }
  auto producer = std::make_shared<internal::ProducerImpl>(address, schema, options);
  ARROW_RETURN_NOT_OK(producer->ChangeSchema(schema));  // checks the schema fits the mode
  ARROW_RETURN_NOT_OK(producer->Start());
  return producer;
}

}  // namespace shmarrow
