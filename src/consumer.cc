// The consumer's I/O loop: connects, receives from the socket with timeouts (busy-polling if
// asked), feeds the session (consumer_session.h) and looks at its in-ring queue, and defers
// releases while the consumer is behind. The single hand-over is handover_consumer.cc.
#include "shmarrow/consumer.h"

#include <arrow/util/io_util.h>
#include <sched.h>
#include <sys/socket.h>

#include <chrono>
#include <optional>
#include <thread>
#include <utility>

#include "address.h"
#include "consumer_channel.h"
#include "consumer_checks.h"
#include "consumer_session.h"
#include "deadline.h"
#include "handover_consumer.h"
#include "shmarrow/error.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

namespace proto = internal::protocol;
using internal::UnixSocket;

constexpr int kHandshakeTimeoutMs = 10000;
constexpr int kControlsWaitMs = 1000;
// Protocol 1.3: a futex sleep lasts at most this long before the socket is looked at, so that a
// producer that died (and so never wakes anyone) is noticed.
constexpr int kSleepSliceMs = 100;
// A consumer that polls without sleeping looks at its socket unasked once this long has passed
// without an entry from the producer, for the same reason (entries say it is alive); otherwise
// only when the producer's count of datagrams says there is one.
constexpr auto kSocketLookInterval = std::chrono::milliseconds(2);
// A blocking consumer that caught up polls the queue this long before it announces a sleep: a
// producer publishing back to back writes its next entry within a few microseconds, while a
// sleep costs both sides a system call (the producer's FUTEX_WAKE; the consumer's futex wait
// and context switch). On the 2-vCPU development machine (perf stat, 2026-12-06) 10 µs took
// most sleeps out of the unpaced 1- and 4-consumer runs, 5 µs about half of them.
constexpr auto kSpinBeforeSleep = std::chrono::microseconds(10);
// A consumer whose last sleep ended within this long watches this long before the next one: its
// batches come a little too far apart for the watch above, and each sleep then costs a wake-up
// (on the development VM, 30-40 µs where the consumer's vCPU idles; the batch itself, 1-2 µs).
// At most this much CPU per batch, and only while sleeps stay this short: one longer sleep (or
// a sleep slice that ends with nothing) brings the watch back to kSpinBeforeSleep.
constexpr auto kLongestSpinBeforeSleep = std::chrono::microseconds(50);
// Past this much of it the spin may yield the CPU between looks: where processes outnumber CPUs
// (4 consumers and their producer on 2 vCPUs) a spinning consumer took the producer's CPU, which
// the yield hands over, while on an idle CPU it returns at once. Before it the spin is plain:
// a producer that keeps up writes the next entry within a microsecond or two. It yields only
// while watches find batches in that late part (up to kSpinBeforeSleep) at least half as often as
// they end in a sleep (a score: +kLateFindScore per find there, -1 per sleep, at most
// kLateScoreCap): a paced stream's next batch comes later, and yields would only add system calls.
constexpr auto kSpinBeforeYield = std::chrono::microseconds(2);
constexpr int kLateFindScore = 2;
constexpr int kLateScoreCap = 8;

/// Tells the CPU this thread spins: a sibling hyperthread gets the core's resources meanwhile.
inline void CpuRelax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

/// The socket to the producer, as the session's outbox (and the batches', through the Channel,
/// which may outlive the consumer).
class SocketOutbox final : public internal::Outbox {
 public:
  explicit SocketOutbox(UnixSocket socket) : socket_(std::move(socket)) {}
  arrow::Result<bool> TrySend(std::span<const uint8_t> message) override {
    return socket_.TrySendDatagram(message, {});
  }
  arrow::Result<bool> TrySendWithFd(std::span<const uint8_t> message, int fd) override {
    return socket_.TrySendDatagram(message, std::span<const int>(&fd, 1));
  }
  UnixSocket& socket() { return socket_; }

 private:
  UnixSocket socket_;
};

class ConsumerImpl final : public Consumer, public std::enable_shared_from_this<ConsumerImpl> {
 public:
  ConsumerImpl(const ConsumerOptions& options, const std::string& address, UnixSocket socket,
               uint16_t minor)
      : options_(options),
        address_(address),
        outbox_(std::make_shared<SocketOutbox>(std::move(socket))),
        channel_(std::make_shared<internal::Channel>(outbox_)),
        session_(options, channel_, address, minor) {}
  ~ConsumerImpl() override;

