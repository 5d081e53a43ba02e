// SharedStream, the consumer: which fds it accepts, how it fails on everything else (clear
// messages, no fd leaked, no crash), validation levels, and the lifetime of what it hands out.
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <functional>
#include <random>

#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

using test_util::CountOpenFds;
using test_util::kAllSeals;
using test_util::MakeMemfd;

std::shared_ptr<arrow::Schema> TestSchema() {
  return arrow::schema({arrow::field("id", arrow::int64()), arrow::field("text", arrow::utf8())});
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> MakeBatch(arrow::MemoryPool* pool, int64_t rows,
                                                             int64_t seed) {
  arrow::Int64Builder ids(pool);
  arrow::StringBuilder texts(pool);
  for (int64_t i = 0; i < rows; ++i) {
    ARROW_RETURN_NOT_OK(ids.Append(i * seed));
    if (i % 6 == 5) {
      ARROW_RETURN_NOT_OK(texts.AppendNull());
    } else {
      ARROW_RETURN_NOT_OK(texts.Append("zzzz-text-" + std::to_string(i + seed)));
    }
  }
  ARROW_ASSIGN_OR_RAISE(auto id_array, ids.Finish());
  ARROW_ASSIGN_OR_RAISE(auto text_array, texts.Finish());
  return arrow::RecordBatch::Make(TestSchema(), rows, {id_array, text_array});
}

/// The bytes of a valid shmarrow stream with `batches` batches (and the batches, heap copies).
struct StreamBytes {
  std::vector<uint8_t> bytes;
  std::vector<std::shared_ptr<arrow::RecordBatch>> batches;
};

arrow::Result<StreamBytes> MakeStreamBytes(int batches = 3) {
  WriterOptions options;
  options.capacity = int64_t{64} << 20;
  ARROW_ASSIGN_OR_RAISE(auto writer, SharedStreamWriter::Open(TestSchema(), options));
  StreamBytes out;
  for (int i = 0; i < batches; ++i) {
    ARROW_ASSIGN_OR_RAISE(auto batch, MakeBatch(writer->pool(), 200 + 10 * i, i + 1));
    ARROW_RETURN_NOT_OK(writer->WriteRecordBatch(*batch));
    ARROW_ASSIGN_OR_RAISE(auto copy, MakeBatch(arrow::default_memory_pool(), 200 + 10 * i, i + 1));
    out.batches.push_back(copy);
  }
  ARROW_ASSIGN_OR_RAISE(SealedStream sealed, writer->Finish());
  ARROW_ASSIGN_OR_RAISE(out.bytes, test_util::PreadAll(sealed.fd.get()));
  return out;
}

/// Opens `fd` and reads every batch; the first error of either step.
arrow::Status OpenAndReadAll(UniqueFd fd, const SharedStreamOptions& options = {}) {
  ARROW_ASSIGN_OR_RAISE(auto stream, SharedStream::Open(std::move(fd), options));
  return test_util::ReadAll(*stream).status();
}

// ---------------------------------------------------------------------------------------------
// Open refuses fds that are not sealed memfds, naming the fd and the reason, and closes them.

struct BadFd {
  std::string name;
  std::function<arrow::Result<UniqueFd>(const std::vector<uint8_t>& valid_stream)> make;
  std::vector<std::string> any_of;  // the message contains at least one of these
};

void PrintTo(const BadFd& bad, std::ostream* os) { *os << bad.name; }

class SharedStreamRejects : public ::testing::TestWithParam<BadFd> {};

TEST_P(SharedStreamRejects, WithClearMessageAndNoFdLeak) {
  const BadFd& bad = GetParam();
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes());
  const int before = CountOpenFds();
  {
    ASSERT_OK_AND_ASSIGN(UniqueFd fd, bad.make(valid.bytes));
    const int raw = fd.get();
    auto result = SharedStream::Open(std::move(fd));
    ASSERT_FALSE(result.ok()) << bad.name << " was accepted";
    const std::string message = result.status().ToString();
    bool mentioned = false;
    for (const auto& expected : bad.any_of) {
      mentioned |= message.find(expected) != std::string::npos;
    }
    EXPECT_TRUE(mentioned) << "message: " << message;
    EXPECT_NE(message.find("fd " + std::to_string(raw)), std::string::npos)
        << "message does not name the fd: " << message;
    EXPECT_FALSE(test_util::FdIsOpen(raw)) << "Open did not close the fd it took";
  }
  EXPECT_EQ(CountOpenFds(), before);
}

arrow::Result<UniqueFd> MakePipe(const std::vector<uint8_t>&) {
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return arrow::Status::IOError("pipe");
  ::close(fds[1]);
  return UniqueFd(fds[0]);
}

arrow::Result<UniqueFd> MakeRegularFile(const std::vector<uint8_t>& bytes) {
  const std::string path = test_util::UniqueTempPath("regular");
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return arrow::Status::IOError("open ", path);
  ::unlink(path.c_str());
  if (::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    return arrow::Status::IOError("write");
  }
  return fd;
}

// A file on tmpfs (/dev/shm) is shmem like a memfd and answers F_GET_SEALS, with F_SEAL_SEAL
// only: it must be refused as unsealed.
arrow::Result<UniqueFd> MakeTmpfsFile(const std::vector<uint8_t>& bytes) {
  const std::string path = "/dev/shm/shmarrow-test-" + std::to_string(::getpid());
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) return arrow::Status::IOError("open ", path, ": ", std::strerror(errno));
  ::unlink(path.c_str());
  if (::write(fd.get(), bytes.data(), bytes.size()) != static_cast<ssize_t>(bytes.size())) {
    return arrow::Status::IOError("write");
  }
  return fd;
}

arrow::Result<UniqueFd> MakeDirectory(const std::vector<uint8_t>&) {
  UniqueFd fd(::open("/tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return arrow::Status::IOError("open /tmp");
  return fd;
}

arrow::Result<UniqueFd> MakeSocket(const std::vector<uint8_t>&) {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) {
    return arrow::Status::IOError("socketpair");
  }
  ::close(fds[1]);
  return UniqueFd(fds[0]);
}

INSTANTIATE_TEST_SUITE_P(
    BadInputs, SharedStreamRejects,
    ::testing::Values(
        BadFd{"Pipe", MakePipe, {"not a memfd"}},
        // On tmpfs a plain file answers F_GET_SEALS (F_SEAL_SEAL only); elsewhere it does not.
        BadFd{"RegularFileHoldingAValidStream", MakeRegularFile, {"not a memfd", "not sealed"}},
        BadFd{"TmpfsFileHoldingAValidStream", MakeTmpfsFile, {"not sealed", "not a memfd"}},
        BadFd{"Directory", MakeDirectory, {"not a memfd"}},
        BadFd{"Socket", MakeSocket, {"not a memfd"}},
        BadFd{"UnsealedMemfdHoldingAValidStream",
              [](const std::vector<uint8_t>& bytes) { return MakeMemfd(bytes, 0); },
              {"missing F_SEAL_SEAL|F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_WRITE"}},
        BadFd{"MemfdSealedOnlyShrinkGrow",
              [](const std::vector<uint8_t>& bytes) {
                return MakeMemfd(bytes, F_SEAL_SHRINK | F_SEAL_GROW);
              },
              {"missing F_SEAL_SEAL|F_SEAL_WRITE"}},
        BadFd{"MemfdSealedWithFutureWriteInsteadOfWrite",
              [](const std::vector<uint8_t>& bytes) {
                return MakeMemfd(bytes,
                                 F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE);
              },
              {"missing F_SEAL_WRITE"}},
        BadFd{"EmptySealedMemfd",
              [](const std::vector<uint8_t>&) { return MakeMemfd({}, kAllSeals); },
              {"is empty"}}),
    [](const ::testing::TestParamInfo<BadFd>& info) { return info.param.name; });

TEST(SharedStream, ClosedFdIsAnError) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_FALSE(SharedStream::Open(UniqueFd(fds[0])).ok());
  EXPECT_FALSE(SharedStream::Open(UniqueFd()).ok());
}

// Without required seals an unsealed memfd opens, but is copied, not mapped: the producer can
// still rewrite or shrink the file, and the consumer must see neither.
TEST(SharedStream, WithoutRequiredSealsAnUnsealedMemfdOpensAsACopy) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes());
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(valid.bytes, 0));
  UniqueFd producer_side(::dup(fd.get()));
  ASSERT_TRUE(producer_side.valid());
  SharedStreamOptions options;
  options.require_seals = false;
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd), options));
  EXPECT_FALSE(stream->mapped());
  EXPECT_EQ(stream->seals() & (F_SEAL_WRITE | F_SEAL_SHRINK), 0);
  EXPECT_EQ(stream->size(), static_cast<int64_t>(valid.bytes.size()));
  // The producer scribbles over the file and truncates it.
  std::vector<uint8_t> zeros(valid.bytes.size(), 0);
  ASSERT_EQ(::pwrite(producer_side.get(), zeros.data(), zeros.size(), 0),
            static_cast<ssize_t>(zeros.size()));
  ASSERT_EQ(::ftruncate(producer_side.get(), 16), 0);
  ASSERT_OK_AND_ASSIGN(auto batches, test_util::ReadAll(*stream));
  ASSERT_EQ(batches.size(), valid.batches.size());
  for (size_t i = 0; i < batches.size(); ++i) {
    EXPECT_TRUE(batches[i]->Equals(*valid.batches[i]));
    EXPECT_TRUE(AllBuffersInside(*stream, *batches[i]));
  }
}

