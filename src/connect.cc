// The one place that chooses the transport by address.
#include "shmarrow/connect.h"

#include "address.h"
#include "flight_internal.h"

namespace shmarrow {

arrow::Result<std::shared_ptr<Consumer>> ConnectAny(const std::string& address,
                                                    const ConsumerOptions& options) {
  if (internal::IsFlightAddress(address)) {
    return internal::flight::ConnectFlight(address, options);
  }
  return Consumer::Connect(address, options);
}

}  // namespace shmarrow
