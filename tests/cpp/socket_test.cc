// UNIX sockets and the fd hand-over: ServeFd/ReceiveFd end to end, and every way a peer can
// misbehave (no fd, too many fds, foreign control data, hanging up), with fd accounting.
#include <arrow/api.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <set>
#include <span>
#include <thread>

#include "shmarrow/handover.h"
#include "shmarrow/shared_stream.h"
#include "shmarrow/stream_writer.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

using internal::UnixSocket;
using test_util::CountOpenFds;

/// A small finished stream to hand over, with the batch it holds (heap copy).
struct Published {
  SealedStream sealed;
  std::shared_ptr<arrow::RecordBatch> batch;
};

arrow::Result<Published> Publish() {
  auto schema = arrow::schema({arrow::field("v", arrow::int32())});
  WriterOptions options;
  options.capacity = int64_t{16} << 20;
  options.name = "socket-test";
  ARROW_ASSIGN_OR_RAISE(auto writer, SharedStreamWriter::Open(schema, options));
  arrow::Int32Builder builder(writer->pool());
  arrow::Int32Builder heap_builder;
  for (int32_t i = 0; i < 100; ++i) {
    ARROW_RETURN_NOT_OK(builder.Append(i * 3));
    ARROW_RETURN_NOT_OK(heap_builder.Append(i * 3));
  }
  ARROW_ASSIGN_OR_RAISE(auto column, builder.Finish());
  ARROW_ASSIGN_OR_RAISE(auto heap_column, heap_builder.Finish());
  ARROW_RETURN_NOT_OK(writer->WriteRecordBatch(*arrow::RecordBatch::Make(schema, 100, {column})));
  Published out;
  ARROW_ASSIGN_OR_RAISE(out.sealed, writer->Finish());
  out.batch = arrow::RecordBatch::Make(schema, 100, {heap_column});
  return out;
}

bool PathExists(const std::string& path) {
  struct stat st{};
  return ::lstat(path.c_str(), &st) == 0;
}

/// Checks that `fd` is a CLOEXEC sealed memfd holding `expected`, and the same file as `original`.
void ExpectReceivedStream(UniqueFd fd, const Published& published) {
  ASSERT_TRUE(fd.valid());
  const int flags = ::fcntl(fd.get(), F_GETFD);
  ASSERT_GE(flags, 0);
  EXPECT_NE(flags & FD_CLOEXEC, 0) << "received fd lacks FD_CLOEXEC";
  EXPECT_NE(fd.get(), published.sealed.fd.get()) << "a new descriptor, not the producer's";
  struct stat mine{}, theirs{};
  ASSERT_EQ(::fstat(fd.get(), &mine), 0);
  ASSERT_EQ(::fstat(published.sealed.fd.get(), &theirs), 0);
  EXPECT_EQ(mine.st_ino, theirs.st_ino);
  EXPECT_EQ(mine.st_dev, theirs.st_dev);
  ASSERT_OK_AND_ASSIGN(auto stream, SharedStream::Open(std::move(fd)));
  ASSERT_OK_AND_ASSIGN(auto batches, test_util::ReadAll(*stream));
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_TRUE(batches[0]->Equals(*published.batch));
  EXPECT_TRUE(AllBuffersInside(*stream, *batches[0]));
}

ServeOptions Serve(int clients = 1) {
  ServeOptions options;
  options.clients = clients;
  options.accept_timeout_ms = 20000;  // only a safety net against a hang
  return options;
}

// ---------------------------------------------------------------------------------------------
// Happy paths.

class HandOver : public ::testing::TestWithParam<bool /*abstract*/> {
 protected:
  std::string Path(const std::string& stem) {
    return GetParam() ? test_util::UniqueAbstractName(stem) : test_util::UniqueTempPath(stem);
  }
};

TEST_P(HandOver, ServeAndReceiveOneClient) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string path = Path("one");
  const int before = CountOpenFds();
  arrow::Status served;
  std::jthread producer([&] { served = ServeFd(path, published.sealed.fd.get(), Serve()); });
  auto received = ReceiveFd(path, /*connect_timeout_ms=*/20000);
  producer.join();
  ASSERT_OK(served);
  ASSERT_OK(received);
  ExpectReceivedStream(std::move(*received), published);
  EXPECT_EQ(CountOpenFds(), before);
  if (!GetParam()) {
    EXPECT_FALSE(PathExists(path)) << "ServeFd left its socket file behind";
  }
}

