// `shmarrow send --mode ring|sealed`: a shmarrow::Producer publishing generated batches.
#include <unistd.h>

#include <arrow/type.h>

#include <atomic>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <mutex>
#include <thread>

#include "commands.h"
#include "data_gen.h"
#include "shmarrow/handover.h"
#include "shmarrow/producer.h"
#include "shmarrow/summary.h"
#include "summary_by_name.h"

namespace shmarrow::cli {
namespace {

using Clock = std::chrono::steady_clock;

/// "\r published N/M batches, R rows" on a terminal, at most 10 times a second.
class Progress {
 public:
  explicit Progress(int64_t total) : total_(total), enabled_(::isatty(STDERR_FILENO) == 1) {}
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;
  /// An unfinished line (an error stopped publishing) ends before the error is printed.
  ~Progress() {
    if (open_) std::fputc('\n', stderr);
  }
  void Update(int64_t batches, int64_t rows, bool last = false) {
    if (!enabled_) return;
    const auto now = Clock::now();
    if (!last && open_ && now - shown_ < std::chrono::milliseconds(100)) return;
    shown_ = now;
    open_ = !last;
    std::fprintf(stderr, "\r published %lld/%lld batches, %lld rows%s",
                 static_cast<long long>(batches), static_cast<long long>(total_),
                 static_cast<long long>(rows), last ? "\n" : "");
    std::fflush(stderr);
  }

