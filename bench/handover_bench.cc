// handover_bench: the C++ side of bench/run (see docs/benchmarks.md).
//
//   handover_bench handover   --transport ring|sealed|uds|inproc --bytes S --iters N [--settle-ms P]
//                             [--busy-poll-us U] [--reuse 1 (ring: publish one batch again and again)]
//                             [--cold-bytes C (ring, sealed: before each publish the producer
//                              writes C bytes of its own memory, as building C bytes does)]
//                             [--consumer-exec "PROGRAM ARGS" (ring, sealed: that consumer, not C++)]
//   handover_bench latency    --transport ring|uds --iters N [--warmup W] [--busy-poll-us U]
//   handover_bench e2e        --mode two|one --bytes S --cols C --iters N
//   (handover and e2e take --pages auto|hugetlb|off: the producer's page policy, default auto)
//   handover_bench throughput --consumers K --bytes S (0: 1 row x 3 columns) --batches M [--busy-poll-us U]
//                             [--build arrays|block|heap (small batches: three arrays in the ring,
//                              one block of the ring, or three arrays on the heap, copied by Publish)]
//                             [--consumer-work-ns W (each consumer spins W ns a batch: slower than
//                              the producer, so that it falls behind)]
//   handover_bench heap       --transport ring|sealed --batches M
//   handover_bench heap-floor --batches M   (Arrow's own allocations: write and read the small batch)
//
// Every mode forks its consumer process(es) first thing in main(), before Arrow or the library
// start any thread; the processes meet on an abstract socket (shmarrow) or a socketpair (uds).
// Each process prints one JSON line on stdout with a "role" key; bench/run parses them. Times are
// CLOCK_MONOTONIC nanoseconds, one clock for every process of the host: the producer writes its
// publish time into the batch (column 0, row 0) and the consumer subtracts it from the moment it
// holds a readable batch. Iterations are paced: the producer publishes the next batch only once
// the consumer is done with this one. Small batches on the ring (latency) are paced as
// spsc_baseline's messages are (bench/pace.h: the consumer advances a shared word once it has
// read and let go of a batch; the producer takes that release with stats() before it stamps the
// next batch, as WaitUntilDrained did, without reading the consumer's socket); the other
// shmarrow routes and an exec'd consumer by WaitUntilDrained; uds by a one-byte pong.
// --consumer-exec: the forked consumer execs that program (split at spaces) with
// `--socket ADDRESS --warmup W --busy-poll-us U --kind K --transport T --bytes S` appended; it
// measures as ShmConsume does and prints the consumer's JSON line (`shmarrow-rs bench-handover`).
#include <arrow/api.h>
#include <arrow/io/buffered.h>
#include <arrow/io/file.h>
#include <arrow/io/memory.h>
#include <arrow/util/bit_util.h>
#include <arrow/ipc/api.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <new>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "pace.h"

namespace {

int64_t NowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

struct Args {
  std::string command;
  std::map<std::string, std::string> kv;
  std::string Get(const std::string& key, const std::string& def) const {
    auto it = kv.find(key);
    return it == kv.end() ? def : it->second;
  }
  int64_t Int(const std::string& key, int64_t def) const {
    auto it = kv.find(key);
    return it == kv.end() ? def : std::stoll(it->second);
  }
};

Args Parse(int argc, char** argv) {
  Args a;
  if (argc > 1) a.command = argv[1];
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) == 0) k = k.substr(2);
    a.kv[k] = argv[i + 1];
  }
  return a;
}

// Peak resident set of this process (kB), from /proc/self/status.
int64_t VmHwmKb() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  }
  return -1;
}

// Minor page faults of this process so far (getrusage).
int64_t MinorFaults() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  return usage.ru_minflt;
}

// The producers' page policy (--pages).
shmarrow::PagePolicy g_pages = shmarrow::PagePolicy::kAuto;

// CPU time this process has used, all its threads, user and system (ns).
int64_t CpuNs() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto ns = [](const timeval& t) {
    return int64_t{t.tv_sec} * 1000000000 + int64_t{t.tv_usec} * 1000;
  };
  return ns(usage.ru_utime) + ns(usage.ru_stime);
}

using Counter = long long (*)();
long long HeapCalls() {
  static auto fn = reinterpret_cast<Counter>(::dlsym(RTLD_DEFAULT, "malloc_counter_calls"));
  return fn != nullptr ? fn() : -1;
}
long long HeapBytes() {
  static auto fn = reinterpret_cast<Counter>(::dlsym(RTLD_DEFAULT, "malloc_counter_bytes"));
  return fn != nullptr ? fn() : -1;
}

std::string Samples(const std::vector<int64_t>& v) {
  std::ostringstream out;
  out << "[";
  for (size_t i = 0; i < v.size(); ++i) out << (i ? "," : "") << v[i];
  out << "]";
  return out.str();
}

// One JSON line on stdout. Producer and consumers share the pipe, and a line longer than PIPE_BUF
// would interleave with another process's. flock keeps each line whole, on a descriptor opened
// afresh: a lock belongs to an open file description, which fork shares, so the inherited
// stdout itself could not exclude the other processes.
void Emit(const std::string& json) {
  std::fflush(stdout);
  const std::string line = json + "\n";
  const shmarrow::UniqueFd own(::open("/proc/self/fd/1", O_WRONLY | O_APPEND | O_CLOEXEC));
  const int out = own ? own.get() : STDOUT_FILENO;
  ::flock(out, LOCK_EX);
  for (size_t done = 0; done < line.size();) {
    const ssize_t n = ::write(out, line.data() + done, line.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::flock(out, LOCK_UN);
}

int Fail(const std::string& role, const arrow::Status& st) {
  std::cerr << "handover_bench " << role << ": " << st.ToString() << std::endl;
  return 1;
}

// Forks `n` children running `child(i)`; the parent runs `parent()`, then waits for them.
int ForkRun(int n, const std::function<int(int)>& child, const std::function<int()>& parent) {
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("fork");
      return 1;
    }
    if (pid == 0) {
      int rc = child(i);
      std::fflush(stdout);
      std::_Exit(rc);
    }
    pids.push_back(pid);
  }
  int rc = parent();
  for (pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = rc ? rc : 2;
  }
  return rc;
}

