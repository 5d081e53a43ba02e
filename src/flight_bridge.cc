#include <arrow/buffer.h>
#include <arrow/flight/server.h>
#include <arrow/flight/server_middleware.h>
#include <arrow/flight/types.h>
#include <arrow/type.h>
#include <poll.h>

#include <atomic>
#include <chrono>
#include <cctype>
#include <mutex>

#include "errno_status.h"
#include "flight_internal.h"
#include "schema_match.h"
#include "shmarrow/flight.h"

namespace shmarrow {
namespace {

namespace fl = arrow::flight;
namespace bridge = internal::flight;

/// How often a DoGet waiting for the producer looks whether its call was cancelled.
constexpr int kWaitSliceMs = 100;

/// The Producer that DoPut publishes through (FlightBridgeOptions::ingest).
struct Ingest {
  std::mutex publishing;               // held by the one DoPut publishing
  std::mutex state;                    // guards `producer`; taken after `publishing`, never before
  std::shared_ptr<Producer> producer;  // made by the first DoPut

  /// At shutdown: ends the stream when no DoPut is publishing and lets local consumers take the
  /// rest for up to `drain_timeout_ms`; otherwise closes it under the DoPut (whose Publish fails), so
  /// local consumers see an error after the last whole batch. Needs `stopping` already set.
  void Finish(int drain_timeout_ms) {
    std::unique_lock idle(publishing, std::try_to_lock);
    std::lock_guard lock(state);
    if (producer == nullptr) return;
    if (idle.owns_lock() && producer->End().ok())
      (void)producer->WaitUntilDrained(drain_timeout_ms);
    producer->Close();
  }
};

/// What the server and the streams it serves share; outlives both.
struct Shared {
  std::atomic<bool> stopping{false};
  std::atomic<int64_t> served{0};
  std::atomic<int64_t> active{0};
  std::atomic<int64_t> batches{0};
  std::atomic<int64_t> refused{0};
  std::atomic<int64_t> ingested{0};
  Ingest ingest;
};

/// A call goes on while the bridge runs and its client is there.
arrow::Status CheckCallLive(const Shared& shared, const fl::ServerCallContext& context) {
  if (shared.stopping) return arrow::Status::Cancelled("the bridge is shutting down");
  if (context.is_cancelled()) return arrow::Status::Cancelled("the client cancelled the call");
  return arrow::Status::OK();
}

/// What one DoGet streams, read through its own Consumer. Nothing is read ahead: while Flight
/// waits for the client to take more, the Consumer holds its batches and its credits hold the
/// producer back, as a slow local consumer would. Destroyed with the call (ended, failed, or the
/// client gone), it closes the Consumer, so the producer gets back everything it held.
class BridgeReader final : public arrow::RecordBatchReader {
 public:
  /// `answer`: the reader of a request's answer; null for the published stream.
  BridgeReader(std::shared_ptr<Consumer> consumer, std::shared_ptr<arrow::RecordBatchReader> answer,
               std::shared_ptr<Shared> shared, const fl::ServerCallContext& context)
      : consumer_(std::move(consumer)),
        answer_(std::move(answer)),
        schema_(answer_ != nullptr ? answer_->schema() : consumer_->schema()),
        shared_(std::move(shared)),
        context_(context) {
    ++shared_->served;
    ++shared_->active;
  }
  ~BridgeReader() override { --shared_->active; }

  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }

  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    ARROW_RETURN_NOT_OK(CheckLive());
    if (answer_ != nullptr) {
      ARROW_RETURN_NOT_OK(answer_->ReadNext(batch));
      return Count(batch);
    }
    for (;;) {
      ARROW_ASSIGN_OR_RAISE(auto polled, consumer_->TryNext(batch));
      if (polled == Consumer::Poll::kEnd) {
        batch->reset();
        return arrow::Status::OK();
      }
      if (polled == Consumer::Poll::kBatch) return Count(batch);
      ARROW_RETURN_NOT_OK(CheckLive());
      pollfd readable{consumer_->fd(), POLLIN, 0};
      if (internal::RetryOnEintr([&] { return ::poll(&readable, 1, kWaitSliceMs); }) < 0) {
        return internal::ErrnoStatus(errno, "poll on the producer's socket (fd ", readable.fd, ")");
      }
    }
  }

