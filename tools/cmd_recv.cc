#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <sstream>
#include <thread>

#include "commands.h"
#include "data_gen.h"
#include "report.h"
#include "shmarrow/connect.h"
#include "shmarrow/consumer.h"
#include "shmarrow/handover.h"
#include "shmarrow/shared_stream.h"
#include "shmarrow/summary.h"
#include "summary_by_name.h"

namespace shmarrow::cli {
namespace {

std::string SealList(int seals) {
  static constexpr struct {
    int bit;
    const char* name;
  } kOrder[] = {{0x1, "F_SEAL_SEAL"},
                {0x2, "F_SEAL_SHRINK"},
                {0x4, "F_SEAL_GROW"},
                {0x8, "F_SEAL_WRITE"},
                {0x10, "F_SEAL_FUTURE_WRITE"}};
  std::string out;
  for (const auto& seal : kOrder) {
    if (seals & seal.bit) out += (out.empty() ? "" : "|") + std::string(seal.name);
  }
  return out.empty() ? "none" : out;
}

arrow::Result<std::vector<std::string>> SplitColumns(const std::string& list) {
  std::vector<std::string> names;
  std::stringstream items(list);
  std::string name;
  while (std::getline(items, name, ',')) {
    if (name.empty()) return UsageError("--columns '" + list + "' has an empty column name");
    names.push_back(name);
  }
  if (names.empty()) return UsageError("--columns needs at least one column name");
  return names;
}

arrow::Result<std::vector<unsigned>> SplitUids(const std::string& list) {
  std::vector<unsigned> uids;
  std::stringstream items(list);
  std::string item;
  while (std::getline(items, item, ',')) {
    char* end = nullptr;
    const unsigned long uid = std::strtoul(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0' || uid > UINT32_MAX) {
      return UsageError("--allow-uid '" + list + "' is not a comma-separated list of uids");
    }
    uids.push_back(static_cast<unsigned>(uid));
  }
  return uids;
}

}  // namespace

arrow::Status RunRecv(Args& args) {
  // --from: a socket path or a Flight address (grpc://...); --socket: a socket path.
  const bool has_from = args.Has("--from");
  if (has_from && args.Has("--socket")) return UsageError("give --from or --socket, not both");
  const std::string socket =
      has_from ? args.String("--from", "") : args.String("--socket", kDefaultSocketPath);
  ARROW_ASSIGN_OR_RAISE(int64_t connect_timeout_ms, args.Int("--connect-timeout-ms", 0));
  ARROW_ASSIGN_OR_RAISE(int64_t read_timeout_ms, args.Int("--read-timeout-ms", -1));
  const std::string validate = args.String("--validate", "full");
  const bool json = args.Flag("--json");
  ConsumerOptions options;
  options.require_seals = !args.Flag("--allow-unsealed");
  options.lossy = args.Flag("--lossy");
  options.start_at_oldest = args.Flag("--from-oldest");
  ARROW_ASSIGN_OR_RAISE(int64_t max_in_flight, args.Int("--max-in-flight", 0));
  const bool has_columns = args.Has("--columns");
  const std::string columns = args.String("--columns", "");
  const bool has_expect = args.Has("--expect-schema");
  const std::string expect = args.String("--expect-schema", "");
  const bool subset = args.Flag("--schema-subset");
  ARROW_ASSIGN_OR_RAISE(int64_t delay_ms, args.Int("--delay-ms", 0));
  const bool has_request = args.Has("--request");
  const std::string request = args.String("--request", "");
  ARROW_ASSIGN_OR_RAISE(options.remote.token, FlightToken(args));
  ARROW_ASSIGN_OR_RAISE(options.remote.tls_root_certs, OptionalFile(args, "--tls-roots"));
  options.remote.tls_override_hostname = args.String("--tls-hostname", "");
  options.remote.upgrade_to_shared_memory = !args.Flag("--no-upgrade");
  options.allow_any_uid = args.Flag("--allow-any-uid");
  const std::string allowed_uids = args.String("--allow-uid", "");
  ARROW_RETURN_NOT_OK(args.CheckAllUsed("does not apply to recv"));
  ARROW_ASSIGN_OR_RAISE(options.allowed_uids, SplitUids(allowed_uids));

  if (validate == "basic")
    options.validation = Validation::kBasic;
  else if (validate != "full")
    return UsageError("--validate takes full or basic");
  if (connect_timeout_ms < 0 || connect_timeout_ms > INT32_MAX || read_timeout_ms < -1 ||
      read_timeout_ms > INT32_MAX) {
    return UsageError(
        "need --connect-timeout-ms >= 0 and --read-timeout-ms >= -1 (-1: wait forever)");
  }
  if (max_in_flight < 0 || max_in_flight > INT32_MAX || delay_ms < 0) {
    return UsageError("need --max-in-flight >= 0 (0: the producer's limit) and --delay-ms >= 0");
  }
  if (subset && !has_expect) return UsageError("--schema-subset needs --expect-schema");
  options.connect_timeout_ms = static_cast<int>(connect_timeout_ms);
  options.read_timeout_ms = static_cast<int>(read_timeout_ms);
  options.max_in_flight = static_cast<int>(max_in_flight);
  if (has_request) {
    // Only the answer is read: hold the stream's batches as little as possible, so that this
    // consumer does not hold the producer back while it waits.
    options.lossy = true;
    if (max_in_flight == 0) options.max_in_flight = 1;
  }
  if (has_columns) {
    ARROW_ASSIGN_OR_RAISE(options.columns, SplitColumns(columns));
  }
  if (has_expect) {
    auto expected = ParseSchemaSpec(expect);
    if (!expected.ok()) return UsageError("--expect-schema: " + expected.status().message());
    options.expect_schema = *expected;
    options.match = subset ? SchemaMatch::kSubset : SchemaMatch::kExact;
  }

  ARROW_ASSIGN_OR_RAISE(auto consumer, ConnectAny(socket, options));
  const auto handover = consumer->handover_stream();
  if (handover != nullptr && !handover->mapped()) {
    std::cerr << "shmarrow recv: the memfd is not sealed; its " << handover->size()
              << " bytes were copied into private memory (--allow-unsealed)" << std::endl;
  }

  // The stream, or the answer to a request.
  std::shared_ptr<arrow::RecordBatchReader> reader = consumer;
  if (has_request) {
    ARROW_ASSIGN_OR_RAISE(reader, consumer->Request(request));
  }
  SummaryByName summary(reader->schema());
  Report report(reader->schema());
  bool in_mapping = true;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ARROW_RETURN_NOT_OK(reader->ReadNext(&batch));
    if (batch == nullptr) break;
    if (handover != nullptr) in_mapping = in_mapping && AllBuffersInside(*handover, *batch);
    ARROW_RETURN_NOT_OK(summary.Add(*batch));
    if (!json) report.Add(batch);
    // A deliberately slow consumer holds each batch while it "works".
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
  }
  // After a schema change, the stream's last schema.
  summary.SetSchema(reader->schema());
  report.SetSchema(reader->schema());

  if (!json) {
    report.Print(std::cout);
    return arrow::Status::OK();
  }
  std::ostringstream extra;
  if (handover != nullptr) {
    // The single hand-over: the same members as always (and as python -m shmarrow.recv).
    extra << "\"memfd\":{\"inode\":" << handover->inode() << ",\"bytes\":" << handover->size()
          << ",\"seals\":\"" << SealList(handover->seals())
          << "\"},\"buffers_in_mapping\":" << (in_mapping ? "true" : "false");
  } else {
    const auto stats = consumer->stats();
    extra << "\"mode\":" << JsonQuote(consumer->mode()) << ",\"dropped\":" << stats.dropped
          << ",\"schema_changes\":" << stats.schema_changes;
    if (has_request) extra << ",\"request\":" << JsonQuote(request);
  }
  std::cout << summary.ToJson(extra.str()) << std::endl;
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