  arrow::Status Handshake();

  std::shared_ptr<arrow::Schema> schema() const override { return session_.schema(); }
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    return Next(0, options_.read_timeout_ms, batch);
  }
  arrow::Result<Poll> TryNext(std::shared_ptr<arrow::RecordBatch>* batch) override;
  int fd() const override { return outbox_->socket().fd(); }
  arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> Request(
      std::string_view request) override;
  ConsumerStats stats() const override { return session_.stats(); }
  std::string mode() const override { return session_.mode(); }

  /// Next event of `stream`, pumping the socket for up to timeout_ms (-1: forever).
  arrow::Status Next(uint32_t stream, int timeout_ms, std::shared_ptr<arrow::RecordBatch>* batch);
  std::shared_ptr<arrow::Schema> StreamSchema(uint32_t stream) {
    return session_.StreamSchema(stream);
  }

 private:
  /// One datagram from the producer. A producer that closes with datagrams of ours unread (it
  /// died, or refused us) resets the connection: the kernel reports ECONNRESET once, ahead of
  /// the datagrams still queued for us, which the next read returns (then end of file).
  arrow::Result<internal::Received> Receive(int timeout_ms);
  /// Receives one message and feeds it to the session; false if none arrived within timeout_ms.
  arrow::Result<bool> Pump(int timeout_ms);
  /// Pump with the wake region (1.3): the socket only when the producer counted a datagram
  /// there (or now and then), sleeping on the queue's wake word in slices.
  arrow::Result<bool> PumpWithRegion(int timeout_ms);
  /// Feeds what a receive returned: false if nothing arrived.
  bool FeedReceived(internal::Received received);
  /// Takes the queue's new entries; false if there was none. An entry waits for the control
  /// messages that the producer sent before it, which are on the socket already: a producer
  /// that got the order wrong gets a moment, not a hang.
  arrow::Result<bool> PollQueue();
  /// After a batch was taken: releases are deferred while more batches wait to be read here
  /// (looking for the next one first if the consumer was behind), and sent otherwise.
  void SettleReleases();

  const ConsumerOptions options_;
  const std::string address_;
  const std::shared_ptr<SocketOutbox> outbox_;
  const std::shared_ptr<internal::Channel> channel_;
  internal::ConsumerSession session_;
  std::vector<uint8_t> receive_buffer_ = std::vector<uint8_t>(proto::kMaxMessageSize);
  // The last receive found a message already waiting: the consumer is behind the producer.
  bool behind_ = false;
  std::chrono::steady_clock::time_point next_socket_look_;
  // An entry came from the queue since PumpWithRegion last ran: the producer is alive.
  bool heard_from_queue_ = false;
  // Whether watches before a sleep find batches past kSpinBeforeYield (see there).
  int late_score_ = 0;
  // How long the next watch before a sleep lasts (kSpinBeforeSleep or kLongestSpinBeforeSleep).
  std::chrono::steady_clock::duration spin_before_sleep_ = kSpinBeforeSleep;
};

/// The answer to one request, read through the consumer that sent it.
class ResponseReader final : public arrow::RecordBatchReader {
 public:
  ResponseReader(std::shared_ptr<ConsumerImpl> consumer, uint32_t stream, int timeout_ms)
      : consumer_(std::move(consumer)), stream_(stream), timeout_ms_(timeout_ms) {}
  std::shared_ptr<arrow::Schema> schema() const override {
    return consumer_->StreamSchema(stream_);
  }
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    return consumer_->Next(stream_, timeout_ms_, batch);
  }

 private:
  std::shared_ptr<ConsumerImpl> consumer_;
  uint32_t stream_;
  int timeout_ms_;
};

ConsumerImpl::~ConsumerImpl() {
  channel_->SetDeferring(false, 1);  // batches still alive release themselves one by one
  // Say Bye: the producer stops sending, and keeps only what batches still alive here hold until
  // they are released (the channel outlives this object for them).
  session_.SendBye();
}