 private:
  arrow::Status CheckLive() const { return CheckCallLive(*shared_, context_); }
  /// A Flight stream has one schema: a schema change ends it with an error.
  arrow::Status Count(std::shared_ptr<arrow::RecordBatch>* batch) {
    if (*batch == nullptr) return arrow::Status::OK();
    if (!(*batch)->schema()->Equals(*schema_)) {
      const auto changed = internal::DescribeSchema(*(*batch)->schema());
      batch->reset();
      return arrow::Status::Invalid("the producer changed its schema to ", changed,
                                    "; a Flight stream has a single schema");
    }
    ++shared_->batches;
    return arrow::Status::OK();
  }

  std::shared_ptr<Consumer> consumer_;
  std::shared_ptr<arrow::RecordBatchReader> answer_;
  std::shared_ptr<arrow::Schema> schema_;
  std::shared_ptr<Shared> shared_;
  const fl::ServerCallContext& context_;  // lives as long as the call, which owns this reader
};

/// Every call must carry "authorization: Bearer <token>".
class TokenCheck final : public fl::ServerMiddlewareFactory {
 public:
  explicit TokenCheck(const std::string& token) : expected_("Bearer " + token) {}

  arrow::Status StartCall(const fl::CallInfo&, const fl::ServerCallContext& context,
                          std::shared_ptr<fl::ServerMiddleware>*) override {
    const auto [begin, end] = context.incoming_headers().equal_range("authorization");
    for (auto it = begin; it != end; ++it) {
      if (SameBytes(it->second, expected_)) return arrow::Status::OK();
    }
    return fl::MakeFlightError(fl::FlightStatusCode::Unauthenticated,
                               "shmarrow bridge: missing or wrong bearer token");
  }

 private:
  /// Takes as long whichever byte differs, so the token cannot be guessed byte by byte.
  static bool SameBytes(std::string_view a, std::string_view b) {
    unsigned char differ = a.size() == b.size() ? 0 : 1;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) differ |= a[i] ^ b[i];
    return differ == 0;
  }
  const std::string expected_;
};

/// At most 64 bytes of peer input, non-printable bytes as \xNN, for an error message.
std::string Printable(std::string_view bytes) {
  std::string out;
  for (size_t i = 0; i < bytes.size() && i < 64; ++i) {
    const auto c = static_cast<unsigned char>(bytes[i]);
    if (std::isprint(c) && c != '\\') {
      out += static_cast<char>(c);
    } else {
      static constexpr char kHex[] = "0123456789abcdef";
      out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    }
  }
  if (bytes.size() > 64) out += "...";
  return out;
}

class BridgeServer final : public fl::FlightServerBase {
 public:
  BridgeServer(FlightBridgeOptions options, std::shared_ptr<Shared> shared)
      : options_(std::move(options)), shared_(std::move(shared)) {}

  arrow::Status DoGet(const fl::ServerCallContext& context, const fl::Ticket& request,
                      std::unique_ptr<fl::FlightDataStream>* stream) override {
    const std::string_view ticket = request.ticket;
    std::shared_ptr<BridgeReader> reader;
    if (ticket == bridge::kStreamTicket) {
      ARROW_ASSIGN_OR_RAISE(auto consumer, ConnectProducer(options_.consumer));
      reader = std::make_shared<BridgeReader>(std::move(consumer), nullptr, shared_, context);
    } else if (options_.serve_requests && ticket.starts_with(bridge::kRequestPrefix)) {
      ARROW_ASSIGN_OR_RAISE(auto consumer, ConnectProducer(RequestOptions()));
      ARROW_ASSIGN_OR_RAISE(auto answer,
                            consumer->Request(ticket.substr(bridge::kRequestPrefix.size())));
      reader =
          std::make_shared<BridgeReader>(std::move(consumer), std::move(answer), shared_, context);
    } else {
      return Refuse("unknown ticket '", Printable(ticket), "': this bridge serves '",
                    bridge::kStreamTicket, "'",
                    options_.serve_requests ? " and 'request:<bytes>'" : "");
    }
    *stream = std::make_unique<fl::RecordBatchStream>(std::move(reader));
    return arrow::Status::OK();
  }

