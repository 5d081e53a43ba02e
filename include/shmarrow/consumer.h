// Consumer: receives a producer's stream of record batches and reads them in place.
#pragma once

#include <arrow/record_batch.h>
#include <arrow/result.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "shmarrow/shared_stream.h"
#include "shmarrow/types.h"

namespace shmarrow {

struct ConsumerOptions {
  /// Keep retrying to connect for this long (milliseconds) while no producer listens yet.
  int connect_timeout_ms = 0;
  /// Fail a blocking read after this long without any message (-1: wait forever).
  int read_timeout_ms = -1;
  /// Before a read blocks, poll the socket without sleeping for up to this long (microseconds):
  /// a batch published meanwhile is taken without a wake-up, at the cost of a busy CPU. Without
  /// it a read watches for 10 µs before it sleeps, up to 50 µs while its sleeps end that soon.
  int busy_poll_us = 0;
  /// Fall behind by losing the oldest batches (counted in dropped()) instead of holding the
  /// producer back.
  bool lossy = false;
  /// Start with the oldest batches the producer still has, instead of the next one published.
  bool start_at_oldest = false;
  /// Cap on batches held at once (credits); 0 takes the producer's limit.
  int max_in_flight = 0;
  /// Projection: only these columns, served without copying. Empty: all.
  std::vector<std::string> columns;
  /// Refuse producers whose schema does not match.
  std::shared_ptr<arrow::Schema> expect_schema;
  /// How expect_schema is compared with the producer's.
  SchemaMatch match = SchemaMatch::kExact;
  /// How much of every batch is checked before it is returned.
  Validation validation = Validation::kFull;
  /// Single hand-over only: refuse an unsealed memfd (true), or read a private copy of it
  /// (SharedStreamOptions::require_seals).
  bool require_seals = true;
  /// Uids of producers accepted besides this process's own (SO_PEERCRED): anyone may bind an
  /// abstract socket name first. Empty: own uid only.
  std::vector<unsigned> allowed_uids;
  /// Accept a producer of any uid.
  bool allow_any_uid = false;

  /// For Flight addresses (grpc://, grpc+tcp://, grpc+tls://; ConnectAny, docs/flight.md) only.
  struct Remote {
    /// Sent as "authorization: Bearer <token>" with every call; empty: none.
    std::string token;
    /// grpc+tls: PEM root certificates to trust (empty: the system's).
    std::string tls_root_certs;
    /// grpc+tls: the name the server's certificate must carry, if not the address's host.
    std::string tls_override_hostname;
    /// Read a bridge on this host through shared memory instead, when it advertises its
    /// producer's socket and that producer accepts this process (docs/flight.md).
    bool upgrade_to_shared_memory = true;
  } remote;
};

/// Connects to a Producer (SOCK_SEQPACKET) — or, for a producer of the single hand-over
/// (`shmarrow send` without --mode, ServeFd), receives its one sealed stream — and reads the
/// batches in place. For an Arrow Flight address (grpc://, grpc+tcp://, grpc+tls://) it returns
/// NotImplemented: those are read by shmarrow::ConnectAny (shmarrow/connect.h, library
/// shmarrow::flight). A batch, its arrays, buffers and slices stay valid as long as any of them
/// lives; when the last one dies the producer is told it may reuse the memory.
///
/// ReadNext blocks; fd() and TryNext() serve event loops. Not thread-safe, except that batches
/// may be released from any thread.
class Consumer : public arrow::RecordBatchReader {
 public:
  [[nodiscard]] static arrow::Result<std::shared_ptr<Consumer>> Connect(
      const std::string& address, const ConsumerOptions& options = {});

  /// The current schema (changes when the producer announces a new one; each batch carries its own).
  std::shared_ptr<arrow::Schema> schema() const override = 0;
  /// Next batch; nullptr at end of stream. An error if the producer went away without ending.
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override = 0;

  /// What TryNext found: a batch, nothing yet, or the end of the stream.
  enum class Poll { kBatch, kPending, kEnd };
  /// Non-blocking: takes what has arrived; kBatch fills `batch`.
  [[nodiscard]] virtual arrow::Result<Poll> TryNext(std::shared_ptr<arrow::RecordBatch>* batch) = 0;
  /// Becomes readable when TryNext may have something (for poll/epoll).
  [[nodiscard]] virtual int fd() const = 0;

  /// Sends a request to the producer's handler; the reader yields its answer. Several requests
  /// may be in flight at once.
  [[nodiscard]] virtual arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> Request(
      std::string_view request) = 0;

  /// Counters since Connect.
  [[nodiscard]] virtual ConsumerStats stats() const = 0;
  /// "ring", "sealed", "handover" (the single hand-over) or "flight".
  [[nodiscard]] virtual std::string mode() const = 0;
  /// The single hand-over's memfd (inode, size, seals, whether it was mapped; AllBuffersInside);
  /// nullptr in ring and sealed modes.
  [[nodiscard]] virtual std::shared_ptr<SharedStream> handover_stream() const { return nullptr; }
};

}  // namespace shmarrow
