// Ring mode's batches: the producer's ring, mapped read-only once (from the Welcome's fd); a
// Batch message (or queue entry) points at a batch's metadata in it, which is copied out and
// parsed (or, for the layout of the batch before, only its values read), and the batch's buffers
// are read in place.
#pragma once

#include <memory>
#include <vector>

#include "batch_arena.h"
#include "batch_source.h"
#include "consumer_channel.h"
#include "metadata_template.h"
#include "shmarrow/types.h"

namespace shmarrow::internal {

class RingSource final : public BatchSource {
 public:
  /// Maps the ring memfd `ring_fd`, which must be sealed against resizing and writes.
  [[nodiscard]] static arrow::Result<std::unique_ptr<RingSource>> Open(
      int ring_fd, std::shared_ptr<Channel> channel, uint32_t credits, Validation validation);

  /// The whole ring, mapped read-only (the in-ring queue lies in it too).
  const std::shared_ptr<arrow::Buffer>& ring() const { return ring_; }

  arrow::Status Materialize(const protocol::Batch& message, uint32_t stream,
                            const std::shared_ptr<arrow::Schema>& schema,
                            std::vector<UniqueFd>& fds, EventQueue* out) override;

 private:
  RingSource(std::shared_ptr<arrow::Buffer> ring, std::shared_ptr<Channel> channel,
             uint32_t credits, Validation validation)
      : ring_(std::move(ring)),
        channel_(std::move(channel)),
        lease_target_(std::make_shared<const LeaseTarget>(LeaseTarget{channel_, ring_})),
        credits_(credits),
        validation_(validation) {}

  const std::shared_ptr<arrow::Buffer> ring_;
  const std::shared_ptr<Channel> channel_;
  const std::shared_ptr<const LeaseTarget> lease_target_;  // the channel and the ring, for leases
  const uint32_t credits_;
  const Validation validation_;
  std::vector<uint8_t> metadata_scratch_;  // the private copy of a batch's metadata
  size_t arena_bytes_ = 0;                 // what the last batch's objects needed
  BatchLayout layout_;                     // the stream's last layout Arrow's reader accepted
};

}  // namespace shmarrow::internal
