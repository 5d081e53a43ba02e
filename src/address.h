// The one test of what an address names, shared by the core (which refuses Flight addresses) and
// the Flight library (src/connect.cc, which serves them).
#pragma once

#include <string_view>

namespace shmarrow::internal {

/// grpc://, grpc+tcp:// or grpc+tls://: an Arrow Flight address; anything else is a UNIX socket
/// (a path, or "@name" in the abstract namespace).
[[nodiscard]] inline bool IsFlightAddress(std::string_view address) {
  return address.starts_with("grpc://") || address.starts_with("grpc+tcp://") ||
         address.starts_with("grpc+tls://");
}

}  // namespace shmarrow::internal
