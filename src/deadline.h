// A point in time derived from a timeout in milliseconds, where -1 means never.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

namespace shmarrow::internal {

class Deadline {
 public:
  explicit Deadline(int timeout_ms)
      : infinite_(timeout_ms < 0),
        at_(std::chrono::steady_clock::now() + std::chrono::milliseconds(std::max(0, timeout_ms))) {}

  /// Milliseconds left for poll() and friends: -1 when infinite, never negative otherwise.
  [[nodiscard]] int remaining_ms() const {
    if (infinite_) return -1;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        at_ - std::chrono::steady_clock::now());
    return static_cast<int>(std::max<int64_t>(0, left.count()));
  }
  [[nodiscard]] bool expired() const {
    return !infinite_ && std::chrono::steady_clock::now() >= at_;
  }

 private:
  bool infinite_;
  std::chrono::steady_clock::time_point at_;
};

}  // namespace shmarrow::internal