std::string Address(const char* what) {
  return "@shmarrow-bench-" + std::string(what) + "-" + std::to_string(::getpid());
}

// A batch of one int64 column of bytes/8 rows (values i), its buffer allocated from `pool`.
arrow::Result<std::shared_ptr<arrow::RecordBatch>> MakeColumns(arrow::MemoryPool* pool,
                                                               int64_t bytes, int cols) {
  const int64_t rows = std::max<int64_t>(1, bytes / 8 / cols);
  std::vector<std::shared_ptr<arrow::Array>> arrays;
  std::vector<std::shared_ptr<arrow::Field>> fields;
  for (int c = 0; c < cols; ++c) {
    ARROW_ASSIGN_OR_RAISE(auto buffer, arrow::AllocateBuffer(rows * 8, pool));
    auto* v = reinterpret_cast<int64_t*>(buffer->mutable_data());
    for (int64_t i = 0; i < rows; ++i) v[i] = i + c;
    arrays.push_back(arrow::MakeArray(arrow::ArrayData::Make(
        arrow::int64(), rows, {nullptr, std::shared_ptr<arrow::Buffer>(std::move(buffer))}, 0)));
    fields.push_back(arrow::field("c" + std::to_string(c), arrow::int64()));
  }
  return arrow::RecordBatch::Make(arrow::schema(fields), rows, arrays);
}

std::shared_ptr<arrow::Schema> ColumnsSchema(int cols) {
  std::vector<std::shared_ptr<arrow::Field>> fields;
  for (int c = 0; c < cols; ++c)
    fields.push_back(arrow::field("c" + std::to_string(c), arrow::int64()));
  return arrow::schema(fields);
}

// The small batch: 1 row, 3 columns (int64 t, int64 id, float64 value).
std::shared_ptr<arrow::Schema> SmallSchema() {
  static const auto schema =
      arrow::schema({arrow::field("t", arrow::int64()), arrow::field("id", arrow::int64()),
                     arrow::field("value", arrow::float64())});
  return schema;
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> MakeSmall(arrow::MemoryPool* pool, int64_t id) {
  std::vector<std::shared_ptr<arrow::Array>> arrays;
  arrays.reserve(3);
  for (int c = 0; c < 3; ++c) {
    ARROW_ASSIGN_OR_RAISE(auto buffer, arrow::AllocateBuffer(8, pool));
    if (c == 2) {
      *reinterpret_cast<double*>(buffer->mutable_data()) = static_cast<double>(id) * 0.5;
    } else {
      *reinterpret_cast<int64_t*>(buffer->mutable_data()) = id;
    }
    arrays.push_back(arrow::MakeArray(
        arrow::ArrayData::Make(c == 2 ? arrow::float64() : arrow::int64(), 1,
                               {nullptr, std::shared_ptr<arrow::Buffer>(std::move(buffer))}, 0)));
  }
  return arrow::RecordBatch::Make(SmallSchema(), 1, std::move(arrays));
}

// The same batch as a producer can write it in place: one 24-byte block of `pool` (the ring) holding
// the three values, sliced into the columns' buffers, the batch made of ArrayData directly (no
// Array objects, no buffer object per column from the pool).
arrow::Result<std::shared_ptr<arrow::RecordBatch>> MakeSmallInBlock(arrow::MemoryPool* pool,
                                                                    int64_t id) {
  ARROW_ASSIGN_OR_RAISE(std::shared_ptr<arrow::Buffer> block, arrow::AllocateBuffer(24, pool));
  auto* values = reinterpret_cast<int64_t*>(block->mutable_data());
  values[0] = id;
  values[1] = id;
  const double value = static_cast<double>(id) * 0.5;
  std::memcpy(&values[2], &value, sizeof value);
  std::vector<std::shared_ptr<arrow::ArrayData>> columns;
  columns.reserve(3);
  for (int c = 0; c < 3; ++c) {
    columns.push_back(arrow::ArrayData::Make(SmallSchema()->field(c)->type(), 1,
                                             {nullptr, arrow::SliceBuffer(block, 8 * c, 8)}, 0));
  }
  return arrow::RecordBatch::Make(SmallSchema(), 1, std::move(columns));
}

int64_t* FirstValue(const arrow::RecordBatch& batch) {
  return const_cast<int64_t*>(batch.column_data(0)->GetValues<int64_t>(1));
}

int64_t ReadStamp(const arrow::RecordBatch& batch) {
  return batch.column_data(0)->GetValues<int64_t>(1)[0];
}

// ---- shmarrow producer/consumer (ring, sealed) ----------------------------------------------------

arrow::Result<std::shared_ptr<shmarrow::Producer>> ListenProducer(
    const std::string& address, std::shared_ptr<arrow::Schema> schema, const std::string& transport,
    int64_t bytes_in_flight) {
  shmarrow::ProducerOptions options;
  options.mode =
      transport == "sealed" ? shmarrow::MemoryMode::kSealed : shmarrow::MemoryMode::kRing;
  options.ring_size =
      std::max<int64_t>(int64_t{16} << 20, bytes_in_flight * 2 + (int64_t{16} << 20));
  options.pages = g_pages;
  return shmarrow::Producer::Listen(address, std::move(schema), options);
}

arrow::Result<std::shared_ptr<shmarrow::Consumer>> ConnectConsumer(const std::string& address,
                                                                   int busy_poll_us = 0) {
  shmarrow::ConsumerOptions options;
  options.connect_timeout_ms = 20000;
  options.read_timeout_ms = 120000;
  options.busy_poll_us = busy_poll_us;
  // For experiments only (bench/run always uses the default, full validation).
  if (const char* v = std::getenv("SHMARROW_BENCH_VALIDATION");
      v != nullptr && std::string(v) == "basic") {
    options.validation = shmarrow::Validation::kBasic;
  }
  return shmarrow::Consumer::Connect(address, options);
}

// Ends the stream, waits until every consumer let go, reports the producer's peak RSS.
arrow::Status FinishProducer(shmarrow::Producer& producer) {
  ARROW_RETURN_NOT_OK(producer.End());
  ARROW_RETURN_NOT_OK(producer.WaitUntilDrained(120000));
  Emit("{\"role\":\"producer\",\"vmhwm_kb\":" + std::to_string(VmHwmKb()) + "}");
  producer.Close();
  return arrow::Status::OK();
}

// Consumer loop shared by handover and latency: read until end, record now - stamp, and (paced
// by a shared word) say it has read one more.
arrow::Status ShmConsume(const std::string& address, int64_t warmup, int busy_poll_us,
                         bench::PaceWord* taken, std::vector<int64_t>* samples) {
  ARROW_ASSIGN_OR_RAISE(auto consumer, ConnectConsumer(address, busy_poll_us));
  int64_t n = 0;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ARROW_RETURN_NOT_OK(consumer->ReadNext(&batch));
    const int64_t t1 = NowNs();
    if (batch == nullptr) break;
    const int64_t t0 = ReadStamp(*batch);
    if (n++ >= warmup) samples->push_back(t1 - t0);
    batch.reset();  // let go before saying so: the producer's next Publish finds the release
    if (taken != nullptr) bench::Advance(taken, static_cast<uint32_t>(n));
  }
  return arrow::Status::OK();
}

