// Helpers shared by the C++ tests: status assertions, fd accounting, memfds holding given bytes,
// reading a stream back, and walking the messages of an IPC stream held in memory.
#pragma once

#include <arrow/api.h>
#include <arrow/ipc/writer.h>
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "flatbuffer_patch.h"
#include "shmarrow/producer.h"
#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::test_util {

inline const arrow::Status& ToStatus(const arrow::Status& status) { return status; }
template <typename T>
const arrow::Status& ToStatus(const arrow::Result<T>& result) {
  return result.status();
}

}  // namespace shmarrow::test_util

#define SHM_CONCAT_INNER(a, b) a##b
#define SHM_CONCAT(a, b) SHM_CONCAT_INNER(a, b)

/// Fails the test (fatally) when `expr`, a Status or Result, is not OK, printing the status.
#define ASSERT_OK(expr)                                                              \
  do {                                                                               \
    const ::arrow::Status _shm_status = ::shmarrow::test_util::ToStatus((expr));     \
    ASSERT_TRUE(_shm_status.ok()) << #expr << " failed: " << _shm_status.ToString(); \
  } while (false)

#define EXPECT_OK(expr)                                                              \
  do {                                                                               \
    const ::arrow::Status _shm_status = ::shmarrow::test_util::ToStatus((expr));     \
    EXPECT_TRUE(_shm_status.ok()) << #expr << " failed: " << _shm_status.ToString(); \
  } while (false)

#define SHM_ASSIGN_OR_FAIL_IMPL(tmp, lhs, rexpr)                             \
  auto tmp = (rexpr);                                                        \
  ASSERT_TRUE(tmp.ok()) << #rexpr << " failed: " << tmp.status().ToString(); \
  lhs = std::move(tmp).ValueUnsafe()

/// `lhs = *rexpr` for an arrow::Result, failing the test (fatally) on error.
#define ASSERT_OK_AND_ASSIGN(lhs, rexpr) \
  SHM_ASSIGN_OR_FAIL_IMPL(SHM_CONCAT(_shm_result_, __LINE__), lhs, rexpr)

/// Expects `expr` (Status or Result) to fail with a message containing `substring`.
#define EXPECT_ERROR_CONTAINS(expr, substring)                                                   \
  do {                                                                                           \
    const ::arrow::Status _shm_status = ::shmarrow::test_util::ToStatus((expr));                 \
    EXPECT_FALSE(_shm_status.ok()) << #expr << " unexpectedly succeeded";                        \
    EXPECT_NE(_shm_status.ToString().find(substring), std::string::npos)                         \
        << "status '" << _shm_status.ToString() << "' does not mention '" << (substring) << "'"; \
  } while (false)

namespace shmarrow::test_util {

/// Entries of /proc/self/fd (the directory's own fd is counted in every call alike).
inline int CountOpenFds() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  int count = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count;
}

