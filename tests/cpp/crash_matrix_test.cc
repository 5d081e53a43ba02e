// Crash matrix: the producer or a consumer is SIGKILLed at a random point of a stream, many times
// per memory mode. Every run: nobody hangs (every wait is bounded), the survivor leaks no fd, no
// shared-memory mapping and no batch, and every batch that arrived is intact (compared with a
// deterministic generator, also after the producer died). docs/robustness.md, "Crash matrix".
//
//   SHMARROW_CRASH_RUNS  runs per mode and victim (default 10; the full form uses 50)
//   SHMARROW_CRASH_SEED  seed of the kill points and data (default: random; printed for replay)
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

using BatchPtr = std::shared_ptr<arrow::RecordBatch>;
using Clock = std::chrono::steady_clock;

constexpr int kBatches = 24;
constexpr int kWaitMs = 20000;  // every wait's bound: reached only when something hangs

int RunsPerCase() {
  const char* text = std::getenv("SHMARROW_CRASH_RUNS");
  const int runs = text != nullptr ? std::atoi(text) : 0;
  return runs > 0 ? runs : 10;
}

uint64_t MatrixSeed() {
  const char* text = std::getenv("SHMARROW_CRASH_SEED");
  return text != nullptr ? std::strtoull(text, nullptr, 10) : std::random_device{}();
}

std::shared_ptr<arrow::Schema> CrashSchema() {
  return arrow::schema({arrow::field("seq", arrow::int64(), false),
                        arrow::field("x", arrow::float64()), arrow::field("s", arrow::utf8())});
}

/// Batch `seq` of the stream of `seed`, built in `pool`: what the producer publishes and what
/// every receiver compares with. 1 to 2000 rows, so the ring wraps and sealed arenas vary.
arrow::Result<BatchPtr> StreamBatch(arrow::MemoryPool* pool, uint64_t seed, int64_t seq) {
  if (pool == nullptr) return arrow::Status::Invalid("no pool for batch ", seq);
  std::mt19937_64 random(seed * 1000003 + static_cast<uint64_t>(seq));
  const int64_t rows = 1 + static_cast<int64_t>(random() % 2000);
  arrow::Int64Builder seqs(pool);
  arrow::DoubleBuilder xs(pool);
  arrow::StringBuilder ss(pool);
  for (int64_t i = 0; i < rows; ++i) {
    ARROW_RETURN_NOT_OK(seqs.Append(seq));
    const uint64_t r = random();
    ARROW_RETURN_NOT_OK(r % 11 == 0 ? xs.AppendNull() : xs.Append(static_cast<double>(r >> 11)));
    ARROW_RETURN_NOT_OK(ss.Append(std::string(r % 17, static_cast<char>('a' + r % 26))));
  }
  ARROW_ASSIGN_OR_RAISE(auto a, seqs.Finish());
  ARROW_ASSIGN_OR_RAISE(auto b, xs.Finish());
  ARROW_ASSIGN_OR_RAISE(auto c, ss.Finish());
  return arrow::RecordBatch::Make(CrashSchema(), rows, {a, b, c});
}

/// OK when `batch` is batch `seq` of the stream of `seed`, bit for bit.
arrow::Status CheckBatch(const arrow::RecordBatch& batch, uint64_t seed, int64_t seq) {
  ARROW_ASSIGN_OR_RAISE(auto expected, StreamBatch(arrow::default_memory_pool(), seed, seq));
  if (!batch.Equals(*expected)) return arrow::Status::Invalid("batch ", seq, " differs");
  return arrow::Status::OK();
}

/// A forked child that starts when told to and reports its progress on a pipe, one byte per step;
/// killed and reaped at the latest when this object dies.
class Child {
 public:
  /// Forks a child that runs `body(progress_fd)` after Go() and exits with its result. Call
  /// while this process runs no other thread.
  explicit Child(const std::function<int(int)>& body) {
    int up[2], down[2];
    if (::pipe2(up, O_CLOEXEC) != 0) return;
    if (::pipe2(down, O_CLOEXEC) != 0) {
      ::close(up[0]);
      ::close(up[1]);
      return;
    }
    pid_ = ::fork();
    if (pid_ == 0) {
      char go;
      ::_exit(::read(down[0], &go, 1) == 1 ? body(up[1]) : 100);
    }
    ::close(up[1]);
    ::close(down[0]);
    progress_ = UniqueFd(up[0]);
    go_ = UniqueFd(down[1]);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    Kill();
    (void)Wait(kWaitMs);
  }
  bool started() const { return pid_ > 0; }
  void Go() {
    const char byte = 'g';
    (void)!::write(go_.get(), &byte, 1);
    go_.reset();
  }