 private:
  int64_t total_;
  bool enabled_;
  bool open_ = false;  // a line without its newline is on the terminal
  Clock::time_point shown_{};
};

/// The published schema, read by the request handler on the producer's threads.
class CurrentSchema {
 public:
  explicit CurrentSchema(std::shared_ptr<arrow::Schema> schema) : schema_(std::move(schema)) {}
  std::shared_ptr<arrow::Schema> Get() const {
    std::lock_guard lock(mutex_);
    return schema_;
  }
  void Set(std::shared_ptr<arrow::Schema> schema) {
    std::lock_guard lock(mutex_);
    schema_ = std::move(schema);
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<arrow::Schema> schema_;
};

/// The request handler of --serve-requests: "rows=N" answers with one generated batch of N rows
/// of the current schema.
arrow::Status ServeRequest(const CurrentSchema& current, std::string_view request,
                           ResponseWriter& response, uint64_t seed, double null_fraction) {
  constexpr std::string_view kRows = "rows=";
  int64_t rows = -1;
  if (request.substr(0, kRows.size()) == kRows) {
    const char* begin = request.data() + kRows.size();
    const char* end = request.data() + request.size();
    auto [stop, err] = std::from_chars(begin, end, rows);
    if (err != std::errc() || stop != end || begin == end) rows = -1;
  }
  if (rows < 0) return arrow::Status::Invalid("unknown request '", request, "'");
  arrow::MemoryPool* pool = response.pool();
  if (pool == nullptr) return arrow::Status::OutOfMemory("no shared memory for the answer");
  BatchGenerator generator(current.Get(), seed, null_fraction);
  ARROW_ASSIGN_OR_RAISE(auto batch, generator.Next(rows, pool));
  return response.Write(batch);
}

}  // namespace

arrow::Status RunPublish(Args& args, const std::string& mode) {
  ARROW_ASSIGN_OR_RAISE(auto generator_options, ParseGeneratorOptions(args));
  const auto& [socket, rows, batches, spec, null_fraction, seed] = generator_options;
  ProducerOptions options;
  ARROW_ASSIGN_OR_RAISE(options.ring_size, args.Bytes("--ring-size", options.ring_size));
  ARROW_ASSIGN_OR_RAISE(double rate, args.Double("--rate", 0));
  // As the single hand-over serves one client by default: a stream published to nobody is lost.
  ARROW_ASSIGN_OR_RAISE(int64_t wait_consumers, args.Int("--wait-consumers", 1));
  ARROW_ASSIGN_OR_RAISE(int64_t accept_timeout_ms, args.Int("--accept-timeout-ms", -1));
  ARROW_ASSIGN_OR_RAISE(int64_t block_timeout_ms, args.Int("--block-timeout-ms", -1));
  ARROW_ASSIGN_OR_RAISE(int64_t max_in_flight, args.Int("--max-in-flight", options.max_in_flight));
  ARROW_ASSIGN_OR_RAISE(int64_t max_consumers, args.Int("--max-consumers", options.max_consumers));
  ARROW_ASSIGN_OR_RAISE(int64_t retain, args.Int("--retain", 0));
  ARROW_ASSIGN_OR_RAISE(int64_t change_at, args.Int("--schema-change-at", 0));
  const bool serve_requests = args.Flag("--serve-requests");
  ARROW_ASSIGN_OR_RAISE(int64_t drain_timeout_ms, args.Int("--drain-timeout-ms", 10000));
  const bool json = args.Flag("--json");
  auto pages = ParsePagePolicy(args.String("--pages", "auto"));
  if (!pages.ok()) return UsageError("--pages: " + pages.status().message());
  options.pages = *pages;
  for (const char* name : {"--from", "--clients", "--capacity"}) {
    ARROW_RETURN_NOT_OK(args.Reject(name, "applies only to the single hand-over (no --mode)"));
  }
  ARROW_RETURN_NOT_OK(args.CheckAllUsed("does not apply to send --mode"));

  constexpr int64_t kIntMax = INT32_MAX;
  if (rows < 0 || batches < 0 || !(null_fraction >= 0 && null_fraction <= 1)) {
    return UsageError("need --rows >= 0, --batches >= 0 and --null-fraction in [0, 1]");
  }
  if (!(rate >= 0) || wait_consumers < 0 || wait_consumers > kIntMax || retain < 0 ||
      retain > kIntMax || change_at < 0 || drain_timeout_ms < 0 || drain_timeout_ms > kIntMax) {
    return UsageError(
        "need --rate, --wait-consumers, --retain, --schema-change-at and "
        "--drain-timeout-ms >= 0");
  }
  if (block_timeout_ms < -1 || block_timeout_ms > kIntMax || accept_timeout_ms < -1 ||
      accept_timeout_ms > kIntMax) {
    return UsageError("need --block-timeout-ms and --accept-timeout-ms >= -1 (-1: forever)");
  }
  if (max_in_flight < 1 || max_in_flight > kIntMax || max_consumers < 1 ||
      max_consumers > kIntMax) {
    return UsageError("need --max-in-flight >= 1 and --max-consumers >= 1");
  }
  options.mode = mode == "ring" ? MemoryMode::kRing : MemoryMode::kSealed;
  options.block_timeout_ms = static_cast<int>(block_timeout_ms);
  options.max_in_flight = static_cast<int>(max_in_flight);
  options.max_consumers = static_cast<int>(max_consumers);
  options.retain = static_cast<int>(retain);

  std::shared_ptr<arrow::Schema> schema;
  {
    auto parsed = ParseSchemaSpec(spec);
    if (!parsed.ok()) return UsageError("--schema: " + parsed.status().message());
    schema = *parsed;
  }
  // Installed before listening, so that no request finds the producer without its handler.
  auto current_schema = std::make_shared<CurrentSchema>(schema);
  if (serve_requests) {
    auto requests = std::make_shared<std::atomic<uint64_t>>(0);
    // Init-captures: clang before 16 cannot capture structured bindings by name.
    options.request_handler = [current_schema, requests, seed = seed,
                               null_fraction = null_fraction](std::string_view request,
                                                              ResponseWriter& response) {
      const uint64_t request_seed = static_cast<uint64_t>(seed) + 0x9E3779B9ULL * ++*requests;
      return ServeRequest(*current_schema, request, response, request_seed, null_fraction);
    };
  }
  ARROW_ASSIGN_OR_RAISE(auto producer, Producer::Listen(socket, schema, options));
  std::cerr << "shmarrow send: " << mode << " producer listening on " << socket;
  if (wait_consumers > 0) std::cerr << "; waiting for " << wait_consumers << " consumer(s)";
  std::cerr << std::endl;
  if (wait_consumers > 0) {
    ARROW_RETURN_NOT_OK(producer->WaitForConsumers(static_cast<int>(wait_consumers),
                                                   static_cast<int>(accept_timeout_ms)));
  }

  SummaryByName summary(schema);
  BatchGenerator generator(schema, static_cast<uint64_t>(seed), null_fraction);
  Progress progress(batches);
  const auto start = Clock::now();
  for (int64_t i = 0; i < batches; ++i) {
    if (change_at > 0 && i == change_at) {
      // Same columns plus an int64 column "extra" (its values come from a second generator).
      schema = *schema->AddField(schema->num_fields(), arrow::field("extra", arrow::int64()));
      ARROW_RETURN_NOT_OK(producer->ChangeSchema(schema));
      current_schema->Set(schema);
      generator = BatchGenerator(schema, static_cast<uint64_t>(seed) + 1, null_fraction);
    }
    if (rate > 0) {
      std::this_thread::sleep_until(start + std::chrono::duration_cast<Clock::duration>(
                                                std::chrono::duration<double>(i / rate)));
    }
    arrow::MemoryPool* pool = producer->pool();
    if (pool == nullptr) return arrow::Status::OutOfMemory("no shared memory for batch ", i + 1);
    // Built straight into shared memory (ring mode: waits for room per --block-timeout-ms).
    auto batch = generator.Next(rows, pool);
    if (!batch.ok()) {
      return batch.status().WithMessage("building batch ", i + 1, " of ", batches, ": ",
                                        batch.status().message());
    }
    ARROW_RETURN_NOT_OK(summary.Add(**batch));
    auto published = producer->Publish(*batch);
    if (!published.ok()) {
      return published.WithMessage("publishing batch ", i + 1, " of ", batches, ": ",
                                   published.message());
    }
    progress.Update(i + 1, summary.rows());
  }
  progress.Update(batches, summary.rows(), /*last=*/true);
  ARROW_RETURN_NOT_OK(producer->End());
  auto drained = producer->WaitUntilDrained(static_cast<int>(drain_timeout_ms));
  if (!drained.ok()) {
    std::cerr << "shmarrow send: closing after --drain-timeout-ms " << drain_timeout_ms << ": "
              << drained.message() << std::endl;
  }
  const ProducerStats stats = producer->stats();
  producer->Close();
  summary.SetSchema(schema);
  if (json) {
    std::cout << summary.ToJson("\"mode\":" + JsonQuote(mode) + ",\"socket\":" + JsonQuote(socket) +
                                ",\"producer\":{\"published\":" + std::to_string(stats.published) +
                                ",\"bytes_copied\":" + std::to_string(stats.bytes_copied) +
                                ",\"consumers_total\":" + std::to_string(stats.consumers_total) +
                                ",\"dropped\":" + std::to_string(stats.dropped) +
                                ",\"page_size\":" + std::to_string(stats.page_size) + "}")
              << std::endl;
  } else {
    std::cerr << "shmarrow send: published " << stats.published << " batches, " << summary.rows()
              << " rows to " << stats.consumers_total << " consumer(s) (" << stats.dropped
              << " batches dropped by lossy consumers, " << stats.bytes_copied
              << " body bytes copied; " << stats.page_size << "-byte pages)" << std::endl;
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