TEST(SharedStream, WithoutRequiredSealsASealedMemfdIsStillMapped) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes());
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(valid.bytes, kAllSeals));
  SharedStreamOptions options;
  options.require_seals = false;
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd), options));
  EXPECT_TRUE(stream->mapped());
  ASSERT_OK_AND_ASSIGN(auto batches, test_util::ReadAll(*stream));
  EXPECT_EQ(batches.size(), valid.batches.size());
}

TEST(SharedStream, WithoutRequiredSealsStillNeedsARegularNonEmptyFile) {
  SharedStreamOptions options;
  options.require_seals = false;
  const int before = CountOpenFds();
  {
    ASSERT_OK_AND_ASSIGN(UniqueFd pipe_fd, MakePipe({}));
    EXPECT_ERROR_CONTAINS(SharedStream::Open(std::move(pipe_fd), options), "not a regular file");
    ASSERT_OK_AND_ASSIGN(UniqueFd dir_fd, MakeDirectory({}));
    EXPECT_ERROR_CONTAINS(SharedStream::Open(std::move(dir_fd), options), "not a regular file");
    ASSERT_OK_AND_ASSIGN(UniqueFd empty, MakeMemfd({}, 0));
    EXPECT_ERROR_CONTAINS(SharedStream::Open(std::move(empty), options), "is empty");
  }
  EXPECT_EQ(CountOpenFds(), before);
}

// ---------------------------------------------------------------------------------------------
// Sealed memfds whose content is not a valid stream: Open succeeds (it only checks the fd), and
// reading fails cleanly.

TEST(SharedStream, GarbageContentFailsToRead) {
  std::mt19937 rng(99);
  for (size_t size : {size_t{1}, size_t{7}, size_t{8}, size_t{100}, size_t{4096}, size_t{100000}}) {
    SCOPED_TRACE("size " + std::to_string(size));
    std::vector<uint8_t> garbage(size);
    for (auto& b : garbage) b = static_cast<uint8_t>(rng());
    const int before = CountOpenFds();
    {
      ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(garbage, kAllSeals));
      ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
      EXPECT_EQ(stream->size(), static_cast<int64_t>(size));
      EXPECT_FALSE(test_util::ReadAll(*stream).ok());
    }
    EXPECT_EQ(CountOpenFds(), before);
  }
  // Continuation markers and a huge metadata length.
  std::vector<uint8_t> huge = {0xFF, 0xFF, 0xFF, 0xFF, 0xF0, 0xFF, 0xFF, 0x7F, 0, 0, 0, 0};
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(huge, kAllSeals));
  EXPECT_FALSE(OpenAndReadAll(std::move(fd)).ok());
}

TEST(SharedStream, TruncatedStreamFailsToRead) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes());
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(valid.bytes));
  ASSERT_EQ(messages.size(), 4u);
  // Half the stream, and cuts inside each region of the last batch message (prefix, metadata,
  // body) and right before the end-of-stream marker.
  const auto& last = messages.back();
  std::vector<size_t> cuts = {valid.bytes.size() / 2, static_cast<size_t>(last.prefix_at + 4),
                              static_cast<size_t>(last.metadata_at + 16),
                              static_cast<size_t>(last.body_at + last.body_length / 2),
                              valid.bytes.size() - 8};
  for (size_t cut : cuts) {
    SCOPED_TRACE("cut at " + std::to_string(cut) + " of " + std::to_string(valid.bytes.size()));
    std::vector<uint8_t> truncated(valid.bytes.begin(),
                                   valid.bytes.begin() + static_cast<std::ptrdiff_t>(cut));
    ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(truncated, kAllSeals));
    ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
    auto reader = stream->OpenReader();
    if (!reader.ok()) continue;  // cut inside the schema message
    int read = 0;
    arrow::Status status;
    for (;;) {
      auto next = (*reader)->Next();
      if (!next.ok()) {
        status = next.status();
        break;
      }
      if (*next == nullptr) break;
      EXPECT_TRUE((*next)->Equals(*valid.batches[static_cast<size_t>(read)]));
      ++read;
    }
    // A stream cut exactly before the end-of-stream marker reads like a stream without one
    // (Arrow accepts EOF as the end); any other cut must surface as an error.
    if (cut == valid.bytes.size() - 8) {
      EXPECT_EQ(read, 3);
    } else {
      EXPECT_FALSE(status.ok()) << "read " << read << " batches without an error";
      EXPECT_LT(read, 3);
    }
  }
}

