#include "cli_args.h"

#include <arrow/status.h>

#include <algorithm>
#include <cctype>
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

std::string ClosestOption(const std::string& given, const std::vector<std::string>& known) {
  // Levenshtein distance, one row at a time.
  auto distance = [](const std::string& a, const std::string& b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diagonal = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t above = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
        diagonal = above;
      }
    }
    return row[b.size()];
  };
  std::string best;
  size_t best_distance = 3;  // more than two edits away is not a typo of it
  for (const auto& name : known) {
    // A long enough beginning of an option counts as one edit away ("--read-timeout").
    const bool abbreviation = given.size() >= 6 && name.rfind(given, 0) == 0;
    const size_t d = abbreviation ? 1 : distance(given, name);
    if (d < best_distance) {
      best = name;
      best_distance = d;
    }
  }
  return best;
}

arrow::Result<Args> Args::Parse(const std::vector<std::string>& argv,
                                const std::vector<OptionSpec>& options,
                                const std::vector<DeprecatedAlias>& aliases) {
  std::map<std::string, bool> takes_value;
  std::vector<std::string> known;
  for (const auto& option : options) {
    if (option.name.empty()) continue;
    takes_value[option.name] = !option.value.empty();
    known.push_back(option.name);
  }
  std::map<std::string, std::string> renamed;
  for (const auto& alias : aliases) {
    renamed[alias.old_name] = alias.name;
    known.push_back(alias.old_name);
  }
  known.insert(known.end(), {"--help", "--version"});

  Args args;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& arg = argv[i];
    const bool negative_number = arg.size() > 1 && std::isdigit(static_cast<unsigned char>(arg[1]));
    if (arg.size() < 2 || arg[0] != '-' || negative_number) {
      args.positional_.push_back(arg);
      continue;
    }
    const auto equals = arg.find('=');
    std::string name = arg.substr(0, equals);
    if (name == "--help" || name == "-h") {
      args.help_ = true;
      return args;
    }
    if (name == "--version") {
      args.version_ = true;
      return args;
    }
    if (auto alias = renamed.find(name); alias != renamed.end()) {
      args.warnings_.push_back(name + " is deprecated; use " + alias->second);
      name = alias->second;
    }
    auto option = takes_value.find(name);
    if (option == takes_value.end()) {
      std::string close = ClosestOption(name, known);
      if (auto alias = renamed.find(close); alias != renamed.end()) close = alias->second;
      return UsageError("unknown option " + name +
                        (close.empty() ? "" : " (did you mean " + close + "?)"));
    }
    if (!option->second) {
      if (equals != std::string::npos) return UsageError("option " + name + " takes no value");
      args.values_[name] = "";
    } else if (equals != std::string::npos) {
      args.values_[name] = arg.substr(equals + 1);
    } else {
      if (i + 1 >= argv.size()) return UsageError("option " + name + " needs a value");
      args.values_[name] = argv[++i];
    }
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
  if (suffix.empty())
    shift = 0;
  else if (suffix == "K" || suffix == "k" || suffix == "KiB")
    shift = 10;
  else if (suffix == "M" || suffix == "MiB")
    shift = 20;
  else if (suffix == "G" || suffix == "GiB")
    shift = 30;
  if (err != std::errc() || end == text.data() || shift < 0 || value < 0 ||
      value > (std::numeric_limits<int64_t>::max() >> shift)) {
    return UsageError(name + " expects a byte count (e.g. 4096, 64MiB, 1GiB), got '" + text + "'");
  }
  return value << shift;
}

arrow::Status Args::CheckAllUsed(const std::string& why) const {
  for (const auto& [name, value] : values_) {
    if (!used_.count(name)) return UsageError(name + " " + why);
  }
  return arrow::Status::OK();
}

arrow::Status Args::Reject(const std::string& name, const std::string& why) {
  used_.insert(name);
  if (values_.count(name)) return UsageError(name + " " + why);
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
