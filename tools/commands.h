// The subcommands of the `shmarrow` tool.
#pragma once

#include <arrow/status.h>

#include <string>

#include "cli_args.h"

namespace shmarrow::cli {

[[nodiscard]] arrow::Status RunSend(Args& args);
/// `send --mode ring|sealed`: publishes through a shmarrow::Producer.
[[nodiscard]] arrow::Status RunPublish(Args& args, const std::string& mode);
[[nodiscard]] arrow::Status RunRecv(Args& args);
[[nodiscard]] arrow::Status RunInspect(Args& args);

}  // namespace shmarrow::cli
