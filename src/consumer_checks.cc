#include "consumer_checks.h"

#include <unistd.h>

#include "schema_match.h"
#include "shmarrow/error.h"

namespace shmarrow::internal {

arrow::Status CheckProducerUid(const UnixSocket& socket, const std::string& address,
                               const ConsumerOptions& options) {
  ARROW_ASSIGN_OR_RAISE(auto peer, socket.Peer());
  if (UidAllowed(peer.uid, options.allowed_uids, options.allow_any_uid)) {
    return arrow::Status::OK();
  }
  return MakeError(arrow::StatusCode::IOError, ErrorCode::kRefused, "producer at '", address,
                   "' runs as uid ", peer.uid, ", which this consumer (uid ", ::geteuid(),
                   ") does not accept: allow it with allowed_uids or allow_any_uid");
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> ProjectColumns(
    std::shared_ptr<arrow::RecordBatch> batch, const std::vector<std::string>& columns) {
  if (columns.empty()) return batch;
  ARROW_ASSIGN_OR_RAISE(auto indices, ProjectionIndices(*batch->schema(), columns));
  return batch->SelectColumns(indices);
}

}  // namespace shmarrow::internal
