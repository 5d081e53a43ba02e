#include "sealed_source.h"

#include <arrow/type.h>

#include "consumer_checks.h"
#include "schema_match.h"
#include "shared_stream_internal.h"
#include "shmarrow/shared_stream.h"

namespace shmarrow::internal {

namespace proto = protocol;

arrow::Status SealedSource::Materialize(const proto::Batch& message, uint32_t stream,
                                        const std::shared_ptr<arrow::Schema>& schema,
                                        std::vector<UniqueFd>& fds, EventQueue* out) {
  if (fds.size() != 1) {
    return proto::ProtocolError("sealed Batch ", message.sequence, " carries ", fds.size(),
                                " fds, expected 1");
  }
  ARROW_RETURN_NOT_OK(channel_->Hold(message.sequence, stream != 0, credits_));
  SharedStreamOptions stream_options;
  stream_options.validation = validation_;
  auto opened = SharedStream::Open(std::move(fds[0]), stream_options);
  if (!opened.ok()) {  // released all the same: the producer may reuse it
    channel_->Release(message.sequence);
    return opened.status().WithMessage("batch ", message.sequence, ": ", opened.status().message());
  }
  auto lease = LeaseBuffer::Make((*opened)->buffer(), message.sequence, channel_);
  const int64_t size = lease->size();
  const arrow::Status read = [&]() -> arrow::Status {
    ARROW_ASSIGN_OR_RAISE(auto reader, OpenValidatedStream(std::move(lease), validation_,
                                                           (*opened)->allocated_bytes()));
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto batch, reader->Next());
      if (batch == nullptr) return arrow::Status::OK();
      if (stream == 0) {
        ARROW_ASSIGN_OR_RAISE(batch, ProjectColumns(std::move(batch), columns_));
      }
      // The memfd carries its own schema: it must be the one announced for this stream (the
      // one the consumer reports), or readers would see types they were not told of.
      if (!batch->schema()->Equals(*schema, /*check_metadata=*/false)) {
        return proto::ProtocolError("the memfd holds a batch of schema ",
                                    DescribeSchema(*batch->schema()),
                                    ", but the producer announced ", DescribeSchema(*schema));
      }
      out->emplace_back(std::move(batch));
    }
  }();
  if (!read.ok()) {  // Arrow's message names a buffer or an offset, not the batch
    return read.WithMessage("batch ", message.sequence, " (a sealed memfd of ", size,
                            " bytes): ", read.message());
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal
