// The producer behind the public Producer: it ties together its parts — the memory strategy
// (producer_memory.h), one Session per consumer (producer_session.h), the handshake
// (handshake.h), the request pool (request_pool.h) and the socket I/O (producer_io.h) — under
// one mutex. producer.cc holds the public calls, producer_io.cc the I/O thread.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "block_cache.h"
#include "handshake.h"
#include "producer_io.h"
#include "producer_memory.h"
#include "producer_session.h"
#include "request_pool.h"
#include "shmarrow/producer.h"

namespace shmarrow::internal {

class ProducerImpl final : public Producer {
 public:
  ProducerImpl(std::string address, std::shared_ptr<arrow::Schema> schema, ProducerOptions options);
  ~ProducerImpl() override { Close(); }

  [[nodiscard]] arrow::Status Start();

  arrow::MemoryPool* pool() override;
  arrow::Status Publish(const std::shared_ptr<arrow::RecordBatch>& batch) override;
  arrow::Status ChangeSchema(std::shared_ptr<arrow::Schema> schema) override;
  arrow::Status End() override;
  void SetRequestHandler(RequestHandler handler) override;
  arrow::Status WaitForConsumers(int count, int timeout_ms) override;
  arrow::Status WaitUntilDrained(int timeout_ms) override;
  ProducerStats stats() const override;
  std::shared_ptr<arrow::Schema> schema() const override;
  void Close() override;

  /// A request handler's answer: queued for the requester once it has room (waiting per
  /// request_timeout_ms), after a Schema message if `new_schema` is set.
  [[nodiscard]] arrow::Status SendResponse(uint32_t consumer, uint32_t stream,
                                           std::shared_ptr<const arrow::Schema> new_schema,
                                           std::shared_ptr<Published> batch);
  ProducerMemory& memory() { return *memory_; }

 private:
  template <typename Predicate>
  arrow::Status WaitFor(std::unique_lock<std::mutex>& lock, int timeout_ms, Predicate ready,
                        std::string_view what);
  /// One slice of a wait for `ready` (under `lock`): announced in the wait block, so that a
  /// consumer writing a release into its region wakes it, after a last look at the regions.
  template <typename Predicate>
  void WaitSlice(std::unique_lock<std::mutex>& lock, int slice_ms, Predicate ready);
  /// Wakes the threads waiting in WaitFor (the condition variable's and the wait block's).
  void Notify();
  /// Takes the releases `s` wrote into its region into drained_ (killing it if they break the
  /// rules); true if there were any.
  bool Drain(Session& s);
  /// Takes the releases consumers wrote into their regions (a consumer whose region breaks the
  /// rules is killed); what they released goes to releasing_. True if anything was released.
  bool DrainRegions();
  /// Moves what the regions released (drained_) to releasing_, freed one per Publish.
  void DeferReleased();
  /// Drops released records, oldest first, until `records` of them were the last reference (or
  /// none are left).
  void FreeReleased(size_t records);
  bool HasRoom() const;         // no non-lossy consumer is a full backlog behind
  bool ReleasesWanted() const;  // a consumer's releases are worth reading (Session::ReleasesWanted)
  int64_t ActiveConsumers() const;
  /// Queues `out` for `s` and sends what can go.
  void Deliver(Session& s, Outgoing&& out);
  void Enqueue(Session& s, Outgoing&& out);
  void Kill(Session& s, const std::string& why, proto::ErrorCode code);
  void Reap();
  /// The request pool's runner: runs the handler, then sends its last answer (End or Error).
  void RunRequest(RequestPool::Job& job);

  // producer_io.cc: the I/O thread and what it does with each consumer's messages.
  void IoLoop();
  /// Closes connections that have not said Hello within handshake_timeout_ms; the milliseconds
  /// until the next such deadline (-1: none).
  int ExpireSilentConnections();
  void AcceptAll();
  /// Sends what is due to `s`; then, while what was sent calls for it (a message of the consumer
  /// to act on, or a consumer that may have gone to sleep on its queue), reads what it said and
  /// sends again. A loop, not recursion: the send path never calls back into the receive path.
  void Converse(Session& s, bool read_first);
  /// Reads and handles one message from `s`; false when none was waiting (or `s` died). Sets
  /// `to_send` when what it handled left something to send.
  bool ReadOne(Session& s, bool* to_send);
  arrow::Status Handle(Session& s, const uint8_t* data, int64_t size, std::vector<UniqueFd> fds,
                       bool* to_send);
  arrow::Status Admit(Session& s, Admission admission);
  /// Makes epoll report writability of s's socket too; a failure kills s (it would stall).
  void WatchWritable(Session& s);

  const std::string address_;
  const ProducerOptions options_;
  // Destroyed last: everything below may hold memory of it.
  std::unique_ptr<ProducerMemory> memory_;

  mutable std::mutex mutex_;
  std::shared_ptr<arrow::Schema> schema_;
  std::map<uint32_t, std::unique_ptr<Session>> sessions_;
  std::deque<std::shared_ptr<Published>> retained_;
  uint64_t next_sequence_ = 1;
  uint32_t next_session_ = 1;
  bool ended_ = false;
  bool closed_ = false;
  RequestHandler handler_;
  ProducerStats stats_;
  SendTools send_;  // under mutex_
  // Sessions' queues of outgoing messages allocate from here: their memory is reused.
  const std::shared_ptr<BlockCache> block_cache_ = std::make_shared<BlockCache>();
  std::vector<std::shared_ptr<Published>> released_records_;  // by Release, under mutex_
  std::vector<std::shared_ptr<Published>> dying_;  // the I/O thread's, dropped without mutex_
  bool records_dying_ = false;                     // dying_ is being emptied (under mutex_)
  std::vector<uint8_t> receive_buffer_ = std::vector<uint8_t>(proto::kMaxMessageSize);
  std::vector<uint64_t> released_;
  std::vector<std::shared_ptr<Published>> drained_;  // by DrainRegions, then deferred
  // Records the regions released, dropped one per Publish (FreeReleased) rather than all at
  // once: a burst of frees overflows malloc's per-thread cache, and the next batches' objects
  // then take its slow path. Waits for ring space, stats() and WaitUntilDrained drop them all.
  std::deque<std::shared_ptr<Published>, RecyclingAllocator<std::shared_ptr<Published>>> releasing_{
      RecyclingAllocator<std::shared_ptr<Published>>(block_cache_)};
  // The wait block's futex word and its count of waiters: in the ring, where consumers can wake
  // it; sealed mode (no regions) waits on these two private words.
  uint32_t private_wait_block_[2] = {0, 0};
  uint32_t* wait_word_ = private_wait_block_;

  Poller poller_;
  std::thread io_thread_;
  std::unique_ptr<RequestPool> requests_;
};

}  // namespace shmarrow::internal
