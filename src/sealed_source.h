// Sealed mode's batches: each Batch message carries a sealed memfd holding an Arrow IPC stream,
// mapped and validated (SharedStream) before its batches are handed out.
#pragma once

#include <string>
#include <vector>

#include "batch_source.h"
#include "consumer_channel.h"
#include "shmarrow/types.h"

namespace shmarrow::internal {

class SealedSource final : public BatchSource {
 public:
  /// `columns`: the projection applied to stream 0's batches (empty: none).
  SealedSource(std::shared_ptr<Channel> channel, uint32_t credits, Validation validation,
               std::vector<std::string> columns)
      : channel_(std::move(channel)),
        credits_(credits),
        validation_(validation),
        columns_(std::move(columns)) {}

  arrow::Status Materialize(const protocol::Batch& message, uint32_t stream,
                            const std::shared_ptr<arrow::Schema>& schema,
                            std::vector<UniqueFd>& fds, EventQueue* out) override;

 private:
  const std::shared_ptr<Channel> channel_;
  const uint32_t credits_;
  const Validation validation_;
  const std::vector<std::string> columns_;
};

}  // namespace shmarrow::internal
