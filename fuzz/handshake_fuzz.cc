// libFuzzer target: the producer's handshake (src/handshake.{h,cc}), the pure function from a
// consumer's first datagram and a view of the producer to a Welcome or a refusal, driven with
// arbitrary bytes against a ring-mode and a sealed-mode view (with retained batches of an older
// schema, so replays are chosen too). Invariants beyond "no crash": a refusal carries a message;
// an admission's Welcome re-decodes, its schema deserializes and equals the (projected) schema of
// the first batch the consumer gets, and it promises only what the view can give (credits within
// max_in_flight, batch runs and a queue only in ring mode, the queue only where one is free).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>

#include "fixtures.h"
#include "handshake.h"
#include "protocol.h"
#include "schema_match.h"

namespace internal = shmarrow::internal;
namespace proto = internal::protocol;

namespace {

void Require(bool condition, const char* what) {
  if (!condition) {
    std::fprintf(stderr, "handshake_fuzz: %s\n", what);
    std::abort();
  }
}

std::shared_ptr<internal::Published> Retained(std::shared_ptr<arrow::RecordBatch> batch) {
  auto published = std::make_shared<internal::Published>();
  published->batch = std::move(batch);
  return published;
}

struct Producer {
  shmarrow::ProducerOptions options;
  std::deque<std::shared_ptr<internal::Published>> retained;
  internal::ProducerView view;
};

Producer* MakeProducer(proto::Mode mode) {
  auto* p = new Producer;
  p->options.max_consumers = 4;
  p->options.max_in_flight = 8;
  auto current = shmarrow::fuzz::CanonicalBatch();
  // An older schema (the first two columns) before the current one: replays start after it
  // or with it, depending on what the Hello asks for.
  auto older = current->SelectColumns({0, 1}).ValueOrDie();
  p->retained = {Retained(older), Retained(current), Retained(current)};
  p->view.schema = current->schema();
  p->view.options = &p->options;
  p->view.mode = mode;
  p->view.ring_size = mode == proto::Mode::kRing ? 1 << 20 : 0;
  p->view.consumers = 1;
  p->view.queue_free = mode == proto::Mode::kRing;
  p->view.queue_capacity = mode == proto::Mode::kRing ? 9 : 0;
  p->view.consumer_id = 7;
  p->view.retained = &p->retained;
  return p;
}

void Check(const internal::ProducerView& view, const internal::HandshakeOutcome& outcome) {
  if (outcome.refusal) {
    Require(!outcome.refusal->message.empty(), "a refusal without a message");
    return;
  }
  const internal::Admission& admission = outcome.admission;
  const proto::Welcome& welcome = admission.welcome;
  Require(welcome.mode == view.mode && welcome.consumer_id == view.consumer_id,
          "the Welcome names another mode or consumer");
  Require((welcome.features & ~proto::kAllFeatures) == 0, "the Welcome offers unknown features");
  proto::Writer writer;
  proto::Reader reader(proto::Encode(writer, welcome));
  auto header = reader.ReadHeader();
  Require(header.ok() && header->type == proto::Type::kWelcome, "the Welcome's header");
  Require(proto::DecodeWelcome(reader).ok(), "the Welcome does not decode");
  auto schema = internal::DeserializeSchema(welcome.schema);
  Require(schema.ok(), "the Welcome's schema does not deserialize");
  if (admission.describe) {
    Require(admission.replay.empty() && !admission.wants_queue, "a describer gets batches");
    return;
  }
  const auto& terms = admission.terms;
  Require(terms.credits > 0 && terms.credits <= static_cast<size_t>(view.options->max_in_flight),
          "credits beyond max_in_flight");
  Require(welcome.max_in_flight == terms.credits, "the Welcome's credits differ from the terms");
  Require(view.mode == proto::Mode::kRing || (!terms.batch_runs && !admission.wants_queue),
          "batch runs or a queue in sealed mode");
  Require(!admission.wants_queue || view.queue_free, "a queue where none is free");
  Require(((welcome.features & proto::kFeatureQueue) != 0) == admission.wants_queue,
          "the Welcome's queue feature differs from the terms");
  Require(admission.first_schema != nullptr, "no first schema");
  auto first = admission.first_schema;
  if (!terms.projection.empty()) first = internal::ProjectSchema(*first, terms.projection);
  Require((*schema)->Equals(*first), "the Welcome's schema is not the first batch's");
  for (const auto& published : admission.replay) {
    bool retained = false;
    for (const auto& r : *view.retained) retained |= r == published;
    Require(retained, "a replayed batch that was not retained");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static Producer* ring = MakeProducer(proto::Mode::kRing);
  static Producer* sealed = MakeProducer(proto::Mode::kSealed);
  const std::span<const uint8_t> datagram(data, size);
  for (const Producer* producer : {ring, sealed}) {
    auto outcome = internal::Handshake(datagram, producer->view);
    if (outcome.ok()) Check(producer->view, *outcome);
  }
  return 0;
}
