// Protocol 1.3's wake-up: consumers that sleep on the futex, busy-poll, wait on fd() or speak
// 1.1 all read one producer; a sleeping consumer is woken for a new entry, not for a release the
// producer takes; a producer killed under a sleeping consumer is noticed; a producer waiting
// for room misses no release; a region
// that could fault the producer, or a sleep word full of garbage, harms nobody else; the
// region's fallbacks for older peers on either side.
#include <arrow/api.h>
#include <gtest/gtest.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <chrono>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "consumer_session.h"
#include "futex.h"
#include "hostile_peer.h"
#include "region_peer.h"
#include "mapping.h"
#include "memfd.h"
#include "protocol.h"
#include "shmarrow/consumer.h"
#include "shmarrow/error.h"
#include "shmarrow/producer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using BatchPtr = std::shared_ptr<arrow::RecordBatch>;
using hostile::Blocking;
using hostile::kTimeoutMs;
using hostile::ReadToEnd;
using hostile::RingOptions;

constexpr int kBatches = 300;

std::string NextAddress() { return test_util::UniqueAbstractName("wake-region"); }

/// Reads to the end with TryNext, sleeping in epoll on fd() whenever nothing is there.
arrow::Result<std::vector<int64_t>> ReadToEndWithEpoll(Consumer& consumer) {
  const UniqueFd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) return arrow::Status::IOError("epoll_create1 failed");
  epoll_event event{};
  event.events = EPOLLIN;
  if (::epoll_ctl(epoll.get(), EPOLL_CTL_ADD, consumer.fd(), &event) != 0) {
    return arrow::Status::IOError("epoll_ctl failed");
  }
  std::vector<int64_t> values;
  for (;;) {
    BatchPtr batch;
    ARROW_ASSIGN_OR_RAISE(auto poll, consumer.TryNext(&batch));
    if (poll == Consumer::Poll::kEnd) return values;
    if (poll == Consumer::Poll::kBatch) {
      values.push_back(test_util::ValueOf(*batch));
      continue;
    }
    if (::epoll_wait(epoll.get(), &event, 1, kTimeoutMs) == 0) {
      return arrow::Status::IOError("fd() never became readable after ", values.size(), " batches");
    }
  }
}

std::vector<int64_t> Iota(int64_t count) {
  std::vector<int64_t> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) out[static_cast<size_t>(i)] = i;
  return out;
}

