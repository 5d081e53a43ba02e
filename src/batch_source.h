// Where a consumer's batches live: how a Batch message becomes record batches, and how each
// batch's memory is held until it is released. Two sources: sealed (a memfd per batch,
// sealed_source.h) and ring (metadata and body in the producer's ring, ring_source.h).
#pragma once

#include <arrow/record_batch.h>
#include <arrow/status.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <variant>
#include <vector>

#include "block_cache.h"
#include "protocol.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal {

struct EndOfStream {};
/// What a stream delivers, in order.
using ConsumerEvent = std::variant<std::shared_ptr<arrow::RecordBatch>,
                                   std::shared_ptr<arrow::Schema>, EndOfStream, arrow::Status>;
/// A stream's undelivered events; an entry per batch, so its memory is reused.
using EventQueue = std::deque<ConsumerEvent, RecyclingAllocator<ConsumerEvent>>;

class BatchSource {
 public:
  virtual ~BatchSource() = default;
  /// Appends the batches `message` describes on `stream`, whose announced schema is `schema`, to
  /// `out`. `fds` came with the message.
  [[nodiscard]] virtual arrow::Status Materialize(const protocol::Batch& message, uint32_t stream,
                                                  const std::shared_ptr<arrow::Schema>& schema,
                                                  std::vector<UniqueFd>& fds, EventQueue* out) = 0;
};

}  // namespace shmarrow::internal
