// Producer: publishes a stream of record batches to any number of consumers through shared memory.
#pragma once

#include <arrow/memory_pool.h>
#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shmarrow/pages.h"
#include "shmarrow/types.h"

namespace shmarrow {

/// Streams the batches answering one request to the consumer that sent it.
class ResponseWriter {
 public:
  virtual ~ResponseWriter() = default;
  /// Memory to build response batches in (as Producer::pool()).
  virtual arrow::MemoryPool* pool() = 0;
  [[nodiscard]] virtual arrow::Status Write(const std::shared_ptr<arrow::RecordBatch>& batch) = 0;
};

/// Answers a request: the bytes the consumer sent, and where to write the answer. A non-OK status
/// reaches the requester as an error with its message.
using RequestHandler =
    std::function<arrow::Status(std::string_view request, ResponseWriter& response)>;

struct ProducerOptions {
  /// Where batches live in shared memory (see MemoryMode).
  MemoryMode mode = MemoryMode::kRing;
  /// Ring mode: bytes of shared memory for batches in flight (committed up front).
  int64_t ring_size = int64_t{64} << 20;
  /// How long Publish (and, in ring mode, allocation from pool()) waits for room: -1 forever,
  /// 0 fail fast with an error, > 0 that many milliseconds.
  int block_timeout_ms = -1;
  /// Limits, announced to consumers at the handshake.
  int max_consumers = 64;
  /// Batches a consumer may hold unreleased (its credits); a consumer may ask for fewer.
  int max_in_flight = 64;
  /// Published batches kept for consumers that join late and ask for the oldest.
  int retain = 0;
  /// Socket file mode (filesystem addresses).
  unsigned socket_mode = 0600;
  /// Uids allowed to connect besides the producer's own (SO_PEERCRED). Empty: own uid only.
  std::vector<unsigned> allowed_uids;
  /// Allow every uid (the socket file mode still applies).
  bool allow_any_uid = false;
  /// memfd name (shows in /proc/PID/maps).
  std::string name = "shmarrow";
  /// A connection that has not said Hello within this long is closed (> 0 milliseconds). When
  /// max_consumers connections are waiting to say Hello, the oldest is closed for the next one.
  int handshake_timeout_ms = 5000;
  /// The stream protocol's minor version this producer speaks (docs/protocol.md): -1 the newest;
  /// an older one (0-2) answers every consumer as a producer of that version would, to test
  /// consumers against older producers.
  int protocol_minor = -1;
  /// Requests one consumer may have in flight (received, answer not finished); more are
  /// answered with Error code 4 (limit).
  int max_requests_per_consumer = 16;
  /// Requests in flight across all consumers; more are answered with Error code 4.
  int max_requests = 64;
  /// Threads that run the request handler; requests beyond wait for one (up to max_requests).
  int request_threads = 4;
  /// How long a request handler waits for room (the ring, the requester's credits) before its
  /// request fails: -1 forever, 0 fail fast, > 0 milliseconds.
  int request_timeout_ms = 10000;
  /// Which pages back the shared memory (the ring, sealed mode's arenas); see PagePolicy.
  PagePolicy pages = PagePolicy::kAuto;
  /// Answers consumers' requests from the first connection on (as SetRequestHandler, without the
  /// moment after Listen when a request would be refused). Empty: none until SetRequestHandler.
  RequestHandler request_handler;
};

/// Listens on a UNIX SOCK_SEQPACKET socket ("@name": abstract namespace) and serves the protocol of
/// docs/protocol.md on a background thread. Thread-safe.
class Producer {
 public:
  [[nodiscard]] static arrow::Result<std::shared_ptr<Producer>> Listen(
      const std::string& address, std::shared_ptr<arrow::Schema> schema,
      const ProducerOptions& options = {});
  virtual ~Producer() = default;

  /// Memory to build batches in, so that publishing them copies nothing. Ring mode: the ring
  /// (allocation blocks or fails when it is full, per block_timeout_ms). Sealed mode: a fresh
  /// memfd arena for the next batch; call again after each Publish.
  [[nodiscard]] virtual arrow::MemoryPool* pool() = 0;
  /// Sends the batch to every attached consumer (waiting for room per block_timeout_ms). Buffers
  /// not in pool() are copied into shared memory once (counted in stats().bytes_copied).
  [[nodiscard]] virtual arrow::Status Publish(const std::shared_ptr<arrow::RecordBatch>& batch) = 0;
  /// Announces a new schema: consumers see it before the first batch that uses it.
  [[nodiscard]] virtual arrow::Status ChangeSchema(std::shared_ptr<arrow::Schema> schema) = 0;
  /// Ends the published stream; consumers read end-of-stream after the batches before it.
  [[nodiscard]] virtual arrow::Status End() = 0;
  /// Answers consumers' Request() calls from now on (on the producer's I/O thread); without a
  /// handler, requests are refused.
  virtual void SetRequestHandler(RequestHandler handler) = 0;

  /// Waits until `count` consumers are attached (timeout_ms -1: forever).
  [[nodiscard]] virtual arrow::Status WaitForConsumers(int count, int timeout_ms) = 0;
  /// Waits until no consumer holds or has queued any batch (all released or gone).
  [[nodiscard]] virtual arrow::Status WaitUntilDrained(int timeout_ms) = 0;
  [[nodiscard]] virtual ProducerStats stats() const = 0;
  /// The current schema (the last one given to Listen or ChangeSchema).
  [[nodiscard]] virtual std::shared_ptr<arrow::Schema> schema() const = 0;
  /// Stops serving: consumers still attached get an error; the socket is removed.
  virtual void Close() = 0;
};

}  // namespace shmarrow
