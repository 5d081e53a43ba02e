// Producer and Consumer end to end, in one process (and, for dying peers and fd limits, across
// fork()): zero-copy delivery, copies of heap batches, release on the last reference, credits,
// lossy consumers, ring back-pressure, fan-out, late joiners, requests, projection, schema
// negotiation and changes, dead peers, leaks, limits and the single hand-over fallback.
// Most tests run in both memory modes.
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "protocol.h"
#include "shmarrow/consumer.h"
#include "shmarrow/handover.h"
#include "shmarrow/producer.h"
#include "shmarrow/stream_writer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using BatchPtr = std::shared_ptr<arrow::RecordBatch>;

constexpr int kTimeoutMs = 10000;  // only ever reached when something is broken

std::string NextAddress() {
  static std::atomic<int> counter{0};
  return "@pc-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter.fetch_add(1));
}

std::shared_ptr<arrow::Schema> TestSchema() {
  return arrow::schema({arrow::field("a", arrow::int64()), arrow::field("b", arrow::utf8())});
}

/// A batch of `schema` (int32, int64, float64 and utf8 fields) whose values derive from `seed`:
/// int64 a[i] = seed * 1000 + i (null when i % 7 == 3), strings "v<seed>-<i>" (null when
/// i % 5 == 1). Built with `pool`.
arrow::Result<BatchPtr> MakeBatch(arrow::MemoryPool* pool, int64_t seed, int64_t rows = 100,
                                  std::shared_ptr<arrow::Schema> schema = TestSchema()) {
  if (pool == nullptr) return arrow::Status::Invalid("no pool to build in");
  arrow::ArrayVector columns;
  for (const auto& field : schema->fields()) {
    std::shared_ptr<arrow::Array> column;
    switch (field->type()->id()) {
      case arrow::Type::INT64: {
        arrow::Int64Builder builder(pool);
        ARROW_RETURN_NOT_OK(builder.Reserve(rows));
        for (int64_t i = 0; i < rows; ++i) {
          if (i % 7 == 3) {
            builder.UnsafeAppendNull();
          } else {
            builder.UnsafeAppend(seed * 1000 + i);
          }
        }
        ARROW_RETURN_NOT_OK(builder.Finish(&column));
        break;
      }
      case arrow::Type::INT32: {
        arrow::Int32Builder builder(pool);
        for (int64_t i = 0; i < rows; ++i) {
          ARROW_RETURN_NOT_OK(builder.Append(static_cast<int32_t>(seed * 100 + i)));
        }
        ARROW_RETURN_NOT_OK(builder.Finish(&column));
        break;
      }
      case arrow::Type::DOUBLE: {
        arrow::DoubleBuilder builder(pool);
        for (int64_t i = 0; i < rows; ++i) {
          ARROW_RETURN_NOT_OK(builder.Append(static_cast<double>(seed) + 0.5 * i));
        }
        ARROW_RETURN_NOT_OK(builder.Finish(&column));
        break;
      }
      case arrow::Type::STRING: {
        arrow::StringBuilder builder(pool);
        for (int64_t i = 0; i < rows; ++i) {
          if (i % 5 == 1) {
            ARROW_RETURN_NOT_OK(builder.AppendNull());
          } else {
            ARROW_RETURN_NOT_OK(
                builder.Append("v" + std::to_string(seed) + "-" + std::to_string(i)));
          }
        }
        ARROW_RETURN_NOT_OK(builder.Finish(&column));
        break;
      }
      default:
        return arrow::Status::NotImplemented("MakeBatch: ", field->type()->ToString());
    }
    columns.push_back(std::move(column));
  }
  return arrow::RecordBatch::Make(schema, rows, std::move(columns));
}

BatchPtr Expected(int64_t seed, int64_t rows = 100,
                  std::shared_ptr<arrow::Schema> schema = TestSchema()) {
  auto batch = MakeBatch(arrow::default_memory_pool(), seed, rows, std::move(schema));
  EXPECT_TRUE(batch.ok()) << batch.status().ToString();
  return batch.ValueOr(nullptr);
}

/// The seed a batch was made from (its first `a`, which is never null).
int64_t SeedOf(const arrow::RecordBatch& batch) {
  return std::static_pointer_cast<arrow::Int64Array>(batch.column(0))->Value(0) / 1000;
}

/// Sum of the non-null values of int64 column 0, read through the batch's buffers.
int64_t SumOfA(const arrow::RecordBatch& batch) {
  auto a = std::static_pointer_cast<arrow::Int64Array>(batch.column(0));
  int64_t sum = 0;
  for (int64_t i = 0; i < a->length(); ++i) {
    if (a->IsValid(i)) sum += a->Value(i);
  }
  return sum;
}

int64_t ExpectedSumOfA(int64_t seed, int64_t rows = 100) {
  int64_t sum = 0;
  for (int64_t i = 0; i < rows; ++i) {
    if (i % 7 != 3) sum += seed * 1000 + i;
  }
  return sum;
}

arrow::Status PublishPooled(Producer& producer, int64_t seed, int64_t rows = 100) {
  ARROW_ASSIGN_OR_RAISE(auto batch, MakeBatch(producer.pool(), seed, rows, producer.schema()));
  return producer.Publish(batch);
}

/// Every non-empty buffer of the batch (children and dictionaries included).
void ForEachBuffer(const arrow::ArrayData& data,
                   const std::function<void(const arrow::Buffer&)>& visit) {
  for (const auto& buffer : data.buffers) {
    if (buffer != nullptr && buffer->size() > 0) visit(*buffer);
  }
  for (const auto& child : data.child_data) ForEachBuffer(*child, visit);
  if (data.dictionary != nullptr) ForEachBuffer(*data.dictionary, visit);
}
void ForEachBuffer(const arrow::RecordBatch& batch,
                   const std::function<void(const arrow::Buffer&)>& visit) {
  for (int i = 0; i < batch.num_columns(); ++i) ForEachBuffer(*batch.column_data(i), visit);
}

/// One line of /proc/self/maps.
struct MapLine {
  uintptr_t start = 0;
  uintptr_t end = 0;
  std::string perms;
  uint64_t offset = 0;
  uint64_t inode = 0;
  std::string path;
};

std::vector<MapLine> ReadMaps() {
  std::vector<MapLine> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    MapLine m;
    char perms[8] = {};
    unsigned long start = 0, end = 0, offset = 0, inode = 0;
    int path_at = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx %7s %lx %*s %lu %n", &start, &end, perms, &offset,
                    &inode, &path_at) < 5) {
      continue;
    }
    m.start = start;
    m.end = end;
    m.perms = perms;
    m.offset = offset;
    m.inode = inode;
    if (path_at > 0 && static_cast<size_t>(path_at) <= line.size()) m.path = line.substr(path_at);
    out.push_back(std::move(m));
  }
  return out;
}

std::optional<MapLine> FindMapping(const std::vector<MapLine>& maps, const void* p,
                                   int64_t length) {
  const auto addr = reinterpret_cast<uintptr_t>(p);
  for (const auto& m : maps) {
    if (addr >= m.start && addr + static_cast<uintptr_t>(length) <= m.end) return m;
  }
  return std::nullopt;
}