  /// Reads progress until `steps` steps were seen in all; false when the child ended first or
  /// `timeout_ms` passed.
  bool WaitForSteps(int steps, int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (steps_ < steps) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      pollfd p{progress_.get(), POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, static_cast<int>(left)) <= 0) return false;
      char bytes[64];
      const ssize_t n = ::read(progress_.get(), bytes, sizeof bytes);
      if (n <= 0) return false;
      steps_ += static_cast<int>(n);
    }
    return true;
  }
  void Kill() {
    if (pid_ > 0) ::kill(pid_, SIGKILL);
  }
  /// The child's wait status, or nullopt if it did not end within `timeout_ms`.
  std::optional<int> Wait(int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    while (pid_ > 0) {
      int status = 0;
      const pid_t rc = ::waitpid(pid_, &status, WNOHANG);
      if (rc == pid_) {
        pid_ = -1;
        return status;
      }
      if (rc < 0 || Clock::now() >= deadline) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return std::nullopt;
  }

 private:
  pid_t pid_ = -1;
  UniqueFd progress_;
  UniqueFd go_;
  int steps_ = 0;
};

void Step(int fd) {
  const char byte = '.';
  (void)!::write(fd, &byte, 1);
}

std::string Describe(const std::optional<int>& status) {
  if (!status) return "still running (hung)";
  if (WIFEXITED(*status)) return "exited with " + std::to_string(WEXITSTATUS(*status));
  return "killed by signal " + std::to_string(WTERMSIG(*status));
}

/// Reads the stream to its end, checking every batch and holding up to `hold` of the latest
/// (released oldest first, so credits keep flowing). Steps once after connecting and once per
/// batch. Exit codes: 0 whole stream intact, 1 connect failed, 2 read error, 3 wrong batch.
int ReadStream(const std::string& address, uint64_t seed, size_t hold, int progress) {
  ConsumerOptions options;
  options.connect_timeout_ms = kWaitMs;
  options.read_timeout_ms = kWaitMs;
  auto consumer = Consumer::Connect(address, options);
  if (!consumer.ok()) return 1;
  Step(progress);
  std::vector<BatchPtr> held;
  for (int64_t seq = 0;; ++seq) {
    BatchPtr batch;
    if (!(*consumer)->ReadNext(&batch).ok()) return 2;
    if (batch == nullptr) return seq == kBatches ? 0 : 3;
    if (!CheckBatch(*batch, seed, seq).ok()) return 3;
    held.push_back(std::move(batch));
    if (held.size() > hold) held.erase(held.begin());
    Step(progress);
  }
}

struct Tally {
  int killed = 0;    // the victim died of our SIGKILL
  int finished = 0;  // it ended by itself before its kill point
};

class CrashMatrixTest : public ::testing::TestWithParam<MemoryMode> {
 protected:
  ProducerOptions Options() const {
    ProducerOptions options;
    options.mode = GetParam();
    options.ring_size = int64_t{1} << 20;
    options.max_in_flight = 8;
    options.block_timeout_ms = kWaitMs;
    return options;
  }
  std::string Address(int run) const {
    return "@crash-" + std::to_string(::getpid()) + "-" +
           (GetParam() == MemoryMode::kRing ? "ring-" : "sealed-") + std::to_string(run);
  }

