// Consumer over Arrow Flight: a bridge (`shmarrow flight-serve`) or any Flight server.
#include <arrow/flight/client.h>
#include <arrow/flight/types.h>
#include <arrow/util/io_util.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "deadline.h"
#include "errno_status.h"
#include "flight_internal.h"
#include "schema_match.h"
#include "shmarrow/error.h"
#include "shmarrow/unique_fd.h"

namespace shmarrow::internal::flight {
namespace {

namespace fl = arrow::flight;

/// Batches the reading thread takes ahead of the application.
constexpr size_t kReadAhead = 1;

struct Connection {
  std::shared_ptr<fl::FlightClient> client;
  fl::FlightCallOptions call;
};

arrow::Result<Connection> OpenClient(const fl::Location& location, const ConsumerOptions& options) {
  auto client_options = fl::FlightClientOptions::Defaults();
  client_options.tls_root_certs = options.remote.tls_root_certs;
  client_options.override_hostname = options.remote.tls_override_hostname;
  Connection connection;
  ARROW_ASSIGN_OR_RAISE(connection.client, fl::FlightClient::Connect(location, client_options));
  // Bodies arrive inside gRPC's receive buffers, not always at the alignment their types need
  // (reading an int32 offset there is undefined behaviour); Arrow copies just those buffers.
  connection.call.read_options.ensure_alignment = arrow::ipc::Alignment::kDataTypeSpecificAlignment;
  if (!options.remote.token.empty()) {
    connection.call.headers.emplace_back("authorization", "Bearer " + options.remote.token);
  }
  return connection;
}

bool Unavailable(const arrow::Status& status) {
  const auto detail = fl::FlightStatusDetail::UnwrapStatus(status);
  return detail != nullptr && detail->code() == fl::FlightStatusCode::Unavailable;
}

/// The first call to a server, repeated while nobody answers (up to connect_timeout_ms). Nobody
/// answering at all reads as ECONNREFUSED, as for a UNIX socket nobody listens on.
template <typename Call>
auto FirstCall(const std::string& address, int connect_timeout_ms, Call&& call)
    -> decltype(call()) {
  const Deadline deadline(connect_timeout_ms);
  for (;;) {
    auto result = call();
    if (result.ok() || !Unavailable(result.status())) return result;
    if (deadline.expired()) {
      return ErrnoStatus(ECONNREFUSED, "no Flight server answers at '", address,
                         "': ", result.status().message());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

/// A request's answer: the chunks of one DoGet.
class AnswerReader final : public arrow::RecordBatchReader {
 public:
  AnswerReader(std::unique_ptr<fl::FlightStreamReader> reader,
               std::shared_ptr<arrow::Schema> schema)
      : reader_(std::move(reader)), schema_(std::move(schema)) {}
  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    ARROW_ASSIGN_OR_RAISE(auto chunk, reader_->Next());
    *batch = std::move(chunk.data);
    return arrow::Status::OK();
  }

 private:
  std::unique_ptr<fl::FlightStreamReader> reader_;
  std::shared_ptr<arrow::Schema> schema_;
};

/// One ticket and where to redeem it.
struct Endpoint {
  Connection connection;
  fl::Ticket ticket;
};

/// Reads the endpoints' streams one after the other on a thread, at most kReadAhead batches ahead,
/// so that TryNext never blocks and fd() (an eventfd, readable while something is queued or the
/// stream is over) serves poll loops as the socket of a shared-memory consumer does.
class FlightConsumer final : public Consumer {
 public:
  FlightConsumer(std::string address, ConsumerOptions options, Connection connection,
                 UniqueFd event)
      : address_(std::move(address)),
        options_(std::move(options)),
        connection_(std::move(connection)),
        event_(std::move(event)) {}

  ~FlightConsumer() override {
    std::shared_ptr<fl::FlightStreamReader> reading;
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      reading = reading_;
    }
    room_.notify_all();
    if (reading != nullptr) reading->Cancel();
    if (thread_.joinable()) thread_.join();
  }

  /// Opens the first endpoint (so that errors and the schema arrive here), then reads on.
  arrow::Status Start(std::vector<Endpoint> endpoints) {
    if (endpoints.empty()) {
      return arrow::Status::Invalid("Flight server at '", address_, "' lists no endpoint");
    }
    auto& first = endpoints.front();
    ARROW_ASSIGN_OR_RAISE(reading_, FirstCall(address_, options_.connect_timeout_ms, [&] {
                            return first.connection.client->DoGet(first.connection.call,
                                                                  first.ticket);
                          }));
    // From here on a failure cancels the call (the destructor does).
    ARROW_ASSIGN_OR_RAISE(stream_schema_, reading_->GetSchema());
    schema_ = stream_schema_;
    if (options_.expect_schema != nullptr) {
      ARROW_RETURN_NOT_OK(CheckSchema(*options_.expect_schema, *schema_, options_.match));
    }
    if (!options_.columns.empty()) {
      ARROW_ASSIGN_OR_RAISE(projection_, ProjectionIndices(*schema_, options_.columns));
      schema_ = ProjectSchema(*schema_, projection_);
    }
    thread_ = std::thread(
        [this, endpoints = std::move(endpoints)]() mutable { Finish(ReadAll(endpoints)); });
    return arrow::Status::OK();
  }

  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }

  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    std::unique_lock lock(mutex_);
    const auto ready = [&] { return !queue_.empty() || finished_; };
    if (options_.read_timeout_ms < 0) {
      arrived_.wait(lock, ready);
    } else if (!arrived_.wait_for(lock, std::chrono::milliseconds(options_.read_timeout_ms),
                                  ready)) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout,
                       "no batch from the Flight server at '", address_, "' within ",
                       options_.read_timeout_ms, " ms");
    }
    return TakeLocked(batch).status();
  }

  arrow::Result<Poll> TryNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    std::lock_guard lock(mutex_);
    return TakeLocked(batch);
  }

  int fd() const override { return event_.get(); }

  arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> Request(
      std::string_view request) override {
    fl::Ticket ticket{std::string(kRequestPrefix) + std::string(request)};
    ARROW_ASSIGN_OR_RAISE(auto reader, connection_.client->DoGet(connection_.call, ticket));
    ARROW_ASSIGN_OR_RAISE(auto schema, reader->GetSchema());
    return std::make_shared<AnswerReader>(std::move(reader), std::move(schema));
  }

  ConsumerStats stats() const override {
    std::lock_guard lock(mutex_);
    return stats_;
  }
  std::string mode() const override { return "flight"; }

 private:
  arrow::Status ReadAll(std::vector<Endpoint>& endpoints) {
    for (size_t i = 0; i < endpoints.size(); ++i) {
      std::shared_ptr<fl::FlightStreamReader> reader;
      if (i == 0) {
        std::lock_guard lock(mutex_);
        reader = reading_;
      } else {
        ARROW_ASSIGN_OR_RAISE(reader, endpoints[i].connection.client->DoGet(
                                          endpoints[i].connection.call, endpoints[i].ticket));
        ARROW_ASSIGN_OR_RAISE(auto schema, reader->GetSchema());
        if (!schema->Equals(*stream_schema_)) {
          return arrow::Status::Invalid("Flight endpoint ", i, " at '", address_,
                                        "' has another schema: {", schema->ToString(), "}");
        }
        std::lock_guard lock(mutex_);
        if (stop_) return arrow::Status::Cancelled("consumer closed");
        reading_ = reader;
      }
      for (;;) {
        ARROW_ASSIGN_OR_RAISE(auto chunk, reader->Next());
        if (chunk.data == nullptr) break;
        std::shared_ptr<arrow::RecordBatch> batch = std::move(chunk.data);
        if (!projection_.empty()) {
          ARROW_ASSIGN_OR_RAISE(batch, batch->SelectColumns(projection_));
        }
        std::unique_lock lock(mutex_);
        room_.wait(lock, [&] { return stop_ || queue_.size() < kReadAhead; });
        if (stop_) return arrow::Status::Cancelled("consumer closed");
        queue_.push_back(std::move(batch));
        SignalLocked();
        lock.unlock();
        arrived_.notify_all();
      }
    }
    return arrow::Status::OK();
  }

  void Finish(arrow::Status status) {
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
      if (!status.ok()) {
        error_ = status.WithMessage("Flight stream from '", address_, "': ", status.message());
      }
      SignalLocked();
    }
    arrived_.notify_all();
  }

  arrow::Result<Poll> TakeLocked(std::shared_ptr<arrow::RecordBatch>* batch) {
    batch->reset();
    if (queue_.empty()) {
      if (!finished_) return Poll::kPending;
      ARROW_RETURN_NOT_OK(error_);
      return Poll::kEnd;
    }
    *batch = std::move(queue_.front());
    queue_.pop_front();
    ++stats_.batches;
    if (queue_.empty() && !finished_) ClearLocked();
    room_.notify_all();
    return Poll::kBatch;
  }

  // The eventfd's counter is nonzero exactly while something can be taken.
  void SignalLocked() {
    if (signalled_) return;
    const uint64_t one = 1;
    signalled_ = RetryOnEintr([&] { return ::write(event_.get(), &one, sizeof one); }) ==
                 static_cast<ssize_t>(sizeof one);
  }
  void ClearLocked() {
    uint64_t count = 0;
    if (RetryOnEintr([&] { return ::read(event_.get(), &count, sizeof count); }) ==
        static_cast<ssize_t>(sizeof count)) {
      signalled_ = false;
    }
  }

  const std::string address_;
  const ConsumerOptions options_;
  Connection connection_;
  UniqueFd event_;
  std::shared_ptr<arrow::Schema> stream_schema_;  // as served
  std::shared_ptr<arrow::Schema> schema_;         // after the projection
  std::vector<int> projection_;
  std::thread thread_;

  mutable std::mutex mutex_;
  std::condition_variable arrived_;
  std::condition_variable room_;
  std::shared_ptr<fl::FlightStreamReader> reading_;  // cancelled on destruction
  std::deque<std::shared_ptr<arrow::RecordBatch>> queue_;
  bool finished_ = false;
  bool stop_ = false;
  bool signalled_ = false;
  arrow::Status error_;
  ConsumerStats stats_;
};