TEST(WakeRegion, SleepingBusyEpollAndOldConsumersAllGetEverything) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), RingOptions()));
  ConsumerOptions busy = Blocking();
  busy.busy_poll_us = 1000000;
  ASSERT_OK_AND_ASSIGN(auto sleeping, Consumer::Connect(address, Blocking()));
  ASSERT_OK_AND_ASSIGN(auto spinning, Consumer::Connect(address, busy));
  ASSERT_OK_AND_ASSIGN(auto polled, Consumer::Connect(address, Blocking()));
  // Version 1.1 (Waiting and Wake messages) against this 1.3 producer: the fallback.
  ASSERT_OK_AND_ASSIGN(auto old, internal::ConnectSpeaking(address, Blocking(), 1));
  ASSERT_OK_AND_ASSIGN(auto old_polled, internal::ConnectSpeaking(address, Blocking(), 1));
  ASSERT_OK(producer->WaitForConsumers(5, kTimeoutMs));

  auto sleeping_read = std::async(std::launch::async, [&] { return ReadToEnd(*sleeping); });
  auto spinning_read = std::async(std::launch::async, [&] { return ReadToEnd(*spinning); });
  auto polled_read = std::async(std::launch::async, [&] { return ReadToEndWithEpoll(*polled); });
  auto old_read = std::async(std::launch::async, [&] { return ReadToEnd(*old); });
  auto old_polled_read =
      std::async(std::launch::async, [&] { return ReadToEndWithEpoll(*old_polled); });
  for (int64_t i = 0; i < kBatches; ++i) {
    ASSERT_OK(test_util::PublishValue(*producer, i));
    // Now and then the consumers catch up and fall asleep: each kind of wake-up is used.
    if (i % 50 == 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_OK(producer->End());
  const auto expected = Iota(kBatches);
  for (auto* read : {&sleeping_read, &spinning_read, &polled_read, &old_read, &old_polled_read}) {
    ASSERT_EQ(read->wait_for(std::chrono::milliseconds(kTimeoutMs * 3)), std::future_status::ready);
    ASSERT_OK_AND_ASSIGN(auto values, read->get());
    EXPECT_EQ(values, expected);
  }
}

TEST(WakeRegion, ProducerKilledWhileTheConsumerSleepsIsNoticed) {
  const std::string address = NextAddress();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {  // the producer: one batch, then it waits to be killed
    auto producer = Producer::Listen(address, test_util::ValueSchema(), RingOptions());
    if (!producer.ok() || !(*producer)->WaitForConsumers(1, kTimeoutMs).ok() ||
        !test_util::PublishValue(**producer, 7).ok()) {
      ::_exit(1);
    }
    for (;;) ::pause();
  }
  ConsumerOptions options;
  options.connect_timeout_ms = kTimeoutMs;
  options.read_timeout_ms = -1;  // forever: only noticing the death ends the read
  auto consumer = Consumer::Connect(address, options);
  if (!consumer.ok()) ::kill(pid, SIGKILL);
  ASSERT_OK(consumer.status());
  BatchPtr batch;
  ASSERT_OK((*consumer)->ReadNext(&batch));
  ASSERT_NE(batch, nullptr);
  EXPECT_EQ(test_util::ValueOf(*batch), 7);
  batch.reset();
  auto next = std::async(std::launch::async, [&] {
    BatchPtr more;
    return (*consumer)->ReadNext(&more);
  });
  // Most likely asleep on the futex by now (if not, it falls asleep on a dead producer's ring).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_EQ(::kill(pid, SIGKILL), 0);
  int wait_status = 0;
  ASSERT_EQ(::waitpid(pid, &wait_status, 0), pid);
  ASSERT_EQ(next.wait_for(std::chrono::milliseconds(kTimeoutMs)), std::future_status::ready)
      << "the consumer did not notice its producer's death";
  const arrow::Status status = next.get();
  EXPECT_EQ(ErrorCodeOf(status), ErrorCode::kProducerGone) << status.ToString();
}

/// The producer's answer to a Region message carrying `fd`: its Error, or "accepted" when it
/// goes on streaming.
std::string RegionAnswer(const std::string& address, int fd) {
  auto peer = hostile::RegionPeer::Welcomed(address);
  if (!peer.ok()) return peer.status().ToString();
  if (auto sent = peer->SendRegion(fd); !sent.ok()) return sent.ToString();
  auto error = hostile::ErrorBeforeClose(peer->socket());
  return error.ok() ? error->message : error.status().ToString();
}

TEST(WakeRegion, ARegionThatCouldFaultTheProducerIsRefused) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), RingOptions()));
  const std::vector<uint8_t> page(internal::kRegionSize);
  // It could shrink under the producer's mapping.
  ASSERT_OK_AND_ASSIGN(auto unsealed, test_util::MakeMemfd(page, 0));
  EXPECT_NE(RegionAnswer(address, unsealed.get()).find("not sealed against"), std::string::npos);
  // Sealed, but not the size of a region.
  ASSERT_OK_AND_ASSIGN(auto wrong_size,
                       test_util::MakeMemfd(std::vector<uint8_t>(100), test_util::kAllSeals));
  EXPECT_NE(RegionAnswer(address, wrong_size.get()).find("expected 4096"), std::string::npos);
  // Not a memfd at all.
  const UniqueFd pipe_end = [] {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) return UniqueFd();
    ::close(fds[1]);
    return UniqueFd(fds[0]);
  }();
  EXPECT_NE(RegionAnswer(address, pipe_end.get()).find("not a memfd"), std::string::npos);

  // Nothing changed for a consumer that behaves.
  ASSERT_OK_AND_ASSIGN(auto good, Consumer::Connect(address, Blocking()));
  ASSERT_OK(producer->WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(test_util::PublishValue(*producer, 1));
  ASSERT_OK(producer->End());
  ASSERT_OK_AND_ASSIGN(auto values, ReadToEnd(*good));
  EXPECT_EQ(values, std::vector<int64_t>{1});
}

