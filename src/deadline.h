// A point in time derived from a timeout in milliseconds, where a negative timeout means never.
// The one way the library and the Python binding bound their waits.
#pragma once

#include <algorithm>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace shmarrow::internal {

class Deadline {
 public:
  explicit Deadline(int64_t timeout_ms)
      : infinite_(timeout_ms < 0),
        // No clock read for a wait without end (every blocking read makes one of these).
        at_(infinite_ ? std::chrono::steady_clock::time_point::max()
                      : std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms)) {}

  /// Milliseconds left for poll() and friends: -1 when infinite, never negative otherwise.
  [[nodiscard]] int remaining_ms() const {
    if (infinite_) return -1;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        at_ - std::chrono::steady_clock::now());
    return static_cast<int>(std::clamp<int64_t>(left.count(), 0, INT_MAX));
  }
  [[nodiscard]] bool expired() const {
    return !infinite_ && std::chrono::steady_clock::now() >= at_;
  }
  /// Milliseconds to wait now when a wait is cut into slices of at most `slice`.
  [[nodiscard]] int Slice(int slice) const {
    const int left = remaining_ms();
    return left < 0 ? slice : std::min(slice, left);
  }

  /// Waits on `cv` (whose mutex `lock` holds) until `ready()` or the deadline; returns ready().
  template <typename Predicate>
  bool Wait(std::condition_variable& cv, std::unique_lock<std::mutex>& lock,
            Predicate ready) const {
    if (!infinite_) return cv.wait_until(lock, at_, ready);
    cv.wait(lock, ready);
    return true;
  }

 private:
  bool infinite_;
  std::chrono::steady_clock::time_point at_;
};

}  // namespace shmarrow::internal