/// Expects every buffer of `batch` inside a read-only shared-memory (memfd) mapping.
void ExpectInReadOnlyMemfd(const arrow::RecordBatch& batch) {
  const auto maps = ReadMaps();
  int checked = 0;
  ForEachBuffer(batch, [&](const arrow::Buffer& buffer) {
    ++checked;
    auto m = FindMapping(maps, buffer.data(), buffer.size());
    ASSERT_TRUE(m.has_value()) << "buffer at " << static_cast<const void*>(buffer.data())
                               << " is in no mapping";
    EXPECT_NE(m->path.find("memfd:"), std::string::npos)
        << "buffer is in '" << m->path << "', not shared memory";
    EXPECT_EQ(m->perms.substr(0, 2), "r-")
        << "buffer mapped " << m->perms << " (" << m->path << ")";
  });
  EXPECT_GT(checked, 0);
}

/// Kills and reaps a forked child when the test ends early.
class ChildGuard {
 public:
  explicit ChildGuard(pid_t pid) : pid_(pid) {}
  ~ChildGuard() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  /// Waits up to timeout_ms for the child to end; its wait status, or nullopt (then it is killed).
  std::optional<int> Wait(int timeout_ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      int status = 0;
      const pid_t rc = ::waitpid(pid_, &status, WNOHANG);
      if (rc == pid_) {
        pid_ = -1;
        return status;
      }
      if (rc < 0 || std::chrono::steady_clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_;
};

/// Reads one byte the child writes when it is ready; false if it closed the pipe (died) first.
bool WaitForByte(int fd, int timeout_ms) {
  pollfd pfd{fd, POLLIN, 0};
  if (::poll(&pfd, 1, timeout_ms) <= 0) return false;
  char byte;
  return ::read(fd, &byte, 1) == 1;
}

std::string DescribeWaitStatus(int status) {
  if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return "killed by signal " + std::to_string(WTERMSIG(status));
  return "status " + std::to_string(status);
}

class ProducerConsumerTest : public ::testing::TestWithParam<MemoryMode> {
 protected:
  bool ring() const { return GetParam() == MemoryMode::kRing; }
  ProducerOptions Options() const {
    ProducerOptions options;
    options.mode = GetParam();
    options.ring_size = int64_t{8} << 20;
    options.name = "pc-test";
    options.block_timeout_ms = kTimeoutMs;  // a bug fails the test instead of hanging it
    return options;
  }
  static ConsumerOptions ConsumerOpts() {
    ConsumerOptions options;
    options.read_timeout_ms = kTimeoutMs;
    return options;
  }
};

std::string ModeName(const ::testing::TestParamInfo<MemoryMode>& info) {
  return info.param == MemoryMode::kRing ? "Ring" : "Sealed";
}

INSTANTIATE_TEST_SUITE_P(ProducerConsumer, ProducerConsumerTest,
                         ::testing::Values(MemoryMode::kRing, MemoryMode::kSealed), ModeName);

TEST_P(ProducerConsumerTest, PooledBatchesArriveInReadOnlySharedMemoryWithoutCopies) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  EXPECT_EQ(consumer->mode(), ring() ? "ring" : "sealed");
  EXPECT_TRUE(consumer->schema()->Equals(*TestSchema()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));

  constexpr int kBatches = 8;
  std::vector<BatchPtr> published;
  for (int seed = 0; seed < kBatches; ++seed) {
    ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(producer->pool(), seed));
    ASSERT_OK(producer->Publish(batch));
    published.push_back(batch);
  }
  ASSERT_OK(producer->End());
  EXPECT_EQ(producer->stats().published, kBatches);
  EXPECT_EQ(producer->stats().bytes_copied, 0);

  for (int seed = 0; seed < kBatches; ++seed) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr) << "batch " << seed;
    EXPECT_TRUE(batch->schema()->Equals(*TestSchema()));
    EXPECT_TRUE(batch->Equals(*Expected(seed))) << batch->ToString();
    ASSERT_OK(batch->ValidateFull());
    ExpectInReadOnlyMemfd(*batch);
    // The consumer reads its own mapping, not the producer's pointers.
    EXPECT_NE(batch->column_data(0)->buffers[1]->data(),
              published[seed]->column_data(0)->buffers[1]->data());
  }
  BatchPtr end;
  ASSERT_OK(consumer->ReadNext(&end));
  EXPECT_EQ(end, nullptr);
  EXPECT_EQ(consumer->stats().batches, kBatches);
  EXPECT_EQ(producer->stats().bytes_copied, 0);
}

TEST_P(ProducerConsumerTest, HeapBatchesAreCopiedAndArriveEqual) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  int64_t body_bytes = 0;
  for (int seed = 0; seed < 3; ++seed) {
    auto batch = Expected(seed);
    body_bytes += test_util::BodyBufferBytes(*batch);
    ASSERT_OK(producer->Publish(batch));
  }
  EXPECT_GT(producer->stats().bytes_copied, 0);
  EXPECT_EQ(producer->stats().bytes_copied, body_bytes);
  for (int seed = 0; seed < 3; ++seed) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    EXPECT_TRUE(batch->Equals(*Expected(seed)));
    ExpectInReadOnlyMemfd(*batch);
  }
}

TEST_P(ProducerConsumerTest, ReleasedOnlyWhenTheLastReferenceDies) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(PublishPooled(*producer, 42));

  BatchPtr batch;
  ASSERT_OK(consumer->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  std::shared_ptr<arrow::Array> column = batch->column(0);
  // Keep only a slice of one buffer: values 1 and 2 of column a.
  std::shared_ptr<arrow::Buffer> slice = arrow::SliceBuffer(column->data()->buffers[1], 8, 16);
  column.reset();
  batch.reset();

  EXPECT_EQ(consumer->stats().released, 0) << "released while a slice still points into it";
  EXPECT_GE(producer->stats().in_flight, 1);
  EXPECT_FALSE(producer->WaitUntilDrained(0).ok());
  int64_t values[2];
  std::memcpy(values, slice->data(), sizeof values);
  EXPECT_EQ(values[0], 42001);
  EXPECT_EQ(values[1], 42002);

  slice.reset();
  EXPECT_EQ(consumer->stats().released, 1);
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(producer->stats().in_flight, 0);
}

TEST_P(ProducerConsumerTest, CreditsLimitBatchesHeldAtOnce) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ConsumerOptions options = ConsumerOpts();
  options.max_in_flight = 2;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  for (int seed = 0; seed < 3; ++seed) ASSERT_OK(PublishPooled(*producer, seed));

  BatchPtr first, second, third;
  ASSERT_OK(consumer->ReadNext(&first));
  ASSERT_OK(consumer->ReadNext(&second));
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(SeedOf(*first), 0);
  EXPECT_EQ(SeedOf(*second), 1);

  // Out of credits: the third is queued at the producer, not sent.
  ASSERT_OK_AND_ASSIGN(auto poll, consumer->TryNext(&third));
  EXPECT_EQ(poll, Consumer::Poll::kPending);
  EXPECT_EQ(third, nullptr);
  pollfd pfd{consumer->fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pfd, 1, 100), 0) << "the producer sent beyond the credits";
  EXPECT_EQ(producer->stats().in_flight, 3);  // 2 held + 1 queued

  first.reset();  // a release is a credit back
  ASSERT_OK(consumer->ReadNext(&third));
  ASSERT_NE(third, nullptr);
  EXPECT_EQ(SeedOf(*third), 2);
  EXPECT_TRUE(third->Equals(*Expected(2)));
}