// A producer thread waiting for room reads the regions' counts, drains them, then sleeps; a
// consumer whose release lands in between wakes the wait block before that sleep began. The
// sleep watches the counts as read: it ends at once instead of running out its slice.
TEST(WakeRegion, AReleaseWrittenBeforeTheProducerSleepsEndsTheSleep) {
#ifdef SYS_futex_waitv
  // No waiters is EINVAL where the call exists.
  if (::syscall(SYS_futex_waitv, nullptr, 0, 0, nullptr, 0) != 0 && errno == ENOSYS) {
    GTEST_SKIP() << "this kernel has no futex_waitv (Linux 5.16): the producer's sleep watches "
                    "its futex word alone there (docs/protocol.md)";
  }
#else
  GTEST_SKIP() << "built without futex_waitv in <sys/syscall.h>";
#endif
  ASSERT_OK_AND_ASSIGN(auto region, internal::RegionWriter::Create());
  ASSERT_OK_AND_ASSIGN(auto reader, internal::RegionReader::Open(region.fd()));
  uint32_t wait_block = 7;  // the producer's word: its wake came too early, nobody moves it now
  const std::array<internal::FutexWatch, 2> watches{
      internal::FutexWatch{&wait_block, wait_block, nullptr}, reader.ReleasesWatch()};
  std::atomic_ref<uint64_t>(
      *reinterpret_cast<uint64_t*>(region.mapping()->data() + internal::kRegionReleasesOffset))
      .store(1);  // the consumer's release, after the producer's look
  // On the wait block alone the sleep runs out (false): the release would wait a slice.
  ASSERT_OK_AND_ASSIGN(bool woken_alone, internal::FutexWaitAny({watches.data(), 1}, 1));
  EXPECT_FALSE(woken_alone);
  ASSERT_OK_AND_ASSIGN(bool woken, internal::FutexWaitAny(watches, kTimeoutMs));
  EXPECT_TRUE(woken) << "the producer slept through a release written before its sleep";
}

TEST(WakeRegion, GarbageInTheSleepWordCostsOthersNothing) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), RingOptions()));
  // Lossy: it never reads, and so never holds the producer back; it only scribbles.
  ASSERT_OK_AND_ASSIGN(auto hostile, hostile::RegionPeer::Welcomed(address, proto::kHelloLossy));
  ASSERT_OK(hostile.SendRegion());
  internal::RegionWriter& region = hostile.region();
  ASSERT_OK_AND_ASSIGN(auto good, Consumer::Connect(address, Blocking()));
  ASSERT_OK(producer->WaitForConsumers(2, kTimeoutMs));
  std::atomic<bool> stop{false};
  std::thread scribbler([&] {
    std::mt19937_64 random(12);
    while (!stop.load()) region.Announce(random());
  });
  auto read = std::async(std::launch::async, [&] { return ReadToEnd(*good); });
  for (int64_t i = 0; i < kBatches; ++i) ASSERT_OK(test_util::PublishValue(*producer, i));
  ASSERT_OK(producer->End());
  ASSERT_EQ(read.wait_for(std::chrono::milliseconds(kTimeoutMs * 3)), std::future_status::ready);
  stop = true;
  scribbler.join();
  ASSERT_OK_AND_ASSIGN(auto values, read.get());
  EXPECT_EQ(values, Iota(kBatches));
}

/// Takes the peer's next batch and releases it in the region (release number `n`), calling
/// `before_release` in between.
template <typename BeforeRelease>
void TakeAndRelease(hostile::RegionPeer& peer, uint64_t n, BeforeRelease&& before_release) {
  uint64_t sequence = 0;
  ASSERT_TRUE(hostile::Eventually([&] {
    auto next = peer.NextSequence(&sequence);
    return next.ok() && *next;
  }));
  before_release();
  peer.WriteRelease(n, sequence, n + 1);
}

/// Sends the peer's Region, then publishes value 0 and releases it (release number 0): once the
/// producer took that release it has the region.
void GiveTheRegion(Producer& producer, hostile::RegionPeer& peer) {
  ASSERT_OK(peer.SendRegion());
  ASSERT_OK(producer.WaitForConsumers(1, kTimeoutMs));
  ASSERT_OK(test_util::PublishValue(producer, 0));
  TakeAndRelease(peer, 0, [] {});
  ASSERT_TRUE(hostile::Eventually([&] {
    (void)producer.stats();  // takes the region's releases
    return peer.ReleasesRead() == 1;
  }));
}

TEST(WakeRegion, AReleaseDoesNotWakeTheSleepingConsumerOnlyANewEntryDoes) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), RingOptions()));
  ASSERT_OK_AND_ASSIGN(auto peer, hostile::RegionPeer::Welcomed(address));
  GiveTheRegion(*producer, peer);
  // Asleep (futex) with nothing unread: a release drained is no news to it.
  ASSERT_OK(test_util::PublishValue(*producer, 1));
  uint32_t wakes = 0;
  TakeAndRelease(peer, 1, [&] {
    wakes = peer.Wakes();
    peer.region().Announce((uint64_t{static_cast<uint32_t>(internal::SleepMode::kFutex)} << 32) |
                           wakes);
  });
  ASSERT_OK(producer->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(peer.ReleasesRead(), 2);
  EXPECT_EQ(peer.Wakes(), wakes);
  ASSERT_OK(test_util::PublishValue(*producer, 2));  // news: it is woken, once
  EXPECT_EQ(peer.Wakes(), wakes + 1);
}