  /// Publishes the written stream through the ingest Producer, one batch at a time: the next
  /// one is read from gRPC only after Publish took this one, so local consumers' back-pressure
  /// (credits, a full ring) reaches the writer through gRPC's flow control. A batch arrives whole
  /// or not at all; a writer that fails or vanishes ends only its DoPut.
  arrow::Status DoPut(const fl::ServerCallContext& context,
                      std::unique_ptr<fl::FlightMessageReader> reader,
                      std::unique_ptr<fl::FlightMetadataWriter>) override {
    if (!options_.ingest) {
      return Refuse("DoPut: this bridge does not ingest (start it with --ingest)");
    }
    ARROW_RETURN_NOT_OK(CheckDescriptor(reader->descriptor()));
    Ingest& ingest = shared_->ingest;
    std::unique_lock publishing(ingest.publishing, std::try_to_lock);
    if (!publishing.owns_lock()) {
      return fl::MakeFlightError(fl::FlightStatusCode::Unavailable,
                                 "shmarrow bridge: another DoPut is publishing; one at a time");
    }
    ARROW_ASSIGN_OR_RAISE(auto schema, reader->GetSchema());
    ARROW_ASSIGN_OR_RAISE(auto producer, IngestProducer(schema, context));
    for (int64_t n = 1;; ++n) {
      ARROW_RETURN_NOT_OK(CheckLive(context));
      ARROW_ASSIGN_OR_RAISE(auto chunk, reader->Next());
      if (chunk.data == nullptr) {
        if (chunk.app_metadata != nullptr) continue;  // metadata alone carries no rows
        return arrow::Status::OK();
      }
      // The writer is a peer like any other: its batch must be sound before local consumers
      // (perhaps validating only the basics) read it in place.
      auto status = chunk.data->ValidateFull();
      if (status.ok()) status = producer->Publish(chunk.data);
      if (!status.ok()) {
        return status.WithMessage("shmarrow bridge: DoPut batch ", n, ": ", status.message());
      }
      ++shared_->ingested;
    }
  }

  arrow::Status GetFlightInfo(const fl::ServerCallContext&, const fl::FlightDescriptor& descriptor,
                              std::unique_ptr<fl::FlightInfo>* info) override {
    ARROW_RETURN_NOT_OK(CheckDescriptor(descriptor));
    ARROW_ASSIGN_OR_RAISE(auto described, Describe());
    *info = std::make_unique<fl::FlightInfo>(std::move(described));
    return arrow::Status::OK();
  }

  arrow::Status GetSchema(const fl::ServerCallContext&, const fl::FlightDescriptor& descriptor,
                          std::unique_ptr<fl::SchemaResult>* schema) override {
    ARROW_RETURN_NOT_OK(CheckDescriptor(descriptor));
    ARROW_ASSIGN_OR_RAISE(auto described, DescribeProducer());
    ARROW_ASSIGN_OR_RAISE(*schema, fl::SchemaResult::Make(*described));
    return arrow::Status::OK();
  }

  arrow::Status ListFlights(const fl::ServerCallContext&, const fl::Criteria*,
                            std::unique_ptr<fl::FlightListing>* listings) override {
    ARROW_ASSIGN_OR_RAISE(auto described, Describe());
    *listings = std::make_unique<fl::SimpleFlightListing>(
        std::vector<fl::FlightInfo>{std::move(described)});
    return arrow::Status::OK();
  }

  arrow::Status DoAction(const fl::ServerCallContext&, const fl::Action& action,
                         std::unique_ptr<fl::ResultStream>* result) override {
    if (!options_.advertise_socket || action.type != bridge::kSocketAction) {
      return Refuse("unknown action '", Printable(action.type), "'");
    }
    ARROW_ASSIGN_OR_RAISE(auto advert, bridge::AdvertiseSocket(options_.socket));
    std::vector<fl::Result> results(1);
    results[0].body = arrow::Buffer::FromString(bridge::EncodeAdvert(advert));
    *result = std::make_unique<fl::SimpleResultStream>(std::move(results));
    return arrow::Status::OK();
  }

  arrow::Status ListActions(const fl::ServerCallContext&,
                            std::vector<fl::ActionType>* actions) override {
    actions->clear();
    if (options_.advertise_socket) {
      actions->push_back({std::string(bridge::kSocketAction),
                          "where the producer listens, for clients on this host"});
    }
    return arrow::Status::OK();
  }

 private:
  arrow::Result<std::shared_ptr<Consumer>> ConnectProducer(const ConsumerOptions& options) const {
    auto consumer = Consumer::Connect(options_.socket, options);
    if (!consumer.ok()) {
      return consumer.status().WithMessage("shmarrow bridge: the producer at '", options_.socket,
                                           "': ", consumer.status().message());
    }
    return consumer;
  }

  /// A consumer that reads only an answer takes the stream lossily, holding at
  /// most one batch, so that it never holds the producer back (as `shmarrow recv --request`).
  ConsumerOptions RequestOptions() const {
    ConsumerOptions options = options_.consumer;
    options.lossy = true;
    options.max_in_flight = 1;
    return options;
  }

  arrow::Status CheckDescriptor(const fl::FlightDescriptor& descriptor) {
    if (descriptor.type == fl::FlightDescriptor::PATH && descriptor.path.size() == 1 &&
        descriptor.path[0] == bridge::kStreamTicket) {
      return arrow::Status::OK();
    }
    return Refuse("unknown descriptor ", Printable(descriptor.ToString()),
                  ": this bridge describes only the path ['", bridge::kStreamTicket, "']");
  }

  /// The schema a DoGet would start with now, learnt without becoming a consumer: describing
  /// must neither count as one the producer waits for nor take any of its batches.
  arrow::Result<std::shared_ptr<arrow::Schema>> DescribeProducer() const {
    auto schema = bridge::DescribeProducer(options_.socket, options_.consumer);
    if (!schema.ok()) {
      return schema.status().WithMessage("shmarrow bridge: the producer at '", options_.socket,
                                         "': ", schema.status().message());
    }
    return schema;
  }

  arrow::Result<fl::FlightInfo> Describe() {
    ARROW_ASSIGN_OR_RAISE(auto schema, DescribeProducer());
    fl::FlightEndpoint endpoint;
    endpoint.ticket.ticket = std::string(bridge::kStreamTicket);
    return fl::FlightInfo::Make(*schema,
                                fl::FlightDescriptor::Path({std::string(bridge::kStreamTicket)}),
                                {endpoint}, -1, -1);
  }

  arrow::Status CheckLive(const fl::ServerCallContext& context) const {
    return CheckCallLive(*shared_, context);
  }

  /// The ingest Producer for a DoPut of `schema`: the first one creates it and waits for
  /// `ingest_wait_consumers` local consumers; later ones must bring the same schema.
  arrow::Result<std::shared_ptr<Producer>> IngestProducer(
      const std::shared_ptr<arrow::Schema>& schema, const fl::ServerCallContext& context) {
    Ingest& ingest = shared_->ingest;
    std::shared_ptr<Producer> producer;
    {
      std::lock_guard lock(ingest.state);
      ARROW_RETURN_NOT_OK(CheckLive(context));  // Shutdown sets `stopping`, then takes `state`
      if (ingest.producer != nullptr) {
        const auto& expected = *ingest.producer->schema();
        if (!schema->Equals(expected)) {
          const auto put = internal::DescribeSchema(*schema);
          const auto own = internal::DescribeSchema(expected);
          return arrow::Status::Invalid("shmarrow bridge: DoPut schema ", put,
                                        " differs from the producer's ", own,
                                        put == own ? " (in the fields' nullability)" : "");
        }
        return ingest.producer;
      }
      auto listening = Producer::Listen(options_.socket, schema, options_.producer);
      if (!listening.ok()) {
        return listening.status().WithMessage("shmarrow bridge: ingest producer at '",
                                              options_.socket, "': ", listening.status().message());
      }
      producer = ingest.producer = std::move(*listening);
    }
    if (options_.ingest_wait_consumers > 0) {
      for (;;) {
        auto waited = producer->WaitForConsumers(options_.ingest_wait_consumers, kWaitSliceMs);
        if (waited.ok()) break;
        if (waited.IsCancelled()) return waited;  // closed by Shutdown
        ARROW_RETURN_NOT_OK(CheckLive(context));
      }
    }
    return producer;
  }

  template <typename... Args>
  arrow::Status Refuse(Args&&... message) {
    ++shared_->refused;
    return arrow::Status::KeyError("shmarrow bridge: ", std::forward<Args>(message)...);
  }

  const FlightBridgeOptions options_;
  std::shared_ptr<Shared> shared_;
};

class FlightBridgeImpl final : public FlightBridge {
 public:
  FlightBridgeImpl(std::unique_ptr<BridgeServer> server, std::shared_ptr<Shared> shared,
                   std::string location, int drain_timeout_ms)
      : server_(std::move(server)),
        shared_(std::move(shared)),
        location_(std::move(location)),
        drain_timeout_ms_(drain_timeout_ms) {}
  ~FlightBridgeImpl() override { (void)Shutdown(); }

  std::string location() const override { return location_; }
  int port() const override { return server_->port(); }
  FlightBridgeStats stats() const override {
    return {shared_->served, shared_->active, shared_->batches, shared_->refused,
            shared_->ingested};
  }
  arrow::Status Shutdown() override {
    std::lock_guard lock(mutex_);
    if (shut_down_) return arrow::Status::OK();
    shut_down_ = true;
    // Streams waiting for the producer notice within kWaitSliceMs; calls blocked on a client
    // that does not read are cancelled by gRPC at the deadline.
    shared_->stopping = true;
    shared_->ingest.Finish(drain_timeout_ms_);
    const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(1);
    ARROW_RETURN_NOT_OK(server_->Shutdown(&deadline));
    return server_->Wait();
  }

 private:
  std::unique_ptr<BridgeServer> server_;
  std::shared_ptr<Shared> shared_;
  const std::string location_;
  const int drain_timeout_ms_;  // ingest_drain_timeout_ms
  std::mutex mutex_;
  bool shut_down_ = false;
};

}  // namespace

arrow::Result<std::unique_ptr<FlightBridge>> FlightBridge::Start(
    const FlightBridgeOptions& options) {
  if (options.socket.empty()) return arrow::Status::Invalid("FlightBridge: no producer socket");
  if (internal::IsFlightAddress(options.socket)) {
    return arrow::Status::Invalid("FlightBridge: the producer socket '", options.socket,
                                  "' must be a UNIX socket, not a Flight address");
  }
  ARROW_ASSIGN_OR_RAISE(auto listen, bridge::ParseFlightAddress(options.listen));
  if (!listen.path.empty()) {
    return arrow::Status::Invalid("FlightBridge: listen address '", options.listen,
                                  "' has a path; give scheme://host:port");
  }
  if (!options.allow_remote && !bridge::IsLoopbackHost(listen.host)) {
    return arrow::Status::Invalid("FlightBridge: '", listen.host,
                                  "' is not a loopback address; listening there exposes the "
                                  "stream to the network and needs allow_remote (--allow-remote)");
  }
  const bool have_cert = !options.tls_cert_pem.empty() || !options.tls_key_pem.empty();
  if (listen.tls && (options.tls_cert_pem.empty() || options.tls_key_pem.empty())) {
    return arrow::Status::Invalid("FlightBridge: grpc+tls needs a certificate and its key");
  }
  if (!listen.tls && have_cert) {
    return arrow::Status::Invalid("FlightBridge: a certificate was given but '", options.listen,
                                  "' is not grpc+tls://");
  }
  ARROW_ASSIGN_OR_RAISE(auto location, fl::Location::Parse(options.listen));
  fl::FlightServerOptions server_options(location);
  if (listen.tls)
    server_options.tls_certificates.push_back({options.tls_cert_pem, options.tls_key_pem});
  if (!options.token.empty()) {
    server_options.middleware.emplace_back("shmarrow-token",
                                           std::make_shared<TokenCheck>(options.token));
  }
  auto shared = std::make_shared<Shared>();
  auto server = std::make_unique<BridgeServer>(options, shared);
  ARROW_RETURN_NOT_OK(server->Init(server_options));
  // Where clients connect: the host as given (a name stays a name, for TLS), the bound port.
  const std::string scheme = location.scheme();
  const std::string host = listen.host.find(':') != std::string::npos && listen.host[0] != '['
                               ? "[" + listen.host + "]"
                               : listen.host;
  std::string bound = scheme + "://" + host + ":" + std::to_string(server->port());
  return std::make_unique<FlightBridgeImpl>(std::move(server), std::move(shared), std::move(bound),
                                            options.ingest_drain_timeout_ms);
}

}  // namespace shmarrow
