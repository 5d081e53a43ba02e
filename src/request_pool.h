// Requests (protocol streams 1 and up) served by a bounded pool of worker threads: at most
// max_requests queued or running in all, max_requests_per_consumer per consumer, and at most
// request_threads handlers running at once. Beyond a limit a request is refused with the
// protocol's kLimit error.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "protocol.h"
#include "shmarrow/producer.h"

namespace shmarrow::internal {

namespace proto = protocol;

class RequestPool {
 public:
  struct Job {
    uint32_t consumer = 0;
    uint32_t stream = 0;
    std::string request;
    RequestHandler handler;
  };
  /// Runs one job on a worker thread, without the pool's lock; it must call Finished for it.
  using Runner = std::function<void(Job& job)>;

  RequestPool(const ProducerOptions& options, Runner run);
  ~RequestPool() { Stop(); }
  RequestPool(const RequestPool&) = delete;
  RequestPool& operator=(const RequestPool&) = delete;

  /// Queues `job` for a worker, or returns the Error that refuses it (no handler, the stream is
  /// already in flight, or a limit is reached).
  std::optional<proto::Error> Submit(Job job);
  /// The handler of the consumer's `stream` returned: the request no longer counts.
  void Finished(uint32_t consumer, uint32_t stream);
  /// The consumer is gone: its queued requests are dropped (running ones finish and find it
  /// gone).
  void Cancel(uint32_t consumer);
  /// Queued requests are dropped; waits for the running handlers to return.
  void Stop();

 private:
  void Work();  // a worker thread

  const int max_threads_;
  const int max_requests_;
  const int max_per_consumer_;
  const Runner run_;
  std::mutex mutex_;
  std::condition_variable jobs_ready_;
  std::deque<Job> jobs_;
  std::map<uint32_t, std::vector<uint32_t>> open_;  // per consumer: its streams queued or running
  int in_flight_ = 0;                               // queued or running, all consumers
  int idle_workers_ = 0;
  bool stopped_ = false;
  std::vector<std::thread> workers_;  // grows under mutex_ until stopped_
};

}  // namespace shmarrow::internal
