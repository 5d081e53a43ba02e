// shmarrow._native._FlightBridge: shmarrow::FlightBridge for Python (docs/flight.md).
#include <nanobind/stl/string.h>

#include "bindings.h"
#include "common.h"
#include "shmarrow/flight.h"

namespace shmarrow::python {
namespace {

class PyFlightBridge {
 public:
  explicit PyFlightBridge(const FlightBridgeOptions& options) {
    arrow::Result<std::unique_ptr<FlightBridge>> started;
    {
      ReleaseGil release;
      started = FlightBridge::Start(options);
    }
    bridge_ = ValueOrThrow(std::move(started), "start the Flight bridge");
  }
  ~PyFlightBridge() {
    ReleaseGil release;  // ends the streams being served
    bridge_.reset();
  }

  std::string location() { return Live().location(); }
  int port() { return Live().port(); }
  nb::dict Stats() {
    const auto stats = Live().stats();
    nb::dict out;
    out["streams_served"] = stats.streams_served;
    out["streams_active"] = stats.streams_active;
    out["batches_sent"] = stats.batches_sent;
    out["calls_refused"] = stats.calls_refused;
    out["batches_ingested"] = stats.batches_ingested;
    return out;
  }
  void Shutdown() {
    if (bridge_ == nullptr) return;
    arrow::Status status;
    {
      ReleaseGil release;
      status = bridge_->Shutdown();
      bridge_.reset();
    }
    CheckOk(status, "shut the Flight bridge down");
  }
  bool closed() const { return bridge_ == nullptr; }

 private:
  FlightBridge& Live() {
    if (bridge_ == nullptr) {
      ThrowError(arrow::StatusCode::Cancelled, ErrorCode::kClosed, "the Flight bridge is shut down",
                 "bridge");
    }
    return *bridge_;
  }
  std::unique_ptr<FlightBridge> bridge_;
};

}  // namespace

void BindFlightBridge(nb::module_& m) {
  nb::class_<PyFlightBridge>(m, "_FlightBridge")
      .def(
          "__init__",
          [](PyFlightBridge* self, const std::string& socket, const std::string& listen,
             bool allow_remote, const std::string& tls_cert_pem, const std::string& tls_key_pem,
             const std::string& token, bool serve_requests, bool advertise_socket,
             int max_in_flight, bool ingest, bool ring, int64_t ring_size, int retain,
             int max_consumers, int wait_consumers, int drain_timeout_ms) {
            FlightBridgeOptions options;
            options.socket = socket;
            options.listen = listen;
            options.allow_remote = allow_remote;
            options.tls_cert_pem = tls_cert_pem;
            options.tls_key_pem = tls_key_pem;
            options.token = token;
            options.serve_requests = serve_requests;
            options.advertise_socket = advertise_socket;
            options.consumer.max_in_flight = max_in_flight;
            options.ingest = ingest;
            options.producer.mode = ring ? MemoryMode::kRing : MemoryMode::kSealed;
            options.producer.ring_size = ring_size;
            options.producer.retain = retain;
            options.producer.max_consumers = max_consumers;
            if (max_in_flight > 0) options.producer.max_in_flight = max_in_flight;
            options.ingest_wait_consumers = wait_consumers;
            options.ingest_drain_timeout_ms = drain_timeout_ms;
            new (self) PyFlightBridge(options);
          },
          nb::arg("socket"), nb::arg("listen"), nb::arg("allow_remote"), nb::arg("tls_cert_pem"),
          nb::arg("tls_key_pem"), nb::arg("token"), nb::arg("serve_requests"),
          nb::arg("advertise_socket"), nb::arg("max_in_flight"), nb::arg("ingest"), nb::arg("ring"),
          nb::arg("ring_size"), nb::arg("retain"), nb::arg("max_consumers"),
          nb::arg("wait_consumers"), nb::arg("drain_timeout_ms"))
      .def_prop_ro("location", &PyFlightBridge::location)
      .def_prop_ro("port", &PyFlightBridge::port)
      .def_prop_ro("closed", &PyFlightBridge::closed)
      .def("stats", &PyFlightBridge::Stats)
      .def("shutdown", &PyFlightBridge::Shutdown);
}

}  // namespace shmarrow::python