TEST_P(HandOver, ServeSeveralClients) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string path = Path("several");
  arrow::Status served;
  std::jthread producer([&] { served = ServeFd(path, published.sealed.fd.get(), Serve(3)); });
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE("client " + std::to_string(i));
    auto received = ReceiveFd(path, 20000);
    ASSERT_OK(received);
    ExpectReceivedStream(std::move(*received), published);
  }
  producer.join();
  ASSERT_OK(served);
}

// The consumer starts first and waits; the producer shows up later.
TEST_P(HandOver, ConsumerWaitsForALateProducer) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string path = Path("late");
  arrow::Status served;
  std::jthread producer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    served = ServeFd(path, published.sealed.fd.get(), Serve());
  });
  auto received = ReceiveFd(path, 20000);
  producer.join();
  ASSERT_OK(served);
  ASSERT_OK(received);
  ExpectReceivedStream(std::move(*received), published);
}

TEST_P(HandOver, NobodyListeningFailsAtOnce) {
  const std::string path = Path("nobody");
  const int before = CountOpenFds();
  auto received = ReceiveFd(path, 0);
  EXPECT_ERROR_CONTAINS(received, "no producer is listening");
  EXPECT_ERROR_CONTAINS(received, path);
  EXPECT_EQ(CountOpenFds(), before);
}

TEST_P(HandOver, AcceptTimeoutNamesThePath) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string path = Path("timeout");
  ServeOptions options;
  options.accept_timeout_ms = 50;
  const int before = CountOpenFds();
  const arrow::Status status = ServeFd(path, published.sealed.fd.get(), options);
  EXPECT_TRUE(status.IsIOError()) << status.ToString();
  EXPECT_ERROR_CONTAINS(status, path);
  EXPECT_ERROR_CONTAINS(status, "0 of 1 served");
  EXPECT_EQ(CountOpenFds(), before);
  if (!GetParam()) {
    EXPECT_FALSE(PathExists(path)) << "socket file left after the timeout";
  }
}

INSTANTIATE_TEST_SUITE_P(Namespaces, HandOver, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("Abstract") : std::string("Path");
                         });

TEST(HandOverFile, SocketFileHasTheRequestedMode) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  for (unsigned mode : {0600u, 0660u}) {
    SCOPED_TRACE("mode 0" + std::to_string(mode >> 6) + std::to_string((mode >> 3) & 7) +
                 std::to_string(mode & 7));
    const std::string path = test_util::UniqueTempPath("mode");
    ServeOptions options = Serve(2);
    options.socket_mode = mode;
    arrow::Status served;
    std::jthread producer([&] { served = ServeFd(path, published.sealed.fd.get(), options); });
    // Once a first client got its fd the socket is listening, so bind and chmod are done.
    auto first = ReceiveFd(path, 20000);
    ASSERT_OK(first);
    struct stat st{};
    ASSERT_EQ(::lstat(path.c_str(), &st), 0) << std::strerror(errno);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 07777, mode);
    auto second = ReceiveFd(path, 20000);
    producer.join();
    ASSERT_OK(served);
    ASSERT_OK(second);
  }
}

TEST(HandOverFile, RefusesToReplaceANonSocketFile) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string path = test_util::UniqueTempPath("regular");
  {
    UniqueFd file(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    ASSERT_TRUE(file.valid());
    ASSERT_EQ(::write(file.get(), "keep", 4), 4);
  }
  ServeOptions options;
  options.accept_timeout_ms = 50;
  EXPECT_ERROR_CONTAINS(ServeFd(path, published.sealed.fd.get(), options), "not a socket");
  struct stat st{};
  ASSERT_EQ(::stat(path.c_str(), &st), 0) << "the file was removed";
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_size, 4);
  ::unlink(path.c_str());
  // A directory is refused too.
  ASSERT_EQ(::mkdir(path.c_str(), 0700), 0);
  EXPECT_ERROR_CONTAINS(ServeFd(path, published.sealed.fd.get(), options), "not a socket");
  EXPECT_EQ(::rmdir(path.c_str()), 0);
}

// A socket file left by a producer that died is replaced; until then, consumers are told nobody
// is listening.
TEST(HandOverFile, StaleSocketFileIsReplaced) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string path = test_util::UniqueTempPath("stale");
  {
    UniqueFd dead(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(::bind(dead.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  }
  ASSERT_TRUE(PathExists(path));
  EXPECT_ERROR_CONTAINS(ReceiveFd(path, 0), "no producer is listening");
  arrow::Status served;
  std::jthread producer([&] { served = ServeFd(path, published.sealed.fd.get(), Serve()); });
  auto received = ReceiveFd(path, 20000);
  producer.join();
  ASSERT_OK(served);
  ASSERT_OK(received);
  ExpectReceivedStream(std::move(*received), published);
}

TEST(HandOverFile, BadPathsAreRejected) {
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  const std::string long_path = "/tmp/" + std::string(200, 'x');
  EXPECT_ERROR_CONTAINS(ServeFd(long_path, published.sealed.fd.get()), "longer than");
  EXPECT_ERROR_CONTAINS(ReceiveFd(long_path, 0), "longer than");
  EXPECT_ERROR_CONTAINS(ServeFd("", published.sealed.fd.get()), "empty socket path");
  EXPECT_ERROR_CONTAINS(ReceiveFd("", 0), "empty socket path");
  // Not "nobody listens": a missing directory is ENOENT too, but a path through a regular file
  // is ENOTDIR, which is not retried and says what happened.
  const std::string file = test_util::UniqueTempPath("notdir");
  {
    UniqueFd f(::open(file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
  }
  auto through_file = ReceiveFd(file + "/sock", 5000);
  EXPECT_FALSE(through_file.ok());
  EXPECT_EQ(through_file.status().ToString().find("no producer is listening"), std::string::npos)
      << through_file.status().ToString();
  ::unlink(file.c_str());
}

// Only the producer's uid gets the fd: another uid is disconnected without one (abstract names
// have no file mode to stop it), while a socket file's mode 0600 already keeps it from connecting.
TEST(HandOverFile, OtherUidsGetNoFd) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a client under another uid";
  ASSERT_OK_AND_ASSIGN(Published published, Publish());
  for (bool abstract : {true, false}) {
    SCOPED_TRACE(abstract ? "abstract" : "path");
    const std::string path =
        abstract ? test_util::UniqueAbstractName("uid") : test_util::UniqueTempPath("uid");
    arrow::Status served;
    std::jthread producer([&] { served = ServeFd(path, published.sealed.fd.get(), Serve()); });
    // The child polls until the producer listens (a same-uid probe would take the only slot).
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.data(), path.size());
    if (abstract) addr.sun_path[0] = '\0';
    const auto addr_len =
        static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (abstract ? 0 : 1));
    // The child only makes system calls: the parent has other threads.
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
      for (int attempt = 0; attempt < 2000; ++attempt) {
        const int s = ::socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0) ::_exit(11);
        if (::connect(s, reinterpret_cast<sockaddr*>(&addr), addr_len) == 0) {
          char byte;
          char control[CMSG_SPACE(sizeof(int))];
          iovec iov{&byte, 1};
          msghdr msg{};
          msg.msg_iov = &iov;
          msg.msg_iovlen = 1;
          msg.msg_control = control;
          msg.msg_controllen = sizeof(control);
          const ssize_t n = ::recvmsg(s, &msg, 0);
          ::_exit(n == 0 ? 0 : 12);  // 0: disconnected without data or fd
        }
        const int err = errno;
        ::close(s);
        if (err == EACCES) ::_exit(20);  // the socket file's mode refused us
        if (err != ENOENT && err != ECONNREFUSED) ::_exit(13);
        ::usleep(10000);
      }
      ::_exit(14);
    }
    int wstatus = 0;
    ASSERT_EQ(::waitpid(child, &wstatus, 0), child);
    ASSERT_TRUE(WIFEXITED(wstatus));
    EXPECT_EQ(WEXITSTATUS(wstatus), abstract ? 0 : 20);
    // The producer is still waiting for a client it may serve.
    auto received = ReceiveFd(path, 20000);
    producer.join();
    ASSERT_OK(served);
    ASSERT_OK(received);
    ExpectReceivedStream(std::move(*received), published);
  }
}