/// Stops the calling thread at each of its sendmsg calls until the returned listener (a seccomp
/// user-notification fd) lets it go on; the thread keeps the filter until it exits.
arrow::Result<UniqueFd> StopAtEachSendmsg() {
#if defined(__x86_64__)
  constexpr uint32_t kArch = AUDIT_ARCH_X86_64;
#elif defined(__aarch64__)
  constexpr uint32_t kArch = AUDIT_ARCH_AARCH64;
#else
  constexpr uint32_t kArch = 0;
#endif
  if (kArch == 0) return arrow::Status::NotImplemented("no seccomp architecture for this machine");
  sock_filter filter[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, kArch, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_sendmsg, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  const sock_fprog program{static_cast<unsigned short>(std::size(filter)), filter};
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    return arrow::Status::IOError("prctl(PR_SET_NO_NEW_PRIVS): errno ", errno);
  }
  // The listener fd is close-on-exec.
  const long fd =
      ::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &program);
  if (fd < 0) return arrow::Status::IOError("seccomp(SECCOMP_SET_MODE_FILTER): errno ", errno);
  return UniqueFd(static_cast<int>(fd));
}

TEST(WakeRegion, AWakeIsCountedBeforeItCanBeRead) {
  // A consumer waiting on its fd reads the socket when the producer's datagram count moved: a
  // Wake readable before it is counted leaves that consumer spinning on a readable fd until the
  // publishing thread runs again. Here the publishing thread is held inside the sendmsg of its
  // Wake, where the count must already have moved.
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), RingOptions()));
  ASSERT_OK_AND_ASSIGN(auto peer, hostile::RegionPeer::Welcomed(address));
  GiveTheRegion(*producer, peer);
  const uint64_t counted_before = peer.Messages();
  peer.region().Announce(internal::SleepWord(internal::SleepMode::kSocket, peer.Wakes()));

  std::promise<arrow::Result<UniqueFd>> stopping;
  auto stopping_set = stopping.get_future();
  arrow::Status published;
  std::thread publisher([&] {
    auto listener = StopAtEachSendmsg();
    const bool stops = listener.ok();
    stopping.set_value(std::move(listener));
    if (stops) published = test_util::PublishValue(*producer, 1);
  });
  auto listener = stopping_set.get();
  if (!listener.ok()) {
    publisher.join();
    GTEST_SKIP() << "this kernel or sandbox refuses seccomp listeners: " << listener.status();
  }
  // The count at each sendmsg the publishing thread makes, until it exits.
  std::vector<uint64_t> counted_at_send;
  pollfd look{listener->get(), POLLIN, 0};
  while (::poll(&look, 1, kTimeoutMs) == 1 && (look.revents & POLLIN) != 0) {
    seccomp_notif stopped{};
    if (::ioctl(listener->get(), SECCOMP_IOCTL_NOTIF_RECV, &stopped) != 0) break;
    counted_at_send.push_back(peer.Messages());
    seccomp_notif_resp go_on{};
    go_on.id = stopped.id;
    go_on.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    if (::ioctl(listener->get(), SECCOMP_IOCTL_NOTIF_SEND, &go_on) != 0) break;
  }
  *listener = UniqueFd();  // a sendmsg still held fails instead of hanging the thread
  publisher.join();
  ASSERT_OK(published);
  EXPECT_EQ(counted_at_send, std::vector<uint64_t>{counted_before + 1});
  ASSERT_OK_AND_ASSIGN(auto wake, hostile::Receive(peer.socket(), 1));
  EXPECT_EQ(wake.header.type, proto::Type::kWake);
  EXPECT_EQ(peer.Messages(), counted_before + 1);
}

