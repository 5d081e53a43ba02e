// Connecting to a producer by address over any transport (library shmarrow::flight,
// libshmarrow_flight): the core library (shmarrow::shmarrow) reads UNIX sockets only and links no
// gRPC.
#pragma once

#include <arrow/result.h>

#include <memory>
#include <string>

#include "shmarrow/consumer.h"

namespace shmarrow {

/// grpc://, grpc+tcp:// or grpc+tls://: an Arrow Flight stream (a `shmarrow flight-serve` bridge
/// or any Flight server; docs/flight.md), read through shared memory instead when the address is a
/// bridge on this host and ConsumerOptions::Remote::upgrade_to_shared_memory allows it. Any other
/// address: Consumer::Connect.
[[nodiscard]] arrow::Result<std::shared_ptr<Consumer>> ConnectAny(
    const std::string& address, const ConsumerOptions& options = {});

}  // namespace shmarrow