// A buffer offset pointing outside the body is caught by Arrow's reader.
TEST(SharedStream, BufferOffsetOutsideTheBodyIsAnError) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(1));
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(valid.bytes));
  ASSERT_EQ(messages.size(), 2u);
  const auto& batch_message = messages[1];
  ASSERT_GE(batch_message.fields.num_buffers, 5);
  for (int64_t bad_offset :
       {int64_t{1} << 40, batch_message.body_length, int64_t{-8}, batch_message.body_length - 8}) {
    SCOPED_TRACE("offset " + std::to_string(bad_offset));
    std::vector<uint8_t> bytes = valid.bytes;
    // Buffer 1: the int64 values (validity, values, then the utf8 column's three buffers).
    test_util::SetBufferOffset(bytes, batch_message, 1, bad_offset);
    for (Validation validation : {Validation::kBasic, Validation::kFull}) {
      ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(bytes, kAllSeals));
      SharedStreamOptions options;
      options.validation = validation;
      EXPECT_FALSE(OpenAndReadAll(std::move(fd), options).ok());
    }
  }
}

// An offset that stays inside the body but points the utf8 offsets at the character data: only
// full validation catches the nonsense offsets before the data is handed out.
TEST(SharedStream, RedirectedOffsetsBufferIsCaughtByFullValidation) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(1));
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(valid.bytes));
  const auto& m = messages[1];
  ASSERT_EQ(m.fields.num_buffers, 5);
  std::vector<uint8_t> bytes = valid.bytes;
  // Buffers: 0 id validity, 1 id values, 2 text validity, 3 text offsets, 4 text data ("zzzz...").
  test_util::SetBufferOffset(bytes, m, 3, test_util::BufferOffset(bytes, m, 4));
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(bytes, kAllSeals));
  const arrow::Status status = OpenAndReadAll(std::move(fd));
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("record batch 0 is invalid"), std::string::npos)
      << status.ToString();
}

// Invalid UTF-8 is only seen by full validation; basic validation hands the batch out.
TEST(SharedStream, ValidationLevelsDiffer) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(1));
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(valid.bytes));
  const auto& m = messages[1];
  std::vector<uint8_t> bytes = valid.bytes;
  const int64_t data_at = m.body_at + test_util::BufferOffset(bytes, m, 4);
  bytes[static_cast<size_t>(data_at)] = 0xFF;  // not valid UTF-8 anywhere
  {
    ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(bytes, kAllSeals));
    const arrow::Status status = OpenAndReadAll(std::move(fd));
    EXPECT_NE(status.ToString().find("record batch 0 is invalid"), std::string::npos)
        << status.ToString();
    EXPECT_NE(status.ToString().find("UTF8"), std::string::npos) << status.ToString();
  }
  {
    ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(bytes, kAllSeals));
    SharedStreamOptions options;
    options.validation = Validation::kBasic;
    EXPECT_OK(OpenAndReadAll(std::move(fd), options));
  }
}

// Random damage to the metadata and buffer descriptions of a valid stream never crashes the
// consumer: every read either fails or yields batches that passed full validation.
TEST(SharedStream, MutatedStreamsFailCleanly) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(2));
  ASSERT_OK_AND_ASSIGN(auto messages, test_util::WalkStream(valid.bytes));
  std::vector<size_t> metadata_positions;
  for (const auto& m : messages) {
    for (int64_t i = m.prefix_at; i < m.metadata_at + m.metadata_size; ++i) {
      metadata_positions.push_back(static_cast<size_t>(i));
    }
  }
  std::mt19937 rng(1234);
  std::uniform_int_distribution<size_t> pick(0, metadata_positions.size() - 1);
  int failures = 0;
  for (int iteration = 0; iteration < 300; ++iteration) {
    std::vector<uint8_t> bytes = valid.bytes;
    for (int k = 0; k < 3; ++k) bytes[metadata_positions[pick(rng)]] = static_cast<uint8_t>(rng());
    ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(bytes, kAllSeals));
    ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
    auto reader = stream->OpenReader();
    if (!reader.ok()) {
      ++failures;
      continue;
    }
    for (;;) {
      auto next = (*reader)->Next();
      if (!next.ok()) {
        ++failures;
        break;
      }
      if (*next == nullptr) break;
      ASSERT_OK((*next)->ValidateFull());
    }
  }
  EXPECT_GT(failures, 0);
}

// ---------------------------------------------------------------------------------------------

TEST(SharedStream, BatchesOutliveTheStream) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(2));
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(valid.bytes, kAllSeals));
  std::shared_ptr<arrow::RecordBatch> kept;
  std::shared_ptr<arrow::Buffer> kept_buffer;
  {
    ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
    ASSERT_OK_AND_ASSIGN(auto reader, stream->OpenReader());
    ASSERT_OK_AND_ASSIGN(kept, reader->Next());
    ASSERT_NE(kept, nullptr);
    EXPECT_TRUE(AllBuffersInside(*stream, *kept));
    kept_buffer = stream->buffer();
  }
  // The stream and its reader are gone; the mapping lives on in the batch's buffers.
  ASSERT_OK(kept->ValidateFull());
  EXPECT_TRUE(kept->Equals(*valid.batches[0]));
  EXPECT_EQ(kept_buffer->size(), static_cast<int64_t>(valid.bytes.size()));
  EXPECT_EQ(std::memcmp(kept_buffer->data(), valid.bytes.data(), valid.bytes.size()), 0);
}

TEST(SharedStream, MappingIsReadOnlyAndDescribed) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(1));
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(valid.bytes, kAllSeals));
  struct stat st{};
  ASSERT_EQ(::fstat(fd.get(), &st), 0);
  const int before = CountOpenFds();
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
  EXPECT_EQ(CountOpenFds(), before - 1) << "the mapping keeps the memory, the fd is closed";
  EXPECT_EQ(stream->size(), static_cast<int64_t>(valid.bytes.size()));
  EXPECT_EQ(stream->inode(), st.st_ino);
  EXPECT_EQ(stream->device(), st.st_dev);
  EXPECT_EQ(stream->seals() & kAllSeals, kAllSeals);
  EXPECT_TRUE(stream->mapped());
  EXPECT_FALSE(stream->buffer()->is_mutable());
  const uint8_t* base = stream->buffer()->data();
  const int64_t size = stream->size();
  EXPECT_TRUE(stream->Contains(base));
  EXPECT_TRUE(stream->Contains(base, size));
  EXPECT_TRUE(stream->Contains(base + size, 0));
  EXPECT_FALSE(stream->Contains(base + size, 1));
  EXPECT_FALSE(stream->Contains(base, size + 1));
  EXPECT_FALSE(stream->Contains(base - 1, 1));
  EXPECT_FALSE(stream->Contains(base + 1, -1));
  EXPECT_FALSE(stream->Contains(nullptr, 1));
  // The mapping really is read-only: mprotect to writable must fail (MAP_SHARED of a sealed fd).
  const long page = ::sysconf(_SC_PAGESIZE);
  EXPECT_NE(
      ::mprotect(const_cast<uint8_t*>(base), static_cast<size_t>(page), PROT_READ | PROT_WRITE), 0);
  // A heap batch is not inside.
  EXPECT_FALSE(AllBuffersInside(*stream, *valid.batches[0]));
}

TEST(SharedStream, SeveralReadersOverOneMapping) {
  ASSERT_OK_AND_ASSIGN(StreamBytes valid, MakeStreamBytes(3));
  ASSERT_OK_AND_ASSIGN(UniqueFd fd, MakeMemfd(valid.bytes, kAllSeals));
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
  ASSERT_OK_AND_ASSIGN(auto first, test_util::ReadAll(*stream));
  ASSERT_OK_AND_ASSIGN(auto second, test_util::ReadAll(*stream));
  ASSERT_EQ(first.size(), 3u);
  ASSERT_EQ(second.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_TRUE(first[i]->Equals(*second[i]));
    EXPECT_EQ(first[i]->column(0)->data()->buffers[1]->data(),
              second[i]->column(0)->data()->buffers[1]->data())
        << "both readers point at the same mapped bytes";
  }
}

}  // namespace
}  // namespace shmarrow
