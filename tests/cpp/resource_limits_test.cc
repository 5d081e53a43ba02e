// Resource limits: a process that runs out of file descriptors, mappings or shared memory gets a
// clear error naming the call and the limit; it never dies of SIGBUS and never hangs. Each case
// applies its limit in a forked child, so this process is unaffected. (A consumer at
// RLIMIT_NOFILE while receiving fds is in producer_consumer_test.cc.) docs/robustness.md,
// "Resource limits".
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <malloc.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "shmarrow/stream_writer.h"
#include "test_util.h"

namespace shmarrow {
namespace {

constexpr int kWaitMs = 10000;  // reached only when something hangs

std::string NextAddress() {
  static int counter = 0;
  return "@limits-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
}

std::shared_ptr<arrow::Schema> OneColumn() {
  return arrow::schema({arrow::field("a", arrow::int64())});
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> Rows(arrow::MemoryPool* pool, int64_t rows) {
  arrow::Int64Builder builder(pool);
  for (int64_t i = 0; i < rows; ++i) ARROW_RETURN_NOT_OK(builder.Append(i));
  ARROW_ASSIGN_OR_RAISE(auto column, builder.Finish());
  return arrow::RecordBatch::Make(OneColumn(), rows, {column});
}

/// The lowest fd number not in use: with RLIMIT_NOFILE set to it, no new fd can be opened.
int LowestFreeFd() {
  const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  ::close(fd);
  return fd;
}

bool SetLimit(int resource, rlim_t value) {
  rlimit limit{};
  if (::getrlimit(resource, &limit) != 0) return false;
  limit.rlim_cur = value;
  return ::setrlimit(resource, &limit) == 0;
}

/// What a forked child reported, and how it ended.
struct ChildResult {
  bool ended = false;
  int status = 0;
  std::string report;
  bool exited_ok() const { return ended && WIFEXITED(status) && WEXITSTATUS(status) == 0; }
  std::string How() const {
    if (!ended) return "hung (killed after " + std::to_string(kWaitMs * 2) + " ms)";
    if (WIFEXITED(status)) return "exited with " + std::to_string(WEXITSTATUS(status));
    return std::string("killed by ") + ::strsignal(WTERMSIG(status));
  }
};

/// Runs `body` in a forked child and collects the text it returns. `parent` runs meanwhile in
/// this process, with `to_child` and `from_child` pipes for handshakes (the child gets the other
/// ends). Call while this process runs no other thread.
ChildResult RunInChild(const std::function<std::string(int in, int out)>& body,
                       const std::function<void(int to_child, int from_child)>& parent = {}) {
  int report[2], down[2], up[2];
  ChildResult result;
  if (::pipe2(report, O_CLOEXEC) != 0 || ::pipe2(down, O_CLOEXEC) != 0 ||
      ::pipe2(up, O_CLOEXEC) != 0) {
    result.report = "pipe2 failed";
    return result;
  }
  const pid_t pid = ::fork();
  if (pid == 0) {
    const std::string text = body(down[0], up[1]);
    (void)!::write(report[1], text.data(), text.size());
    ::_exit(0);
  }
  for (int fd : {report[1], down[0], up[1]}) ::close(fd);
  UniqueFd report_in(report[0]), to_child(down[1]), from_child(up[0]);
  if (pid < 0) return result;
  if (parent) parent(to_child.get(), from_child.get());
  to_child.reset();  // a child waiting for the parent stops waiting
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kWaitMs * 2);
  while (!result.ended) {
    const pid_t rc = ::waitpid(pid, &result.status, WNOHANG);
    if (rc == pid) {
      result.ended = true;
    } else if (rc < 0 || std::chrono::steady_clock::now() >= deadline) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, nullptr, 0);
      break;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
  char buffer[1024];
  ssize_t n;
  while ((n = ::read(report_in.get(), buffer, sizeof buffer)) > 0) result.report.append(buffer, n);
  return result;
}

void Signal(int fd) {
  const char byte = '!';
  (void)!::write(fd, &byte, 1);
}
bool AwaitSignal(int fd) {
  char byte;
  return ::read(fd, &byte, 1) == 1;
}

TEST(ResourceLimits, ProducerOutOfFdsRefusesConnectionsWithAClearError) {
  const std::string address = NextAddress();
  std::string first_error, second;
  const auto child = RunInChild(
      [&](int in, int out) -> std::string {
        auto producer = Producer::Listen(address, OneColumn());
        if (!producer.ok()) return "Listen: " + producer.status().ToString();
        // No fd left for an accepted connection.
        if (!SetLimit(RLIMIT_NOFILE, LowestFreeFd())) return "setrlimit failed";
        Signal(out);
        if (!AwaitSignal(in)) return "parent gone";
        if (!SetLimit(RLIMIT_NOFILE, 1024)) return "setrlimit (raise) failed";
        Signal(out);
        auto status = (*producer)->WaitForConsumers(1, kWaitMs);
        if (status.ok()) status = (*producer)->Publish(*Rows((*producer)->pool(), 10));
        if (status.ok()) status = (*producer)->End();
        if (status.ok()) status = (*producer)->WaitUntilDrained(kWaitMs);
        return status.ok() ? "served" : status.ToString();
      },
      [&](int to_child, int from_child) {
        if (!AwaitSignal(from_child)) return;
        ConsumerOptions options;
        options.read_timeout_ms = kWaitMs / 2;
        first_error = Consumer::Connect(address, options).status().ToString();
        Signal(to_child);
        if (!AwaitSignal(from_child)) return;
        // With fds to spare again the producer serves the next consumer.
        auto consumer = Consumer::Connect(address, options);
        if (!consumer.ok()) {
          second = consumer.status().ToString();
          return;
        }
        std::shared_ptr<arrow::RecordBatch> batch;
        auto status = (*consumer)->ReadNext(&batch);
        second = !status.ok()       ? status.ToString()
                 : batch == nullptr ? "no batch"
                                    : std::to_string(batch->num_rows()) + " rows";
      });
  ASSERT_TRUE(child.exited_ok()) << child.How() << ": " << child.report;
  EXPECT_EQ(child.report, "served");
  EXPECT_NE(first_error.find("RLIMIT_NOFILE"), std::string::npos) << first_error;
  EXPECT_NE(first_error.find("Too many open files"), std::string::npos) << first_error;
  EXPECT_EQ(second, "10 rows");
}

TEST(ResourceLimits, SealedProducerOutOfFdsFailsPublishNamingMemfdCreate) {
  const auto child = RunInChild([](int, int) -> std::string {
    const std::string address = NextAddress();
    ProducerOptions options;
    options.mode = MemoryMode::kSealed;
    auto producer = Producer::Listen(address, OneColumn(), options);
    if (!producer.ok()) return "Listen: " + producer.status().ToString();
    auto consumer = Consumer::Connect(address);
    if (!consumer.ok()) return "Connect: " + consumer.status().ToString();
    if (!SetLimit(RLIMIT_NOFILE, LowestFreeFd())) return "setrlimit failed";
    // No memfd for the batch: pool() falls back to the heap and Publish, which must seal the
    // batch into a memfd for the consumer, fails.
    auto batch = Rows((*producer)->pool(), 1000);
    if (!batch.ok()) return "build: " + batch.status().ToString();
    const auto published = (*producer)->Publish(*batch);
    return published.ok() ? "published" : published.ToString();
  });
  ASSERT_TRUE(child.exited_ok()) << child.How() << ": " << child.report;
  EXPECT_NE(child.report.find("memfd_create"), std::string::npos) << child.report;
  EXPECT_NE(child.report.find("Too many open files"), std::string::npos) << child.report;
}

TEST(ResourceLimits, RingBeyondTheFileSizeLimitFailsListen) {
  const auto child = RunInChild([](int, int) -> std::string {
    // The kernel signals SIGXFSZ along with EFBIG; its default action would end the process
    // before any error could be reported (docs/robustness.md).
    ::signal(SIGXFSZ, SIG_IGN);
    if (!SetLimit(RLIMIT_FSIZE, rlim_t{8} << 20)) return "setrlimit failed";
    ProducerOptions options;
    options.ring_size = int64_t{64} << 20;
    auto producer = Producer::Listen(NextAddress(), OneColumn(), options);
    return producer.ok() ? "listening" : producer.status().ToString();
  });
  ASSERT_TRUE(child.exited_ok()) << child.How() << ": " << child.report;
  EXPECT_NE(child.report.find("ftruncate"), std::string::npos) << child.report;
  EXPECT_NE(child.report.find("File too large"), std::string::npos) << child.report;
}

TEST(ResourceLimits, ConsumerOutOfMappingsFailsConnectNamingTheLimit) {
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
  GTEST_SKIP() << "the sanitizer runtime needs mappings of its own and aborts without them";
#endif
  const std::string address = NextAddress();
  auto child = RunInChild(
      [&](int in, int out) -> std::string {
        if (!AwaitSignal(in)) return "parent gone";
        // Room on the heap first: without mappings to spare, malloc can only use what brk
        // already holds (glibc keeps freed heap with this trim threshold).
        ::mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum
        ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
        void* blocks[4];
        for (void*& block : blocks) block = ::malloc(16 << 20);
        for (void* block : blocks) ::free(block);
        (void)arrow::AllocateBuffer(16 << 20);
        // Every mapping this process may have (vm.max_map_count) in use: one reservation split
        // into single pages of alternating protection, until the kernel refuses.
        const long page = ::sysconf(_SC_PAGESIZE);
        constexpr size_t kPages = 1 << 18;
        auto* area = static_cast<char*>(
            ::mmap(nullptr, kPages * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
        if (area == MAP_FAILED) return "reservation failed";
        size_t split = 0;
        for (size_t i = 1; i < kPages; i += 2, ++split) {
          if (::mprotect(area + i * page, page, PROT_READ) != 0) break;
        }
        if (errno != ENOMEM) return "mprotect stopped with " + std::string(std::strerror(errno));
        // A split takes two mappings: one may be left. Single pages of alternating protection
        // (so that neighbours do not merge) take it.
        for (int k = 0; k < 64; ++k) {
          if (::mmap(nullptr, page, k % 2 ? PROT_READ : PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
                     0) == MAP_FAILED) {
            break;
          }
        }
        if (errno != ENOMEM) return "mmap stopped with " + std::string(std::strerror(errno));
        ConsumerOptions options;
        options.read_timeout_ms = kWaitMs;
        auto consumer = Consumer::Connect(address, options);
        Signal(out);
        return consumer.ok() ? "connected after " + std::to_string(split) + " splits"
                             : consumer.status().ToString();
      },
      [&](int to_child, int from_child) {
        auto producer = Producer::Listen(address, OneColumn());
        if (!producer.ok()) return;
        Signal(to_child);
        (void)AwaitSignal(from_child);
      });
  ASSERT_TRUE(child.exited_ok()) << child.How() << ": " << child.report;
  EXPECT_NE(child.report.find("mmap"), std::string::npos) << child.report;
  EXPECT_NE(child.report.find("vm.max_map_count"), std::string::npos) << child.report;
}

/// A memory cgroup (v1) of this process's own, removed when the test ends; empty when the
/// controller is absent or not writable (not root, or a read-only /sys/fs/cgroup).
class MemoryCgroup {
 public:
  MemoryCgroup() {
    std::ifstream self("/proc/self/cgroup");
    std::string line;
    while (std::getline(self, line)) {
      const auto at = line.find(":memory:");
      if (at == std::string::npos) continue;
      const std::string dir = "/sys/fs/cgroup/memory" + line.substr(at + 8) + "/shmarrow-limits-" +
                              std::to_string(::getpid());
      if (::mkdir(dir.c_str(), 0755) == 0) path_ = dir;
    }
  }
  ~MemoryCgroup() {
    if (!path_.empty()) ::rmdir(path_.c_str());
  }
  bool ok() const { return !path_.empty(); }
  bool Write(const std::string& file, const std::string& value) const {
    std::ofstream out(path_ + "/" + file);
    out << value;
    out.flush();
    return static_cast<bool>(out);
  }

 private:
  std::string path_;
};

TEST(ResourceLimits, SharedMemoryBeyondTheCgroupLimitFailsCommit) {
  MemoryCgroup cgroup;
  if (!cgroup.ok()) GTEST_SKIP() << "no writable cgroup v1 memory controller";
  // oom_kill_disable: a charge that does not fit fails with ENOMEM instead of calling the OOM
  // killer (which would SIGKILL the child; docs/robustness.md).
  ASSERT_TRUE(cgroup.Write("memory.limit_in_bytes", std::to_string(64 << 20)));
  ASSERT_TRUE(cgroup.Write("memory.oom_control", "1"));
  const auto child = RunInChild([&](int, int) -> std::string {
    // From now on this process's allocations are charged to the cgroup.
    if (!cgroup.Write("cgroup.procs", std::to_string(::getpid()))) return "cannot join";
    ProducerOptions options;
    options.ring_size = int64_t{256} << 20;
    auto ring = Producer::Listen(NextAddress(), OneColumn(), options);
    options.mode = MemoryMode::kSealed;
    auto sealed = Producer::Listen(NextAddress(), OneColumn(), options);
    if (!sealed.ok()) return "sealed Listen: " + sealed.status().ToString();
    // Built in a sealed arena, committed 2 MiB at a time: fails part way.
    auto batch = Rows((*sealed)->pool(), int64_t{16} << 20);
    return (ring.ok() ? std::string("ring listening") : ring.status().ToString()) + "\n" +
           (batch.ok() ? std::string("batch built") : batch.status().ToString());
  });
  ASSERT_TRUE(child.exited_ok()) << child.How() << ": " << child.report;
  EXPECT_NE(child.report.find("fallocate"), std::string::npos) << child.report;
  EXPECT_NE(child.report.find("Cannot allocate memory"), std::string::npos) << child.report;
  EXPECT_EQ(child.report.find("ring listening"), std::string::npos) << child.report;
  EXPECT_EQ(child.report.find("batch built"), std::string::npos) << child.report;
}

/// Issue 17, case 8: a fork() while an arena is mapped writable must not keep its memfd from
/// being sealed. The child inherited the writable shared mapping, and F_SEAL_WRITE failed with
/// EBUSY for as long as the child lived; the arena's mapping is not inherited now.
TEST(ResourceLimits, ForkWhileABatchIsBuiltDoesNotBlockSealing) {
  ASSERT_OK_AND_ASSIGN(auto writer, SharedStreamWriter::Open(OneColumn()));
  ASSERT_OK_AND_ASSIGN(auto batch, Rows(writer->pool(), 1000));
  int hold[2];
  ASSERT_EQ(::pipe2(hold, O_CLOEXEC), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {  // lives, with whatever mappings it inherited, until the parent is done
    ::close(hold[1]);
    char byte;
    (void)!::read(hold[0], &byte, 1);
    ::_exit(0);
  }
  ::close(hold[0]);
  ASSERT_OK(writer->WriteRecordBatch(*batch));
  auto sealed = writer->Finish();
  ::close(hold[1]);  // the child exits
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(sealed.ok()) << sealed.status().ToString();
  EXPECT_EQ(::fcntl(sealed->fd.get(), F_GET_SEALS) & F_SEAL_WRITE, F_SEAL_WRITE);
}

}  // namespace
}  // namespace shmarrow
