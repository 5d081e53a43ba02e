// The producer's I/O thread: accepting connections, the handshake deadline, reading what
// consumers say, and waiting for full sockets to drain.
#include "producer_io.h"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "errno_status.h"
#include "producer_impl.h"

namespace shmarrow::internal {
namespace {

constexpr int kSocketBuffer = 1 << 20;
constexpr int kMaxEvents = 64;

}  // namespace

arrow::Status Poller::Open(const std::string& address, unsigned socket_mode) {
  ARROW_ASSIGN_OR_RAISE(auto listener, UnixSocket::Listen(address, SOCK_SEQPACKET, socket_mode));
  listener_ = std::make_unique<UnixSocket>(std::move(listener));
  spare_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll_) return ErrnoStatus(errno, "epoll_create1");
  wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_) return ErrnoStatus(errno, "eventfd");
  ARROW_RETURN_NOT_OK(Add(listener_->fd(), kListenerTag, EPOLLIN));
  return Add(wake_.get(), kWakeTag, EPOLLIN);
}

arrow::Status Poller::Add(int fd, uint64_t tag, uint32_t events) {
  return Control(EPOLL_CTL_ADD, "ADD", fd, tag, events);
}

arrow::Status Poller::Modify(int fd, uint64_t tag, uint32_t events) {
  return Control(EPOLL_CTL_MOD, "MOD", fd, tag, events);
}

arrow::Status Poller::Control(int op, const char* name, int fd, uint64_t tag, uint32_t events) {
  epoll_event event{};
  event.events = events;
  event.data.u64 = tag;
  if (::epoll_ctl(epoll_.get(), op, fd, &event) != 0) {
    return ErrnoStatus(errno, "epoll_ctl(", name, " fd ", fd, ")");
  }
  return arrow::Status::OK();
}

// Fails only for an fd epoll does not watch (never added): nothing to remove then.
void Poller::Remove(int fd) { (void)::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, fd, nullptr); }

int Poller::Wait(std::span<epoll_event> events, int timeout_ms) {
  const int n =
      ::epoll_wait(epoll_.get(), events.data(), static_cast<int>(events.size()), timeout_ms);
  if (n < 0 && errno == EINTR) return 0;
  return n;
}

void Poller::Wake() {
  if (!wake_) return;
  const uint64_t one = 1;
  // EAGAIN only when the counter is full, and then the I/O thread is already due to wake.
  (void)::write(wake_.get(), &one, sizeof one);
}

void Poller::Drain() {
  uint64_t ignored;
  // Non-blocking: EAGAIN when nothing was signalled since the last drain.
  (void)::read(wake_.get(), &ignored, sizeof ignored);
}

bool Poller::RefuseForWantOfFds(const arrow::Status& failure,
                                const std::function<void(UnixSocket&, int)>& refuse) {
  const int err = arrow::internal::ErrnoFromStatus(failure);
  if ((err != EMFILE && err != ENFILE) || !spare_fd_) return false;
  spare_fd_.reset();
  bool refused = false;
  {  // the connection closes before the spare is taken again
    auto accepted = listener_->Accept(0);
    refused = accepted.ok() && accepted->fd() >= 0;
    if (refused) refuse(*accepted, err);
  }
  spare_fd_.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  return refused;
}

void ProducerImpl::IoLoop() {
  epoll_event events[kMaxEvents];
  for (;;) {
    int wait_ms;
    {
      std::lock_guard lock(mutex_);
      wait_ms = ExpireSilentConnections();
      DrainRegions();
      Reap();
    }
    const int n = poller_.Wait(events, wait_ms);
    if (n < 0) return;
    for (int i = 0; i < n; ++i) {
      const uint64_t tag = events[i].data.u64;
      if (tag == Poller::kWakeTag) {
        poller_.Drain();
        std::lock_guard lock(mutex_);
        if (closed_) return;
        continue;
      }
      if (tag == Poller::kListenerTag) {
        AcceptAll();
        continue;
      }
      {
        std::lock_guard lock(mutex_);
        auto it = sessions_.find(static_cast<uint32_t>(tag - Poller::kSessionTagOffset));
        if (it == sessions_.end() || it->second->dead()) continue;
        Session& s = *it->second;
        if (events[i].events & EPOLLOUT) {
          s.Writable();
          auto watched = poller_.Modify(s.socket().fd(), tag, EPOLLIN);
          if (!watched.ok()) Kill(s, watched.ToString(), proto::ErrorCode::kLimit);
          Converse(s, /*read_first=*/false);
        }
        if (events[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) Converse(s, /*read_first=*/true);
        dying_.swap(released_records_);
        records_dying_ = !dying_.empty();
      }
      if (dying_.empty()) continue;
      // Released batches (their Arrow objects, their ring blocks) are freed without the mutex,
      // which Publish needs meanwhile; WaitUntilDrained waits for them.
      dying_.clear();
      std::lock_guard lock(mutex_);
      records_dying_ = false;
      Notify();
    }
    std::lock_guard lock(mutex_);
    Reap();
  }
}

void ProducerImpl::AcceptAll() {
  auto refuse = [this](UnixSocket& socket, int err) {
    std::lock_guard lock(mutex_);
    ++stats_.consumers_refused;
    proto::Error error{proto::ErrorCode::kRefused,
                       std::string("producer out of file descriptors (accept: ") +
                           std::strerror(err) + "): its RLIMIT_NOFILE" +
                           (err == ENFILE ? " or the system's file limit" : "") + " is reached"};
    (void)socket.TrySendDatagram(proto::Encode(send_.writer, 0, error), {});
  };
  for (;;) {
    auto accepted = poller_.Accept();
    if (!accepted.ok() && poller_.RefuseForWantOfFds(accepted.status(), refuse)) continue;
    if (!accepted.ok() || accepted->fd() < 0) return;
    UnixSocket socket = std::move(*accepted);
    auto peer = socket.Peer();
    const bool allowed =
        peer.ok() && UidAllowed(peer->uid, options_.allowed_uids, options_.allow_any_uid);
    std::lock_guard lock(mutex_);
    if (!allowed) {
      ++stats_.consumers_refused;
      proto::Error error{proto::ErrorCode::kRefused,
                         "uid " + (peer.ok() ? std::to_string(peer->uid) : std::string("?")) +
                             " may not connect to this producer"};
      (void)socket.TrySendDatagram(proto::Encode(send_.writer, 0, error), {});
      continue;
    }
    // max_consumers only counts consumers past the handshake: without a bound of their own,
    // connections that never say Hello would hold an fd each here, as many as a peer opens. At
    // the bound the oldest silent one makes room: silent connections cannot keep a real
    // consumer out, which says Hello as soon as it connects (read below, at once).
    Session* oldest = nullptr;
    int64_t waiting = 0;
    for (const auto& [id, s] : sessions_) {
      if (s->state() != SessionState::kHandshaking) continue;
      ++waiting;
      if (oldest == nullptr) oldest = s.get();  // ids grow with time
    }
    if (oldest != nullptr && waiting >= options_.max_consumers) {
      Kill(*oldest,
           "closed without a Hello: " + std::to_string(waiting) +
               " connections were waiting to say Hello (limit " +
               std::to_string(options_.max_consumers) + ") and this was the oldest",
           proto::ErrorCode::kLimit);
    }
    const int size = kSocketBuffer;
    // Best effort: a smaller buffer only means a consumer's backlog waits in its queue sooner.
    (void)::setsockopt(socket.fd(), SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    const uint32_t id = next_session_++;
    auto session = std::make_unique<Session>(std::move(socket), id, block_cache_,
                                             std::max(options_.handshake_timeout_ms, 1));
    // Unwatchable (epoll out of memory or at max_user_watches): closed unserved, like a refusal.
    if (!poller_.Add(session->socket().fd(), id + Poller::kSessionTagOffset, EPOLLIN).ok()) {
      continue;
    }
    Session& added = *sessions_.emplace(id, std::move(session)).first->second;
    Converse(added, /*read_first=*/true);
  }
}

int ProducerImpl::ExpireSilentConnections() {
  int next_ms = -1;
  for (auto& [id, s] : sessions_) {
    if (s->state() != SessionState::kHandshaking) continue;
    if (s->handshake_deadline().expired()) {
      Kill(*s,
           "no Hello within " + std::to_string(std::max(options_.handshake_timeout_ms, 1)) + " ms",
           proto::ErrorCode::kLimit);
      continue;
    }
    const int left = std::max(s->handshake_deadline().remaining_ms(), 1);
    if (next_ms < 0 || left < next_ms) next_ms = left;
  }
  return next_ms;
}

void ProducerImpl::WatchWritable(Session& s) {
  auto watched =
      poller_.Modify(s.socket().fd(), s.id() + Poller::kSessionTagOffset, EPOLLIN | EPOLLOUT);
  if (!watched.ok()) Kill(s, watched.ToString(), proto::ErrorCode::kLimit);
}

void ProducerImpl::Converse(Session& s, bool read_first) {
  bool read = read_first;
  bool send = !read_first;
  for (;;) {
    if (send) {
      if (s.ReleasesWanted()) Drain(s);  // credits first, if they run short
      const Pumped pumped = s.Pump(send_);
      if (pumped == Pumped::kWaitWritable) WatchWritable(s);
      // A consumer that held nothing has most likely read everything and said Waiting (or is
      // about to: then it sees the new entries itself). Reading that now, rather than when the
      // I/O thread next runs, sends the Wake now.
      if (pumped == Pumped::kReadWanted) read = true;
      s.WakeIfWaiting(send_.writer);
      Notify();
      // Said in the queue header, then a last look: a release written before the consumer could
      // see that is found here (after it, the consumer also sends a message).
      if (s.held_back() && Drain(s)) continue;
    }
    if (!read || !ReadOne(s, &send)) {
      DeferReleased();
      return;
    }
  }
}

bool ProducerImpl::ReadOne(Session& s, bool* to_send) {
  *to_send = false;
  if (s.dead()) return false;
  // Only a Region carries an fd. One that comes with a Hello (a 1.2 consumer's) is received to
  // be closed: such a consumer is answered without the region.
  const int max_fds = s.state() == SessionState::kHandshaking || s.awaiting_region() ? 1 : 0;
  auto received = s.socket().Receive(receive_buffer_, max_fds, /*timeout_ms=*/0);
  if (!received.ok()) {
    Kill(s, received.status().message(), proto::ErrorCode::kProtocol);
    return false;
  }
  if (received->bytes < 0) return false;  // drained
  if (received->bytes == 0) {             // the consumer went away: what it held returns
    s.Gone();
    return false;
  }
  auto status =
      Handle(s, receive_buffer_.data(), received->bytes, std::move(received->fds), to_send);
  if (!status.ok()) Kill(s, status.message(), proto::ErrorCode::kProtocol);
  return true;
}

arrow::Status ProducerImpl::Handle(Session& s, const uint8_t* data, int64_t size,
                                   std::vector<UniqueFd> fds, bool* to_send) {
  const std::span<const uint8_t> datagram(data, static_cast<size_t>(size));
  if (s.state() == SessionState::kHandshaking) {
    ProducerView view;
    view.schema = schema_;
    view.options = &options_;
    view.mode = memory_->mode();
    view.ring_size = memory_->ring_size();
    view.consumers = ActiveConsumers();
    view.queue_free = memory_->queue_free();
    view.queue_capacity = memory_->queue_capacity();
    view.consumer_id = s.id();
    view.retained = &retained_;
    ARROW_ASSIGN_OR_RAISE(auto outcome, Handshake(datagram, view));
    if (outcome.refusal) {
      Kill(s, outcome.refusal->message, outcome.refusal->code);
      return arrow::Status::OK();
    }
    // A Hello with an fd is a 1.2 consumer's, whose region this producer does not take: closed
    // before the Welcome (the consumer may count its fds), and answered as 1.1.
    if (!fds.empty()) outcome.admission.welcome.features &= ~proto::kFeatureWakeRegion;
    fds.clear();
    *to_send = true;
    return Admit(s, std::move(outcome.admission));
  }
  proto::Reader reader(datagram);
  ARROW_ASSIGN_OR_RAISE(auto header, reader.ReadHeader());
  if (header.type == proto::Type::kRegion) {
    // Once, when agreed: until it arrives the consumer is served as in 1.1 (it wakes on Waiting,
    // its releases come in messages), so a late Region only costs it the fast path.
    if (!s.awaiting_region()) return proto::ProtocolError("Region message not agreed or repeated");
    ARROW_RETURN_NOT_OK(reader.ExpectEnd("Region"));
    if (fds.size() != 1) {
      return proto::ProtocolError("Region message carries ", fds.size(), " fds, expected 1");
    }
    ARROW_ASSIGN_OR_RAISE(auto region, RegionReader::Open(fds[0].get()));
    s.AttachRegion(send_.writer, std::move(region));
    return arrow::Status::OK();
  }
  if (!fds.empty()) {
    return proto::ProtocolError(proto::TypeName(header.type), " carried ", fds.size(), " fds");
  }
  // After Bye a consumer only returns what it holds: a Request would start work for nobody.
  if (s.state() == SessionState::kDetached && header.type != proto::Type::kRelease) {
    return proto::ProtocolError(proto::TypeName(header.type), " after Bye");
  }
  switch (header.type) {
    case proto::Type::kRelease: {
      released_.clear();
      ARROW_RETURN_NOT_OK(proto::DecodeRelease(reader, 4096, &released_));
      *to_send = true;
      return s.Release(released_, &released_records_);
    }
    case proto::Type::kRequest: {
      if (header.stream == 0) return proto::ProtocolError("Request on stream 0");
      ARROW_ASSIGN_OR_RAISE(auto request, proto::DecodeRequest(reader));
      auto refusal = requests_->Submit({s.id(), header.stream, std::move(request), handler_});
      if (refusal) {
        Outgoing out;
        out.type = proto::Type::kError;
        out.stream = header.stream;
        out.error = std::move(*refusal);
        Enqueue(s, std::move(out));
        *to_send = true;
      }
      return arrow::Status::OK();
    }
    case proto::Type::kWaiting: {
      ARROW_ASSIGN_OR_RAISE(uint64_t read, proto::DecodeWaiting(reader));
      return s.Waiting(send_.writer, read);
    }
    case proto::Type::kBye:
      s.Bye();
      Notify();
      return arrow::Status::OK();
    default:
      return proto::ProtocolError("unexpected ", proto::TypeName(header.type), " from a consumer");
  }
}

arrow::Status ProducerImpl::Admit(Session& s, Admission admission) {
  proto::Welcome& welcome = admission.welcome;
  if (admission.describe) {
    ARROW_ASSIGN_OR_RAISE(bool sent,
                          s.socket().TrySendDatagram(proto::Encode(send_.writer, welcome), {}));
    if (!sent) return arrow::Status::IOError("describer's socket is full during the handshake");
    s.Described();
    return arrow::Status::OK();
  }
  Session::Terms& terms = admission.terms;
  if (admission.wants_queue) terms.queue = memory_->AcquireQueue();
  if (terms.queue) {
    terms.queue_capacity = memory_->queue_capacity();
    welcome.queue_offset = terms.queue->offset;
    welcome.queue_capacity = terms.queue_capacity;
  } else {
    welcome.features &= ~(proto::kFeatureQueue | proto::kFeatureWakeRegion);
  }
  terms.region_agreed = (welcome.features & proto::kFeatureWakeRegion) != 0;
  terms.wait_block = memory_->wait_block_offset();
  // Before the Welcome: its queue slot may have served another consumer, whose count and entries
  // this one would read as its own if it looked before the header is reset. (Not sent: the
  // session is killed, and reaping it returns the slot.)
  s.Welcomed(std::move(terms));
  auto sent = [&]() -> arrow::Result<bool> {
    ARROW_ASSIGN_OR_RAISE(UniqueFd ring_fd, memory_->ConsumerFd());
    const int fd = ring_fd.get();
    std::span<const int> fds;
    if (fd >= 0) fds = std::span<const int>(&fd, 1);
    return s.socket().TrySendDatagram(proto::Encode(send_.writer, welcome), fds);
  }();
  if (!sent.ok() || !*sent) {
    ARROW_RETURN_NOT_OK(sent);
    return arrow::Status::IOError("consumer's socket is full during the handshake");
  }
  ++stats_.consumers_total;
  std::shared_ptr<arrow::Schema> announced = admission.first_schema;
  auto announce = [&](const std::shared_ptr<arrow::Schema>& next) {
    if (next->Equals(*announced, /*check_metadata=*/false)) return;
    announced = next;
    Outgoing out;
    out.type = proto::Type::kSchema;
    out.schema = next;
    Enqueue(s, std::move(out));
  };
  for (const auto& published : admission.replay) {
    announce(published->batch->schema());
    Outgoing out;
    out.batch = published;
    Enqueue(s, std::move(out));
  }
  announce(schema_);
  if (ended_) {
    Outgoing out;
    out.type = proto::Type::kEnd;
    Enqueue(s, std::move(out));
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal
