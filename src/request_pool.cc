#include "request_pool.h"

#include <algorithm>

namespace shmarrow::internal {

RequestPool::RequestPool(const ProducerOptions& options, Runner run)
    : max_threads_(std::max(options.request_threads, 1)),
      max_requests_(options.max_requests),
      max_per_consumer_(options.max_requests_per_consumer),
      run_(std::move(run)) {}

std::optional<proto::Error> RequestPool::Submit(Job job) {
  std::lock_guard lock(mutex_);
  std::vector<uint32_t>& open = open_[job.consumer];
  const auto in_flight = static_cast<int>(open.size());
  if (!job.handler) {
    return proto::Error{proto::ErrorCode::kHandler, "this producer has no request handler"};
  }
  if (std::count(open.begin(), open.end(), job.stream) > 0) {
    return proto::Error{proto::ErrorCode::kHandler,
                        "request " + std::to_string(job.stream) + " is already in flight"};
  }
  if (in_flight >= max_per_consumer_) {
    return proto::Error{proto::ErrorCode::kLimit, "this consumer already has " +
                                                      std::to_string(in_flight) +
                                                      " requests in flight (limit " +
                                                      std::to_string(max_per_consumer_) + ")"};
  }
  if (in_flight_ >= max_requests_) {
    return proto::Error{proto::ErrorCode::kLimit,
                        "the producer already has " + std::to_string(in_flight_) +
                            " requests in flight (limit " + std::to_string(max_requests_) + ")"};
  }
  if (stopped_) return proto::Error{proto::ErrorCode::kShutdown, "producer closed"};
  open.push_back(job.stream);
  ++in_flight_;
  jobs_.push_back(std::move(job));
  if (idle_workers_ == 0 && workers_.size() < static_cast<size_t>(max_threads_)) {
    workers_.emplace_back([this] { Work(); });
  }
  jobs_ready_.notify_one();
  return std::nullopt;
}

void RequestPool::Finished(uint32_t consumer, uint32_t stream) {
  std::lock_guard lock(mutex_);
  --in_flight_;
  auto it = open_.find(consumer);
  if (it == open_.end()) return;  // cancelled meanwhile
  std::erase(it->second, stream);
  if (it->second.empty()) open_.erase(it);
}

void RequestPool::Cancel(uint32_t consumer) {
  std::lock_guard lock(mutex_);
  const auto cancelled =
      std::erase_if(jobs_, [consumer](const Job& job) { return job.consumer == consumer; });
  in_flight_ -= static_cast<int>(cancelled);
  open_.erase(consumer);
}

void RequestPool::Stop() {
  {
    std::lock_guard lock(mutex_);
    if (stopped_) return;
    stopped_ = true;
  }
  jobs_ready_.notify_all();
  // No worker starts once stopped_ is set: the list no longer changes.
  for (auto& worker : workers_) worker.join();
  std::lock_guard lock(mutex_);
  jobs_.clear();
}

void RequestPool::Work() {
  std::unique_lock lock(mutex_);
  for (;;) {
    ++idle_workers_;
    jobs_ready_.wait(lock, [this] { return stopped_ || !jobs_.empty(); });
    --idle_workers_;
    if (stopped_) return;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    run_(job);
    lock.lock();
  }
}

}  // namespace shmarrow::internal