/// Same-host upgrade: the bridge's producer through shared memory, when the bridge advertises a
/// socket that is the same file here and its producer accepts this process.
arrow::Result<std::shared_ptr<Consumer>> Upgrade(const std::string& address,
                                                 const fl::Result* result,
                                                 const ConsumerOptions& options) {
  if (result == nullptr || result->body == nullptr) {
    return arrow::Status::Invalid("the bridge at '", address, "' advertised no socket");
  }
  ARROW_ASSIGN_OR_RAISE(auto advert, DecodeAdvert(result->body->ToString()));
  ARROW_RETURN_NOT_OK(CheckAdvertIsLocal(advert));
  return Consumer::Connect(advert.socket, options);
}

}  // namespace

arrow::Result<std::shared_ptr<Consumer>> ConnectFlight(const std::string& address,
                                                       const ConsumerOptions& options) {
  ARROW_ASSIGN_OR_RAISE(auto parsed, ParseFlightAddress(address));
  ARROW_ASSIGN_OR_RAISE(auto location, fl::Location::Parse(address));
  ARROW_ASSIGN_OR_RAISE(auto connection, OpenClient(location, options));
  const bool bridge_stream = parsed.path.empty();
  if (bridge_stream && options.remote.upgrade_to_shared_memory && IsLoopbackHost(parsed.host)) {
    // The call is made when its first result is read.
    auto advertised = FirstCall(
        address, options.connect_timeout_ms, [&]() -> arrow::Result<std::unique_ptr<fl::Result>> {
          ARROW_ASSIGN_OR_RAISE(
              auto results, connection.client->DoAction(
                                connection.call, fl::Action{std::string(kSocketAction), nullptr}));
          return results->Next();
        });
    if (!advertised.ok() && arrow::internal::ErrnoFromStatus(advertised.status()) == ECONNREFUSED) {
      return advertised.status();  // nobody answers
    }
    // Any refusal (not a bridge, not advertised, another host, another uid) stays on Flight.
    if (advertised.ok()) {
      auto upgraded = Upgrade(address, advertised->get(), options);
      if (upgraded.ok()) return upgraded;
    }
  }
  std::vector<Endpoint> endpoints;
  if (bridge_stream) {
    endpoints.push_back({connection, fl::Ticket{std::string(kStreamTicket)}});
  } else {
    // Any Flight server: the endpoints of the flight the path describes, read in order.
    ARROW_ASSIGN_OR_RAISE(auto info, FirstCall(address, options.connect_timeout_ms, [&] {
                            return connection.client->GetFlightInfo(
                                connection.call, fl::FlightDescriptor::Path(parsed.path));
                          }));
    for (const auto& endpoint : info->endpoints()) {
      Connection redeem = connection;
      if (!endpoint.locations.empty() &&
          !endpoint.locations[0].Equals(fl::Location::ReuseConnection())) {
        ARROW_ASSIGN_OR_RAISE(redeem, OpenClient(endpoint.locations[0], options));
      }
      endpoints.push_back({std::move(redeem), endpoint.ticket});
    }
  }
  UniqueFd event(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!event) return ErrnoStatus(errno, "eventfd for the Flight consumer");
  auto consumer =
      std::make_shared<FlightConsumer>(address, options, std::move(connection), std::move(event));
  ARROW_RETURN_NOT_OK(consumer->Start(std::move(endpoints)));
  return consumer;
}

}  // namespace shmarrow::internal::flight