// Replaces this (forked) process with `program_and_args` (split at spaces) followed by `extra`.
// Returns only when exec failed.
int ExecConsumer(const std::string& program_and_args, const std::vector<std::string>& extra) {
  std::vector<std::string> words;
  std::istringstream split(program_and_args);
  for (std::string word; split >> word;) words.push_back(word);
  words.insert(words.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& word : words) argv.push_back(word.data());
  argv.push_back(nullptr);
  ::execv(argv[0], argv.data());
  std::cerr << "handover_bench consumer: exec " << words[0] << ": " << std::strerror(errno)
            << std::endl;
  return 127;
}

// ---- UNIX socket Arrow IPC stream ----------------------------------------------------------------

// Arrow's file streams lseek at open, which a socket refuses: these are the plain read/write ones.
class SocketOutputStream final : public arrow::io::OutputStream {
 public:
  explicit SocketOutputStream(int fd) : fd_(fd) {}
  arrow::Status Close() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    return arrow::Status::OK();
  }
  bool closed() const override { return fd_ < 0; }
  arrow::Result<int64_t> Tell() const override { return position_; }
  arrow::Status Write(const void* data, int64_t nbytes) override {
    const auto* p = static_cast<const uint8_t*>(data);
    while (nbytes > 0) {
      const ssize_t n = ::write(fd_, p, static_cast<size_t>(nbytes));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return arrow::Status::IOError("socket write: ", std::strerror(errno));
      p += n;
      nbytes -= n;
      position_ += n;
    }
    return arrow::Status::OK();
  }
  using arrow::io::OutputStream::Write;

 private:
  int fd_;
  int64_t position_ = 0;
};

class SocketInputStream final : public arrow::io::InputStream {
 public:
  /// busy: spin on non-blocking reads instead of sleeping in read().
  SocketInputStream(int fd, bool busy) : fd_(fd), busy_(busy) {}
  arrow::Status Close() override {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    return arrow::Status::OK();
  }
  bool closed() const override { return fd_ < 0; }
  arrow::Result<int64_t> Tell() const override { return position_; }
  arrow::Result<int64_t> Read(int64_t nbytes, void* out) override {
    auto* p = static_cast<uint8_t*>(out);
    int64_t done = 0;
    while (done < nbytes) {
      const ssize_t n =
          ::recv(fd_, p + done, static_cast<size_t>(nbytes - done), busy_ ? MSG_DONTWAIT : 0);
      if (n < 0 && (errno == EINTR || (busy_ && errno == EAGAIN))) continue;
      if (n < 0) return arrow::Status::IOError("socket read: ", std::strerror(errno));
      if (n == 0) break;
      done += n;
    }
    position_ += done;
    return done;
  }
  arrow::Result<std::shared_ptr<arrow::Buffer>> Read(int64_t nbytes) override {
    ARROW_ASSIGN_OR_RAISE(auto buffer, arrow::AllocateResizableBuffer(nbytes));
    ARROW_ASSIGN_OR_RAISE(int64_t n, Read(nbytes, buffer->mutable_data()));
    ARROW_RETURN_NOT_OK(buffer->Resize(n, false));
    return std::shared_ptr<arrow::Buffer>(std::move(buffer));
  }

 private:
  int fd_;
  bool busy_;
  int64_t position_ = 0;
};

arrow::Status UdsProduce(
    int fd, std::shared_ptr<arrow::Schema> schema,
    const std::function<arrow::Result<std::shared_ptr<arrow::RecordBatch>>(int64_t)>& make,
    int64_t iters) {
  const int pong = ::dup(fd);
  auto out = std::make_shared<SocketOutputStream>(fd);
  ARROW_ASSIGN_OR_RAISE(auto writer, arrow::ipc::MakeStreamWriter(out, schema));
  for (int64_t i = 0; i < iters; ++i) {
    ARROW_ASSIGN_OR_RAISE(auto batch, make(i));
    FirstValue(*batch)[0] = NowNs();
    ARROW_RETURN_NOT_OK(writer->WriteRecordBatch(*batch));
    char byte = 0;
    if (::read(pong, &byte, 1) != 1) return arrow::Status::IOError("no pong");
  }
  ARROW_RETURN_NOT_OK(writer->Close());
  ARROW_RETURN_NOT_OK(out->Close());
  ::close(pong);
  return arrow::Status::OK();
}

