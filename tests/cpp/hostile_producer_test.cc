// Misbehaving producers, scripted by hand; each case was found by a fuzz target (docs/robustness.md).
// - Ring mode reads batches with Arrow's ReadRecordBatch, which has no dictionaries: a schema with
//   a dictionary column must be refused, not crash the consumer (fuzz/ring_fuzz).
// - Compressed bodies (which shmarrow never writes) are refused in both modes before Arrow
//   decompresses them: a buffer's claimed uncompressed size is allocated as is (fuzz/stream_fuzz,
//   fuzz/ring_fuzz: 4 and 8 GiB allocations from inputs of a few hundred bytes).
#include <arrow/api.h>
#include <arrow/io/memory.h>
#include <arrow/ipc/api.h>
#include <arrow/util/compression.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "protocol.h"
#include "shmarrow/shared_stream.h"
#include "schema_match.h"
#include "shmarrow/consumer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
constexpr int kTimeoutMs = 10000;

std::string NextAddress() {
  static std::atomic<int> counter{0};
  return "@hostile-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
}

std::shared_ptr<arrow::Schema> PlainSchema() {
  return arrow::schema({arrow::field("i", arrow::int32())});
}
std::shared_ptr<arrow::Schema> DictionarySchema() {
  return arrow::schema({arrow::field("i", arrow::int32()),
                        arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
}

/// A sealed ring holding one record batch of DictionarySchema(): body at offset 0, then its
/// Message flatbuffer at `*metadata_offset` (`*metadata_length` bytes).
UniqueFd DictionaryRing(uint64_t* metadata_offset, uint32_t* metadata_length) {
  arrow::Int32Builder i;
  arrow::StringDictionaryBuilder d;
  EXPECT_TRUE(i.AppendValues({1, 2}).ok());
  EXPECT_TRUE(d.Append("x").ok() && d.Append("y").ok());
  std::shared_ptr<arrow::Array> ia, da;
  EXPECT_TRUE(i.Finish(&ia).ok() && d.Finish(&da).ok());
  auto batch = arrow::RecordBatch::Make(DictionarySchema(), 2, {ia, da});
  auto serialized =
      arrow::ipc::SerializeRecordBatch(*batch, arrow::ipc::IpcWriteOptions::Defaults()).ValueOrDie();
  arrow::io::BufferReader reader(serialized);
  auto message = arrow::ipc::ReadMessage(&reader).ValueOrDie();
  std::string ring(static_cast<size_t>(message->body()->size()), '\0');
  std::memcpy(ring.data(), message->body()->data(), ring.size());
  *metadata_offset = ring.size();
  *metadata_length = static_cast<uint32_t>(message->metadata()->size());
  ring.append(reinterpret_cast<const char*>(message->metadata()->data()), *metadata_length);
  const int fd = ::memfd_create("hostile-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  EXPECT_GE(fd, 0);
  EXPECT_EQ(::write(fd, ring.data(), ring.size()), static_cast<ssize_t>(ring.size()));
  EXPECT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), 0);
  return UniqueFd(fd);
}

/// One batch of PlainSchema() as an LZ4-compressed IPC record batch message.
std::shared_ptr<arrow::ipc::Message> CompressedMessage() {
  arrow::Int32Builder i;
  EXPECT_TRUE(i.AppendValues(std::vector<int32_t>(1000, 7)).ok());
  std::shared_ptr<arrow::Array> ia;
  EXPECT_TRUE(i.Finish(&ia).ok());
  auto batch = arrow::RecordBatch::Make(PlainSchema(), 1000, {ia});
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.codec = arrow::util::Codec::Create(arrow::Compression::LZ4_FRAME).ValueOrDie();
  auto serialized = arrow::ipc::SerializeRecordBatch(*batch, options).ValueOrDie();
  arrow::io::BufferReader reader(serialized);
  return arrow::ipc::ReadMessage(&reader).ValueOrDie();
}

/// Accepts one consumer, reads its Hello, answers a ring Welcome announcing `welcome_schema`,
/// then sends `after` (each datagram in turn) and waits for the consumer to hang up.
void ServeOnce(internal::UnixSocket& listener, const std::shared_ptr<arrow::Schema>& welcome_schema,
               std::vector<std::vector<uint8_t>> after, int ring_fd) {
  auto accepted = listener.Accept(kTimeoutMs);
  ASSERT_TRUE(accepted.ok()) << accepted.status().ToString();
  auto socket = std::move(*accepted);
  std::vector<uint8_t> buffer(proto::kMaxMessageSize);
  ASSERT_TRUE(socket.Receive(buffer, 1, kTimeoutMs).ok());  // Hello
  proto::Writer writer;
  proto::Welcome welcome;
  welcome.mode = proto::Mode::kRing;
  welcome.schema = internal::SerializeSchema(*welcome_schema).ValueOrDie();
  welcome.max_in_flight = 4;
  struct stat st {};
  ASSERT_EQ(::fstat(ring_fd, &st), 0);
  welcome.ring_size = static_cast<uint64_t>(st.st_size);
  const int fds[] = {ring_fd};
  ASSERT_TRUE(socket.Send(proto::Encode(writer, welcome), fds).ok());
  for (const auto& datagram : after) {
    if (!socket.Send(datagram, {}).ok()) return;  // the consumer gave up already
  }
  (void)socket.Receive(buffer, 0, kTimeoutMs);  // until the consumer closes
}

std::vector<uint8_t> Copy(std::span<const uint8_t> bytes) { return {bytes.begin(), bytes.end()}; }

TEST(HostileProducerTest, RingWelcomeWithDictionarySchemaIsRefused) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto listener, internal::UnixSocket::Listen(address, SOCK_SEQPACKET, 0600));
  uint64_t offset = 0;
  uint32_t length = 0;
  UniqueFd ring = DictionaryRing(&offset, &length);
  std::thread producer([&] { ServeOnce(listener, DictionarySchema(), {}, ring.get()); });
  auto consumer = Consumer::Connect(address);
  EXPECT_ERROR_CONTAINS(consumer, "dictionary");
  consumer = arrow::Status::Cancelled("closed");  // hang up so the producer thread ends
  producer.join();
}

