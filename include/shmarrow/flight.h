// FlightBridge: serves a local Producer's stream to remote Arrow Flight clients (docs/flight.md).
#pragma once

#include <arrow/result.h>
#include <arrow/status.h>

#include <cstdint>
#include <memory>
#include <string>

#include "shmarrow/consumer.h"
#include "shmarrow/producer.h"
#include "shmarrow/types.h"

namespace shmarrow {

struct FlightBridgeOptions {
  /// The producer's socket (a path, or "@name"); each DoGet connects its own Consumer to it.
  std::string socket;
  /// Where to listen: grpc://HOST:PORT, grpc+tcp://HOST:PORT or grpc+tls://HOST:PORT; port 0
  /// takes a free port (see FlightBridge::location()).
  std::string listen = "grpc://127.0.0.1:0";
  /// Listening on a host other than a loopback address (127.0.0.0/8, ::1, localhost) is refused
  /// unless this is set.
  bool allow_remote = false;
  /// grpc+tls: the server's certificate chain and private key, PEM.
  std::string tls_cert_pem;
  std::string tls_key_pem;
  /// Non-empty: every call must carry "authorization: Bearer <token>".
  std::string token;
  /// Serve tickets "request:<bytes>" (the producer's request handler).
  bool serve_requests = true;
  /// Answer the action "shmarrow.socket", so that clients on this host may read the producer
  /// through shared memory instead (ConsumerOptions::Remote::upgrade_to_shared_memory).
  bool advertise_socket = true;
  /// Options of the Consumer each DoGet connects (credits, validation, lossy, columns, ...).
  ConsumerOptions consumer;

  /// Accept DoPut of the descriptor path ["stream"] and publish its batches through a Producer
  /// listening at `socket` (which DoGet then serves too). The first DoPut creates the Producer
  /// with its schema; later DoPuts continue the same stream and must have that schema. One
  /// DoPut at a time. Shutdown ends the stream (docs/flight.md, "Ingest").
  bool ingest = false;
  /// Ingest: the Producer's options (mode, ring size, credits, retain, ...).
  ProducerOptions producer;
  /// Ingest: the first DoPut publishes nothing until this many local consumers are attached
  /// (its writer is held back meanwhile).
  int ingest_wait_consumers = 0;
  /// Ingest: at Shutdown, how long the ended stream waits for local consumers to take the rest.
  int ingest_drain_timeout_ms = 10000;
};

/// A Flight server (gRPC) in front of one producer's socket. Tickets: "stream" (the published
/// stream, from the next batch on, per ConsumerOptions) and "request:<bytes>" (the producer's answer
/// to <bytes>). Descriptor path ["stream"] describes the published stream for GetFlightInfo,
/// GetSchema and ListFlights (without becoming a consumer of it) and, with `ingest`, is what DoPut
/// publishes. Nothing else is served. Thread-safe.
class FlightBridge {
 public:
  /// Listens and serves on gRPC's threads until Shutdown.
  [[nodiscard]] static arrow::Result<std::unique_ptr<FlightBridge>> Start(
      const FlightBridgeOptions& options);
  virtual ~FlightBridge() = default;

  /// The address clients use, with the port actually bound (e.g. "grpc://127.0.0.1:40123").
  [[nodiscard]] virtual std::string location() const = 0;
  [[nodiscard]] virtual int port() const = 0;
  [[nodiscard]] virtual FlightBridgeStats stats() const = 0;
  /// Stops accepting calls and ends the streams being served (their clients see an error); their
  /// Consumers are closed, releasing every batch they held. Idempotent; also done on destruction.
  [[nodiscard]] virtual arrow::Status Shutdown() = 0;
};

}  // namespace shmarrow
