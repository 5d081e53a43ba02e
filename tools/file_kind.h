// Telling an Arrow IPC file or stream from the files people mistake for one.
#pragma once

#include <arrow/status.h>

#include <string>

namespace shmarrow::cli {

/// OK unless `path` is recognisably something other than Arrow IPC (Parquet, Feather v1, ORC,
/// compressed, CSV/JSON or other text, empty): then an error saying what it is and, where pyarrow
/// can, how to convert it. An OK file may still turn out not to be valid Arrow IPC.
[[nodiscard]] arrow::Status CheckLooksLikeArrowIpc(const std::string& path);

}  // namespace shmarrow::cli
