// What the arena and ring pools share: Arrow's MemoryPool contract for the cases they do not
// handle in place.
#pragma once

#include <arrow/memory_pool.h>

#include <algorithm>
#include <cstring>

namespace shmarrow::internal {

/// Reallocation that could not happen in place: a new block, the bytes moved, the old one freed.
inline arrow::Status MoveToNewBlock(arrow::MemoryPool* pool, int64_t old_size, int64_t new_size,
                                    int64_t alignment, uint8_t** ptr) {
  uint8_t* moved = nullptr;
  ARROW_RETURN_NOT_OK(pool->Allocate(new_size, alignment, &moved));
  std::memcpy(moved, *ptr, static_cast<size_t>(std::min(old_size, new_size)));
  pool->Free(*ptr, old_size, alignment);
  *ptr = moved;
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal
