// spsc_baseline: the floor of this machine for bench/run's small-batch latency rows (see
// docs/benchmarks.md). A 64-byte message goes from one process to another through a
// single-producer single-consumer queue in shared memory; a sleeping consumer is woken with a
// futex on a word of that memory (FUTEX_WAIT / FUTEX_WAKE, not _PRIVATE: the mapping is shared
// between processes), the mechanism shmarrow's control plane uses. Nothing else: no Arrow, no
// metadata, no validation, no release.
//
//   spsc_baseline --iters N [--warmup W] [--busy 1] [--settle-ms P] [--cold-bytes C]
//
// Paced one-way latency, like handover_bench latency: the producer writes CLOCK_MONOTONIC into
// the message just before publishing it, the consumer subtracts it from the time it holds the
// message, and the producer sends the next message only once the consumer has taken this one
// (it sleeps on the consumer's cursor, outside the timed path). --busy 1: the consumer spins on
// the queue instead of sleeping. The controls for handover_bench's rows of the same names: before
// stamping each message the producer sleeps P ms (--settle-ms: both processes idle) or writes C
// bytes of memory of its own (--cold-bytes: the producer busy, as when it builds a large batch).
// The consumer prints one JSON line on stdout,
// {"role":"consumer","kind":"spsc","busy":B,"samples_ns":[...]}; the producer one with its role.
#include <sys/mman.h>
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

int64_t NowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
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

}  // namespace

int main(int argc, char** argv) {
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
  // Mapped before fork, so both processes share it; it goes with the processes.
  void* memory =
      ::mmap(nullptr, sizeof(Queue), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) {
    std::perror("spsc_baseline: mmap");
    return 1;
  }
  auto* q = new (memory) Queue;
  std::fflush(stdout);
  const pid_t pid = ::fork();
  if (pid < 0) {
    std::perror("spsc_baseline: fork");
    return 1;
  }
  if (pid == 0) {
    const int rc = Consume(q, iters + warmup, warmup, busy);
    std::fflush(stdout);
    std::_Exit(rc);
  }
  const bool sent = Produce(q, iters + warmup, settle_ms, cold_bytes);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!sent || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return 1;
  std::printf("{\"role\":\"producer\",\"kind\":\"spsc\"}\n");
  return 0;
}