arrow::Status UdsConsume(int fd, int64_t warmup, bool busy, std::vector<int64_t>* samples) {
  const int pong = ::dup(fd);
  auto in = std::make_shared<SocketInputStream>(fd, busy);
  ARROW_ASSIGN_OR_RAISE(auto reader, arrow::ipc::RecordBatchStreamReader::Open(in));
  int64_t n = 0;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ARROW_RETURN_NOT_OK(reader->ReadNext(&batch));
    const int64_t t1 = NowNs();
    if (batch == nullptr) break;
    if (n++ >= warmup) samples->push_back(t1 - ReadStamp(*batch));
    batch.reset();
    char byte = 1;
    if (::write(pong, &byte, 1) != 1) return arrow::Status::IOError("pong failed");
  }
  ::close(pong);
  return arrow::Status::OK();
}

// ---- modes ---------------------------------------------------------------------------------------

// Hand-over (and small-batch latency, which is the same loop with 1-row batches).
// settle_ms: the producer pauses that long between building a batch and publishing it (the
// consumer sits idle meanwhile), the control for idle wake-up cost.
// cold_bytes: before each publish the producer writes that many bytes of a buffer of its own
// (allocated and faulted in once), which leaves the caches as cold as building a batch that
// large does, whatever the batch's size: the control that tells the transport's cost of a size
// from the machine's cost of having just written that much.
int RunPaced(const std::string& kind, const std::string& transport, int64_t bytes, int64_t iters,
             int64_t warmup, int settle_ms, int busy_poll_us, bool reuse, int64_t cold_bytes,
             const std::string& consumer_exec) {
  const bool small = kind == "latency";
  auto schema = small ? SmallSchema() : ColumnsSchema(1);
  auto make_in = [&](arrow::MemoryPool* pool, int64_t i) {
    return small ? MakeSmall(pool, i) : MakeColumns(pool, bytes, 1);
  };
  auto emit = [&](const std::vector<int64_t>& samples) {
    Emit("{\"role\":\"consumer\",\"kind\":\"" + kind + "\",\"transport\":\"" + transport +
         "\",\"bytes\":" + std::to_string(bytes) + ",\"busy_poll_us\":" +
         std::to_string(busy_poll_us) + ",\"vmhwm_kb\":" + std::to_string(VmHwmKb()) +
         ",\"samples_ns\":" + Samples(samples) + "}");
  };
  const int64_t total = iters + warmup;
  if (!consumer_exec.empty() && transport != "ring" && transport != "sealed") {
    std::cerr << "--consumer-exec takes --transport ring or sealed, not " << transport << std::endl;
    return 2;
  }

  if (transport == "ring" || transport == "sealed") {
    const std::string address = Address(kind.c_str());
    // Small batches on the ring with a forked consumer: paced as spsc_baseline is (above).
    bench::PaceWord* taken = nullptr;
    if (small && transport == "ring" && consumer_exec.empty()) {
      // Mapped before fork, so both processes share it; it goes with the processes.
      void* memory = ::mmap(nullptr, sizeof(bench::PaceWord), PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
      if (memory == MAP_FAILED) {
        std::perror("mmap of the pacing word");
        return 1;
      }
      taken = new (memory) bench::PaceWord;
    }
    return ForkRun(
        1,
        [&](int) {
          if (!consumer_exec.empty()) {
            return ExecConsumer(consumer_exec,
                                {"--socket", address, "--warmup", std::to_string(warmup),
                                 "--busy-poll-us", std::to_string(busy_poll_us), "--kind", kind,
                                 "--transport", transport, "--bytes", std::to_string(bytes)});
          }
          std::vector<int64_t> samples;
          auto st = ShmConsume(address, warmup, busy_poll_us, taken, &samples);
          if (!st.ok()) return Fail("consumer", st);
          emit(samples);
          return 0;
        },
        [&]() {
          auto st = [&]() -> arrow::Status {
            ARROW_ASSIGN_OR_RAISE(auto producer, ListenProducer(address, schema, transport, bytes));
            ARROW_RETURN_NOT_OK(producer->WaitForConsumers(1, 20000));
            // reuse (ring): one batch built once and published again each time (only the stamp
            // changes), as the socket route does: the producer's caches are not cold from
            // writing the payload just before the hand-over.
            std::shared_ptr<arrow::RecordBatch> built;
            std::vector<int64_t> elsewhere(
                static_cast<size_t>(std::max<int64_t>(cold_bytes, 0) / 8));
            for (int64_t i = 0; i < total; ++i) {
              std::shared_ptr<arrow::RecordBatch> batch = built;
              if (batch == nullptr) {
                ARROW_ASSIGN_OR_RAISE(batch, make_in(producer->pool(), i));
              }
              if (reuse) built = batch;
              for (size_t k = 0; k < elsewhere.size(); ++k)
                elsewhere[k] = static_cast<int64_t>(k) + i;
              if (settle_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
              FirstValue(*batch)[0] = NowNs();
              ARROW_RETURN_NOT_OK(producer->Publish(batch));
              batch.reset();
              if (taken == nullptr) {
                ARROW_RETURN_NOT_OK(producer->WaitUntilDrained(120000));
              } else if (!bench::WaitChange(taken, static_cast<uint32_t>(i), /*busy=*/false)) {
                return arrow::Status::IOError("the consumer did not read batch ", i);
              } else {
                // The consumer let go before it said so: stats() takes that release from its
                // region now (no system call), so that the next Publish, timed, does not.
                (void)producer->stats();
              }
            }
            return FinishProducer(*producer);
          }();
          return st.ok() ? 0 : Fail("producer", st);
        });
  }
  if (transport == "uds") {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
      std::perror("socketpair");
      return 1;
    }
    return ForkRun(
        1,
        [&](int) {
          ::close(sv[0]);
          std::vector<int64_t> samples;
          auto st = UdsConsume(sv[1], warmup, busy_poll_us > 0, &samples);
          if (!st.ok()) return Fail("consumer", st);
          emit(samples);
          return 0;
        },
        [&]() {
          ::close(sv[1]);
          auto st = [&]() -> arrow::Status {
            // Built once, on the heap (Arrow's default pool); only the stamp changes.
            std::shared_ptr<arrow::RecordBatch> batch;
            ARROW_ASSIGN_OR_RAISE(batch, make_in(arrow::default_memory_pool(), 0));
            ARROW_RETURN_NOT_OK(UdsProduce(
                sv[0], schema,
                [&](int64_t) -> arrow::Result<std::shared_ptr<arrow::RecordBatch>> {
                  return batch;
                },
                total));
            Emit("{\"role\":\"producer\",\"vmhwm_kb\":" + std::to_string(VmHwmKb()) + "}");
            return arrow::Status::OK();
          }();
          return st.ok() ? 0 : Fail("producer", st);
        });
  }
  if (transport == "inproc") {
    // The single-process limit: a batch handed from one thread to another through a one-slot
    // queue (mutex + condition variable); the consumer thread blocks waiting like ReadNext does.
    std::mutex mu;
    std::condition_variable cv;
    std::shared_ptr<arrow::RecordBatch> slot;
    bool done = false, taken = true;
    std::vector<int64_t> samples;
    std::thread consumer([&] {
      int64_t n = 0;
      for (;;) {
        std::unique_lock lock(mu);
        cv.wait(lock, [&] { return slot != nullptr || done; });
        const int64_t t1 = NowNs();
        if (slot == nullptr) break;
        if (n++ >= warmup) samples.push_back(t1 - ReadStamp(*slot));
        slot.reset();
        taken = true;
        cv.notify_all();
      }
    });
    auto batch = make_in(arrow::default_memory_pool(), 0).ValueOrDie();
    for (int64_t i = 0; i < total; ++i) {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return taken; });
      taken = false;
      FirstValue(*batch)[0] = NowNs();
      slot = batch;
      cv.notify_all();
    }
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return taken; });
      done = true;
      cv.notify_all();
    }
    consumer.join();
    emit(samples);
    return 0;
  }
  std::cerr << "unknown transport " << transport << std::endl;
  return 1;
}

