// The producer's side of the handshake as a pure function: from a consumer's Hello and a
// read-only view of the producer to the Welcome and the terms to attach it with, or the Error
// that refuses it. Nothing here touches a socket or the producer's state (fuzz/handshake_fuzz.cc).
#pragma once

#include <arrow/result.h>
#include <arrow/type_fwd.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "producer_memory.h"
#include "producer_session.h"
#include "protocol.h"
#include "shmarrow/producer.h"

namespace shmarrow::internal {

/// What the handshake reads of the producer, at the moment the Hello arrived.
struct ProducerView {
  std::shared_ptr<arrow::Schema> schema;  // the current schema
  const ProducerOptions* options = nullptr;
  proto::Mode mode = proto::Mode::kSealed;
  uint64_t ring_size = 0;
  int64_t consumers = 0;  // attached now
  bool queue_free = false;
  uint32_t queue_capacity = 0;
  uint32_t consumer_id = 0;
  const std::deque<std::shared_ptr<Published>>* retained = nullptr;  // oldest first
};

/// A Hello accepted: what to answer and attach.
struct Admission {
  /// Complete but for the queue (offset and capacity), which whoever attaches one fills in.
  proto::Welcome welcome;
  /// Answer with the Welcome (without the ring), then close: a describer never becomes a
  /// consumer.
  bool describe = false;
  Session::Terms terms;  // terms.queue is left to the attaching side
  bool wants_queue = false;
  /// Retained batches to send first (oldest first), and the schema the consumer is welcomed
  /// with (before its projection): that of the first of them, else the current one.
  std::vector<std::shared_ptr<Published>> replay;
  std::shared_ptr<arrow::Schema> first_schema;
};

struct HandshakeOutcome {
  std::optional<proto::Error> refusal;  // set: send it and close the connection
  Admission admission;                  // otherwise
};

/// Decodes one datagram, which must be a Hello, and decides. A malformed message is an error
/// status (a protocol error); a well-formed Hello this producer refuses is a `refusal`.
[[nodiscard]] arrow::Result<HandshakeOutcome> Handshake(std::span<const uint8_t> datagram,
                                                        const ProducerView& view);

}  // namespace shmarrow::internal