/// Publishes 0..kBatches-1 to `consumers` readers and ends: what each read.
void ExpectEveryoneReadsEverything(Producer& producer, std::vector<std::shared_ptr<Consumer>> all) {
  ASSERT_OK(producer.WaitForConsumers(static_cast<int>(all.size()), kTimeoutMs));
  std::vector<std::future<arrow::Result<std::vector<int64_t>>>> reads;
  for (auto& consumer : all) {
    reads.push_back(std::async(std::launch::async, [&] { return ReadToEnd(*consumer); }));
  }
  for (int64_t i = 0; i < kBatches; ++i) ASSERT_OK(test_util::PublishValue(producer, i));
  ASSERT_OK(producer.End());
  for (auto& read : reads) {
    ASSERT_EQ(read.wait_for(std::chrono::milliseconds(kTimeoutMs * 3)), std::future_status::ready);
    ASSERT_OK_AND_ASSIGN(auto values, read.get());
    EXPECT_EQ(values, Iota(kBatches));
  }
  ASSERT_OK(producer.WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(producer.stats().ring_bytes_in_use, 0);
}

TEST(WakeRegion, NewConsumerReadsFromProducersOfOlderVersions) {
  for (int minor : {0, 1, 2}) {
    SCOPED_TRACE("producer speaking 1." + std::to_string(minor));
    const std::string address = NextAddress();
    ProducerOptions options = RingOptions();
    options.protocol_minor = minor;
    options.max_in_flight = 4;  // releases matter: they travel in Release messages here
    ASSERT_OK_AND_ASSIGN(auto producer,
                         Producer::Listen(address, test_util::ValueSchema(), options));
    ASSERT_OK_AND_ASSIGN(auto consumer, Consumer::Connect(address, Blocking()));
    ExpectEveryoneReadsEverything(*producer, {consumer});
  }
}

TEST(WakeRegion, OldConsumersReadFromTheNewProducer) {
  const std::string address = NextAddress();
  ProducerOptions options = RingOptions();
  options.max_in_flight = 4;
  ASSERT_OK_AND_ASSIGN(auto producer, Producer::Listen(address, test_util::ValueSchema(), options));
  ASSERT_OK_AND_ASSIGN(auto v11, internal::ConnectSpeaking(address, Blocking(), 1));
  ASSERT_OK_AND_ASSIGN(auto v13, Consumer::Connect(address, Blocking()));
  ExpectEveryoneReadsEverything(*producer, {v11, v13});
}

/// The fds of this process open on a memfd named `name` (their links in /proc/self/fd).
int OpenMemfdsNamed(const std::string& name) {
  const std::string prefix = "/memfd:" + name;
  int count = 0;
  for (int fd = 0; fd < 4096; ++fd) {
    char link[256] = {};
    const std::string path = "/proc/self/fd/" + std::to_string(fd);
    if (::readlink(path.c_str(), link, sizeof link - 1) > 0 &&
        std::string(link).rfind(prefix, 0) == 0) {
      ++count;
    }
  }
  return count;
}

TEST(WakeRegion, HelloWithAnFdIsAnsweredWithoutTheRegionAndTheFdClosed) {
  const std::string address = NextAddress();
  ASSERT_OK_AND_ASSIGN(auto producer,
                       Producer::Listen(address, test_util::ValueSchema(), RingOptions()));
  // What a consumer of protocol 1.2 sent: its region with the Hello.
  const std::string name = "shmarrow-test-region-of-a-1.2-hello";
  ASSERT_OK_AND_ASSIGN(auto memfd, internal::Memfd::Create(name));
  ASSERT_OK(memfd.Resize(internal::kRegionSize));
  const UniqueFd region = std::move(memfd).TakeFd();
  ASSERT_OK_AND_ASSIGN(auto socket,
                       internal::UnixSocket::Connect(address, SOCK_SEQPACKET, kTimeoutMs));
  proto::Writer writer;
  proto::Hello hello;
  hello.minor = 2;
  const int fd = region.get();
  ASSERT_OK(socket.Send(proto::Encode(writer, hello), {&fd, 1}));
  ASSERT_OK_AND_ASSIGN(auto answer, hostile::Receive(socket, 1));
  ASSERT_EQ(answer.header.type, proto::Type::kWelcome);
  auto reader = answer.reader();
  ASSERT_OK(reader.ReadHeader().status());
  ASSERT_OK_AND_ASSIGN(auto welcome, proto::DecodeWelcome(reader));
  EXPECT_EQ(welcome.features & proto::kFeatureWakeRegion, 0u);
  EXPECT_NE(welcome.features & proto::kFeatureQueue, 0u);  // served as 1.1
  // The producer (this process) kept no copy of the fd: only the test's own is open.
  EXPECT_EQ(OpenMemfdsNamed(name), 1);
}

}  // namespace
}  // namespace shmarrow
