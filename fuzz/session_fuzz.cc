// libFuzzer target, stateful: a whole conversation with the real consumer session
// (src/consumer_session.h). The input is a sequence of records; each is one step:
//   byte 0       options: bit 0 lossy, bit 1 projection onto columns "i" and "s"
//   then records [op u8][length u16 LE][length bytes]:
//     op 0-3   a datagram from the producer; op bit 0 attaches the fixture's sealed memfd (a valid
//              stream of the canonical batch), bit 1 the fixture's ring memfd (session_fixture.h)
//     op 4     the producer writes the record's bytes (a QueueEntry) into the ring's queue, at
//              offset kQueueOffset with capacity kQueueCapacity
//     op 5     the consumer polls the queue (and gives up on missing control messages if waiting)
//     op 6     the consumer releases every batch it holds (it also does past kMaxHeld batches)
//     op 7     the producer closes the connection
//     op 8     the consumer sends a request
//     op 9     (1.2) the consumer looks whether it may sleep (the region and both header counts)
//     op 10    (1.2) the producer counts a datagram sent and moves the wake word
//     op 11    (1.3) the producer writes the record's bytes (up to 24) over the queue header's
//              words the consumer reads when it releases into its region: releases read, the
//              wait block's offset, batches held back
// After each step the consumer takes what the session yields on stream 0 and on every request
// stream, and holds the batches. Whatever the sequence (Welcome after Welcome, Batch before
// Welcome, schema changes mid-run, End then more), the session must not crash, leak or hang.
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "session_fixture.h"

namespace {

namespace proto = shmarrow::internal::protocol;
// A consumer that never releases holds a mapping (sealed mode) per batch the credits allow.
constexpr size_t kMaxHeld = 64;

struct Input {
  const uint8_t* data;
  size_t size;
  size_t position = 0;
  bool Next(uint8_t* op, std::span<const uint8_t>* bytes) {
    if (size - position < 3) return false;
    *op = data[position];
    const size_t length = data[position + 1] | (size_t{data[position + 2]} << 8);
    position += 3;
    const size_t available = std::min(length, size - position);
    *bytes = {data + position, available};
    position += available;
    return true;
  }
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1 || size > (1 << 20)) return -1;
  auto& fixture = shmarrow::fuzz::Fixture();
  proto::QueueWriter queue(fixture.ring.data() + shmarrow::fuzz::kQueueOffset,
                           shmarrow::fuzz::kQueueCapacity);
  shmarrow::ConsumerOptions options;
  options.lossy = (data[0] & 1) != 0;
  if ((data[0] & 2) != 0) options.columns = {"i", "s"};
  auto session = shmarrow::fuzz::SessionFixture::NewSession(options);
  arrow::Status sent;
  shmarrow::fuzz::Check(session->Start(&sent), "hello");  // these options always encode
  std::vector<std::shared_ptr<arrow::RecordBatch>> held;
  std::vector<uint32_t> requests;
  Input input{data + 1, size - 1};
  uint8_t op = 0;
  std::span<const uint8_t> bytes;
  while (input.Next(&op, &bytes)) {
    switch (op) {
      case 0:
      case 1:
      case 2:
      case 3: {
        std::vector<shmarrow::UniqueFd> fds;
        if ((op & 1) != 0) fds.push_back(shmarrow::fuzz::Dup(fixture.sealed_fd.get()));
        if ((op & 2) != 0) fds.push_back(shmarrow::fuzz::Dup(fixture.ring_fd.get()));
        (void)session->Feed(bytes, std::move(fds));
        break;
      }
      case 4: {
        proto::QueueEntry entry;
        std::memcpy(&entry, bytes.data(), std::min(bytes.size(), sizeof entry));
        queue.Write(entry);
        break;
      }
      case 5:
        (void)session->PollQueue();
        if (session->awaiting_controls()) (void)session->ControlsMissing();
        break;
      case 6:
        held.clear();
        break;
      case 7:
        session->FeedClosed();
        break;
      case 8:
        if (auto stream = session->StartRequest(
                std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()));
            stream.ok()) {
          requests.push_back(*stream);
        }
        break;
      case 9:
        if (session->wake_region()) {
          (void)session->SocketMessagesPending();
          if (session->AnnounceSleep(shmarrow::internal::SleepMode::kFutex)) {
            session->AnnounceAwake();
          }
        }
        break;
      case 10:
        queue.CountMessage();
        (void)queue.Wake();
        break;
      case 11:
        std::memcpy(
            fixture.ring.data() + shmarrow::fuzz::kQueueOffset + proto::kQueueReleasesReadOffset,
            bytes.data(), std::min<size_t>(bytes.size(), 24));
        break;
      default:
        break;
    }
    std::shared_ptr<arrow::RecordBatch> batch;
    for (uint32_t stream = 0; stream <= requests.size(); ++stream) {
      const uint32_t id = stream == 0 ? 0 : requests[stream - 1];
      while (session->Take(id, &batch).ValueOr(false) && batch != nullptr) {
        (void)batch->ToString();
        if (held.size() >= kMaxHeld) held.clear();
        held.push_back(std::move(batch));
      }
    }
  }
  (void)session->stats();
  return 0;
}
