#include "cli_args.h"

#include <charconv>

namespace shmarrow::cli {

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
    if (i + 1 >= argv.size()) return arrow::Status::Invalid("option ", arg, " needs a value");
    args.values_[arg] = argv[++i];
  }
  return args;
}

bool Args::Flag(const std::string& name) {
  used_.insert(name);
  return values_.count(name) > 0;
}

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
    return arrow::Status::Invalid(name, " expects an integer, got '", text, "'");
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
    return arrow::Status::Invalid(name, " expects a number, got '", text, "'");
  }
  return value;
}

arrow::Status Args::CheckAllUsed() const {
  for (const auto& [name, value] : values_) {
    if (!used_.count(name)) return arrow::Status::Invalid("unknown option ", name);
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
