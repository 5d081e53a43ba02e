// spsc_baseline: the floor of this machine for bench/run's small-batch rows (see
// docs/benchmarks.md): messages from one process to others through a queue in shared memory; a
// sleeping consumer is woken with a futex on a word of that memory (FUTEX_WAIT / FUTEX_WAKE, not
// _PRIVATE: the mapping is shared between processes), the mechanism shmarrow's control plane
// uses. Nothing else: no Arrow, no metadata, no validation, no release.
//
//   spsc_baseline --iters N [--warmup W] [--busy 1] [--settle-ms P] [--cold-bytes C]
//
// Paced one-way latency of a 64-byte message, like handover_bench latency: the producer writes
// CLOCK_MONOTONIC into the message just before publishing it, the consumer subtracts it from the
// time it holds the message, and the producer sends the next message only once the consumer has
// taken this one (it sleeps on the consumer's cursor, outside the timed path). --busy 1: the
// consumer spins on the queue instead of sleeping. The controls for handover_bench's rows of the
// same names: before stamping each message the producer sleeps P ms (--settle-ms: both processes
// idle) or writes C bytes of memory of its own (--cold-bytes: the producer busy, as when it
// builds a large batch). The consumer prints one JSON line on stdout,
// {"role":"consumer","kind":"spsc","busy":B,"samples_ns":[...]}; the producer one with its role.
//
//   spsc_baseline throughput --consumers K [--bytes B] --messages N
//
// Unpaced throughput, the floor under handover_bench throughput: one producer writes N messages
// of B bytes as fast as the ring lets it; K forked consumers each read every message (sum its
// 8-byte words, checked against what the producer wrote). The ring holds 64 messages, as many as
// a shmarrow consumer may hold by default (ProducerOptions::max_in_flight): when it is full the
// producer sleeps on the slowest consumer's cursor until half of it is free, and that consumer
// wakes it then. A consumer that caught up polls for 10 us, then announces its sleep on a word
// of its own and sleeps on its futex word; the producer wakes only the consumers that announced
// a sleep, as shmarrow's producer and blocking consumer do. B defaults to 256: the 232-byte RecordBatch Message
// flatbuffer that Arrow's writer makes for handover_bench's 1-row batch of 3 int64/float64
// columns (shmarrow writes those bytes into the ring, src/metadata_template.h) plus its 24-byte
// body. Each process prints one JSON line, as handover_bench throughput does:
// {"role":"consumer","index":i,"messages":n,"first_ns":..,"end_ns":..,"cpu_start_ns":..,"cpu_ns":..} and
// {"role":"producer","consumers":K,"bytes":B,"messages":N,"start_ns":..,"published_ns":..,
// "cpu_start_ns":..,"cpu_ns":..}; times are CLOCK_MONOTONIC, cpu_ns the process's CPU time
// (cpu_start_ns: when the measured part began, so that set-up is left out).
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <iostream>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "pace.h"