TEST_P(ProducerConsumerTest, FullQueueFailsPublishFastWithoutBlockTimeout) {
  const std::string address = NextAddress();
  ProducerOptions producer_options = Options();
  producer_options.block_timeout_ms = 0;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), producer_options));
  ConsumerOptions options = ConsumerOpts();
  options.max_in_flight = 1;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(PublishPooled(*producer, 0));  // sent: held
  ASSERT_OK(PublishPooled(*producer, 1));  // queued: the queue is full now
  auto status = PublishPooled(*producer, 2);
  EXPECT_TRUE(status.IsIOError()) << status.ToString();
  EXPECT_NE(status.message().find("backlog"), std::string::npos) << status.ToString();
  // Reading and releasing makes room again.
  BatchPtr batch;
  ASSERT_OK(consumer->ReadNext(&batch));
  batch.reset();
  ASSERT_OK(consumer->ReadNext(&batch));
  EXPECT_EQ(SeedOf(*batch), 1);
  batch.reset();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_OK(PublishPooled(*producer, 3));
}

TEST_P(ProducerConsumerTest, LossyConsumerNeverHoldsTheProducerBack) {
  const std::string address = NextAddress();
  ProducerOptions producer_options = Options();
  producer_options.block_timeout_ms = 0;  // any wait would fail Publish
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), producer_options));
  ConsumerOptions options = ConsumerOpts();
  options.lossy = true;
  options.max_in_flight = 4;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));

  constexpr int kBatches = 50;
  for (int seed = 0; seed < kBatches; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
  ASSERT_OK(producer->End());

  int64_t received = 0;
  int64_t last_seed = -1;
  for (;;) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    if (batch == nullptr) break;
    const int64_t seed = SeedOf(*batch);
    EXPECT_GT(seed, last_seed) << "out of order";
    EXPECT_TRUE(batch->Equals(*Expected(seed)));
    last_seed = seed;
    ++received;
  }
  EXPECT_GT(consumer->stats().dropped, 0);
  EXPECT_EQ(received + consumer->stats().dropped, kBatches);
  EXPECT_EQ(producer->stats().dropped, consumer->stats().dropped);
  EXPECT_EQ(last_seed, kBatches - 1) << "a lossy consumer loses the oldest, keeps the newest";
}

TEST_P(ProducerConsumerTest, FanOutDeliversTheSamePagesToEveryConsumer) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  std::vector<std::shared_ptr<Consumer>> consumers;
  for (int i = 0; i < 3; ++i) {
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
    consumers.push_back(consumer);
  }
  ASSERT_OK(producer->WaitForConsumers(3, kTimeoutMs));
  constexpr int kBatches = 4;
  for (int seed = 0; seed < kBatches; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
  EXPECT_EQ(producer->stats().bytes_copied, 0);

  std::vector<std::vector<BatchPtr>> received(3);
  for (int c = 0; c < 3; ++c) {
    for (int seed = 0; seed < kBatches; ++seed) {
      BatchPtr batch;
      ASSERT_OK(consumers[c]->ReadNext(&batch));
      ASSERT_NE(batch, nullptr);
      EXPECT_TRUE(batch->Equals(*Expected(seed)));
      received[c].push_back(batch);
    }
  }
  // Each consumer mapped the memory itself (different addresses), but every buffer is the same
  // file at the same offset: the same pages, shared.
  const auto maps = ReadMaps();
  struct Place {
    const uint8_t* address;
    uint64_t inode;
    uint64_t file_offset;
  };
  for (int seed = 0; seed < kBatches; ++seed) {
    std::vector<std::vector<Place>> places(3);
    for (int c = 0; c < 3; ++c) {
      ForEachBuffer(*received[c][seed], [&](const arrow::Buffer& buffer) {
        auto m = FindMapping(maps, buffer.data(), buffer.size());
        ASSERT_TRUE(m.has_value());
        EXPECT_NE(m->path.find("memfd:"), std::string::npos);
        places[c].push_back({buffer.data(), m->inode,
                             reinterpret_cast<uintptr_t>(buffer.data()) - m->start + m->offset});
      });
    }
    ASSERT_FALSE(places[0].empty());
    for (int c = 1; c < 3; ++c) {
      ASSERT_EQ(places[c].size(), places[0].size());
      for (size_t b = 0; b < places[0].size(); ++b) {
        EXPECT_NE(places[c][b].address, places[0][b].address);
        EXPECT_EQ(places[c][b].inode, places[0][b].inode) << "batch " << seed << " buffer " << b;
        EXPECT_EQ(places[c][b].file_offset, places[0][b].file_offset)
            << "batch " << seed << " buffer " << b;
      }
    }
  }
  EXPECT_EQ(producer->stats().in_flight, 3 * kBatches);
  received.clear();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
}

TEST_P(ProducerConsumerTest, SeveralThreadsPublishAtOnceWhileConsumersRead) {
  // Publishing threads share the producer's caches (the metadata template, the records' blocks)
  // and its ring: each batch arrives whole, each thread's in its order, and everything returns.
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  constexpr int kConsumers = 2;
  constexpr int kThreads = 4;
  constexpr int kPerThread = 200;
  std::vector<std::shared_ptr<Consumer>> consumers;
  for (int c = 0; c < kConsumers; ++c) {
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
    consumers.push_back(consumer);
  }
  ASSERT_OK(producer->WaitForConsumers(kConsumers, kTimeoutMs));
  // Thread t publishes seeds t * 10000 + i with 1 + t rows (a layout of its own lengths). In ring
  // mode every other batch is built on the heap, so that it is copied in (sealed mode's pool()
  // serves one batch at a time: all are heap batches there).
  auto rows_of = [](int64_t seed) { return 1 + seed / 10000; };
  std::vector<std::string> failures(kThreads + kConsumers);
  std::vector<std::thread> threads;
  for (int c = 0; c < kConsumers; ++c) {
    threads.emplace_back([&, c] {
      std::vector<int64_t> last(kThreads, -1);
      for (int n = 0; n < kThreads * kPerThread; ++n) {
        BatchPtr batch;
        auto status = consumers[c]->ReadNext(&batch);
        if (!status.ok() || batch == nullptr) {
          failures[kThreads + c] = "read " + std::to_string(n) + ": " + status.ToString();
          return;
        }
        const int64_t seed = SeedOf(*batch);
        const int64_t t = seed / 10000;
        if (t < 0 || t >= kThreads || seed % 10000 <= last[t] ||
            !batch->Equals(*Expected(seed, rows_of(seed)))) {
          failures[kThreads + c] = "batch " + std::to_string(n) + " (seed " + std::to_string(seed) +
                                   ") is not the next one of its thread";
          return;
        }
        last[t] = seed % 10000;
      }
    });
  }
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int64_t i = 0; i < kPerThread; ++i) {
        const int64_t seed = t * 10000 + i;
        auto batch =
            MakeBatch(ring() && i % 2 == 0 ? producer->pool() : arrow::default_memory_pool(), seed,
                      rows_of(seed));
        auto status = batch.ok() ? producer->Publish(*batch) : batch.status();
        if (!status.ok()) {
          failures[t] = "publish " + std::to_string(seed) + ": " + status.ToString();
          return;
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& failure : failures) EXPECT_EQ(failure, "");
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  const ProducerStats stats = producer->stats();
  EXPECT_EQ(stats.published, kThreads * kPerThread);
  EXPECT_EQ(stats.in_flight, 0);
  EXPECT_EQ(stats.ring_bytes_in_use, 0);
}

TEST_P(ProducerConsumerTest, LateJoinerStartsAtTheOldestRetainedBatchIfAsked) {
  const std::string address = NextAddress();
  ProducerOptions options = Options();
  options.retain = 3;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), options));
  for (int seed = 0; seed < 5; ++seed) ASSERT_OK(PublishPooled(*producer, seed));

  ConsumerOptions oldest_options = ConsumerOpts();
  oldest_options.start_at_oldest = true;
  ASSERT_OK_AND_ASSIGN(auto oldest, Consumer::Connect(address, oldest_options));
  ASSERT_OK_AND_ASSIGN(auto newest, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(2, kTimeoutMs));
  ASSERT_OK(PublishPooled(*producer, 5));
  ASSERT_OK(producer->End());

  auto read_seeds = [](Consumer& consumer) {
    std::vector<int64_t> seeds;
    for (;;) {
      BatchPtr batch;
      auto status = consumer.ReadNext(&batch);
      if (!status.ok()) {
        ADD_FAILURE() << status.ToString();
        break;
      }
      if (batch == nullptr) break;
      EXPECT_TRUE(batch->Equals(*Expected(SeedOf(*batch))));
      seeds.push_back(SeedOf(*batch));
    }
    return seeds;
  };
  EXPECT_EQ(read_seeds(*oldest), (std::vector<int64_t>{2, 3, 4, 5}));
  EXPECT_EQ(read_seeds(*newest), (std::vector<int64_t>{5}));
}

/// Answers "<k>" with 3 batches of {x: int32} (x = k * 100 + batch * 10 + row), and fails on
/// "fail-early" (before any batch) and "fail-late" (after one).
arrow::Status AnswerRequest(std::string_view request, ResponseWriter& response) {
  static const auto schema = arrow::schema({arrow::field("x", arrow::int32())});
  const std::string text(request);
  if (text == "fail-early") return arrow::Status::Invalid("handler says no to ", text);
  const int k = text == "fail-late" ? 0 : std::stoi(text);
  for (int b = 0; b < 3; ++b) {
    arrow::Int32Builder builder(response.pool());
    for (int row = 0; row < 10; ++row) ARROW_RETURN_NOT_OK(builder.Append(k * 100 + b * 10 + row));
    ARROW_ASSIGN_OR_RAISE(auto column, builder.Finish());
    ARROW_RETURN_NOT_OK(response.Write(arrow::RecordBatch::Make(schema, 10, {column})));
    if (text == "fail-late") return arrow::Status::Invalid("handler says no to ", text);
  }
  return arrow::Status::OK();
}

void ExpectAnswer(arrow::RecordBatchReader& reader, int k) {
  EXPECT_TRUE(reader.schema()->Equals(*arrow::schema({arrow::field("x", arrow::int32())})))
      << reader.schema()->ToString();
  for (int b = 0; b < 3; ++b) {
    BatchPtr batch;
    ASSERT_OK(reader.ReadNext(&batch));
    ASSERT_NE(batch, nullptr) << "request " << k << " batch " << b;
    ASSERT_EQ(batch->num_columns(), 1);
    ASSERT_EQ(batch->num_rows(), 10);
    auto x = std::static_pointer_cast<arrow::Int32Array>(batch->column(0));
    for (int row = 0; row < 10; ++row) EXPECT_EQ(x->Value(row), k * 100 + b * 10 + row);
  }
  BatchPtr end;
  ASSERT_OK(reader.ReadNext(&end));
  EXPECT_EQ(end, nullptr);
}

TEST_P(ProducerConsumerTest, RequestsAreAnsweredOnTheirOwnStreams) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  producer->SetRequestHandler(AnswerRequest);
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));

  ASSERT_OK_AND_ASSIGN(auto single, consumer->Request("7"));
  ExpectAnswer(*single, 7);

  // Two in flight on one connection: both asked before either is read, read in reverse order,
  // with a published batch in between.
  ASSERT_OK_AND_ASSIGN(auto one, consumer->Request("1"));
  ASSERT_OK_AND_ASSIGN(auto two, consumer->Request("2"));
  ASSERT_OK(PublishPooled(*producer, 9));
  ExpectAnswer(*two, 2);
  ExpectAnswer(*one, 1);
  BatchPtr published;
  ASSERT_OK(consumer->ReadNext(&published));
  ASSERT_NE(published, nullptr);
  EXPECT_TRUE(published->Equals(*Expected(9)));
  EXPECT_TRUE(consumer->schema()->Equals(*TestSchema()));  // the published stream's, unchanged
}

TEST_P(ProducerConsumerTest, AnswersPassBatchesWaitingForTheConsumersCredits) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  producer->SetRequestHandler(AnswerRequest);
  ConsumerOptions options = ConsumerOpts();
  options.max_in_flight = 1;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  // Stream 0 out of credits, unread: the second batch waits at the producer, ahead of the answer.
  ASSERT_OK(PublishPooled(*producer, 0));
  ASSERT_OK(PublishPooled(*producer, 1));
  ASSERT_OK_AND_ASSIGN(auto answer, consumer->Request("6"));
  ExpectAnswer(*answer, 6);
  BatchPtr published;
  ASSERT_OK(consumer->ReadNext(&published));
  ASSERT_NE(published, nullptr);
  EXPECT_EQ(SeedOf(*published), 0);
  published.reset();
  ASSERT_OK(consumer->ReadNext(&published));
  ASSERT_NE(published, nullptr);
  EXPECT_EQ(SeedOf(*published), 1);
}

TEST_P(ProducerConsumerTest, HandlerInTheOptionsAnswersTheFirstRequest) {
  const std::string address = NextAddress();
  ProducerOptions options = Options();
  options.request_handler = AnswerRequest;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), options));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK_AND_ASSIGN(auto first, consumer->Request("4"));
  ExpectAnswer(*first, 4);
  // SetRequestHandler still replaces it.
  producer->SetRequestHandler(
      [](std::string_view, ResponseWriter&) { return arrow::Status::Invalid("the replacement"); });
  EXPECT_ERROR_CONTAINS(consumer->Request("5"), "the replacement");
}

TEST_P(ProducerConsumerTest, HandlerErrorsReachTheRequester) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  producer->SetRequestHandler(AnswerRequest);
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));

  EXPECT_ERROR_CONTAINS(consumer->Request("fail-early"), "handler says no to fail-early");

  ASSERT_OK_AND_ASSIGN(auto late, consumer->Request("fail-late"));
  BatchPtr batch;
  ASSERT_OK(late->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  EXPECT_ERROR_CONTAINS(late->ReadNext(&batch), "handler says no to fail-late");

  // The connection survives a failed request.
  ASSERT_OK_AND_ASSIGN(auto fine, consumer->Request("3"));
  ExpectAnswer(*fine, 3);
}

TEST_P(ProducerConsumerTest, RequestWithoutHandlerFails) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  EXPECT_ERROR_CONTAINS(consumer->Request("anything"), "no request handler");
  // Still connected.
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(PublishPooled(*producer, 1));
  BatchPtr batch;
  ASSERT_OK(consumer->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
}

TEST_P(ProducerConsumerTest, ProjectionDeliversOnlyTheChosenColumns) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ConsumerOptions options = ConsumerOpts();
  options.columns = {"b"};
  ASSERT_OK_AND_ASSIGN(auto projected, Consumer::Connect(address, options));
  ASSERT_OK_AND_ASSIGN(auto full, Consumer::Connect(address, ConsumerOpts()));
  EXPECT_TRUE(projected->schema()->Equals(*arrow::schema({arrow::field("b", arrow::utf8())})))
      << projected->schema()->ToString();
  ASSERT_OK(producer->WaitForConsumers(2, kTimeoutMs));
  for (int seed = 0; seed < 3; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
  EXPECT_EQ(producer->stats().bytes_copied, 0);
  for (int seed = 0; seed < 3; ++seed) {
    BatchPtr batch;
    ASSERT_OK(projected->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    ASSERT_EQ(batch->num_columns(), 1);
    EXPECT_EQ(batch->schema()->field(0)->name(), "b");
    EXPECT_TRUE(batch->column(0)->Equals(*Expected(seed)->column(1)));
    ExpectInReadOnlyMemfd(*batch);
    ASSERT_OK(full->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    EXPECT_TRUE(batch->Equals(*Expected(seed)));
  }

  options.columns = {"a", "nosuch"};
  auto refused = Consumer::Connect(address, options);
  EXPECT_ERROR_CONTAINS(refused, "'nosuch'");
}

TEST_P(ProducerConsumerTest, ProjectionFollowsASchemaChangeWithBatchesQueued) {
  const auto first =
      arrow::schema({arrow::field("a", arrow::int64()), arrow::field("b", arrow::utf8()),
                     arrow::field("c", arrow::float64())});
  // c moves from index 2 to index 1; a index 2 no longer exists.
  const auto second =
      arrow::schema({arrow::field("a", arrow::int64()), arrow::field("c", arrow::float64())});
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, first, Options()));
  ConsumerOptions options = ConsumerOpts();
  options.columns = {"c"};
  options.max_in_flight = 2;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(PublishPooled(*producer, 0));  // sent
  ASSERT_OK(PublishPooled(*producer, 1));  // sent
  ASSERT_OK(PublishPooled(*producer, 2));  // queued: the new schema waits behind it
  ASSERT_OK(producer->ChangeSchema(second));
  ASSERT_OK(PublishPooled(*producer, 3));
  ASSERT_OK(producer->End());
  for (int seed = 0; seed < 4; ++seed) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    ASSERT_EQ(batch->num_columns(), 1);
    EXPECT_EQ(batch->schema()->field(0)->name(), "c");
    const auto& schema = seed < 3 ? first : second;
    EXPECT_TRUE(batch->column(0)->Equals(*Expected(seed, 100, schema)->GetColumnByName("c")));
  }
  EXPECT_EQ(consumer->stats().schema_changes, 1);
}

TEST_P(ProducerConsumerTest, SchemaChangeDroppingAProjectedColumnDisconnects) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ConsumerOptions options = ConsumerOpts();
  options.columns = {"b"};
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(producer->ChangeSchema(arrow::schema({arrow::field("a", arrow::int64())})));
  BatchPtr batch;
  auto status = consumer->ReadNext(&batch);
  EXPECT_FALSE(status.ok());
  EXPECT_NE(status.message().find("'b'"), std::string::npos) << status.ToString();
  EXPECT_EQ(producer->stats().consumers, 0);
}

TEST_P(ProducerConsumerTest, SchemaNegotiation) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));

  ConsumerOptions exact = ConsumerOpts();
  exact.expect_schema =
      arrow::schema({arrow::field("a", arrow::int32()), arrow::field("b", arrow::utf8())});
  auto mismatch = Consumer::Connect(address, exact);
  ASSERT_FALSE(mismatch.ok());
  const std::string message = mismatch.status().ToString();
  EXPECT_NE(message.find("'a"), std::string::npos) << message;
  EXPECT_NE(message.find("int32"), std::string::npos) << message;
  EXPECT_NE(message.find("int64"), std::string::npos) << message;

  exact.expect_schema = TestSchema();
  ASSERT_OK_AND_ASSIGN(auto exact_match, Consumer::Connect(address, exact));

  ConsumerOptions subset = ConsumerOpts();
  subset.match = SchemaMatch::kSubset;
  subset.expect_schema = arrow::schema({arrow::field("b", arrow::utf8())});
  ASSERT_OK_AND_ASSIGN(auto subset_match, Consumer::Connect(address, subset));
  EXPECT_TRUE(subset_match->schema()->Equals(*TestSchema()));
  ASSERT_OK(producer->WaitForConsumers(2, kTimeoutMs));
  ASSERT_OK(PublishPooled(*producer, 4));
  BatchPtr batch;
  ASSERT_OK(subset_match->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  EXPECT_TRUE(batch->Equals(*Expected(4)));

  subset.expect_schema = arrow::schema({arrow::field("b", arrow::int32())});
  auto subset_mismatch = Consumer::Connect(address, subset);
  EXPECT_ERROR_CONTAINS(subset_mismatch, "'b'");
  EXPECT_ERROR_CONTAINS(subset_mismatch, "int32");
  EXPECT_ERROR_CONTAINS(subset_mismatch, "string");
}

TEST_P(ProducerConsumerTest, AnotherMajorVersionIsRefusedWithAnError) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto socket,
                       internal::UnixSocket::Connect(address, SOCK_SEQPACKET, kTimeoutMs));
  proto::Writer writer;
  proto::Hello hello;
  hello.major = 2;
  ASSERT_OK(socket.Send(proto::Encode(writer, hello), {}));
  std::vector<uint8_t> buffer(proto::kMaxMessageSize);
  ASSERT_OK_AND_ASSIGN(auto received, socket.Receive(buffer, 1, kTimeoutMs));
  ASSERT_GT(received.bytes, 0) << "no answer";
  EXPECT_TRUE(received.fds.empty());
  proto::Reader reader(std::span<const uint8_t>(buffer.data(), received.bytes));
  ASSERT_OK_AND_ASSIGN(auto header, reader.ReadHeader());
  ASSERT_EQ(header.type, proto::Type::kError);
  ASSERT_OK_AND_ASSIGN(auto error, proto::DecodeError(reader));
  EXPECT_EQ(error.code, proto::ErrorCode::kVersion);
  EXPECT_NE(error.message.find("version 2"), std::string::npos) << error.message;
  const std::string ours =
      std::to_string(proto::kMajorVersion) + "." + std::to_string(proto::kMinorVersion);
  EXPECT_NE(error.message.find(ours), std::string::npos) << error.message;
  // Then the producer hangs up.
  ASSERT_OK_AND_ASSIGN(auto after, socket.Receive(buffer, 1, kTimeoutMs));
  EXPECT_EQ(after.bytes, 0);
  EXPECT_EQ(producer->stats().consumers, 0);
}

TEST_P(ProducerConsumerTest, SchemaChangeMidStream) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  const auto second =
      arrow::schema({arrow::field("a", arrow::int64()), arrow::field("b", arrow::utf8()),
                     arrow::field("c", arrow::float64())});
  ASSERT_OK(PublishPooled(*producer, 0));
  ASSERT_OK(PublishPooled(*producer, 1));
  ASSERT_OK(producer->ChangeSchema(second));
  EXPECT_ERROR_CONTAINS(producer->Publish(Expected(5)), "call ChangeSchema first");
  ASSERT_OK(PublishPooled(*producer, 2));
  ASSERT_OK(PublishPooled(*producer, 3));
  ASSERT_OK(producer->End());
  EXPECT_EQ(producer->stats().bytes_copied, 0);

  for (int seed = 0; seed < 4; ++seed) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    const auto& schema = seed < 2 ? TestSchema() : second;
    EXPECT_TRUE(batch->schema()->Equals(*schema)) << batch->schema()->ToString();
    EXPECT_TRUE(batch->Equals(*Expected(seed, 100, schema)));
  }
  EXPECT_TRUE(consumer->schema()->Equals(*second));
  EXPECT_EQ(consumer->stats().schema_changes, 1);
  BatchPtr end;
  ASSERT_OK(consumer->ReadNext(&end));
  EXPECT_EQ(end, nullptr);
}

TEST_P(ProducerConsumerTest, DictionaryFields) {
  const auto schema =
      arrow::schema({arrow::field("d", arrow::dictionary(arrow::int32(), arrow::utf8()))});
  const std::string address = NextAddress();
  auto listened = Producer::Listen(address, schema, Options());
  if (ring()) {
    ASSERT_FALSE(listened.ok());
    EXPECT_TRUE(listened.status().IsNotImplemented()) << listened.status().ToString();
    EXPECT_ERROR_CONTAINS(listened, "field 'd'");
    // Nor nested in another type.
    const auto nested = arrow::schema(
        {arrow::field("l", arrow::list(arrow::dictionary(arrow::int8(), arrow::utf8())))});
    auto nested_listened = Producer::Listen(NextAddress(), nested, Options());
    EXPECT_TRUE(nested_listened.status().IsNotImplemented()) << nested_listened.status().ToString();
    // Nor can a ring producer switch to one later.
    ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
    auto status = producer->ChangeSchema(schema);
    EXPECT_TRUE(status.IsNotImplemented()) << status.ToString();
    return;
  }
  ASSERT_OK(listened);
  auto producer = *listened;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  arrow::StringDictionary32Builder builder;  // int32 indices, as the schema says
  for (const char* value : {"x", "y", "x", "z", "y"}) ASSERT_OK(builder.Append(value));
  ASSERT_OK_AND_ASSIGN(auto column, builder.Finish());
  auto batch = arrow::RecordBatch::Make(schema, 5, {column});
  ASSERT_OK(producer->Publish(batch));
  BatchPtr received;
  ASSERT_OK(consumer->ReadNext(&received));
  ASSERT_NE(received, nullptr);
  EXPECT_TRUE(received->Equals(*batch)) << received->ToString();
}

TEST_P(ProducerConsumerTest, ConsumerGoneReturnsEverything) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  {
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
    ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
    for (int seed = 0; seed < 3; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));  // read one and let it go; two never read
    EXPECT_GE(producer->stats().in_flight, 2);
  }
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  const auto stats = producer->stats();
  EXPECT_EQ(stats.in_flight, 0);
  EXPECT_EQ(stats.consumers, 0);
  EXPECT_EQ(stats.ring_bytes_in_use, 0);  // the producer kept no batch of its own
}

TEST_P(ProducerConsumerTest, BatchesOutliveTheirConsumer) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  BatchPtr kept;
  {
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
    ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
    ASSERT_OK(PublishPooled(*producer, 6));
    ASSERT_OK(consumer->ReadNext(&kept));
    ASSERT_NE(kept, nullptr);
  }
  // The consumer said Bye: it receives nothing more, but what it holds stays pinned.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  while (producer->stats().consumers != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(producer->stats().consumers, 0) << "the producer did not take the Bye";
  EXPECT_OK(PublishPooled(*producer, 7));
  EXPECT_EQ(producer->stats().in_flight, 1);  // only the batch still referenced here
  EXPECT_FALSE(producer->WaitUntilDrained(0).ok());
  EXPECT_EQ(SumOfA(*kept), ExpectedSumOfA(6));
  kept.reset();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(producer->stats().in_flight, 0);
}

TEST_P(ProducerConsumerTest, ProducerClosedUnderAConsumer) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, ConsumerOpts()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  for (int seed = 0; seed < 3; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
  std::vector<BatchPtr> held;
  for (int seed = 0; seed < 3; ++seed) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    held.push_back(batch);
  }
  producer->Close();
  producer.reset();  // the producer's ring or arenas are gone from this side

  BatchPtr next;
  auto status = consumer->ReadNext(&next);
  ASSERT_FALSE(status.ok()) << "read past a closed producer";
  EXPECT_NE(status.message().find("closed"), std::string::npos) << status.ToString();
  EXPECT_EQ(status.message().find("within"), std::string::npos) << "timed out instead";
  // Again: still an error, still no hang.
  EXPECT_FALSE(consumer->ReadNext(&next).ok());
  int64_t sum = 0;
  for (const auto& batch : held) sum += SumOfA(*batch);
  EXPECT_EQ(sum, ExpectedSumOfA(0) + ExpectedSumOfA(1) + ExpectedSumOfA(2));
  for (int seed = 0; seed < 3; ++seed) EXPECT_TRUE(held[seed]->Equals(*Expected(seed)));
}

/// A whole producer and consumer lifecycle: publish, request, read, end, tear down.
void Lifecycle(MemoryMode mode) {
  const std::string address = NextAddress();
  ProducerOptions options;
  options.mode = mode;
  options.ring_size = int64_t{4} << 20;
  options.block_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), options));
  producer->SetRequestHandler(AnswerRequest);
  ConsumerOptions consumer_options;
  consumer_options.read_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, consumer_options));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  for (int seed = 0; seed < 3; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
  ASSERT_OK(producer->Publish(Expected(3)));
  EXPECT_GT(test_util::CountMemfdMappings(), 0)
      << "shared memory is mapped while batches are in flight";
  ASSERT_OK(producer->End());
  ASSERT_OK_AND_ASSIGN(auto answer, consumer->Request("4"));
  ExpectAnswer(*answer, 4);
  answer.reset();
  for (;;) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    if (batch == nullptr) break;
  }
  consumer.reset();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  producer->Close();
}

TEST_P(ProducerConsumerTest, LifecycleLeaksNoFdsOrMappings) {
  Lifecycle(GetParam());  // warm-up: lazily created threads, pools and caches
  Lifecycle(GetParam());
  if (HasFatalFailure()) return;
  const int fds_before = test_util::CountOpenFds();
  const int maps_before = test_util::CountMemfdMappings();
  Lifecycle(GetParam());
  if (HasFatalFailure()) return;
  EXPECT_EQ(test_util::CountOpenFds(), fds_before);
  EXPECT_EQ(test_util::CountMemfdMappings(), maps_before);
}

TEST_P(ProducerConsumerTest, KilledConsumerReturnsWhatItHeld) {
  const std::string address = NextAddress();
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  // Fork first, while this process runs no other thread; the child connects once we listen.
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(ready[0]);
    ConsumerOptions options;
    options.connect_timeout_ms = kTimeoutMs;
    options.read_timeout_ms = kTimeoutMs;
    auto consumer = Consumer::Connect(address, options);
    if (!consumer.ok()) ::_exit(10);
    std::vector<BatchPtr> held;
    for (int i = 0; i < 3; ++i) {
      BatchPtr batch;
      if (!(*consumer)->ReadNext(&batch).ok() || batch == nullptr) ::_exit(11);
      held.push_back(batch);
    }
    const char byte = 'r';
    if (::write(ready[1], &byte, 1) != 1) ::_exit(12);
    for (;;) ::pause();
  }
  ChildGuard child(pid);
  ::close(ready[1]);
  UniqueFd ready_reader(ready[0]);

  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  for (int seed = 0; seed < 3; ++seed) ASSERT_OK(PublishPooled(*producer, seed));
  if (!WaitForByte(ready[0], kTimeoutMs)) {
    auto status = child.Wait(1000);
    FAIL() << "the child consumer did not get its batches: "
           << (status ? DescribeWaitStatus(*status) : "still running");
  }
  EXPECT_EQ(producer->stats().consumers, 1);
  EXPECT_EQ(producer->stats().in_flight, 3);
  if (ring()) EXPECT_GT(producer->stats().ring_bytes_in_use, 0);

  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto status = child.Wait(kTimeoutMs);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL) << DescribeWaitStatus(*status);

  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  const auto stats = producer->stats();
  EXPECT_EQ(stats.consumers, 0);
  EXPECT_EQ(stats.in_flight, 0);
  EXPECT_EQ(stats.ring_bytes_in_use, 0);
  // The producer carries on.
  EXPECT_OK(PublishPooled(*producer, 3));
}

TEST_P(ProducerConsumerTest, KilledProducerLeavesHeldBatchesReadable) {
  const std::string address = NextAddress();
  const ProducerOptions producer_options = Options();
  int ready[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(ready[0]);
    auto producer = Producer::Listen(address, TestSchema(), producer_options);
    if (!producer.ok()) ::_exit(10);
    if (!(*producer)->WaitForConsumers(1, kTimeoutMs).ok()) ::_exit(11);
    for (int seed = 0; seed < 3; ++seed) {
      if (!PublishPooled(**producer, seed).ok()) ::_exit(12);
    }
    const char byte = 'p';
    if (::write(ready[1], &byte, 1) != 1) ::_exit(13);
    for (;;) ::pause();
  }
  ChildGuard child(pid);
  ::close(ready[1]);
  UniqueFd ready_reader(ready[0]);

  ConsumerOptions options = ConsumerOpts();
  options.connect_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, options));
  std::vector<BatchPtr> held;
  for (int seed = 0; seed < 3; ++seed) {
    BatchPtr batch;
    ASSERT_OK(consumer->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
    held.push_back(batch);
  }
  ASSERT_TRUE(WaitForByte(ready[0], kTimeoutMs));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  auto status = child.Wait(kTimeoutMs);
  ASSERT_TRUE(status.has_value());
  EXPECT_TRUE(WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL) << DescribeWaitStatus(*status);

  BatchPtr next;
  auto read = consumer->ReadNext(&next);
  ASSERT_FALSE(read.ok());
  EXPECT_NE(read.message().find("producer"), std::string::npos) << read.ToString();
  EXPECT_EQ(read.message().find("within"), std::string::npos) << "timed out instead";
  int64_t sum = 0;
  for (const auto& batch : held) {
    sum += SumOfA(*batch);
    ExpectInReadOnlyMemfd(*batch);
  }
  EXPECT_EQ(sum, ExpectedSumOfA(0) + ExpectedSumOfA(1) + ExpectedSumOfA(2));
  for (int seed = 0; seed < 3; ++seed) EXPECT_TRUE(held[seed]->Equals(*Expected(seed)));
}

TEST_P(ProducerConsumerTest, MaxConsumersRefusesTheNextOne) {
  const std::string address = NextAddress();
  ProducerOptions options = Options();
  options.max_consumers = 1;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), options));
  ASSERT_OK_AND_ASSIGN(auto first, Consumer::Connect(address, ConsumerOpts()));
  auto second = Consumer::Connect(address, ConsumerOpts());
  EXPECT_ERROR_CONTAINS(second, "limit 1");
  EXPECT_EQ(producer->stats().consumers, 1);
  // The first is unaffected; once it leaves there is room again.
  ASSERT_OK(PublishPooled(*producer, 1));
  BatchPtr batch;
  ASSERT_OK(first->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  batch.reset();
  first.reset();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  ASSERT_OK_AND_ASSIGN(auto third, Consumer::Connect(address, ConsumerOpts()));
  EXPECT_EQ(third->mode(), ring() ? "ring" : "sealed");
}

TEST_P(ProducerConsumerTest, FdLimitWhileReceivingIsAClearError) {
  const std::string address = NextAddress();
  const bool ring_mode = ring();
  int report[2];
  ASSERT_EQ(::pipe2(report, O_CLOEXEC), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::close(report[0]);
    auto tell = [&](const std::string& what) {
      (void)!::write(report[1], what.data(), std::min<size_t>(what.size(), 512));
    };
    auto lowest_free_fd = [] {
      const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      ::close(fd);
      return fd;
    };
    auto limit_fds = [](int count) {
      rlimit limit{};
      ::getrlimit(RLIMIT_NOFILE, &limit);
      limit.rlim_cur = static_cast<rlim_t>(count);
      return ::setrlimit(RLIMIT_NOFILE, &limit) == 0;
    };
    ConsumerOptions options;
    options.connect_timeout_ms = kTimeoutMs;
    options.read_timeout_ms = kTimeoutMs;
    arrow::Status status;
    if (ring_mode) {
      // Room for the socket, none for the ring fd of the Welcome.
      if (!limit_fds(lowest_free_fd() + 1)) ::_exit(20);
      status = Consumer::Connect(address, options).status();
      if (status.ok()) ::_exit(1);
    } else {
      auto consumer = Consumer::Connect(address, options);
      if (!consumer.ok()) {
        tell(consumer.status().ToString());
        ::_exit(21);
      }
      // No room for the fd that comes with the next Batch.
      if (!limit_fds(lowest_free_fd())) ::_exit(20);
      BatchPtr batch;
      status = (*consumer)->ReadNext(&batch);
      if (status.ok()) ::_exit(1);
    }
    tell(status.ToString());
    ::_exit(status.message().find("MSG_CTRUNC") != std::string::npos ? 0 : 2);
  }
  ChildGuard child(pid);
  ::close(report[1]);
  UniqueFd report_reader(report[0]);

  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, TestSchema(), Options()));
  if (!ring()) {
    ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
    ASSERT_OK(PublishPooled(*producer, 1));
  }
  auto status = child.Wait(kTimeoutMs * 2);
  ASSERT_TRUE(status.has_value()) << "the consumer hung";
  char text[513] = {};
  (void)!::read(report[0], text, 512);
  ASSERT_TRUE(WIFEXITED(*status)) << DescribeWaitStatus(*status) << ": " << text;
  EXPECT_EQ(WEXITSTATUS(*status), 0) << "child reported: " << text;
  EXPECT_NE(std::string(text).find("RLIMIT_NOFILE"), std::string::npos) << text;
  // The producer is unharmed and lets go of what it sent.
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_OK(PublishPooled(*producer, 2));
}

// A ring producer with a 64 KiB ring (one int64 column "a") and one attached consumer.
struct SmallRing {
  std::shared_ptr<arrow::Schema> schema = arrow::schema({arrow::field("a", arrow::int64())});
  ProducerOptions options;
  std::shared_ptr<Producer> producer;
  std::shared_ptr<Consumer> consumer;
};

arrow::Result<SmallRing> MakeSmallRing(int block_timeout_ms) {
  SmallRing ring;
  const std::string address = NextAddress();
  ring.options.mode = MemoryMode::kRing;
  ring.options.ring_size = 64 * 1024;
  ring.options.block_timeout_ms = block_timeout_ms;
  ARROW_ASSIGN_OR_RAISE(ring.producer, Producer::Listen(address, ring.schema, ring.options));
  ConsumerOptions consumer_options;
  consumer_options.read_timeout_ms = kTimeoutMs;
  ARROW_ASSIGN_OR_RAISE(ring.consumer, Consumer::Connect(address, consumer_options));
  ARROW_RETURN_NOT_OK(ring.producer->WaitForConsumers(1, kTimeoutMs));
  return ring;
}

TEST(ProducerRingBackPressure, FullRingFailsFastWithoutBlockTimeout) {
  ASSERT_OK_AND_ASSIGN(auto ring, MakeSmallRing(0));
  auto& [schema, options, producer, consumer] = ring;

  std::vector<BatchPtr> held;
  arrow::Status failure;
  for (int seed = 0; seed < 64 && failure.ok(); ++seed) {
    auto batch = MakeBatch(producer->pool(), seed, 1000, schema);
    if (!batch.ok()) {
      failure = batch.status();
      break;
    }
    failure = producer->Publish(*batch);
    if (!failure.ok()) break;
    BatchPtr received;
    ASSERT_OK(consumer->ReadNext(&received));
    held.push_back(received);
  }
  ASSERT_FALSE(failure.ok()) << "a 64 KiB ring took 64 held batches of 8 KB";
  EXPECT_TRUE(failure.IsOutOfMemory() || failure.IsIOError()) << failure.ToString();
  EXPECT_NE(failure.message().find("ring"), std::string::npos) << failure.ToString();
  EXPECT_GE(held.size(), 2u);
  // Heap batches need ring space too.
  auto heap = MakeBatch(arrow::default_memory_pool(), 99, 1000, schema);
  ASSERT_OK(heap);
  EXPECT_ERROR_CONTAINS(producer->Publish(*heap), "ring");
  held.clear();
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_OK(producer->Publish(*heap));
}

TEST(ProducerRingBackPressure, PublishWaitsForAReleaseFromAnotherThread) {
  ASSERT_OK_AND_ASSIGN(auto ring, MakeSmallRing(2000));
  auto& [schema, options, producer, consumer] = ring;

  // Fill the ring with batches the consumer holds, until the next one cannot fit.
  std::vector<BatchPtr> held;
  int64_t per_batch = 0;
  int seed = 0;
  for (;; ++seed) {
    const int64_t in_use = producer->stats().ring_bytes_in_use;
    if (per_batch > 0 && options.ring_size - in_use < per_batch) break;
    ASSERT_OK(PublishPooled(*producer, seed, 1000));
    if (per_batch == 0) per_batch = producer->stats().ring_bytes_in_use - in_use;
    BatchPtr received;
    ASSERT_OK(consumer->ReadNext(&received));
    ASSERT_NE(received, nullptr);
    held.push_back(received);
  }
  ASSERT_GE(held.size(), 2u);

  std::atomic<bool> releasing{false};
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    releasing = true;  // before the releases: whatever waited for them sees this
    held.clear();
  });
  const auto status = PublishPooled(*producer, seed, 1000);
  const bool waited = releasing.load();
  releaser.join();
  ASSERT_OK(status);
  EXPECT_TRUE(waited) << "the ring was not full: the publish did not have to wait";
  BatchPtr received;
  ASSERT_OK(consumer->ReadNext(&received));
  ASSERT_NE(received, nullptr);
  EXPECT_EQ(SeedOf(*received), seed);
}

TEST(ProducerHandoverFallback, ConnectToAStreamSocketReadsTheSingleHandover) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(TestSchema()));
  ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(writer->pool(), 3));
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  ASSERT_OK_AND_ASSIGN(auto sealed, writer->Finish());
  arrow::Status served;
  std::thread server([&] {
    ServeOptions options;
    options.clients = 1;
    options.accept_timeout_ms = kTimeoutMs;
    served = ServeFd(address, sealed.fd.get(), options);
  });
  ConsumerOptions options;
  options.connect_timeout_ms = kTimeoutMs;
  auto consumer = Consumer::Connect(address, options);
  server.join();
  ASSERT_OK(served);
  ASSERT_OK(consumer);
  EXPECT_EQ((*consumer)->mode(), "handover");
  EXPECT_TRUE((*consumer)->schema()->Equals(*TestSchema()));
  BatchPtr received;
  ASSERT_OK((*consumer)->ReadNext(&received));
  ASSERT_NE(received, nullptr);
  EXPECT_TRUE(received->Equals(*Expected(3)));
  ExpectInReadOnlyMemfd(*received);
  ASSERT_OK((*consumer)->ReadNext(&received));
  EXPECT_EQ(received, nullptr);
  EXPECT_FALSE((*consumer)->Request("x").ok());
}

}  // namespace
}  // namespace shmarrow