// End-to-end: build `cols` int64 columns of `bytes` in all, consumer sums every value.
int RunE2e(const std::string& mode, int64_t bytes, int cols, int64_t iters) {
  auto sum_batch = [](const arrow::RecordBatch& batch) {
    int64_t sum = 0;
    for (int c = 0; c < batch.num_columns(); ++c) {
      const int64_t* v = batch.column_data(c)->GetValues<int64_t>(1);
      for (int64_t i = 0; i < batch.num_rows(); ++i) sum += v[i];
    }
    return sum;
  };
  if (mode == "one") {
    std::vector<int64_t> samples, build_ns, sum_ns, build_faults, sum_faults;
    int64_t check = 0;
    for (int64_t it = 0; it < iters; ++it) {
      const int64_t f0 = MinorFaults();
      const int64_t t0 = NowNs();
      auto batch = MakeColumns(arrow::default_memory_pool(), bytes, cols).ValueOrDie();
      const int64_t t1 = NowNs();
      const int64_t f1 = MinorFaults();
      check += sum_batch(*batch);
      const int64_t t2 = NowNs();
      samples.push_back(t2 - t0);
      build_ns.push_back(t1 - t0);
      sum_ns.push_back(t2 - t1);
      build_faults.push_back(f1 - f0);
      sum_faults.push_back(MinorFaults() - f1);
    }
    Emit("{\"role\":\"consumer\",\"kind\":\"e2e\",\"mode\":\"one\",\"bytes\":" +
         std::to_string(bytes) + ",\"check\":" + std::to_string(check) +
         ",\"vmhwm_kb\":" + std::to_string(VmHwmKb()) + ",\"samples_ns\":" + Samples(samples) +
         ",\"build_ns\":" + Samples(build_ns) + ",\"sum_ns\":" + Samples(sum_ns) +
         ",\"build_minflt\":" + Samples(build_faults) + ",\"sum_minflt\":" + Samples(sum_faults) +
         "}");
    return 0;
  }
  // Two processes, ring mode: the producer takes t0 before building and stores it in column 0,
  // row 0 (whose value is 0) after the build; the consumer subtracts it from its sum (so the sum
  // stays checkable) and from the time it finished summing.
  const std::string address = Address("e2e");
  return ForkRun(
      1,
      [&](int) {
        auto st = [&]() -> arrow::Status {
          ARROW_ASSIGN_OR_RAISE(auto consumer, ConnectConsumer(address));
          std::vector<int64_t> samples, sum_ns, sum_faults;
          int64_t check = 0;
          for (;;) {
            std::shared_ptr<arrow::RecordBatch> batch;
            ARROW_RETURN_NOT_OK(consumer->ReadNext(&batch));
            if (batch == nullptr) break;
            const int64_t t0 = ReadStamp(*batch);
            const int64_t f1 = MinorFaults();
            const int64_t t1 = NowNs();
            check += sum_batch(*batch) - t0;  // row 0 of column 0 was 0 before the stamp
            const int64_t t2 = NowNs();
            samples.push_back(t2 - t0);
            sum_ns.push_back(t2 - t1);
            sum_faults.push_back(MinorFaults() - f1);
          }
          Emit("{\"role\":\"consumer\",\"kind\":\"e2e\",\"mode\":\"two\",\"bytes\":" +
               std::to_string(bytes) + ",\"check\":" + std::to_string(check) + ",\"vmhwm_kb\":" +
               std::to_string(VmHwmKb()) + ",\"samples_ns\":" + Samples(samples) +
               ",\"sum_ns\":" + Samples(sum_ns) + ",\"sum_minflt\":" + Samples(sum_faults) + "}");
          return arrow::Status::OK();
        }();
        return st.ok() ? 0 : Fail("consumer", st);
      },
      [&]() {
        auto st = [&]() -> arrow::Status {
          ARROW_ASSIGN_OR_RAISE(auto producer,
                                ListenProducer(address, ColumnsSchema(cols), "ring", bytes));
          ARROW_RETURN_NOT_OK(producer->WaitForConsumers(1, 20000));
          std::vector<int64_t> build_ns, build_faults;
          for (int64_t it = 0; it < iters; ++it) {
            const int64_t f0 = MinorFaults();
            const int64_t t0 = NowNs();
            std::shared_ptr<arrow::RecordBatch> batch;
            ARROW_ASSIGN_OR_RAISE(batch, MakeColumns(producer->pool(), bytes, cols));
            build_ns.push_back(NowNs() - t0);
            build_faults.push_back(MinorFaults() - f0);
            FirstValue(*batch)[0] = t0;
            ARROW_RETURN_NOT_OK(producer->Publish(batch));
            batch.reset();
            ARROW_RETURN_NOT_OK(producer->WaitUntilDrained(120000));
          }
          Emit("{\"role\":\"phases\",\"page_size\":" + std::to_string(producer->stats().page_size) +
               ",\"build_ns\":" + Samples(build_ns) + ",\"build_minflt\":" + Samples(build_faults) +
               "}");
          return FinishProducer(*producer);
        }();
        return st.ok() ? 0 : Fail("producer", st);
      });
}

