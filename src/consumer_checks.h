// What every kind of consumer does alike: accept only an allowed producer, and project batches.
#pragma once

#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <memory>
#include <string>
#include <vector>

#include "shmarrow/consumer.h"
#include "unix_socket.h"

namespace shmarrow::internal {

/// The producer's uid (SO_PEERCRED) must be this process's, or one the options allow: anyone
/// may bind an abstract socket name first.
[[nodiscard]] arrow::Status CheckProducerUid(const UnixSocket& socket, const std::string& address,
                                             const ConsumerOptions& options);

/// `batch` with only `columns`, without copying (all of it when `columns` is empty).
[[nodiscard]] arrow::Result<std::shared_ptr<arrow::RecordBatch>> ProjectColumns(
    std::shared_ptr<arrow::RecordBatch> batch, const std::vector<std::string>& columns);

}  // namespace shmarrow::internal