namespace {

constexpr uint32_t kSlots = 64;  // a power of two: slot = sequence % kSlots

struct alignas(64) Message {
  int64_t stamp_ns;
  uint64_t sequence;
  char filler[48];
};
static_assert(sizeof(Message) == 64);

// Each cursor (bench/pace.h) on its own cache line: head counts the messages published (the
// consumer waits on it), tail the messages taken (the producer waits on it).
struct Queue {
  bench::PaceWord head;
  bench::PaceWord tail;
  alignas(64) Message slots[kSlots];
};

// CLOCK_MONOTONIC by default; CLOCK_PROCESS_CPUTIME_ID: the CPU time of this process.
int64_t NowNs(clockid_t clock = CLOCK_MONOTONIC) {
  timespec ts{};
  ::clock_gettime(clock, &ts);
  return int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
}

int Consume(Queue* q, int64_t total, int64_t warmup, bool busy) {
  std::vector<int64_t> samples;
  samples.reserve(static_cast<size_t>(total));
  for (uint32_t taken = 0; taken < total; ++taken) {
    if (!bench::WaitChange(&q->head, taken, busy, bench::Role::kHandOver)) {
      std::cerr << "spsc_baseline: no message " << taken << " from the producer" << std::endl;
      return 1;
    }
    const int64_t t1 = NowNs();
    const Message& m = q->slots[taken % kSlots];
    if (m.sequence != taken) {
      std::cerr << "spsc_baseline: message " << m.sequence << ", expected " << taken << std::endl;
      return 1;
    }
    if (taken >= warmup) samples.push_back(t1 - m.stamp_ns);
    bench::Advance(&q->tail, taken + 1);
  }
  std::string line = "{\"role\":\"consumer\",\"kind\":\"spsc\",\"busy\":" + std::to_string(busy) +
                     ",\"samples_ns\":[";
  for (size_t i = 0; i < samples.size(); ++i) line += (i ? "," : "") + std::to_string(samples[i]);
  std::printf("%s]}\n", line.c_str());
  return 0;
}

bool Produce(Queue* q, int64_t total, int64_t settle_ms, int64_t cold_bytes) {
  std::vector<int64_t> elsewhere(static_cast<size_t>(cold_bytes / 8));
  for (uint32_t sent = 0; sent < total; ++sent) {
    if (settle_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
    for (size_t k = 0; k < elsewhere.size(); ++k) elsewhere[k] = static_cast<int64_t>(k) + sent;
    Message& m = q->slots[sent % kSlots];
    m.sequence = sent;
    m.stamp_ns = NowNs();
    bench::Advance(&q->head, sent + 1, bench::Role::kHandOver);
    if (!bench::WaitChange(&q->tail, sent, false)) {  // paced: the consumer took it
      std::cerr << "spsc_baseline: the consumer did not take message " << sent << std::endl;
      return false;
    }
  }
  return true;
}

int64_t Arg(int argc, char** argv, const std::string& name, int64_t fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return std::atoll(argv[i + 1]);
  }
  return fallback;
}

// Throughput (see the top): the ring in shared memory, each part on cache lines of its own.
constexpr uint32_t kRingSlots = 64;  // shmarrow's default credits (ProducerOptions::max_in_flight)
constexpr int kMaxConsumers = 64;
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(10);  // as shmarrow's consumer

struct alignas(64) Counter {
  std::atomic<uint32_t> value{0};
};

// A consumer's sleep, as in shmarrow's wake region: it sleeps on `wake`, having said so in
// `asleep` (0: awake, else 1 << 32 | the value of `wake` it saw); the producer bumps `wake` and
// wakes it, once per sleep.
struct alignas(64) Bell {
  std::atomic<uint32_t> wake{0};
  std::atomic<uint64_t> asleep{0};
};

// A consumer's cursor: the messages it has taken. The producer waiting for room sleeps on it
// until it reaches `wake_at`: the consumer wakes it when it gets there (once per sleep; the
// values of `wake_at` only grow).
struct alignas(64) Cursor {
  std::atomic<uint32_t> taken{0};
  std::atomic<uint32_t> producer_asleep{0};
  std::atomic<uint32_t> wake_at{0};
};

struct Ring {
  Counter published;  // messages written (the consumers wait on it)
  Counter ready;      // consumers started
  Cursor cursors[kMaxConsumers];
  Bell bells[kMaxConsumers];
  // then kRingSlots messages, each `stride` bytes
};

struct RingView {
  Ring* ring;
  uint8_t* slots;
  size_t stride;
  size_t words;  // 8-byte words per message
  const uint64_t* Message(uint32_t sequence) const {
    return reinterpret_cast<const uint64_t*>(slots + (sequence % kRingSlots) * stride);
  }
};

// Word i of message `sequence` holds sequence + i: the sum a consumer checks.
uint64_t ExpectedSum(uint32_t sequence, size_t words) {
  return words * uint64_t{sequence} + words * (words - 1) / 2;
}

void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// Waits for a message after `taken`: polls kSpinBeforeSleep, then sleeps until the producer
// wakes it (or 100 ms pass: look again). False: nothing for bench::kPaceGiveUp.
bool AwaitMessage(Ring* ring, Bell* bell, uint32_t taken) {
  const auto give_up = std::chrono::steady_clock::now() + bench::kPaceGiveUp;
  for (;;) {
    const auto spin_until = std::chrono::steady_clock::now() + kSpinBeforeSleep;
    do {
      CpuRelax();
      if (ring->published.value.load(std::memory_order_acquire) != taken) return true;
    } while (std::chrono::steady_clock::now() < spin_until);
    // Announced, then a last look (sequentially consistent, against the producer's store of
    // `published` and its look at `asleep`): it sees the announcement or we see its message.
    const uint32_t seen = bell->wake.load(std::memory_order_seq_cst);
    bell->asleep.store(uint64_t{1} << 32 | seen, std::memory_order_seq_cst);
    if (ring->published.value.load(std::memory_order_seq_cst) == taken) {
      const timespec timeout{0, 100 * 1000 * 1000};
      ::syscall(SYS_futex, &bell->wake, FUTEX_WAIT, seen, &timeout, nullptr, 0);
    }
    bell->asleep.store(0, std::memory_order_relaxed);
    if (ring->published.value.load(std::memory_order_acquire) != taken) return true;
    if (std::chrono::steady_clock::now() > give_up) return false;
  }
}

int ConsumeAll(const RingView& view, int index, uint32_t total) {
  Ring* ring = view.ring;
  Cursor* cursor = &ring->cursors[index];
  ring->ready.value.fetch_add(1);
  const int64_t cpu_start_ns = NowNs(CLOCK_PROCESS_CPUTIME_ID);
  int64_t first_ns = 0;
  for (uint32_t taken = 0; taken < total;) {
    const uint32_t available = ring->published.value.load(std::memory_order_acquire);
    if (available == taken) {
      if (!AwaitMessage(ring, &ring->bells[index], taken)) {
        std::cerr << "spsc_baseline: consumer " << index << ": no message " << taken << std::endl;
        return 1;
      }
      continue;
    }
    if (taken == 0) first_ns = NowNs();
    for (; taken != available; ++taken) {
      const uint64_t* words = view.Message(taken);
      uint64_t sum = 0;
      for (size_t i = 0; i < view.words; ++i) sum += words[i];
      if (sum != ExpectedSum(taken, view.words)) {
        std::cerr << "spsc_baseline: consumer " << index << ": message " << taken
                  << " does not hold what was written" << std::endl;
        return 1;
      }
      // The slot may be reused now. Stored, then a look at the producer's sleep (sequentially
      // consistent, against its announcement and its last look at the cursor).
      cursor->taken.store(taken + 1, std::memory_order_seq_cst);
      if (cursor->producer_asleep.load(std::memory_order_seq_cst) != 0 &&
          cursor->wake_at.load(std::memory_order_relaxed) == taken + 1) {
        ::syscall(SYS_futex, &cursor->taken, FUTEX_WAKE, 1, nullptr, nullptr, 0);
      }
    }
  }
  const int64_t end_ns = NowNs();
  std::printf(
      "{\"role\":\"consumer\",\"kind\":\"spsc\",\"index\":%d,\"messages\":%u,\"first_ns\":%lld,"
      "\"end_ns\":%lld,\"cpu_start_ns\":%lld,\"cpu_ns\":%lld}\n",
      index, total, static_cast<long long>(first_ns), static_cast<long long>(end_ns),
      static_cast<long long>(cpu_start_ns),
      static_cast<long long>(NowNs(CLOCK_PROCESS_CPUTIME_ID)));
  return 0;
}

// The cursor of the consumer furthest behind `sent`.
uint32_t Slowest(Ring* ring, int consumers, uint32_t sent) {
  uint32_t slowest = sent;
  for (int k = 0; k < consumers; ++k) {
    const uint32_t taken = ring->cursors[k].taken.load(std::memory_order_acquire);
    if (sent - taken > sent - slowest) slowest = taken;
  }
  return slowest;
}

// Sleeps on each consumer's cursor in turn until every one has taken `count` messages.
bool WaitUntilTaken(Ring* ring, int consumers, uint32_t count) {
  const auto give_up = std::chrono::steady_clock::now() + bench::kPaceGiveUp;
  for (int k = 0; k < consumers; ++k) {
    Cursor& cursor = ring->cursors[k];
    cursor.wake_at.store(count, std::memory_order_relaxed);
    for (;;) {
      cursor.producer_asleep.store(1, std::memory_order_seq_cst);
      const uint32_t seen = cursor.taken.load(std::memory_order_seq_cst);
      if (static_cast<int32_t>(seen - count) >= 0) break;
      if (std::chrono::steady_clock::now() > give_up) {
        std::cerr << "spsc_baseline: consumer " << k << " stopped at message " << seen << std::endl;
        return false;
      }
      // EAGAIN (the cursor moved), EINTR, ETIMEDOUT: look again.
      const timespec timeout{0, 100 * 1000 * 1000};
      ::syscall(SYS_futex, &cursor.taken, FUTEX_WAIT, seen, &timeout, nullptr, 0);
    }
    cursor.producer_asleep.store(0, std::memory_order_relaxed);
  }
  return true;
}

bool ProduceAll(const RingView& view, int consumers, uint32_t total) {
  Ring* ring = view.ring;
  const auto give_up = std::chrono::steady_clock::now() + bench::kPaceGiveUp;
  while (ring->ready.value.load() != static_cast<uint32_t>(consumers)) {
    if (std::chrono::steady_clock::now() > give_up) {
      std::cerr << "spsc_baseline: the consumers did not start" << std::endl;
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  const int64_t start_ns = NowNs(), cpu_start_ns = NowNs(CLOCK_PROCESS_CPUTIME_ID);
  uint32_t slowest_taken = 0;  // looked up again only when the ring seems full
  for (uint32_t sent = 0; sent < total; ++sent) {
    if (sent - slowest_taken == kRingSlots) {  // full, unless a consumer moved on since
      slowest_taken = Slowest(ring, consumers, sent);
      // Full: sleeps until half the ring is free, so that the consumers wake the producer once
      // every kRingSlots / 2 messages, not once a message.
      if (sent - slowest_taken == kRingSlots) {
        if (!WaitUntilTaken(ring, consumers, sent - kRingSlots / 2)) return false;
        slowest_taken = Slowest(ring, consumers, sent);
      }
    }
    auto* words = const_cast<uint64_t*>(view.Message(sent));
    for (size_t i = 0; i < view.words; ++i) words[i] = sent + i;
    ring->published.value.store(sent + 1, std::memory_order_seq_cst);
    for (int k = 0; k < consumers; ++k) {
      Bell& bell = ring->bells[k];
      const uint64_t asleep = bell.asleep.load(std::memory_order_seq_cst);
      if (asleep != 0 && static_cast<uint32_t>(asleep) == bell.wake.load()) {  // not woken yet
        bell.wake.fetch_add(1, std::memory_order_seq_cst);
        ::syscall(SYS_futex, &bell.wake, FUTEX_WAKE, 1, nullptr, nullptr, 0);
      }
    }
  }
  const int64_t published_ns = NowNs();
  if (!WaitUntilTaken(ring, consumers, total)) return false;
  std::printf(
      "{\"role\":\"producer\",\"kind\":\"spsc\",\"consumers\":%d,\"bytes\":%zu,\"messages\":%u,"
      "\"start_ns\":%lld,\"published_ns\":%lld,\"cpu_start_ns\":%lld,\"cpu_ns\":%lld}\n",
      consumers, view.words * 8, total, static_cast<long long>(start_ns),
      static_cast<long long>(published_ns), static_cast<long long>(cpu_start_ns),
      static_cast<long long>(NowNs(CLOCK_PROCESS_CPUTIME_ID)));
  return true;
}

// Shared anonymous memory, mapped before fork so that every process shares it; it goes with the
// processes.
void* MapShared(size_t bytes) {
  void* memory = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    std::perror("spsc_baseline: mmap");
    return nullptr;
  }
  return memory;
}

// Forks `consumers` processes running consume(index); the parent runs produce() and waits for
// them. 0: every process succeeded.
template <typename Consume, typename Produce>
int ForkRun(int consumers, Consume consume, Produce produce) {
  std::fflush(stdout);
  std::vector<pid_t> pids;
  for (int i = 0; i < consumers; ++i) {
    const pid_t pid = ::fork();
    if (pid < 0) {
      std::perror("spsc_baseline: fork");
      return 1;  // the forked ones give up after bench::kPaceGiveUp
    }
    if (pid == 0) {
      const int rc = consume(i);
      std::fflush(stdout);
      std::_Exit(rc);
    }
    pids.push_back(pid);
  }
  int rc = produce() ? 0 : 1;
  for (const pid_t pid : pids) {
    int status = 0;
    ::waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) rc = 1;
  }
  return rc;
}

int RunThroughput(int argc, char** argv) {
  const int64_t consumers = Arg(argc, argv, "consumers", 1);
  const int64_t bytes = Arg(argc, argv, "bytes", 256);
  const int64_t messages = Arg(argc, argv, "messages", 100000);
  if (consumers < 1 || consumers > kMaxConsumers || bytes < 8 || bytes % 8 != 0 ||
      bytes > (int64_t{1} << 20) || messages <= 0 || messages > INT32_MAX) {
    std::cerr << "usage: spsc_baseline throughput --consumers K (1 to " << kMaxConsumers
              << ") [--bytes B (a multiple of 8, up to 1 MiB)] --messages N\n";
    return 2;
  }
  const size_t stride = (static_cast<size_t>(bytes) + 63) / 64 * 64;
  void* memory = MapShared(sizeof(Ring) + kRingSlots * stride);
  if (memory == nullptr) return 1;
  const RingView view{new (memory) Ring, static_cast<uint8_t*>(memory) + sizeof(Ring), stride,
                      static_cast<size_t>(bytes) / 8};
  const auto total = static_cast<uint32_t>(messages);
  return ForkRun(
      static_cast<int>(consumers), [&](int index) { return ConsumeAll(view, index, total); },
      [&] { return ProduceAll(view, static_cast<int>(consumers), total); });
}

int RunLatency(int argc, char** argv) {
  const int64_t iters = Arg(argc, argv, "iters", 10000);
  const int64_t warmup = Arg(argc, argv, "warmup", 100);
  const bool busy = Arg(argc, argv, "busy", 0) != 0;
  const int64_t settle_ms = Arg(argc, argv, "settle-ms", 0);
  const int64_t cold_bytes = Arg(argc, argv, "cold-bytes", 0);
  if (iters <= 0 || warmup < 0 || iters + warmup > INT32_MAX || settle_ms < 0 || cold_bytes < 0) {
    std::cerr << "usage: spsc_baseline --iters N [--warmup W] [--busy 1] [--settle-ms P] "
                 "[--cold-bytes C]\n";
    return 2;
  }
  void* memory = MapShared(sizeof(Queue));
  if (memory == nullptr) return 1;
  auto* q = new (memory) Queue;
  const int rc = ForkRun(
      1, [&](int) { return Consume(q, iters + warmup, warmup, busy); },
      [&] { return Produce(q, iters + warmup, settle_ms, cold_bytes); });
  if (rc == 0) std::printf("{\"role\":\"producer\",\"kind\":\"spsc\"}\n");
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "throughput") return RunThroughput(argc, argv);
  return RunLatency(argc, argv);
}
