// The subcommands of the `shmarrow` tool.
#pragma once

#include <arrow/status.h>

#include "cli_args.h"

namespace shmarrow::cli {

[[nodiscard]] arrow::Status RunSend(Args& args);
[[nodiscard]] arrow::Status RunRecv(Args& args);
[[nodiscard]] arrow::Status RunInspect(Args& args);

}  // namespace shmarrow::cli
