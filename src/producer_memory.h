// The producer's memory strategy: where batches are built and how consumers find them. Ring mode
// places every batch in one shared ring; sealed mode writes each batch to a sealed memfd of its own.
#pragma once

#include <arrow/memory_pool.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "protocol.h"
#include "ring.h"
#include "shmarrow/producer.h"
#include "shmarrow/stream_writer.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

namespace proto = protocol;

/// Where a batch's Message flatbuffer lies in the ring.
struct RingLocation {
  int64_t offset = 0;
  int64_t length = 0;
};

/// A batch's Message flatbuffer written into the ring (for all columns or one projection).
struct Placement {
  RingLocation location;
  RingBlock metadata;
};

/// Sealed mode: the arena one batch is built in (a SharedStreamWriter, sealed when published).
struct Loan {
  explicit Loan(std::unique_ptr<SharedStreamWriter> w) : writer(std::move(w)) {}
  std::unique_ptr<SharedStreamWriter> writer;
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
  // asked for, and the buffers that had to be copied into the ring (those of a batch of the
  // cached layout share the block of its metadata for all columns instead).
  Placement all_columns;
  std::vector<std::pair<std::vector<int>, Placement>> projected;
  std::vector<std::shared_ptr<arrow::Buffer>> copies;
  int64_t bytes_copied = 0;
};

/// A consumer's queue in the ring's reserved part (ring_queue.h).
struct QueueSlot {
  int index = -1;
  uint8_t* address = nullptr;
  uint64_t offset = 0;  // from byte 0 of the ring
};

/// Where one request handler builds its answers, for as long as it runs.
class HandlerMemory {
 public:
  virtual ~HandlerMemory() = default;
  /// Where the handler allocates its batches (building them there spares a copy).
  virtual arrow::MemoryPool* pool(const std::shared_ptr<arrow::Schema>& schema) = 0;
  /// Puts an answer in shared memory (all columns).
  [[nodiscard]] virtual arrow::Result<std::shared_ptr<Published>> Prepare(
      const std::shared_ptr<arrow::RecordBatch>& batch) = 0;
};

/// The memory strategy, chosen by ProducerOptions::mode. Calls marked "under the producer's
/// mutex" are serialised by the caller; the rest are thread-safe.
class ProducerMemory {
 public:
  /// Ring mode reserves a queue for each of up to max_consumers consumers in the ring.
  [[nodiscard]] static arrow::Result<std::unique_ptr<ProducerMemory>> Create(
      const ProducerOptions& options);
  virtual ~ProducerMemory() = default;

  virtual proto::Mode mode() const = 0;
  /// The size of the memfd consumers map (0: none, each batch comes with its own).
  virtual uint64_t ring_size() const = 0;
  virtual int64_t page_size() const = 0;
  virtual int64_t bytes_in_use() const = 0;
  /// The fd a consumer maps for the whole stream (invalid: none).
  [[nodiscard]] virtual arrow::Result<UniqueFd> ConsumerFd() const = 0;

  /// Where the published stream's next batch is built (under the producer's mutex).
  virtual arrow::MemoryPool* StreamPool(const std::shared_ptr<arrow::Schema>& schema) = 0;
  /// StreamPool's answer where it never changes (ring mode), else nullptr; thread-safe.
  virtual arrow::MemoryPool* FixedStreamPool() { return nullptr; }
  /// Publish takes the arena the next batch was built in; StreamPool starts a new one (under
  /// the producer's mutex).
  virtual std::shared_ptr<Loan> TakeStreamLoan() = 0;
  /// The schema changed: the next batch is built in a new arena (under the producer's mutex).
  virtual void ForgetStreamLoan() = 0;
  /// Puts a batch of the published stream in shared memory (built in `loan`, if it was), with
  /// the metadata of each projection consumers ask for (column indices in the batch's schema);
  /// may wait per block_timeout_ms for room.
  [[nodiscard]] virtual arrow::Result<std::shared_ptr<Published>> PrepareForStream(
      const std::shared_ptr<arrow::RecordBatch>& batch, std::shared_ptr<Loan> loan,
      std::vector<std::vector<int>> projections) = 0;
  virtual std::unique_ptr<HandlerMemory> ForHandler() = 0;

  /// Where `p`'s metadata for `projection` (empty: all columns) lies, placing it now, without
  /// waiting, if none was placed (under the producer's mutex); nullopt where batches go in
  /// memfds of their own.
  [[nodiscard]] virtual arrow::Result<std::optional<RingLocation>> Locate(
      Published& p, const std::vector<int>& projection) = 0;

  /// A free consumer queue (ring mode), or nullopt (under the producer's mutex).
  virtual std::optional<QueueSlot> AcquireQueue() = 0;
  virtual void ReleaseQueue(int index) = 0;
  virtual bool queue_free() const = 0;
  virtual uint32_t queue_capacity() const = 0;
  /// Ring mode: the producer's wait block (futex.h) in the ring's reserved part, and its offset
  /// from byte 0 of the ring (sealed mode: null, 0).
  virtual uint32_t* wait_block() { return nullptr; }
  virtual uint64_t wait_block_offset() const { return 0; }
  /// Ring mode: how allocation waits for a full ring (Ring::SetWaitHook), set before it starts.
  virtual void SetWaitHook(Ring::WaitHook) {}

  /// Makes waiting and future allocations fail (shutdown).
  virtual void Close() = 0;
};

}  // namespace shmarrow::internal
