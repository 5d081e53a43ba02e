// The subcommands of the `shmarrow` tool.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <string>

#include "cli_args.h"

namespace shmarrow::cli {

[[nodiscard]] arrow::Status RunSend(Args& args);
/// `send --mode ring|sealed`: publishes through a shmarrow::Producer.
[[nodiscard]] arrow::Status RunPublish(Args& args, const std::string& mode);
[[nodiscard]] arrow::Status RunRecv(Args& args);
[[nodiscard]] arrow::Status RunInspect(Args& args);
/// `flight-serve`: a FlightBridge until SIGINT/SIGTERM.
[[nodiscard]] arrow::Status RunFlightServe(Args& args);
/// The bearer token for Flight: --token-file's first line, else $SHMARROW_FLIGHT_TOKEN, else "".
[[nodiscard]] arrow::Result<std::string> FlightToken(Args& args);
/// The contents of the file named by `option`, or "" when it was not given.
[[nodiscard]] arrow::Result<std::string> OptionalFile(Args& args, const std::string& option);

}  // namespace shmarrow::cli
