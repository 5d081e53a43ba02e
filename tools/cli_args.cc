#include "cli_args.h"

#include <arrow/status.h>

#include <charconv>
#include <limits>

namespace shmarrow::cli {
namespace {

class UsageDetail final : public arrow::StatusDetail {
 public:
  const char* type_id() const override { return "shmarrow-cli-usage"; }
  std::string ToString() const override { return "usage"; }
};

}  // namespace

arrow::Status UsageError(const std::string& message) {
  return arrow::Status(arrow::StatusCode::Invalid, message, std::make_shared<UsageDetail>());
}

bool IsUsageError(const arrow::Status& status) {
  return status.detail() != nullptr &&
         std::string(status.detail()->type_id()) == "shmarrow-cli-usage";
}

arrow::Status AsUsage(const arrow::Status& status) {
  return status.ok() ? status : UsageError(status.message());
}

arrow::Result<Args> Args::Parse(const std::vector<std::string>& argv,
                                const std::set<std::string>& flags) {
  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    if (arg.rfind("--", 0) != 0) {
      args.positional_.push_back(arg);
      continue;
    }
    if (flags.count(arg)) {
      args.values_[arg] = "";
      continue;
    }
    if (i + 1 >= argv.size()) return UsageError("option " + arg + " needs a value");
    args.values_[arg] = argv[++i];
  }
  return args;
}

bool Args::Flag(const std::string& name) {
  used_.insert(name);
  return values_.count(name) > 0;
}

bool Args::Has(const std::string& name) { return Flag(name); }

std::string Args::String(const std::string& name, const std::string& fallback) {
  used_.insert(name);
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

arrow::Result<int64_t> Args::Int(const std::string& name, int64_t fallback) {
  used_.insert(name);
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  int64_t value = 0;
  const auto& text = it->second;
  auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (err != std::errc() || end != text.data() + text.size()) {
    return UsageError(name + " expects an integer, got '" + text + "'");
  }
  return value;
}

arrow::Result<double> Args::Double(const std::string& name, double fallback) {
  used_.insert(name);
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  double value = 0;
  const auto& text = it->second;
  auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (err != std::errc() || end != text.data() + text.size()) {
    return UsageError(name + " expects a number, got '" + text + "'");
  }
  return value;
}

arrow::Result<int64_t> Args::Bytes(const std::string& name, int64_t fallback) {
  used_.insert(name);
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  const auto& text = it->second;
  int64_t value = 0;
  auto [end, err] = std::from_chars(text.data(), text.data() + text.size(), value);
  const std::string suffix(end, text.data() + text.size());
  int shift = -1;
  if (suffix.empty()) shift = 0;
  else if (suffix == "K" || suffix == "k" || suffix == "KiB") shift = 10;
  else if (suffix == "M" || suffix == "MiB") shift = 20;
  else if (suffix == "G" || suffix == "GiB") shift = 30;
  if (err != std::errc() || end == text.data() || shift < 0 || value < 0 ||
      value > (std::numeric_limits<int64_t>::max() >> shift)) {
    return UsageError(name + " expects a byte count (e.g. 4096, 64MiB, 1GiB), got '" + text + "'");
  }
  return value << shift;
}

arrow::Status Args::CheckAllUsed() const {
  for (const auto& [name, value] : values_) {
    if (!used_.count(name)) return UsageError("unknown option " + name);
  }
  return arrow::Status::OK();
}

arrow::Status Args::Reject(const std::string& name, const std::string& why) {
  used_.insert(name);
  if (values_.count(name)) return UsageError(name + " " + why);
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