arrow::Status ConsumerImpl::Handshake() {
  arrow::Status hello_sent;
  ARROW_RETURN_NOT_OK(session_.Start(&hello_sent));
  // The read timeout bounds the handshake too; reads that poll (0) or wait forever (-1) leave
  // it to a default, since a connection must not hang on a producer that never answers.
  const int handshake_ms =
      options_.read_timeout_ms > 0 ? options_.read_timeout_ms : kHandshakeTimeoutMs;
  auto receiving = Receive(handshake_ms);
  if (!receiving.ok()) return hello_sent.ok() ? receiving.status() : hello_sent;
  auto received = std::move(*receiving);
  if (received.bytes < 0) {
    ARROW_RETURN_NOT_OK(hello_sent);
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "producer at '", address_,
                     "' did not answer the handshake within ", handshake_ms, " ms");
  }
  if (received.bytes == 0) {
    ARROW_RETURN_NOT_OK(hello_sent);
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kProducerGone, "producer at '",
                     address_, "' closed the connection during the ", "handshake");
  }
  return session_.Feed(std::span<const uint8_t>(receive_buffer_.data(), received.bytes),
                       std::move(received.fds));
}

arrow::Result<internal::Received> ConsumerImpl::Receive(int timeout_ms) {
  auto received = outbox_->socket().Receive(receive_buffer_, 1, timeout_ms);
  if (!received.ok() && arrow::internal::ErrnoFromStatus(received.status()) == ECONNRESET) {
    return outbox_->socket().Receive(receive_buffer_, 1, 0);
  }
  return received;
}

arrow::Result<bool> ConsumerImpl::Pump(int timeout_ms) {
  if (session_.wake_region()) return PumpWithRegion(timeout_ms);
  ARROW_ASSIGN_OR_RAISE(auto received, Receive(0));
  behind_ = received.bytes >= 0;
  if (!behind_) {
    // Caught up: the producer hears of everything.
    channel_->SetDeferring(false, session_.release_batch());
    if (timeout_ms == 0) return false;
    if (session_.has_queue()) {
      ARROW_ASSIGN_OR_RAISE(bool sleep, session_.AnnounceWaiting());
      if (!sleep) return true;
    }
    ARROW_ASSIGN_OR_RAISE(bool ready, outbox_->socket().WaitReadable(timeout_ms));
    if (!ready) return false;
    ARROW_ASSIGN_OR_RAISE(received, Receive(0));
    if (received.bytes < 0) return false;
  }
  return FeedReceived(std::move(received));
}

bool ConsumerImpl::FeedReceived(internal::Received received) {
  if (received.bytes < 0) return false;
  if (received.bytes == 0) {
    session_.FeedClosed();
    return true;
  }
  // An error ends the session: the caller finds it in session_.fatal().
  (void)session_.Feed(std::span<const uint8_t>(receive_buffer_.data(), received.bytes),
                      std::move(received.fds));
  return true;
}

arrow::Result<bool> ConsumerImpl::PumpWithRegion(int timeout_ms) {
  const auto now = std::chrono::steady_clock::now();
  if (std::exchange(heard_from_queue_, false)) next_socket_look_ = now + kSocketLookInterval;
  if (session_.SocketMessagesPending() || now >= next_socket_look_) {
    next_socket_look_ = now + kSocketLookInterval;
    ARROW_ASSIGN_OR_RAISE(auto received, Receive(0));
    behind_ = FeedReceived(std::move(received));
    if (behind_) return true;
  }
  channel_->SetDeferring(false, session_.release_batch());  // caught up
  if (timeout_ms == 0) return false;
  // Not while late finds say CPUs are short: there the longer watch takes the producer's CPU.
  const auto spin_until = now + (late_score_ == 0 ? spin_before_sleep_ : kSpinBeforeSleep);
  const auto yield_from = now + kSpinBeforeYield;
  const auto late_until = now + kSpinBeforeSleep;
  auto spun = now;
  for (;;) {
    ARROW_ASSIGN_OR_RAISE(bool took, PollQueue());
    spun = std::chrono::steady_clock::now();
    if (took || session_.SocketMessagesPending()) {
      // Finds past the plain watch are a paced stream's, whose yields would only be system calls.
      if (spun >= yield_from && spun < late_until) {
        late_score_ = std::min(late_score_ + kLateFindScore, kLateScoreCap);
      }
      return true;
    }
    if (spun >= spin_until) break;
    if (late_score_ > 0 && spun >= yield_from) {
      sched_yield();
    } else {
      CpuRelax();
    }
  }
  late_score_ = std::max(late_score_ - 1, 0);
  const std::optional<uint32_t> wake = session_.AnnounceSleep(internal::SleepMode::kFutex);
  if (!wake) return true;  // news arrived meanwhile
  auto woke =
      internal::FutexWait(session_.wake_word(), *wake,
                          timeout_ms < 0 ? kSleepSliceMs : std::min(timeout_ms, kSleepSliceMs));
  session_.AnnounceAwake();
  const bool short_sleep =
      woke.ok() && *woke && std::chrono::steady_clock::now() - spun <= kLongestSpinBeforeSleep;
  spin_before_sleep_ = short_sleep ? kLongestSpinBeforeSleep : kSpinBeforeSleep;
  return woke;
}

arrow::Result<bool> ConsumerImpl::PollQueue() {
  ARROW_ASSIGN_OR_RAISE(bool took, session_.PollQueue());
  heard_from_queue_ |= took;
  if (!session_.awaiting_controls()) return took;
  const internal::Deadline deadline(kControlsWaitMs);
  while (session_.awaiting_controls()) {
    ARROW_ASSIGN_OR_RAISE(auto received, Receive(deadline.remaining_ms()));
    if (received.bytes <= 0) return session_.ControlsMissing();
    ARROW_RETURN_NOT_OK(session_.Feed(
        std::span<const uint8_t>(receive_buffer_.data(), received.bytes), std::move(received.fds)));
    ARROW_RETURN_NOT_OK(session_.PollQueue());
  }
  return true;
}

void ConsumerImpl::SettleReleases() {
  if (session_.fatal().ok() && !session_.HasQueuedBatch() && (behind_ || session_.has_queue())) {
    auto prefetched = session_.has_queue() ? PollQueue() : Pump(0);
    if (!prefetched.ok()) session_.Fail(prefetched.status());
  }
  channel_->SetDeferring(session_.HasQueuedBatch(), session_.release_batch());
}

arrow::Status ConsumerImpl::Next(uint32_t stream, int timeout_ms,
                                 std::shared_ptr<arrow::RecordBatch>* batch) {
  batch->reset();
  // Set when a look first finds nothing: a batch that is there already costs no clock read.
  std::optional<internal::Deadline> deadline;
  // Busy-polling spins on non-blocking receives before it sleeps: no wake-up latency. Its
  // window starts at the first look that finds nothing; the clock is read every 16th round of
  // the spin only (a round is a few loads of shared memory, a clock read costs as much).
  std::chrono::steady_clock::time_point spin_until;
  bool spinning = options_.busy_poll_us > 0, spin_started = false;
  for (int round = 0;; ++round) {
    ARROW_ASSIGN_OR_RAISE(bool decided, session_.Take(stream, batch));
    if (decided) {
      SettleReleases();
      return arrow::Status::OK();
    }
    if (!session_.fatal().ok()) return session_.fatal();
    ARROW_ASSIGN_OR_RAISE(bool drained, PollQueue());
    if (drained) continue;
    if (!deadline.has_value()) deadline.emplace(timeout_ms);
    if (spinning && !std::exchange(spin_started, true)) {
      spin_until =
          std::chrono::steady_clock::now() + std::chrono::microseconds(options_.busy_poll_us);
    } else if (spinning && round % 16 == 0) {
      spinning = std::chrono::steady_clock::now() < spin_until;
    }
    // A spinning consumer with a queue looks at the ring; the socket (requests' answers, the
    // producer going away) every 64th round, or (1.3) when the producer's count says so (and
    // every 16th round, for the socket look it makes every few milliseconds).
    if (spinning && session_.has_queue() &&
        (session_.wake_region() ? round % 16 != 0 && !session_.SocketMessagesPending()
                                : round % 64 != 0)) {
      continue;
    }
    ARROW_ASSIGN_OR_RAISE(bool got, Pump(spinning ? 0 : deadline->remaining_ms()));
    if (spinning) continue;
    if (!got && deadline->expired()) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout,
                       "no message from the producer within ", timeout_ms, " ms");
    }
  }
}

arrow::Result<Consumer::Poll> ConsumerImpl::TryNext(std::shared_ptr<arrow::RecordBatch>* batch) {
  batch->reset();
  for (;;) {  // without blocking: what was received, the queue, then the socket
    ARROW_ASSIGN_OR_RAISE(bool decided, session_.Take(0, batch));
    if (decided) {
      SettleReleases();
      return *batch != nullptr ? Poll::kBatch : Poll::kEnd;
    }
    if (!session_.fatal().ok()) return session_.fatal();
    ARROW_ASSIGN_OR_RAISE(bool drained, PollQueue());
    if (drained) continue;
    ARROW_ASSIGN_OR_RAISE(bool got, Pump(0));
    if (got) continue;
    // fd() becomes readable with the producer's Wake once the queue has something.
    if (session_.wake_region()) {
      if (!session_.AnnounceSleep(internal::SleepMode::kSocket)) continue;
    } else if (session_.has_queue()) {
      ARROW_ASSIGN_OR_RAISE(bool sleep, session_.AnnounceWaiting());
      if (!sleep) continue;
    }
    return Poll::kPending;
  }
}

arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> ConsumerImpl::Request(
    std::string_view request) {
  ARROW_ASSIGN_OR_RAISE(const uint32_t stream, session_.StartRequest(request));
  // The answer starts with its schema, or with an error.
  const internal::Deadline deadline(options_.read_timeout_ms < 0 ? kHandshakeTimeoutMs * 6
                                                                 : options_.read_timeout_ms);
  for (;;) {
    ARROW_ASSIGN_OR_RAISE(bool answered, session_.RequestAnswered(stream));
    if (answered) break;
    if (!session_.fatal().ok()) return session_.fatal();
    if (deadline.expired()) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "no answer to request ",
                       stream, " in time");
    }
    ARROW_RETURN_NOT_OK(Pump(100).status());
  }
  return std::make_shared<ResponseReader>(shared_from_this(), stream, options_.read_timeout_ms);
}

}  // namespace

namespace internal {

arrow::Result<std::shared_ptr<Consumer>> ConnectSpeaking(const std::string& address,
                                                         const ConsumerOptions& options,
                                                         uint16_t minor) {
  if (IsFlightAddress(address)) {
    // Flight is a library of its own, so that a user of shared memory links no gRPC.
    return arrow::Status::NotImplemented(
        "'", address, "' is an Arrow Flight address; Consumer::Connect reads UNIX sockets only: ",
        "link shmarrow::flight (libshmarrow_flight) and call shmarrow::ConnectAny "
        "(shmarrow/connect.h)");
  }
  // A producer of the single hand-over listens on a SOCK_STREAM socket instead. Connecting to
  // its filesystem socket with the wrong type fails with EPROTOTYPE; abstract names are looked
  // up per socket type, so there it is ECONNREFUSED, as when nobody listens: try a stream
  // connection too (that connection then receives the hand-over, consuming no extra client).
  const bool abstract = !address.empty() && address[0] == '@';
  const internal::Deadline deadline(options.connect_timeout_ms);
  for (;;) {
    auto socket = UnixSocket::Connect(address, SOCK_SEQPACKET, 0);
    if (socket.ok()) {
      ARROW_RETURN_NOT_OK(internal::CheckProducerUid(*socket, address, options));
      auto consumer = std::make_shared<ConsumerImpl>(options, address, std::move(*socket), minor);
      ARROW_RETURN_NOT_OK(consumer->Handshake());
      return consumer;
    }
    const int err = arrow::internal::ErrnoFromStatus(socket.status());
    if (err == EPROTOTYPE) return internal::OpenHandoverConsumer(address, options, nullptr);
    if (abstract && err == ECONNREFUSED) {
      auto stream = UnixSocket::Connect(address, SOCK_STREAM, 0);
      if (stream.ok()) return internal::OpenHandoverConsumer(address, options, &*stream);
    }
    const bool nobody_listens = err == ENOENT || err == ECONNREFUSED;
    if (!nobody_listens || deadline.expired()) return socket.status();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

}  // namespace internal

arrow::Result<std::shared_ptr<Consumer>> Consumer::Connect(const std::string& address,
                                                           const ConsumerOptions& options) {
  return internal::ConnectSpeaking(address, options, proto::kMinorVersion);
}

}  // namespace shmarrow