// ---------------------------------------------------------------------------------------------
// ReceiveFd against a producer that misbehaves.

/// Listens on a fresh abstract name and runs `behave` on the first client in a thread.
class FakeProducer {
 public:
  explicit FakeProducer(std::function<void(UnixSocket&)> behave)
      : path_(test_util::UniqueAbstractName("fake")) {
    auto listener = UnixSocket::Listen(path_, SOCK_STREAM, 0600);
    EXPECT_TRUE(listener.ok()) << listener.status().ToString();
    if (!listener.ok()) return;
    thread_ = std::thread([this, listener = std::move(*listener), behave]() mutable {
      auto client = listener.Accept(20000);
      if (client.ok() && client->fd() >= 0) behave(*client);
    });
  }
  ~FakeProducer() { Join(); }
  void Join() {
    if (thread_.joinable()) thread_.join();
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::thread thread_;
};

const std::array<uint8_t, 1> kByte{'F'};

TEST(ReceiveFd, PeerSendsAByteWithoutAnFd) {
  const int before = CountOpenFds();
  {
    FakeProducer producer(
        [](UnixSocket& client) { EXPECT_OK(client.Send(kByte, std::span<const int>())); });
    auto received = ReceiveFd(producer.path(), 0);
    EXPECT_ERROR_CONTAINS(received, "carried no fd");
    EXPECT_ERROR_CONTAINS(received, producer.path());
  }
  EXPECT_EQ(CountOpenFds(), before);
}

TEST(ReceiveFd, PeerClosesWithoutSending) {
  const int before = CountOpenFds();
  {
    FakeProducer producer([](UnixSocket&) {});
    EXPECT_ERROR_CONTAINS(ReceiveFd(producer.path(), 0),
                          "closed the connection before sending an fd");
  }
  EXPECT_EQ(CountOpenFds(), before);
}

TEST(ReceiveFd, SeveralFdsAreRefusedAndAllClosed) {
  for (int count : {2, 3, 20}) {
    SCOPED_TRACE(std::to_string(count) + " fds");
    const int before = CountOpenFds();
    {
      int pipe_fds[2];
      ASSERT_EQ(::pipe2(pipe_fds, O_CLOEXEC), 0);
      UniqueFd read_end(pipe_fds[0]), write_end(pipe_fds[1]);
      std::vector<int> fds;
      for (int i = 0; i < count; ++i) fds.push_back(i % 2 == 0 ? read_end.get() : write_end.get());
      FakeProducer producer([&fds](UnixSocket& client) { EXPECT_OK(client.Send(kByte, fds)); });
      auto received = ReceiveFd(producer.path(), 0);
      EXPECT_FALSE(received.ok());
      // Two fds fit the control buffer and are counted; more overflow it (MSG_CTRUNC).
      EXPECT_TRUE(received.status().ToString().find("expected at most 1") != std::string::npos ||
                  received.status().ToString().find("MSG_CTRUNC") != std::string::npos)
          << received.status().ToString();
      producer.Join();
    }
    EXPECT_EQ(CountOpenFds(), before) << "received fds leaked";
  }
}

// ---------------------------------------------------------------------------------------------
// UnixSocket directly, over a connected pair.

struct Pair {
  UnixSocket server;  // accepted end
  UnixSocket client;  // connecting end
};

arrow::Result<Pair> ConnectedPair() {
  const std::string name = test_util::UniqueAbstractName("pair");
  ARROW_ASSIGN_OR_RAISE(auto listener, UnixSocket::Listen(name, SOCK_STREAM, 0600));
  ARROW_ASSIGN_OR_RAISE(auto client, UnixSocket::Connect(name, SOCK_STREAM, 0));
  ARROW_ASSIGN_OR_RAISE(auto server, listener.Accept(5000));
  if (server.fd() < 0) return arrow::Status::IOError("accept timed out");
  return Pair{std::move(server), std::move(client)};
}

TEST(UnixSocket, SendAndReceiveTheMaximumOf253Fds) {
  const int before = CountOpenFds();
  {
    ASSERT_OK_AND_ASSIGN(Pair pair, ConnectedPair());
    ASSERT_OK_AND_ASSIGN(UniqueFd memfd, test_util::MakeMemfd({1, 2, 3}, 0));
    std::vector<int> fds(internal::kMaxFdsPerMessage, memfd.get());
    const std::array<uint8_t, 3> data{'a', 'b', 'c'};
    ASSERT_OK(pair.server.Send(data, fds));
    std::array<uint8_t, 16> buffer{};
    ASSERT_OK_AND_ASSIGN(auto received,
                         pair.client.Receive(buffer, internal::kMaxFdsPerMessage, 5000));
    EXPECT_EQ(received.bytes, 3);
    EXPECT_EQ(std::memcmp(buffer.data(), "abc", 3), 0);
    ASSERT_EQ(received.fds.size(), static_cast<size_t>(internal::kMaxFdsPerMessage));
    struct stat original{};
    ASSERT_EQ(::fstat(memfd.get(), &original), 0);
    std::set<int> distinct;
    for (const auto& fd : received.fds) {
      struct stat st{};
      ASSERT_EQ(::fstat(fd.get(), &st), 0);
      EXPECT_EQ(st.st_ino, original.st_ino);
      EXPECT_NE(::fcntl(fd.get(), F_GETFD) & FD_CLOEXEC, 0);
      distinct.insert(fd.get());
    }
    EXPECT_EQ(distinct.size(), received.fds.size());

    std::vector<int> too_many(internal::kMaxFdsPerMessage + 1, memfd.get());
    EXPECT_ERROR_CONTAINS(pair.server.Send(data, too_many), "254 fds");
    EXPECT_ERROR_CONTAINS(pair.client.Receive(buffer, internal::kMaxFdsPerMessage + 1, 0),
                          "cannot receive 254 fds");
    EXPECT_ERROR_CONTAINS(pair.server.Send(std::span<const uint8_t>(), fds),
                          "at least one data byte");
  }
  EXPECT_EQ(CountOpenFds(), before);
}

// Nothing within the timeout is not an error at this level: bytes is -1 (0 means the peer closed).
TEST(UnixSocket, ReceiveReportsSilenceAsMinusOneBytes) {
  ASSERT_OK_AND_ASSIGN(Pair pair, ConnectedPair());
  std::array<uint8_t, 1> buffer{};
  ASSERT_OK_AND_ASSIGN(auto silent, pair.client.Receive(buffer, 1, 20));
  EXPECT_EQ(silent.bytes, -1);
  EXPECT_TRUE(silent.fds.empty());
  ASSERT_OK_AND_ASSIGN(auto polled, pair.client.Receive(buffer, 1, 0));
  EXPECT_EQ(polled.bytes, -1);
  // After the peer hangs up: 0 bytes.
  {
    UnixSocket gone = std::move(pair.server);
  }
  ASSERT_OK_AND_ASSIGN(auto closed, pair.client.Receive(buffer, 1, 5000));
  EXPECT_EQ(closed.bytes, 0);
}

// SO_PASSCRED makes the kernel attach SCM_CREDENTIALS to every message: control data that is
// not SCM_RIGHTS must be refused, and the fds that came along closed.
TEST(UnixSocket, CredentialsControlMessageIsRefused) {
  for (int max_fds : {1, internal::kMaxFdsPerMessage}) {
    SCOPED_TRACE("max_fds " + std::to_string(max_fds));
    const int before = CountOpenFds();
    {
      ASSERT_OK_AND_ASSIGN(Pair pair, ConnectedPair());
      const int on = 1;
      ASSERT_EQ(::setsockopt(pair.client.fd(), SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)), 0);
      ASSERT_OK_AND_ASSIGN(UniqueFd memfd, test_util::MakeMemfd({9}, 0));
      const std::array<int, 1> fds{memfd.get()};
      ASSERT_OK(pair.server.Send(kByte, fds));
      std::array<uint8_t, 1> buffer{};
      auto received = pair.client.Receive(buffer, max_fds, 5000);
      EXPECT_FALSE(received.ok());
      EXPECT_TRUE(received.status().ToString().find("unexpected control message") !=
                      std::string::npos ||
                  received.status().ToString().find("MSG_CTRUNC") != std::string::npos)
          << received.status().ToString();
      if (max_fds == internal::kMaxFdsPerMessage) {
        EXPECT_ERROR_CONTAINS(received, "unexpected control message");
      }
    }
    EXPECT_EQ(CountOpenFds(), before) << "fds that came with the credentials leaked";
  }
}