// Throughput (ring, unpaced) and heap cost per batch (ring or sealed). Consumers read every batch
// and touch its first and last value; the producer publishes `batches` as fast as credits allow.
// How the throughput rows build a 1-row batch: three arrays in the producer's pool (the ring),
// one block of it (MakeSmallInBlock), or three arrays on the heap (Publish copies them).
enum class Build { kArrays, kBlock, kHeap };

int RunStream(const std::string& kind, const std::string& transport, int consumers, int64_t bytes,
              int64_t batches, int busy_poll_us, Build build, int64_t consumer_work_ns) {
  const bool small = bytes <= 0;
  auto schema = small ? SmallSchema() : ColumnsSchema(1);
  const std::string address = Address(kind.c_str());
  return ForkRun(
      consumers,
      [&](int index) {
        auto st = [&]() -> arrow::Status {
          ARROW_ASSIGN_OR_RAISE(auto consumer, ConnectConsumer(address, busy_poll_us));
          const int64_t cpu_start_ns = CpuNs();
          int64_t n = 0, touch = 0, first_ns = 0;
          for (;;) {
            std::shared_ptr<arrow::RecordBatch> batch;
            ARROW_RETURN_NOT_OK(consumer->ReadNext(&batch));
            if (batch == nullptr) break;
            if (n == 0) first_ns = NowNs();
            const int64_t* v = batch->column_data(0)->GetValues<int64_t>(1);
            touch += v[0] + v[batch->num_rows() - 1];
            ++n;
            for (const int64_t until = NowNs() + consumer_work_ns; NowNs() < until;) {
            }
          }
          const int64_t end_ns = NowNs();
          consumer.reset();
          Emit("{\"role\":\"consumer\",\"index\":" + std::to_string(index) +
               ",\"batches\":" + std::to_string(n) + ",\"first_ns\":" + std::to_string(first_ns) +
               ",\"end_ns\":" + std::to_string(end_ns) + ",\"touch\":" + std::to_string(touch) +
               ",\"cpu_start_ns\":" + std::to_string(cpu_start_ns) + ",\"cpu_ns\":" +
               std::to_string(CpuNs()) + ",\"heap_calls\":" + std::to_string(HeapCalls()) +
               ",\"heap_bytes\":" + std::to_string(HeapBytes()) +
               ",\"vmhwm_kb\":" + std::to_string(VmHwmKb()) + "}");
          return arrow::Status::OK();
        }();
        return st.ok() ? 0 : Fail("consumer", st);
      },
      [&]() {
        auto st = [&]() -> arrow::Status {
          ARROW_ASSIGN_OR_RAISE(
              auto producer,
              ListenProducer(address, schema, transport, std::max<int64_t>(bytes, 1 << 20) * 4));
          ARROW_RETURN_NOT_OK(producer->WaitForConsumers(consumers, 20000));
          const int64_t start_ns = NowNs(), cpu_start_ns = CpuNs();
          // Heap used while the bench builds each batch (Arrow's objects for buffers, arrays and
          // the batch), told apart from what publishing costs.
          long long build_calls = 0, build_bytes = 0;
          int64_t build_ns = 0;  // the time spent building, of the producer's wall time
          for (int64_t i = 0; i < batches; ++i) {
            const long long calls0 = HeapCalls(), bytes0 = HeapBytes();
            const int64_t build0 = NowNs();
            std::shared_ptr<arrow::RecordBatch> batch;
            if (small) {
              ARROW_ASSIGN_OR_RAISE(
                  batch, build == Build::kBlock
                             ? MakeSmallInBlock(producer->pool(), i)
                             : MakeSmall(build == Build::kHeap ? arrow::default_memory_pool()
                                                               : producer->pool(),
                                         i));
            } else {
              ARROW_ASSIGN_OR_RAISE(auto buffer,
                                    arrow::AllocateBuffer(bytes / 8 * 8, producer->pool()));
              auto* v = reinterpret_cast<int64_t*>(buffer->mutable_data());
              v[0] = i;
              v[bytes / 8 - 1] = i;  // the rest is left as the ring had it: not what is measured
              batch = arrow::RecordBatch::Make(
                  schema, bytes / 8,
                  {arrow::MakeArray(arrow::ArrayData::Make(
                      arrow::int64(), bytes / 8,
                      {nullptr, std::shared_ptr<arrow::Buffer>(std::move(buffer))}, 0))});
            }
            build_ns += NowNs() - build0;
            build_calls += HeapCalls() - calls0;
            build_bytes += HeapBytes() - bytes0;
            ARROW_RETURN_NOT_OK(producer->Publish(batch));
          }
          ARROW_RETURN_NOT_OK(producer->End());
          const int64_t published_ns = NowNs();
          ARROW_RETURN_NOT_OK(producer->WaitUntilDrained(120000));
          const auto stats = producer->stats();
          producer->Close();
          producer.reset();
          Emit("{\"role\":\"producer\",\"kind\":\"" + kind + "\",\"transport\":\"" + transport +
               "\",\"consumers\":" + std::to_string(consumers) +
               ",\"bytes\":" + std::to_string(bytes) + ",\"batches\":" + std::to_string(batches) +
               ",\"start_ns\":" + std::to_string(start_ns) + ",\"published_ns\":" +
               std::to_string(published_ns) + ",\"cpu_start_ns\":" + std::to_string(cpu_start_ns) +
               ",\"cpu_ns\":" + std::to_string(CpuNs()) +
               ",\"bytes_copied\":" + std::to_string(stats.bytes_copied) + ",\"heap_calls\":" +
               std::to_string(HeapCalls()) + ",\"heap_bytes\":" + std::to_string(HeapBytes()) +
               ",\"build_ns\":" + std::to_string(build_ns) + ",\"build_calls\":" +
               std::to_string(build_calls) + ",\"build_bytes\":" + std::to_string(build_bytes) +
               ",\"vmhwm_kb\":" + std::to_string(VmHwmKb()) + "}");
          return arrow::Status::OK();
        }();
        return st.ok() ? 0 : Fail("producer", st);
      });
}

// The peer of the ring's throughput rows: Arrow IPC streams over UNIX sockets, the same 1-row batch
// built the same way (Arrow's default pool), one socketpair per reader. Its fastest honest form:
// each side buffered (the writer flushes once per batch, so every batch leaves at once — a
// streaming system, not a batching one; the reader takes what arrived in 64 KiB reads), readers
// checking each batch as the ring's consumers do by default (ValidateFull).
int RunSocketThroughput(int consumers, int64_t batches) {
  std::vector<std::array<int, 2>> pairs(static_cast<size_t>(consumers));
  for (auto& sv : pairs) {
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv.data()) != 0) {
      std::perror("socketpair");
      return 1;
    }
  }
  return ForkRun(
      consumers,
      [&](int index) {
        for (int i = 0; i < consumers; ++i) {
          ::close(pairs[i][0]);
          if (i != index) ::close(pairs[i][1]);
        }
        auto st = [&]() -> arrow::Status {
          auto socket = std::make_shared<SocketInputStream>(pairs[index][1], false);
          ARROW_ASSIGN_OR_RAISE(auto in, arrow::io::BufferedInputStream::Create(
                                             64 << 10, arrow::default_memory_pool(), socket));
          ARROW_ASSIGN_OR_RAISE(auto reader, arrow::ipc::RecordBatchStreamReader::Open(in));
          const int64_t cpu_start_ns = CpuNs();
          int64_t n = 0, touch = 0, first_ns = 0;
          for (;;) {
            std::shared_ptr<arrow::RecordBatch> batch;
            ARROW_RETURN_NOT_OK(reader->ReadNext(&batch));
            if (batch == nullptr) break;
            ARROW_RETURN_NOT_OK(batch->ValidateFull());
            if (n == 0) first_ns = NowNs();
            const int64_t* v = batch->column_data(0)->GetValues<int64_t>(1);
            touch += v[0] + v[batch->num_rows() - 1];
            ++n;
          }
          Emit("{\"role\":\"consumer\",\"index\":" + std::to_string(index) +
               ",\"batches\":" + std::to_string(n) + ",\"first_ns\":" + std::to_string(first_ns) +
               ",\"end_ns\":" + std::to_string(NowNs()) + ",\"touch\":" + std::to_string(touch) +
               ",\"cpu_start_ns\":" + std::to_string(cpu_start_ns) +
               ",\"cpu_ns\":" + std::to_string(CpuNs()) + "}");
          return arrow::Status::OK();
        }();
        return st.ok() ? 0 : Fail("consumer", st);
      },
      [&]() {
        auto st = [&]() -> arrow::Status {
          std::vector<std::shared_ptr<arrow::io::BufferedOutputStream>> outs;
          std::vector<std::shared_ptr<arrow::ipc::RecordBatchWriter>> writers;
          for (auto& sv : pairs) {
            ::close(sv[1]);
            ARROW_ASSIGN_OR_RAISE(auto out, arrow::io::BufferedOutputStream::Create(
                                                64 << 10, arrow::default_memory_pool(),
                                                std::make_shared<SocketOutputStream>(sv[0])));
            ARROW_ASSIGN_OR_RAISE(auto writer, arrow::ipc::MakeStreamWriter(out, SmallSchema()));
            outs.push_back(std::move(out));
            writers.push_back(std::move(writer));
          }
          const int64_t start_ns = NowNs(), cpu_start_ns = CpuNs();
          int64_t build_ns = 0;  // as the ring's rows count it: wall time building, of the loop's
          for (int64_t i = 0; i < batches; ++i) {
            const int64_t build0 = NowNs();
            ARROW_ASSIGN_OR_RAISE(auto batch, MakeSmall(arrow::default_memory_pool(), i));
            build_ns += NowNs() - build0;
            for (size_t k = 0; k < writers.size(); ++k) {
              ARROW_RETURN_NOT_OK(writers[k]->WriteRecordBatch(*batch));
              ARROW_RETURN_NOT_OK(outs[k]->Flush());
            }
          }
          for (size_t k = 0; k < writers.size(); ++k) {
            ARROW_RETURN_NOT_OK(writers[k]->Close());
            ARROW_RETURN_NOT_OK(outs[k]->Close());
          }
          Emit(
              "{\"role\":\"producer\",\"kind\":\"throughput\",\"transport\":\"uds\","
              "\"consumers\":" +
              std::to_string(consumers) + ",\"bytes\":0,\"batches\":" + std::to_string(batches) +
              ",\"start_ns\":" + std::to_string(start_ns) + ",\"published_ns\":" +
              std::to_string(NowNs()) + ",\"cpu_start_ns\":" + std::to_string(cpu_start_ns) +
              ",\"cpu_ns\":" + std::to_string(CpuNs()) +
              ",\"bytes_copied\":0,\"build_ns\":" + std::to_string(build_ns) + "}");
          return arrow::Status::OK();
        }();
        return st.ok() ? 0 : Fail("producer", st);
      });
}

