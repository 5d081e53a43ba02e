// A small option parser for the shmarrow subcommands: "--name value", "--name=value" and "--flag",
// checked against the options each subcommand declares.
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

/// One option of a subcommand, or (empty name) a heading in its --help.
struct OptionSpec {
  std::string name;   // "--socket"
  std::string value;  // what it takes, for --help ("PATH"); empty: a flag
  std::string help;   // wrapped to the terminal's 80 columns by --help
};

/// An old spelling still accepted in place of `name`, with a warning.
struct DeprecatedAlias {
  std::string old_name;
  std::string name;
};

class Args {
 public:
  /// Parses `argv` (after the subcommand) against `options` and `aliases`. An option that is not
  /// declared is a usage error naming it (with the closest declared one, when one is close).
  /// "--help"/"-h" and "--version" anywhere an option may stand end parsing: see help() and
  /// version().
  [[nodiscard]] static arrow::Result<Args> Parse(const std::vector<std::string>& argv,
                                                 const std::vector<OptionSpec>& options,
                                                 const std::vector<DeprecatedAlias>& aliases = {});

  [[nodiscard]] bool help() const { return help_; }
  [[nodiscard]] bool version() const { return version_; }
  /// "--old is deprecated; use --new" for each deprecated spelling given.
  [[nodiscard]] const std::vector<std::string>& warnings() const { return warnings_; }

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
  /// Fails naming any option that was given but never asked for: declared by the command but
  /// meaningless the way it was called (`why`, e.g. "needs --mode ring|sealed").
  [[nodiscard]] arrow::Status CheckAllUsed(const std::string& why) const;
  /// Fails if `name` was given: it does not apply in this context (`why`).
  [[nodiscard]] arrow::Status Reject(const std::string& name, const std::string& why);

 private:
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
  std::vector<std::string> positional_;
  std::vector<std::string> warnings_;
  bool help_ = false;
  bool version_ = false;
};

/// The declared option closest to `given` by edit distance, or "" when none is close enough to
/// be a likely typo.
[[nodiscard]] std::string ClosestOption(const std::string& given,
                                        const std::vector<std::string>& known);

}  // namespace shmarrow::cli
