#include "file_kind.h"

#include <arrow/buffer.h>
#include <arrow/io/file.h>

#include <algorithm>
#include <filesystem>
#include <string_view>

namespace shmarrow::cli {
namespace {

constexpr int64_t kHeadBytes = 4096;

/// A python3 one-liner that reads `path` with `reader` (from the pyarrow modules in `imports`)
/// and writes it as an uncompressed Arrow IPC file next to it.
std::string ConvertHint(const std::string& path, const std::string& imports,
                        const std::string& reader) {
  const std::string target = std::filesystem::path(path).replace_extension(".arrow").string();
  return "; convert it with: python3 -c \"import " + imports +
         ", pyarrow.feather as feather; feather.write_feather(" + reader + "('" + path + "'), '" +
         target + "', compression='uncompressed')\"";
}

/// Printable text (UTF-8 allowed): no control characters but tab, CR and LF.
bool IsText(std::string_view head) {
  return std::all_of(head.begin(), head.end(), [](char c) {
    const auto byte = static_cast<unsigned char>(c);
    return byte >= 0x20 || c == '\t' || c == '\n' || c == '\r';
  });
}

}  // namespace

arrow::Status CheckLooksLikeArrowIpc(const std::string& path) {
  ARROW_ASSIGN_OR_RAISE(auto file, arrow::io::ReadableFile::Open(path));
  ARROW_ASSIGN_OR_RAISE(const int64_t size, file->GetSize());
  ARROW_ASSIGN_OR_RAISE(auto head_buffer, file->ReadAt(0, std::min(size, kHeadBytes)));
  const std::string_view head(reinterpret_cast<const char*>(head_buffer->data()),
                              static_cast<size_t>(head_buffer->size()));
  auto starts = [&](std::string_view magic) { return head.substr(0, magic.size()) == magic; };
  auto is = [&](const std::string& what, const std::string& hint = "") {
    return arrow::Status::Invalid(path, " is ", what, ", not Arrow IPC", hint);
  };

  if (size == 0) return is("empty");
  // Arrow's own formats first: a file ("ARROW1") or a stream (continuation marker).
  if (starts("ARROW1") || starts("\xFF\xFF\xFF\xFF")) return arrow::Status::OK();
  if (starts("PAR1")) {
    return is("a Parquet file", ConvertHint(path, "pyarrow.parquet as pq", "pq.read_table"));
  }
  if (starts("FEA1")) {
    return is("a Feather v1 file (the format before Arrow IPC)",
              ConvertHint(path, "pyarrow.feather as v1", "v1.read_table"));
  }
  if (starts("ORC")) {
    return is("an ORC file", ConvertHint(path, "pyarrow.orc as orc", "orc.read_table"));
  }
  if (starts("\x1F\x8B")) return is("gzip-compressed (decompress it first)");
  if (starts("\x28\xB5\x2F\xFD")) return is("zstd-compressed (decompress it first)");
  if (IsText(head)) {
    const std::string_view first_line = head.substr(0, head.find('\n'));
    if (starts("{") || starts("[")) {
      return is("JSON text", ConvertHint(path, "pyarrow.json as js", "js.read_json"));
    }
    if (first_line.find_first_of(",\t;|") != std::string_view::npos) {
      return is("CSV text", ConvertHint(path, "pyarrow.csv as csv", "csv.read_csv"));
    }
    return is("a text file");
  }
  return arrow::Status::OK();  // maybe a stream in the pre-0.15 format (no continuation marker)
}

}  // namespace shmarrow::cli