  /// A consumer is killed after `kill_at` steps (0: before it connects, 1: after the handshake,
  /// k + 1: after its k-th batch) while another reads the whole stream; the producer survives.
  void KilledConsumerRun(int run, uint64_t seed, int kill_at, size_t hold, Tally& tally) {
    const std::string address = Address(run);
    const int fds_before = test_util::CountOpenFds();
    const int maps_before = test_util::CountMemfdMappings();
    {
      Child survivor([&](int progress) { return ReadStream(address, seed, 2, progress); });
      Child victim([&](int progress) { return ReadStream(address, seed, hold, progress); });
      ASSERT_TRUE(survivor.started() && victim.started());
      ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, CrashSchema(), Options()));
      const int fds_listening = test_util::CountOpenFds() - 2;  // less the Go() pipes
      const int maps_listening = test_util::CountMemfdMappings();
      // The survivor first, so that the stream starts only once it is attached.
      survivor.Go();
      ASSERT_OK(producer->WaitForConsumers(1, kWaitMs));
      victim.Go();
      if (kill_at == 0) {
        victim.Kill();  // wherever it is in connecting
      } else {
        ASSERT_OK(producer->WaitForConsumers(2, kWaitMs));
      }
      std::thread killer([&] {
        (void)victim.WaitForSteps(kill_at, kWaitMs);
        victim.Kill();
      });
      arrow::Status published;
      for (int64_t seq = 0; seq < kBatches && published.ok(); ++seq) {
        auto batch = StreamBatch(producer->pool(), seed, seq);
        published = batch.ok() ? producer->Publish(*batch) : batch.status();
      }
      killer.join();
      ASSERT_OK(published);
      ASSERT_OK(producer->End());
      const auto victim_status = victim.Wait(kWaitMs);
      ASSERT_TRUE(victim_status.has_value()) << "the victim consumer hung";
      if (WIFSIGNALED(*victim_status) && WTERMSIG(*victim_status) == SIGKILL) {
        ++tally.killed;
      } else {
        EXPECT_TRUE(WIFEXITED(*victim_status) && WEXITSTATUS(*victim_status) == 0)
            << Describe(victim_status);
        ++tally.finished;
      }
      const auto survivor_status = survivor.Wait(kWaitMs);
      EXPECT_TRUE(survivor_status && WIFEXITED(*survivor_status) &&
                  WEXITSTATUS(*survivor_status) == 0)
          << "the other consumer " << Describe(survivor_status);