void IgnoreSignal(int) {}

// A message far larger than the socket buffers, sent while the sender is hit by signals: sendmsg
// returns partial counts or fails with EINTR, and Send must continue until every byte is out. The
// fd rides on the first chunk only. (Which of the two happens depends on timing; the outcome must
// not.)
TEST(UnixSocket, LongMessageArrivesWholeDespitePartialSends) {
  ASSERT_OK_AND_ASSIGN(Pair pair, ConnectedPair());
  const int small = 4096;
  ASSERT_EQ(::setsockopt(pair.server.fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  ASSERT_EQ(::setsockopt(pair.client.fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
  ASSERT_OK_AND_ASSIGN(UniqueFd memfd, test_util::MakeMemfd({4, 2}, 0));

  struct sigaction action{}, previous{};
  action.sa_handler = IgnoreSignal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = 0;  // no SA_RESTART: blocked sendmsg returns early
  ASSERT_EQ(::sigaction(SIGUSR1, &action, &previous), 0);

  std::vector<uint8_t> message(2 << 20);
  for (size_t i = 0; i < message.size(); ++i) message[i] = static_cast<uint8_t>(i * 131 + i / 977);
  std::atomic<bool> sending{true};
  arrow::Status sent;
  std::thread sender([&] {
    const std::array<int, 1> fds{memfd.get()};
    sent = pair.server.Send(message, fds);
    sending = false;
  });
  std::thread signaller([&, handle = sender.native_handle()] {
    while (sending) {
      ::pthread_kill(handle, SIGUSR1);
      std::this_thread::yield();
    }
  });

  std::vector<uint8_t> received;
  received.reserve(message.size());
  std::vector<UniqueFd> fds;
  arrow::Status receive_status;
  std::array<uint8_t, 3000> chunk{};
  for (int reads = 0; received.size() < message.size(); ++reads) {
    // Pausing now and then lets the socket fill up, so that the sender's next sendmsg blocks
    // before it sends anything and a signal makes it fail with EINTR instead of returning a count.
    if (reads % 16 == 15) std::this_thread::sleep_for(std::chrono::microseconds(500));
    auto part = pair.client.Receive(chunk, 1, 20000);
    if (!part.ok() || part->bytes <= 0) {
      receive_status = part.ok() ? arrow::Status::IOError("receive got ", part->bytes, " after ",
                                                          received.size(), " bytes")
                                 : part.status();
      break;
    }
    if (!part->fds.empty()) {
      EXPECT_TRUE(received.empty()) << "fd arrived after byte " << received.size();
    }
    for (auto& fd : part->fds) fds.push_back(std::move(fd));
    received.insert(received.end(), chunk.begin(), chunk.begin() + part->bytes);
  }
  // Unblocks a sender stuck on a full socket if the receiving side gave up early.
  ::shutdown(pair.client.fd(), SHUT_RDWR);
  signaller.join();  // first: it signals the sender until the sender is done, never after
  sender.join();
  ::sigaction(SIGUSR1, &previous, nullptr);
  ASSERT_OK(receive_status);
  ASSERT_OK(sent);
  ASSERT_EQ(received.size(), message.size());
  EXPECT_TRUE(received == message) << "bytes arrived out of order or damaged";
  ASSERT_EQ(fds.size(), 1u);
  struct stat a{}, b{};
  ASSERT_EQ(::fstat(fds[0].get(), &a), 0);
  ASSERT_EQ(::fstat(memfd.get(), &b), 0);
  EXPECT_EQ(a.st_ino, b.st_ino);
}

TEST(UnixSocket, PeerCredentialsAreOurs) {
  ASSERT_OK_AND_ASSIGN(Pair pair, ConnectedPair());
  ASSERT_OK_AND_ASSIGN(auto peer, pair.server.Peer());
  EXPECT_EQ(peer.uid, ::geteuid());
  EXPECT_EQ(peer.gid, ::getegid());
  EXPECT_EQ(peer.pid, ::getpid());
}

// A live producer's socket is never taken over; a dead one's (left behind by a crash) is.
TEST(UnixSocket, ListenRefusesALiveSocketAndReplacesAStaleOne) {
  const std::string path = test_util::UniqueTempPath("live");
  {
    ASSERT_OK_AND_ASSIGN(auto first, UnixSocket::Listen(path, SOCK_STREAM, 0600));
    EXPECT_ERROR_CONTAINS(UnixSocket::Listen(path, SOCK_STREAM, 0600).status(), "in use");
    EXPECT_ERROR_CONTAINS(UnixSocket::Listen(path, SOCK_SEQPACKET, 0600).status(), "in use");
  }
  // A stale socket file: bound, then its process went away without removing it.
  UniqueFd stale(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::bind(stale.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  stale.reset();
  ASSERT_TRUE(PathExists(path));
  {
    ASSERT_OK_AND_ASSIGN(auto replacement, UnixSocket::Listen(path, SOCK_STREAM, 0600));
    ASSERT_OK_AND_ASSIGN(auto client, UnixSocket::Connect(path, SOCK_STREAM, 0));
    ASSERT_OK_AND_ASSIGN(auto accepted, replacement.Accept(5000));
    EXPECT_GE(accepted.fd(), 0);
  }
  EXPECT_FALSE(PathExists(path)) << "the listener left its socket file behind";
}

// A listener removes its socket file only while the file is still its own: if something else
// replaced it meanwhile, that file stays.
TEST(UnixSocket, ListenerRemovesOnlyItsOwnSocketFile) {
  const std::string path = test_util::UniqueTempPath("owner");
  ASSERT_OK_AND_ASSIGN(auto first, UnixSocket::Listen(path, SOCK_STREAM, 0600));
  ASSERT_EQ(::unlink(path.c_str()), 0);
  UniqueFd other(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  ASSERT_EQ(::bind(other.get(), reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  {
    UnixSocket finished = std::move(first);
  }
  EXPECT_TRUE(PathExists(path)) << "the first listener removed a socket file that is not its own";
  ::unlink(path.c_str());
}

// Move-assigning over a listener closes it like destruction does: its socket file goes too.
TEST(UnixSocket, MoveAssignedListenerRemovesItsFile) {
  const std::string path = test_util::UniqueTempPath("assigned");
  const std::string other = test_util::UniqueAbstractName("assigned");
  ASSERT_OK_AND_ASSIGN(auto listener, UnixSocket::Listen(path, SOCK_STREAM, 0600));
  ASSERT_TRUE(PathExists(path));
  ASSERT_OK_AND_ASSIGN(auto replacement, UnixSocket::Listen(other, SOCK_STREAM, 0600));
  listener = std::move(replacement);
  EXPECT_FALSE(PathExists(path)) << "socket file of the overwritten listener left behind";
  ::unlink(path.c_str());
}

TEST(UnixSocket, ListenOnABusyAbstractNameFails) {
  const std::string name = test_util::UniqueAbstractName("busy");
  ASSERT_OK_AND_ASSIGN(auto first, UnixSocket::Listen(name, SOCK_STREAM, 0600));
  EXPECT_ERROR_CONTAINS(UnixSocket::Listen(name, SOCK_STREAM, 0600),
                        "address " + name + " is in use by another process");
}

TEST(UnixSocket, AcceptTimeoutGivesAnEmptySocket) {
  const std::string name = test_util::UniqueAbstractName("accept");
  ASSERT_OK_AND_ASSIGN(auto listener, UnixSocket::Listen(name, SOCK_STREAM, 0600));
  ASSERT_OK_AND_ASSIGN(auto nobody, listener.Accept(10));
  EXPECT_LT(nobody.fd(), 0);
}

}  // namespace
}  // namespace shmarrow