inline bool FdIsOpen(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

/// Mappings of memfds (shared memory) in this process: the library's. Anonymous mappings come
/// and go with the allocator (a sanitizer's among them) and say nothing about leaks of ours.
inline int CountMemfdMappings() {
  std::ifstream maps("/proc/self/maps");
  std::string line;
  int count = 0;
  while (std::getline(maps, line)) count += line.find("/memfd:") != std::string::npos;
  return count;
}

/// A path under the temp directory unique to this process and call (nothing is created).
inline std::string UniqueTempPath(const std::string& stem) {
  static std::atomic<int> counter{0};
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
  return dir + "/shmarrow-test-" + stem + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

/// An abstract socket name unique to this process and call.
inline std::string UniqueAbstractName(const std::string& stem) {
  static std::atomic<int> counter{0};
  return "@shmarrow-test-" + stem + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(counter.fetch_add(1));
}

/// All bytes of a file, read with pread (the fd's offset is untouched).
inline arrow::Result<std::vector<uint8_t>> PreadAll(int fd) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return arrow::Status::IOError("fstat failed: ", std::strerror(errno));
  std::vector<uint8_t> bytes(static_cast<size_t>(st.st_size));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n =
        ::pread(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return arrow::Status::IOError("pread failed at ", done);
    done += static_cast<size_t>(n);
  }
  return bytes;
}

/// A fresh memfd (sealing allowed) holding `bytes`, with `seals` added (0: none).
inline arrow::Result<UniqueFd> MakeMemfd(const std::vector<uint8_t>& bytes, int seals) {
  UniqueFd fd(::memfd_create("shmarrow-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  if (!fd) return arrow::Status::IOError("memfd_create: ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd.get(), bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return arrow::Status::IOError("write to memfd: ", std::strerror(errno));
    done += static_cast<size_t>(n);
  }
  if (seals != 0 && ::fcntl(fd.get(), F_ADD_SEALS, seals) != 0) {
    return arrow::Status::IOError("F_ADD_SEALS: ", std::strerror(errno));
  }
  return fd;
}

inline constexpr int kAllSeals = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;

/// Every batch the stream's reader yields, in order.
inline arrow::Result<std::vector<std::shared_ptr<arrow::RecordBatch>>> ReadAll(
    const SharedStream& stream) {
  ARROW_ASSIGN_OR_RAISE(auto reader, stream.OpenReader());
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
  for (;;) {
    ARROW_ASSIGN_OR_RAISE(auto batch, reader->Next());
    if (batch == nullptr) return batches;
    batches.push_back(std::move(batch));
  }
}

/// One message of an IPC stream held in memory.
struct StreamMessage {
  int64_t prefix_at = 0;      // continuation marker
  int64_t metadata_at = 0;    // the flatbuffer
  int64_t metadata_size = 0;  // including padding
  int64_t body_at = 0;
  int64_t body_length = 0;
  internal::MessageFields fields;
};

/// Splits a stream into its messages (up to, not including, the end-of-stream marker). Fails
/// unless each message starts where the previous one ends and the stream ends with the marker.
inline arrow::Result<std::vector<StreamMessage>> WalkStream(const uint8_t* data, int64_t size) {
  std::vector<StreamMessage> messages;
  int64_t at = 0;
  for (;;) {
    if (at + 8 > size) return arrow::Status::Invalid("stream ends without EOS at ", at);
    uint32_t marker;
    int32_t length;
    std::memcpy(&marker, data + at, 4);
    std::memcpy(&length, data + at + 4, 4);
    if (marker != 0xFFFFFFFFu) return arrow::Status::Invalid("no continuation marker at ", at);
    if (length == 0) {
      if (at + 8 != size) {
        return arrow::Status::Invalid("end-of-stream marker at ", at, " of a ", size,
                                      "-byte stream");
      }
      return messages;
    }
    if (length < 0 || at + 8 + length > size) return arrow::Status::Invalid("bad length at ", at);
    StreamMessage message;
    message.prefix_at = at;
    message.metadata_at = at + 8;
    message.metadata_size = length;
    ARROW_ASSIGN_OR_RAISE(message.fields,
                          internal::LocateMessageFields(data + message.metadata_at, length));
    message.body_at = message.metadata_at + length;
    if (message.fields.body_length_at >= 0) {
      std::memcpy(&message.body_length, data + message.metadata_at + message.fields.body_length_at,
                  8);
    }
    if (message.body_length < 0 || message.body_at + message.body_length > size) {
      return arrow::Status::Invalid("bad body length at ", at);
    }
    messages.push_back(message);
    at = message.body_at + message.body_length;
  }
}

inline arrow::Result<std::vector<StreamMessage>> WalkStream(const std::vector<uint8_t>& bytes) {
  return WalkStream(bytes.data(), static_cast<int64_t>(bytes.size()));
}

/// A finished writer's stream, opened, checked to tile exactly, and read back.
struct ReadBack {
  int64_t size = 0;
  std::shared_ptr<SharedStream> stream;
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
};

inline arrow::Result<ReadBack> FinishAndRead(SharedStreamWriter& writer) {
  ARROW_ASSIGN_OR_RAISE(SealedStream sealed, writer.Finish());
  ReadBack out;
  out.size = sealed.size;
  ARROW_ASSIGN_OR_RAISE(out.stream, SharedStream::Open(std::move(sealed.fd)));
  // Stricter than a reader: no hole, no trailing bytes, the end-of-stream marker last. (Zeros
  // in a hole would read as an old-style end of stream and hide the batches after it.)
  ARROW_RETURN_NOT_OK(
      WalkStream(out.stream->buffer()->data(), out.stream->buffer()->size()).status());
  ARROW_ASSIGN_OR_RAISE(out.batches, ReadAll(*out.stream));
  return out;
}

/// Bytes of the body buffers Arrow's writer produces for `batch` (what placement either keeps in
/// place or copies: bytes_in_place + bytes_copied).
inline int64_t BodyBufferBytes(const arrow::RecordBatch& batch) {
  arrow::ipc::IpcPayload payload;
  auto status =
      arrow::ipc::GetRecordBatchPayload(batch, arrow::ipc::IpcWriteOptions::Defaults(), &payload);
  if (!status.ok()) {
    ADD_FAILURE() << "GetRecordBatchPayload: " << status.ToString();
    return -1;
  }
  int64_t total = 0;
  for (const auto& buffer : payload.body_buffers) {
    if (buffer != nullptr) total += buffer->size();
  }
  return total;
}

/// Reads and writes the Buffer{offset, length} struct `index` of a message in `bytes`.
inline int64_t BufferOffset(const std::vector<uint8_t>& bytes, const StreamMessage& message,
                            int64_t index) {
  int64_t value;
  std::memcpy(&value, bytes.data() + message.metadata_at + message.fields.buffers_at + 16 * index,
              8);
  return value;
}
inline int64_t BufferLength(const std::vector<uint8_t>& bytes, const StreamMessage& message,
                            int64_t index) {
  int64_t value;
  std::memcpy(&value,
              bytes.data() + message.metadata_at + message.fields.buffers_at + 16 * index + 8, 8);
  return value;
}
inline void SetBufferOffset(std::vector<uint8_t>& bytes, const StreamMessage& message,
                            int64_t index, int64_t offset) {
  std::memcpy(bytes.data() + message.metadata_at + message.fields.buffers_at + 16 * index, &offset,
              8);
}

/// One int64 column "v": the stream of the tests that publish one value per batch.
inline std::shared_ptr<arrow::Schema> ValueSchema() {
  return arrow::schema({arrow::field("v", arrow::int64(), /*nullable=*/false)});
}

/// One row: v = value, built in the producer's pool (the ring).
inline arrow::Status PublishValue(Producer& producer, int64_t value) {
  ARROW_ASSIGN_OR_RAISE(auto buffer, arrow::AllocateBuffer(sizeof(int64_t), producer.pool()));
  *reinterpret_cast<int64_t*>(buffer->mutable_data()) = value;
  auto data = arrow::ArrayData::Make(
      arrow::int64(), 1, {nullptr, std::shared_ptr<arrow::Buffer>(std::move(buffer))}, 0);
  return producer.Publish(arrow::RecordBatch::Make(ValueSchema(), 1, {arrow::MakeArray(data)}));
}

inline int64_t ValueOf(const arrow::RecordBatch& batch) {
  return std::static_pointer_cast<arrow::Int64Array>(batch.column(0))->Value(0);
}

}  // namespace shmarrow::test_util
