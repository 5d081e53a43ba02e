// Learning a producer's schema without becoming its consumer (docs/protocol.md, "Describing").
#include <arrow/type.h>
#include <sys/socket.h>

#include <vector>

#include "flight_internal.h"
#include "protocol.h"
#include "schema_match.h"
#include "shmarrow/error.h"
#include "unix_socket.h"

namespace shmarrow::internal::flight {
namespace {

namespace proto = internal::protocol;

constexpr int kDescribeTimeoutMs = 10000;

}  // namespace

arrow::Result<std::shared_ptr<arrow::Schema>> DescribeProducer(const std::string& socket,
                                                               const ConsumerOptions& options) {
  auto connected = UnixSocket::Connect(socket, SOCK_SEQPACKET, options.connect_timeout_ms);
  if (!connected.ok()) {
    // No stream producer answered. A single hand-over hands every client the whole stream, so
    // reading its schema takes nothing from anyone; for nobody listening, Connect says so.
    ConsumerOptions at_once = options;
    at_once.connect_timeout_ms = 0;
    ARROW_ASSIGN_OR_RAISE(auto consumer, Consumer::Connect(socket, at_once));
    return consumer->schema();
  }
  proto::Hello hello;
  hello.flags = proto::kHelloDescribe;
  if (options.match == SchemaMatch::kSubset) hello.flags |= proto::kHelloSchemaSubset;
  hello.columns = options.columns;
  if (options.expect_schema != nullptr) {
    ARROW_ASSIGN_OR_RAISE(hello.required_schema, SerializeSchema(*options.expect_schema));
  }
  proto::Writer writer;
  // A producer that refuses (another uid) may close before the Hello arrives: read why first.
  const arrow::Status hello_sent = connected->Send(proto::Encode(writer, hello), {});
  std::vector<uint8_t> buffer(proto::kMaxMessageSize);
  ARROW_ASSIGN_OR_RAISE(auto received, connected->Receive(buffer, 1, kDescribeTimeoutMs));
  if (received.bytes <= 0) {
    ARROW_RETURN_NOT_OK(hello_sent);
    if (received.bytes == 0) {
      return MakeError(arrow::StatusCode::IOError, ErrorCode::kProducerGone, "producer at '",
                       socket, "' closed the connection when asked to describe its stream");
    }
    return MakeError(arrow::StatusCode::IOError, ErrorCode::kTimeout, "producer at '", socket,
                     "' did not answer within ", kDescribeTimeoutMs,
                     " ms when asked to describe its stream");
  }
  ARROW_ASSIGN_OR_RAISE(auto welcome,
                        proto::DecodeHandshakeAnswer(
                            std::span<const uint8_t>(buffer.data(), received.bytes), socket));
  if (!(welcome.features & proto::kFeatureDescribe)) {
    // A producer without the feature welcomed a consumer: leave before it is sent anything.
    (void)connected->Send(proto::EncodeBye(writer), {});
  }
  return DeserializeSchema(welcome.schema);
}

}  // namespace shmarrow::internal::flight
