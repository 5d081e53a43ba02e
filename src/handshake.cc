#include "handshake.h"

#include <algorithm>
#include <string>

#include "schema_match.h"

namespace shmarrow::internal {
namespace {

HandshakeOutcome Refuse(proto::ErrorCode code, std::string message) {
  HandshakeOutcome outcome;
  outcome.refusal = proto::Error{code, std::move(message)};
  return outcome;
}

/// The answer to a describing Hello (checked like any other): no ring, no queue, no credits.
arrow::Result<HandshakeOutcome> DescribeOnly(const proto::Hello& hello, const ProducerView& view) {
  HandshakeOutcome outcome;
  Admission& admission = outcome.admission;
  admission.describe = true;
  proto::Welcome& welcome = admission.welcome;
  welcome.features = hello.features & proto::kFeatureDescribe;
  welcome.mode = view.mode;
  welcome.consumer_id = view.consumer_id;
  welcome.ring_size = view.ring_size;
  welcome.max_consumers = static_cast<uint32_t>(view.options->max_consumers);
  welcome.max_in_flight = static_cast<uint32_t>(view.options->max_in_flight);
  std::shared_ptr<arrow::Schema> schema = view.schema;
  if (!hello.columns.empty()) {
    ARROW_ASSIGN_OR_RAISE(auto projection, ProjectionIndices(*view.schema, hello.columns));
    schema = ProjectSchema(*view.schema, projection);
  }
  ARROW_ASSIGN_OR_RAISE(welcome.schema, SerializeSchema(*schema));
  return outcome;
}

}  // namespace

arrow::Result<HandshakeOutcome> Handshake(std::span<const uint8_t> datagram,
                                          const ProducerView& view) {
  proto::Reader reader(datagram);
  ARROW_ASSIGN_OR_RAISE(auto header, reader.ReadHeader());
  if (header.type != proto::Type::kHello) {
    return proto::ProtocolError("expected Hello, got ", proto::TypeName(header.type));
  }
  ARROW_ASSIGN_OR_RAISE(auto hello, proto::DecodeHello(reader));
  const ProducerOptions& options = *view.options;
  if (hello.major != proto::kMajorVersion) {
    return Refuse(proto::ErrorCode::kVersion,
                  "protocol version " + std::to_string(hello.major) + "." +
                      std::to_string(hello.minor) + " is not supported: this producer speaks " +
                      std::to_string(proto::kMajorVersion) + "." +
                      std::to_string(proto::kMinorVersion) + " (major versions must match)");
  }
  const bool describe =
      (hello.flags & proto::kHelloDescribe) && (hello.features & proto::kFeatureDescribe);
  if (!describe && view.consumers >= options.max_consumers) {
    return Refuse(proto::ErrorCode::kLimit,
                  "producer already serves " + std::to_string(view.consumers) +
                      " consumers (limit " + std::to_string(options.max_consumers) + ")");
  }
  std::shared_ptr<arrow::Schema> expected;
  const auto match =
      hello.flags & proto::kHelloSchemaSubset ? SchemaMatch::kSubset : SchemaMatch::kExact;
  if (!hello.required_schema.empty()) {
    ARROW_ASSIGN_OR_RAISE(expected, DeserializeSchema(hello.required_schema));
    auto status = CheckSchema(*expected, *view.schema, match);
    if (!status.ok()) return Refuse(proto::ErrorCode::kSchemaMismatch, status.message());
  }
  if (!hello.columns.empty()) {
    auto indices = ProjectionIndices(*view.schema, hello.columns);
    if (!indices.ok()) return Refuse(proto::ErrorCode::kSchemaMismatch, indices.status().message());
  }
  if (describe) return DescribeOnly(hello, view);

  HandshakeOutcome outcome;
  Admission& admission = outcome.admission;
  // Retained batches to replay (start at oldest): they may predate a schema change, so the
  // consumer is welcomed with the schema of the first one and told of each change in between.
  // Only the newest run of batches whose schema suits this consumer is replayed.
  if (hello.flags & proto::kHelloStartAtOldest) {
    for (const auto& published : *view.retained) {
      const auto& schema = *published->batch->schema();
      const bool suits = (expected == nullptr || CheckSchema(*expected, schema, match).ok()) &&
                         (hello.columns.empty() || ProjectionIndices(schema, hello.columns).ok());
      if (suits) {
        admission.replay.push_back(published);
      } else {
        admission.replay.clear();
      }
    }
  }
  admission.first_schema =
      admission.replay.empty() ? view.schema : admission.replay.front()->batch->schema();
  Session::Terms& terms = admission.terms;
  std::shared_ptr<arrow::Schema> schema = admission.first_schema;
  if (!hello.columns.empty()) {
    ARROW_ASSIGN_OR_RAISE(terms.projection,
                          ProjectionIndices(*admission.first_schema, hello.columns));
    terms.projection_names = hello.columns;
    schema = ProjectSchema(*admission.first_schema, terms.projection);
  }
  terms.lossy = hello.flags & proto::kHelloLossy;
  // The features both versions know: this producer's may be limited (options.protocol_minor).
  const uint16_t spoken =
      options.protocol_minor < 0
          ? proto::kMinorVersion
          : static_cast<uint16_t>(std::min<int>(options.protocol_minor, proto::kMinorVersion));
  const uint32_t known = proto::FeaturesOf(std::min(hello.minor, spoken));
  terms.batch_runs =
      view.mode == proto::Mode::kRing && (hello.features & known & proto::kFeatureBatchRuns);
  terms.credits = static_cast<size_t>(options.max_in_flight);
  if (hello.max_in_flight > 0) terms.credits = std::min<size_t>(terms.credits, hello.max_in_flight);

  proto::Welcome& welcome = admission.welcome;
  welcome.minor = spoken;
  welcome.features = hello.features & known;
  if (!terms.batch_runs) welcome.features &= ~proto::kFeatureBatchRuns;
  welcome.mode = view.mode;
  welcome.consumer_id = view.consumer_id;
  welcome.ring_size = view.ring_size;
  welcome.max_consumers = static_cast<uint32_t>(options.max_consumers);
  welcome.max_in_flight = static_cast<uint32_t>(terms.credits);
  admission.wants_queue = (welcome.features & proto::kFeatureQueue) && view.queue_free &&
                          terms.credits < view.queue_capacity;
  if (!admission.wants_queue) {
    welcome.features &= ~(proto::kFeatureQueue | proto::kFeatureWakeRegion);
  }
  ARROW_ASSIGN_OR_RAISE(welcome.schema, SerializeSchema(*schema));
  return outcome;
}

}  // namespace shmarrow::internal
