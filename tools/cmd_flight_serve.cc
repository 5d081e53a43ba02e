// `shmarrow flight-serve`: a producer's stream for remote Arrow Flight clients (docs/flight.md).
#include <pthread.h>
#include <signal.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>

#include "commands.h"
#include "shmarrow/flight.h"
#include "shmarrow/handover.h"

namespace shmarrow::cli {
namespace {

arrow::Result<std::string> ReadTextFile(const std::string& option, const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::ostringstream text;
  if (!file || !(text << file.rdbuf())) {
    return arrow::Status::IOError(option, ": cannot read '", path, "'");
  }
  return text.str();
}

}  // namespace

arrow::Result<std::string> FlightToken(Args& args) {
  if (args.Has("--token-file")) {
    ARROW_ASSIGN_OR_RAISE(auto token,
                          ReadTextFile("--token-file", args.String("--token-file", "")));
    while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
    if (token.empty()) return UsageError("--token-file holds an empty token");
    return token;
  }
  const char* from_env = std::getenv("SHMARROW_FLIGHT_TOKEN");
  return std::string(from_env != nullptr ? from_env : "");
}

arrow::Result<std::string> OptionalFile(Args& args, const std::string& option) {
  if (!args.Has(option)) return std::string();
  return ReadTextFile(option, args.String(option, ""));
}

arrow::Status RunFlightServe(Args& args) {
  FlightBridgeOptions options;
  options.socket = args.String("--socket", kDefaultSocketPath);
  options.listen = args.String("--listen", "grpc://127.0.0.1:0");
  options.allow_remote = args.Flag("--allow-remote");
  options.serve_requests = !args.Flag("--no-requests");
  options.advertise_socket = !args.Flag("--no-advertise");
  ARROW_ASSIGN_OR_RAISE(options.tls_cert_pem, OptionalFile(args, "--tls-cert"));
  ARROW_ASSIGN_OR_RAISE(options.tls_key_pem, OptionalFile(args, "--tls-key"));
  ARROW_ASSIGN_OR_RAISE(options.token, FlightToken(args));
  ARROW_ASSIGN_OR_RAISE(int64_t max_in_flight, args.Int("--max-in-flight", 0));
  ARROW_ASSIGN_OR_RAISE(int64_t connect_timeout_ms, args.Int("--connect-timeout-ms", 0));
  const std::string validate = args.String("--validate", "full");
  // --ingest: DoPut publishes through a producer at --socket (docs/flight.md, "Ingest").
  options.ingest = args.Flag("--ingest");
  const std::string mode = args.String("--mode", "ring");
  ARROW_ASSIGN_OR_RAISE(options.producer.ring_size,
                        args.Bytes("--ring-size", options.producer.ring_size));
  ARROW_ASSIGN_OR_RAISE(int64_t retain, args.Int("--retain", 0));
  ARROW_ASSIGN_OR_RAISE(int64_t max_consumers, args.Int("--max-consumers", 64));
  ARROW_ASSIGN_OR_RAISE(int64_t wait_consumers, args.Int("--wait-consumers", 0));
  ARROW_ASSIGN_OR_RAISE(int64_t drain_timeout_ms, args.Int("--drain-timeout-ms", 10000));
  if (!options.ingest) {
    for (const char* name : {"--mode", "--ring-size", "--retain", "--max-consumers",
                             "--wait-consumers", "--drain-timeout-ms"}) {
      ARROW_RETURN_NOT_OK(args.Reject(name, "applies only with --ingest"));
    }
  }
  ARROW_RETURN_NOT_OK(args.CheckAllUsed("does not apply to flight-serve"));
  if (max_in_flight < 0 || max_in_flight > INT32_MAX || connect_timeout_ms < 0 ||
      connect_timeout_ms > INT32_MAX) {
    return UsageError("need --max-in-flight >= 0 and --connect-timeout-ms >= 0");
  }
  if (retain < 0 || retain > INT32_MAX || max_consumers < 1 || max_consumers > INT32_MAX ||
      wait_consumers < 0 || wait_consumers > INT32_MAX || drain_timeout_ms < 0 ||
      drain_timeout_ms > INT32_MAX) {
    return UsageError(
        "need --retain, --wait-consumers, --drain-timeout-ms >= 0, --max-consumers >= 1");
  }
  if (validate == "basic")
    options.consumer.validation = Validation::kBasic;
  else if (validate != "full")
    return UsageError("--validate takes full or basic");
  if (mode != "ring" && mode != "sealed") return UsageError("--mode takes ring or sealed");
  options.consumer.max_in_flight = static_cast<int>(max_in_flight);
  options.consumer.connect_timeout_ms = static_cast<int>(connect_timeout_ms);
  options.producer.mode = mode == "ring" ? MemoryMode::kRing : MemoryMode::kSealed;
  if (max_in_flight > 0) options.producer.max_in_flight = static_cast<int>(max_in_flight);
  options.producer.retain = static_cast<int>(retain);
  options.producer.max_consumers = static_cast<int>(max_consumers);
  options.ingest_wait_consumers = static_cast<int>(wait_consumers);
  options.ingest_drain_timeout_ms = static_cast<int>(drain_timeout_ms);

  // Blocked before gRPC starts its threads, so that they inherit the mask and sigwait below
  // receives the signal instead of any of them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);

  auto started = FlightBridge::Start(options);
  if (!started.ok()) return AsUsage(started.status());
  auto bridge = std::move(*started);
  // The address alone on stdout (port 0 picks a free one), for scripts; the rest on stderr.
  std::cout << bridge->location() << std::endl;
  std::cerr << "shmarrow flight-serve: " << (options.ingest ? "ingesting into and " : "")
            << "serving '" << options.socket << "' at " << bridge->location()
            << (options.token.empty() ? "" : " (bearer token required)")
            << "; SIGINT or SIGTERM stops" << std::endl;
  int received = 0;
  sigwait(&stop_signals, &received);
  ARROW_RETURN_NOT_OK(bridge->Shutdown());
  const auto stats = bridge->stats();
  std::cerr << "shmarrow flight-serve: stopped; " << stats.streams_served << " streams, "
            << stats.batches_sent << " batches sent, " << stats.calls_refused << " calls refused, "
            << stats.batches_ingested << " batches ingested" << std::endl;
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