TEST(HostileProducerTest, RingSchemaChangeToDictionaryIsRefusedNotACrash) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto listener, internal::UnixSocket::Listen(address, SOCK_SEQPACKET, 0600));
  uint64_t offset = 0;
  uint32_t length = 0;
  UniqueFd ring = DictionaryRing(&offset, &length);
  proto::Writer writer;
  std::vector<std::vector<uint8_t>> after;
  after.push_back(Copy(proto::EncodeSchema(
      writer, 0, internal::SerializeSchema(*DictionarySchema()).ValueOrDie())));
  after.push_back(Copy(proto::Encode(writer, 0, proto::Batch{0, 0, offset, length})));
  std::thread producer([&] { ServeOnce(listener, PlainSchema(), after, ring.get()); });
  {
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address));
    std::shared_ptr<arrow::RecordBatch> batch;
    // Before the fix: SIGSEGV in arrow::ipc::ResolveDictionaries (null DictionaryMemo).
    auto status = consumer->ReadNext(&batch);
    EXPECT_FALSE(status.ok());
    EXPECT_NE(status.message().find("dictionary"), std::string::npos) << status.ToString();
  }
  producer.join();
}

TEST(HostileProducerTest, SealedStreamWithCompressedBodyIsRefused) {
  arrow::Int32Builder i;
  ASSERT_TRUE(i.AppendValues(std::vector<int32_t>(1000, 7)).ok());
  std::shared_ptr<arrow::Array> ia;
  ASSERT_TRUE(i.Finish(&ia).ok());
  auto sink = arrow::io::BufferOutputStream::Create().ValueOrDie();
  auto options = arrow::ipc::IpcWriteOptions::Defaults();
  options.codec = arrow::util::Codec::Create(arrow::Compression::ZSTD).ValueOrDie();
  auto writer = arrow::ipc::MakeStreamWriter(sink, PlainSchema(), options).ValueOrDie();
  ASSERT_TRUE(writer->WriteRecordBatch(*arrow::RecordBatch::Make(PlainSchema(), 1000, {ia})).ok());
  ASSERT_TRUE(writer->Close().ok());
  auto bytes = sink->Finish().ValueOrDie();
  const int fd = ::memfd_create("compressed", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  UniqueFd owned(fd);
  ASSERT_EQ(::write(fd, bytes->data(), bytes->size()), bytes->size());
  ASSERT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), 0);
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(owned)));
  ASSERT_OK_AND_ASSIGN(auto reader, stream->OpenReader());
  std::shared_ptr<arrow::RecordBatch> batch;
  EXPECT_ERROR_CONTAINS(reader->ReadNext(&batch), "compression");
  EXPECT_EQ(batch, nullptr);
}

TEST(HostileProducerTest, RingBatchWithCompressedBodyIsRefused) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto listener, internal::UnixSocket::Listen(address, SOCK_SEQPACKET, 0600));
  auto message = CompressedMessage();
  std::string ring(static_cast<size_t>(message->body()->size()), '\0');
  std::memcpy(ring.data(), message->body()->data(), ring.size());
  const uint64_t offset = ring.size();
  const auto length = static_cast<uint32_t>(message->metadata()->size());
  ring.append(reinterpret_cast<const char*>(message->metadata()->data()), length);
  const int fd = ::memfd_create("compressed-ring", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(fd, 0);
  UniqueFd ring_fd(fd);
  ASSERT_EQ(::write(fd, ring.data(), ring.size()), static_cast<ssize_t>(ring.size()));
  ASSERT_EQ(::fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE), 0);
  proto::Writer writer;
  std::vector<std::vector<uint8_t>> after;
  after.push_back(Copy(proto::Encode(writer, 0, proto::Batch{0, 0, offset, length})));
  std::thread producer([&] { ServeOnce(listener, PlainSchema(), after, ring_fd.get()); });
  {
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address));
    std::shared_ptr<arrow::RecordBatch> batch;
    EXPECT_ERROR_CONTAINS(consumer->ReadNext(&batch), "compression");
  }
  producer.join();
}

}  // namespace
}  // namespace shmarrow