// Arrow's own heap allocations for the small batch, in one process and without shmarrow: the
// producer side's GetRecordBatchPayload (what Publish asks of Arrow's writer), and the consumer
// side's ReadRecordBatch plus ValidateFull (what a consumer asks of Arrow's reader). The floor
// under the "heap" figures while batches are Arrow objects.
int RunHeapFloor(int64_t batches) {
  auto st = [&]() -> arrow::Status {
    ARROW_ASSIGN_OR_RAISE(auto batch, MakeSmall(arrow::default_memory_pool(), 1));
    arrow::ipc::IpcPayload first;
    ARROW_RETURN_NOT_OK(
        arrow::ipc::GetRecordBatchPayload(*batch, arrow::ipc::IpcWriteOptions::Defaults(), &first));
    ARROW_ASSIGN_OR_RAISE(auto body, arrow::AllocateBuffer(first.body_length));
    int64_t at = 0;
    for (const auto& buffer : first.body_buffers) {
      if (buffer == nullptr) continue;
      std::memcpy(body->mutable_data() + at, buffer->data(), static_cast<size_t>(buffer->size()));
      at += arrow::bit_util::RoundUpToMultipleOf8(buffer->size());
    }
    const std::shared_ptr<arrow::Buffer> body_shared(std::move(body));
    const long long write0 = HeapCalls();
    for (int64_t i = 0; i < batches; ++i) {
      arrow::ipc::IpcPayload payload;
      ARROW_RETURN_NOT_OK(arrow::ipc::GetRecordBatchPayload(
          *batch, arrow::ipc::IpcWriteOptions::Defaults(), &payload));
    }
    const long long write_calls = HeapCalls() - write0;
    const long long read0 = HeapCalls();
    for (int64_t i = 0; i < batches; ++i) {
      arrow::io::BufferReader reader(body_shared);
      ARROW_ASSIGN_OR_RAISE(
          auto read, arrow::ipc::ReadRecordBatch(*first.metadata, SmallSchema(), nullptr,
                                                 arrow::ipc::IpcReadOptions::Defaults(), &reader));
      ARROW_RETURN_NOT_OK(read->ValidateFull());
    }
    const long long read_calls = HeapCalls() - read0;
    Emit("{\"role\":\"floor\",\"batches\":" + std::to_string(batches) + ",\"write_calls\":" +
         std::to_string(write_calls) + ",\"read_calls\":" + std::to_string(read_calls) + "}");
    return arrow::Status::OK();
  }();
  return st.ok() ? 0 : Fail("floor", st);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = Parse(argc, argv);
  auto pages = shmarrow::ParsePagePolicy(a.Get("pages", "auto"));
  if (!pages.ok()) {
    std::cerr << pages.status().ToString() << std::endl;
    return 2;
  }
  g_pages = *pages;
  if (a.command == "handover" || a.command == "latency") {
    return RunPaced(a.command, a.Get("transport", "ring"), a.Int("bytes", 24), a.Int("iters", 100),
                    a.Int("warmup", a.command == "latency" ? 100 : 1),
                    static_cast<int>(a.Int("settle-ms", 0)),
                    static_cast<int>(a.Int("busy-poll-us", 0)), a.Int("reuse", 0) != 0,
                    a.Int("cold-bytes", 0), a.Get("consumer-exec", ""));
  }
  if (a.command == "e2e") {
    return RunE2e(a.Get("mode", "two"), a.Int("bytes", 16 << 20),
                  static_cast<int>(a.Int("cols", 4)), a.Int("iters", 3));
  }
  if (a.command == "heap-floor") return RunHeapFloor(a.Int("batches", 10000));
  if (a.command == "throughput" && a.Get("transport", "ring") == "uds") {
    return RunSocketThroughput(static_cast<int>(a.Int("consumers", 1)), a.Int("batches", 10000));
  }
  if (a.command == "throughput" || a.command == "heap") {
    const std::map<std::string, Build> builds = {
        {"arrays", Build::kArrays}, {"block", Build::kBlock}, {"heap", Build::kHeap}};
    const auto build = builds.find(a.Get("build", "arrays"));
    if (build == builds.end()) {
      std::cerr << "handover_bench: --build is arrays, block or heap\n";
      return 2;
    }
    return RunStream(a.command, a.Get("transport", "ring"), static_cast<int>(a.Int("consumers", 1)),
                     a.Int("bytes", 0), a.Int("batches", 10000),
                     static_cast<int>(a.Int("busy-poll-us", 0)), build->second,
                     a.Int("consumer-work-ns", 0));
  }
  std::cerr << "usage: handover_bench handover|latency|e2e|throughput|heap --key value ...\n";
  return 2;
}