      ASSERT_OK(producer->WaitUntilDrained(kWaitMs));
      const auto stats = producer->stats();
      EXPECT_EQ(stats.consumers, 0);
      EXPECT_EQ(stats.in_flight, 0);
      EXPECT_EQ(stats.ring_bytes_in_use, 0);
      EXPECT_EQ(test_util::CountOpenFds(), fds_listening);
      EXPECT_EQ(test_util::CountMemfdMappings(), maps_listening);
      producer->Close();
    }
    EXPECT_EQ(test_util::CountOpenFds(), fds_before);
    EXPECT_EQ(test_util::CountMemfdMappings(), maps_before);
  }

  /// The producer is killed after `kill_at` steps (1: right after it listens, k + 1: after its
  /// k-th Publish, kBatches + 2: never) while this process reads the stream.
  void KilledProducerRun(int run, uint64_t seed, int kill_at, size_t hold, Tally& tally) {
    const std::string address = Address(run);
    const ProducerOptions options = Options();
    const int maps_before = test_util::CountMemfdMappings();
    Child producer([&](int progress) {
      auto listening = Producer::Listen(address, CrashSchema(), options);
      if (!listening.ok()) return 1;
      Producer& p = **listening;
      Step(progress);
      if (!p.WaitForConsumers(1, kWaitMs).ok()) return 2;
      for (int64_t seq = 0; seq < kBatches; ++seq) {
        auto batch = StreamBatch(p.pool(), seed, seq);
        if (!batch.ok() || !p.Publish(*batch).ok()) return 3;
        Step(progress);
      }
      if (!p.End().ok() || !p.WaitUntilDrained(kWaitMs).ok()) return 4;
      return 0;
    });
    ASSERT_TRUE(producer.started());
    producer.Go();
    const int fds_before = test_util::CountOpenFds();
    ASSERT_TRUE(producer.WaitForSteps(1, kWaitMs)) << "the producer did not listen";
    std::thread killer([&] {
      (void)producer.WaitForSteps(kill_at, kWaitMs);
      producer.Kill();
    });
    std::vector<BatchPtr> held;
    arrow::Status end;
    bool connected = false;
    int64_t received = 0;
    {
      ConsumerOptions consumer_options;
      consumer_options.read_timeout_ms = kWaitMs;
      auto consumer = Consumer::Connect(address, consumer_options);
      end = consumer.status();
      connected = consumer.ok();
      while (end.ok()) {
        BatchPtr batch;
        end = (*consumer)->ReadNext(&batch);
        if (!end.ok() || batch == nullptr) break;
        EXPECT_OK(CheckBatch(*batch, seed, received));
        ++received;
        held.push_back(std::move(batch));
        if (held.size() > hold) held.erase(held.begin());
      }
    }
    const bool never_killed = kill_at > kBatches + 1;
    // A producer that is not killed waits until everything is released before it exits.
    if (never_killed) held.clear();
    killer.join();
    const auto status = producer.Wait(kWaitMs);
    ASSERT_TRUE(status.has_value()) << "the producer hung";
    // After its last Publish a producer may end by itself before the kill lands.
    const bool killed = WIFSIGNALED(*status) && WTERMSIG(*status) == SIGKILL;
    EXPECT_FALSE(never_killed && killed);
    if (killed) {
      ++tally.killed;
      // Either the stream had ended or the consumer says the producer is gone; never a timeout.
      if (connected && !end.ok()) {
        EXPECT_NE(end.message().find("producer closed the connection"), std::string::npos)
            << end.ToString();
      } else if (!end.ok()) {
        EXPECT_EQ(end.message().find("no message from the producer"), std::string::npos)
            << end.ToString();
      } else {
        EXPECT_EQ(received, kBatches);
      }
    } else {
      EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << Describe(status);
      EXPECT_OK(end);
      EXPECT_EQ(received, kBatches);
      ++tally.finished;
    }
    // What arrived before the producer died stays readable and unchanged.
    for (size_t i = 0; i < held.size(); ++i) {
      EXPECT_OK(CheckBatch(*held[i], seed, received - static_cast<int64_t>(held.size() - i)));
    }
    held.clear();
    EXPECT_EQ(test_util::CountOpenFds(), fds_before);
    EXPECT_EQ(test_util::CountMemfdMappings(), maps_before);
  }

  using Run = std::function<void(int run, uint64_t seed, int kill_at, size_t hold, Tally&)>;
  /// RunsPerCase() runs of `run`, each with a kill step drawn from [first_step, first_step +
  /// kBatches + 2) and a number of batches held drawn from [0, 8).
  void Matrix(const std::string& victim, int first_step, uint64_t salt, const Run& run) {
    const uint64_t seed = MatrixSeed();
    const int runs = RunsPerCase();
    std::mt19937_64 random(seed ^ salt);
    Tally tally;
    for (int i = 0; i < runs && !HasFailure(); ++i) {
      const int kill_at = first_step + static_cast<int>(random() % (kBatches + 2));
      const size_t hold = random() % 8;
      SCOPED_TRACE("SHMARROW_CRASH_SEED=" + std::to_string(seed) + " run " + std::to_string(i) +
                   ": " + victim + " killed at step " + std::to_string(kill_at) + ", holding " +
                   std::to_string(hold));
      run(i, seed + static_cast<uint64_t>(i), kill_at, hold, tally);
    }
    std::printf("crash matrix (%s killed): %d runs, %d killed, %d ended first, seed %llu\n",
                victim.c_str(), runs, tally.killed, tally.finished,
                static_cast<unsigned long long>(seed));
  }
};

TEST_P(CrashMatrixTest, KilledConsumer) {
  Matrix("consumer", 0, 0, [this](auto&&... args) { KilledConsumerRun(args...); });
}

TEST_P(CrashMatrixTest, KilledProducer) {
  Matrix("producer", 1, 0x5eed, [this](auto&&... args) { KilledProducerRun(args...); });
}

INSTANTIATE_TEST_SUITE_P(Modes, CrashMatrixTest,
                         ::testing::Values(MemoryMode::kRing, MemoryMode::kSealed),
                         [](const auto& info) {
                           return info.param == MemoryMode::kRing ? "Ring" : "Sealed";
                         });

}  // namespace
}  // namespace shmarrow
