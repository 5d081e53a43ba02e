// libFuzzer target: the bounds-checked IPC Message locator and rewriter (src/flatbuffer_patch.cc)
// on arbitrary bytes, copied into an exactly sized buffer so ASan sees any read or write past it.
// Invariants: whatever the locator returns lies inside the message; CheckNotCompressed refuses
// what the locator refuses or finds compressed; rewriting with the recorded
// lengths succeeds and changes exactly the offsets (and bodyLength); wrong lengths change nothing.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "flatbuffer_patch.h"

namespace fb = shmarrow::internal;

namespace {

[[noreturn]] void Fail(const char* what) {
  std::fprintf(stderr, "flatbuffer_fuzz: %s\n", what);
  std::abort();
}

constexpr int64_t kBufferStruct = 16;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;  // nothing to locate (and memcmp would get a null pointer)
  const auto n = static_cast<int64_t>(size);
  std::vector<uint8_t> bytes(data, data + size);
  auto fields = fb::LocateMessageFields(bytes.data(), n);
  const bool plain = fb::CheckNotCompressed(bytes.data(), n).ok();
  if (plain && (!fields.ok() || fields->compressed)) Fail("compression check accepted bad input");
  if (!fields.ok()) {
    // Rewriting must fail the same way and leave the bytes alone.
    if (fb::RewriteBufferOffsets(bytes.data(), n, {}, {}).ok())
      Fail("rewrite accepted what locate refused");
    if (std::memcmp(bytes.data(), data, size) != 0) Fail("failed rewrite changed bytes");
    return 0;
  }
  if (fields->body_length_at >= 0 && fields->body_length_at > n - 8) Fail("bodyLength outside");
  if (fields->num_buffers < 0) Fail("negative buffer count");
  if (fields->num_buffers > 0 &&
      (fields->buffers_at < 0 || fields->buffers_at > n - fields->num_buffers * kBufferStruct)) {
    Fail("buffers outside the message");
  }
  const auto count = static_cast<size_t>(fields->num_buffers);
  std::vector<int64_t> lengths(count), offsets(count);
  for (size_t i = 0; i < count; ++i) {
    std::memcpy(&lengths[i], bytes.data() + fields->buffers_at + i * kBufferStruct + 8, 8);
    offsets[i] = static_cast<int64_t>(i) * 64 + 8;
  }
  // Wrong count, then a wrong length: refused, nothing written.
  offsets.push_back(0);
  lengths.push_back(0);
  if (fb::RewriteBufferOffsets(bytes.data(), n, offsets, lengths).ok())
    Fail("wrong count accepted");
  offsets.pop_back();
  lengths.pop_back();
  if (count > 0) {
    lengths[0] ^= 1;
    if (fb::RewriteBufferOffsets(bytes.data(), n, offsets, lengths).ok())
      Fail("wrong length accepted");
    lengths[0] ^= 1;
    // A refused rewrite stops at the first mismatch, so nothing was written before it.
    if (std::memcmp(bytes.data(), data, size) != 0) Fail("refused rewrite changed bytes");
  }
  auto rewritten = fb::RewriteBufferOffsets(bytes.data(), n, offsets, lengths);
  if (!rewritten.ok()) Fail("rewrite with the recorded lengths refused");
  fb::SetBodyLength(bytes.data(), *rewritten, 4096);
  // Only the offsets and bodyLength may have changed.
  std::vector<uint8_t> expected(data, data + size);
  for (size_t i = 0; i < count; ++i) {
    std::memcpy(expected.data() + fields->buffers_at + i * kBufferStruct, &offsets[i], 8);
  }
  if (fields->body_length_at >= 0) {
    const int64_t body = 4096;
    std::memcpy(expected.data() + fields->body_length_at, &body, 8);
  }
  if (expected != bytes) Fail("rewrite changed bytes other than offsets and bodyLength");
  return 0;
}
