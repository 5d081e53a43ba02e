#include "handover_consumer.h"

#include <sys/socket.h>

#include <optional>

#include "consumer_checks.h"
#include "handover_internal.h"
#include "schema_match.h"

namespace shmarrow::internal {
namespace {

class HandoverConsumer final : public Consumer {
 public:
  explicit HandoverConsumer(ConsumerOptions options) : options_(std::move(options)) {}

  arrow::Status Open(const std::string& address, UnixSocket* connected);

  std::shared_ptr<arrow::Schema> schema() const override { return schema_; }
  arrow::Status ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) override;
  arrow::Result<Poll> TryNext(std::shared_ptr<arrow::RecordBatch>* batch) override {
    ARROW_RETURN_NOT_OK(ReadNext(batch));  // the whole stream is in memory: never waits
    return *batch != nullptr ? Poll::kBatch : Poll::kEnd;
  }
  int fd() const override { return -1; }
  arrow::Result<std::shared_ptr<arrow::RecordBatchReader>> Request(std::string_view) override {
    return arrow::Status::NotImplemented("the single hand-over has no requests");
  }
  ConsumerStats stats() const override { return stats_; }
  std::string mode() const override { return "handover"; }
  std::shared_ptr<SharedStream> handover_stream() const override { return stream_; }

 private:
  const ConsumerOptions options_;
  std::shared_ptr<SharedStream> stream_;
  std::shared_ptr<arrow::RecordBatchReader> reader_;
  std::shared_ptr<arrow::Schema> schema_;
  ConsumerStats stats_;
};

arrow::Status HandoverConsumer::Open(const std::string& address, UnixSocket* connected) {
  std::optional<UnixSocket> own;
  if (connected == nullptr) {
    ARROW_ASSIGN_OR_RAISE(own,
                          UnixSocket::Connect(address, SOCK_STREAM, options_.connect_timeout_ms));
    connected = &*own;
  }
  ARROW_RETURN_NOT_OK(CheckProducerUid(*connected, address, options_));
  // Its handshake: bounded by the read timeout, as the stream protocol's.
  ARROW_ASSIGN_OR_RAISE(
      UniqueFd fd, ReceiveHandedOverFd(*connected, address,
                                       options_.read_timeout_ms > 0 ? options_.read_timeout_ms
                                                                    : kHandoverReplyTimeoutMs));
  SharedStreamOptions stream_options;
  stream_options.validation = options_.validation;
  stream_options.require_seals = options_.require_seals;
  ARROW_ASSIGN_OR_RAISE(stream_, SharedStream::Open(std::move(fd), stream_options));
  ARROW_ASSIGN_OR_RAISE(reader_, stream_->OpenReader());
  schema_ = reader_->schema();
  if (options_.expect_schema != nullptr) {
    ARROW_RETURN_NOT_OK(CheckSchema(*options_.expect_schema, *schema_, options_.match));
  }
  if (!options_.columns.empty()) {
    ARROW_ASSIGN_OR_RAISE(auto indices, ProjectionIndices(*schema_, options_.columns));
    schema_ = ProjectSchema(*schema_, indices);
  }
  return arrow::Status::OK();
}

arrow::Status HandoverConsumer::ReadNext(std::shared_ptr<arrow::RecordBatch>* batch) {
  batch->reset();
  ARROW_RETURN_NOT_OK(reader_->ReadNext(batch));
  if (*batch != nullptr) {
    ARROW_ASSIGN_OR_RAISE(*batch, ProjectColumns(std::move(*batch), options_.columns));
    ++stats_.batches;
  }
  return arrow::Status::OK();
}

}  // namespace

arrow::Result<std::shared_ptr<Consumer>> OpenHandoverConsumer(const std::string& address,
                                                              const ConsumerOptions& options,
                                                              UnixSocket* connected) {
  auto consumer = std::make_shared<HandoverConsumer>(options);
  ARROW_RETURN_NOT_OK(consumer->Open(address, connected));
  return consumer;
}

}  // namespace shmarrow::internal
