// One mmap'ed region, unmapped exactly once.
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <cstddef>
#include <cstdint>
#include <utility>

namespace shmarrow::internal {

/// True when [p, p+length) lies inside [begin, begin+size); overflow-safe.
inline bool RangeContains(const void* begin, int64_t size, const void* p, int64_t length) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  const auto start = reinterpret_cast<uintptr_t>(begin);
  return addr >= start && length >= 0 && size >= 0 &&
         addr - start <= static_cast<uintptr_t>(size) &&
         static_cast<uintptr_t>(length) <= static_cast<uintptr_t>(size) - (addr - start);
}

class Mapping {
 public:
  /// MAP_SHARED, read-write: the producer's view of an arena it fills.
  [[nodiscard]] static arrow::Result<Mapping> MapWritable(int fd, int64_t size);
  /// MAP_SHARED, PROT_READ: a consumer's view; writes through it fault.
  [[nodiscard]] static arrow::Result<Mapping> MapReadOnly(int fd, int64_t size);

  Mapping() = default;
  Mapping(Mapping&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  Mapping& operator=(Mapping&& other) noexcept;
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { Unmap(); }

  [[nodiscard]] uint8_t* data() const { return data_; }
  [[nodiscard]] int64_t size() const { return size_; }
  [[nodiscard]] bool Contains(const void* p, int64_t length) const {
    return RangeContains(data_, size_, p, length);
  }

  /// Replaces the writable shared view with a private read-only view of the same file pages at the
  /// same address (MAP_FIXED), keeping every pointer into it valid. The kernel refuses F_SEAL_WRITE
  /// while a writable shared mapping exists; a private read-only one shares the pages but does not
  /// count as writable. Only the first `keep` bytes are mapped again; the rest is unmapped.
  [[nodiscard]] arrow::Status RemapReadOnlyPrivate(int fd, int64_t keep);

 private:
  Mapping(uint8_t* data, int64_t size) : data_(data), size_(size) {}
  static arrow::Result<Mapping> Map(int fd, int64_t size, int prot, const char* what);
  void Unmap() noexcept;

  uint8_t* data_ = nullptr;
  int64_t size_ = 0;
};

}  // namespace shmarrow::internal
