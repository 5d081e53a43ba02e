// A small option parser for the shmarrow subcommands: "--name value" and "--flag".
#pragma once

#include <arrow/result.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace shmarrow::cli {

/// A mistake in how a command was called: main() exits with status 2 instead of 1.
[[nodiscard]] arrow::Status UsageError(const std::string& message);
[[nodiscard]] bool IsUsageError(const arrow::Status& status);
/// `status` (if not OK) as a usage error, keeping its message.
[[nodiscard]] arrow::Status AsUsage(const arrow::Status& status);

class Args {
 public:
  /// `flags` take no value; every other "--name" takes the next argument.
  [[nodiscard]] static arrow::Result<Args> Parse(const std::vector<std::string>& argv,
                                                 const std::set<std::string>& flags);

  [[nodiscard]] bool Flag(const std::string& name);
  /// Whether the option was given (marks it used).
  [[nodiscard]] bool Has(const std::string& name);
  [[nodiscard]] std::string String(const std::string& name, const std::string& fallback);
  [[nodiscard]] arrow::Result<int64_t> Int(const std::string& name, int64_t fallback);
  [[nodiscard]] arrow::Result<double> Double(const std::string& name, double fallback);
  /// A byte count: an integer with an optional binary suffix K/KiB, M/MiB, G/GiB (e.g. "1MiB").
  [[nodiscard]] arrow::Result<int64_t> Bytes(const std::string& name, int64_t fallback);
  /// Positional arguments, in order.
  [[nodiscard]] const std::vector<std::string>& positional() const { return positional_; }
  /// Fails naming any option that was given but never asked for (a typo, or not for this command).
  [[nodiscard]] arrow::Status CheckAllUsed() const;
  /// Fails if `name` was given: it does not apply in this context (`why`).
  [[nodiscard]] arrow::Status Reject(const std::string& name, const std::string& why);

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
  std::vector<std::string> positional_;
};

}  // namespace shmarrow::cli
