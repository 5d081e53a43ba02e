// What the Flight bridge and the Flight consumer agree on (docs/flight.md).
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "address.h"
#include "shmarrow/consumer.h"

namespace shmarrow::internal::flight {

/// Ticket of the published stream; descriptor path of its FlightInfo.
inline constexpr std::string_view kStreamTicket = "stream";
/// Prefix of a ticket whose remaining bytes are a request for the producer's handler.
inline constexpr std::string_view kRequestPrefix = "request:";
/// Action whose result advertises the producer's socket (see SocketAdvert).
inline constexpr std::string_view kSocketAction = "shmarrow.socket";

struct FlightAddress {
  bool tls = false;
  std::string host;
  int port = 0;
  /// The segments of the address's path ("grpc://h:1/a/b": {"a", "b"}); empty for none.
  std::vector<std::string> path;
};
/// Parses a Flight address; an error names what is wrong with it.
[[nodiscard]] arrow::Result<FlightAddress> ParseFlightAddress(const std::string& address);
/// 127.0.0.0/8, ::1 (bracketed or not) or "localhost".
[[nodiscard]] bool IsLoopbackHost(std::string_view host);

/// Where a bridge's producer listens, and what identifies it beyond the name: the kernel's boot id
/// (one per host and boot) and, for a filesystem socket, its device and inode (mount namespaces may
/// show another file under the same path). Abstract names need no inode: they belong to the network
/// namespace, which a client that reached the bridge over loopback shares.
struct SocketAdvert {
  std::string boot_id;
  uint64_t device = 0;
  uint64_t inode = 0;
  std::string socket;
};
/// The advert of `socket` on this host.
[[nodiscard]] arrow::Result<SocketAdvert> AdvertiseSocket(const std::string& socket);
/// "boot_id=..\ndevice=..\ninode=..\nsocket=<rest>"
[[nodiscard]] std::string EncodeAdvert(const SocketAdvert& advert);
/// Parses a peer's advert; every malformed part is an error naming it.
[[nodiscard]] arrow::Result<SocketAdvert> DecodeAdvert(std::string_view bytes);
/// OK when `advert` names a socket this process sees as the same one (same boot id; same device and
/// inode for a filesystem path); otherwise why not.
[[nodiscard]] arrow::Status CheckAdvertIsLocal(const SocketAdvert& advert);

/// The schema a consumer with `options` (columns, expect_schema) would receive from the producer
/// at `socket`, learnt without becoming its consumer: a describing Hello (docs/protocol.md).
[[nodiscard]] arrow::Result<std::shared_ptr<arrow::Schema>> DescribeProducer(
    const std::string& socket, const ConsumerOptions& options);

/// ConnectAny for Flight addresses (src/flight_consumer.cc).
[[nodiscard]] arrow::Result<std::shared_ptr<Consumer>> ConnectFlight(
    const std::string& address, const ConsumerOptions& options);

}  // namespace shmarrow::internal::flight
