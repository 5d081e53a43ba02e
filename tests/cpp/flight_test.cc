// The Flight bridge and the Flight consumer in one process: the same checksums as a shared-memory
// consumer, the same-host upgrade and its refusal, requests as tickets, and every refusal (unknown
// ticket, bad token, nobody listening, a non-loopback address) as a clear error. Remote clients in
// other processes, one killed midway, are in tests/python/test_flight.py.
#include <arrow/api.h>
#include <arrow/flight/client.h>
#include <arrow/util/io_util.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "shmarrow/connect.h"
#include "shmarrow/consumer.h"
#include "shmarrow/flight.h"
#include "shmarrow/producer.h"
#include "protocol.h"
#include "schema_match.h"
#include "shmarrow/summary.h"
#include "test_util.h"
#include "unix_socket.h"

namespace shmarrow {
namespace {

constexpr int kTimeoutMs = 20000;
constexpr int kBatches = 20;

std::shared_ptr<arrow::Schema> Schema() {
  return arrow::schema({arrow::field("id", arrow::int64()), arrow::field("name", arrow::utf8())});
}

arrow::Result<std::shared_ptr<arrow::RecordBatch>> MakeBatch(arrow::MemoryPool* pool, int seed) {
  arrow::Int64Builder ids(pool);
  arrow::StringBuilder names(pool);
  for (int i = 0; i < 500; ++i) {
    ARROW_RETURN_NOT_OK(ids.Append(int64_t{seed} * 1000 + i));
    ARROW_RETURN_NOT_OK(names.Append("row-" + std::to_string(seed * 7 + i)));
  }
  ARROW_ASSIGN_OR_RAISE(auto id_array, ids.Finish());
  ARROW_ASSIGN_OR_RAISE(auto name_array, names.Finish());
  return arrow::RecordBatch::Make(Schema(), 500, {id_array, name_array});
}

/// Reads to the end; the checksums of both columns.
arrow::Result<std::vector<uint64_t>> Checksums(arrow::RecordBatchReader& reader) {
  StreamSummary summary(reader.schema());
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ARROW_RETURN_NOT_OK(reader.ReadNext(&batch));
    if (batch == nullptr) break;
    summary.Add(*batch);
  }
  if (summary.batches() != kBatches) {
    return arrow::Status::Invalid("read ", summary.batches(), " batches, expected ", kBatches);
  }
  return std::vector<uint64_t>{*summary.checksum(0), *summary.checksum(1)};
}

ConsumerOptions Remote(bool upgrade) {
  ConsumerOptions options;
  options.read_timeout_ms = kTimeoutMs;
  options.remote.upgrade_to_shared_memory = upgrade;
  return options;
}

/// A Flight client of `bridge`.
arrow::Result<std::unique_ptr<arrow::flight::FlightClient>> ClientOf(const FlightBridge& bridge) {
  ARROW_ASSIGN_OR_RAISE(auto location, arrow::flight::Location::Parse(bridge.location()));
  return arrow::flight::FlightClient::Connect(location);
}

/// An ingest bridge of its own socket whose first DoPut waits for `consumers` local ones.
FlightBridgeOptions Ingest(int consumers) {
  FlightBridgeOptions options;
  options.socket = test_util::UniqueTempPath("ingest");
  options.ingest = true;
  options.ingest_wait_consumers = consumers;
  return options;
}

class FlightTest : public ::testing::Test {
 protected:
  void SetUp() override {
    socket_ = test_util::UniqueTempPath("flight");
    ASSERT_OK_AND_ASSIGN(producer_, Producer::Listen(socket_, Schema()));
  }
  void TearDown() override {
    if (producer_ != nullptr) producer_->Close();
  }

  arrow::Result<std::unique_ptr<FlightBridge>> StartBridge(FlightBridgeOptions options = {}) {
    options.socket = socket_;
    return FlightBridge::Start(options);
  }

  /// Publishes the batches once `consumers` are attached, then ends the stream.
  void PublishAll(int consumers) {
    ASSERT_OK(producer_->WaitForConsumers(consumers, kTimeoutMs));
    for (int seed = 0; seed < kBatches; ++seed) {
      ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(producer_->pool(), seed));
      ASSERT_OK(producer_->Publish(batch));
    }
    ASSERT_OK(producer_->End());
  }

  std::string socket_;
  std::shared_ptr<Producer> producer_;
};

TEST_F(FlightTest, RemoteConsumerReadsTheChecksumsOfALocalOne) {
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  EXPECT_EQ(bridge->location(), "grpc://127.0.0.1:" + std::to_string(bridge->port()));
  ASSERT_OK_AND_ASSIGN(auto local, ConnectAny(socket_, Remote(false)));
  ASSERT_OK_AND_ASSIGN(auto remote, ConnectAny(bridge->location(), Remote(false)));
  EXPECT_EQ(remote->mode(), "flight");
  EXPECT_TRUE(remote->schema()->Equals(*Schema()));
  std::vector<uint64_t> remote_sums;
  std::thread reader([&] {
    auto sums = Checksums(*remote);
    ASSERT_OK(sums);
    remote_sums = *sums;
  });
  PublishAll(2);  // the local consumer and the bridge's, for the remote one
  ASSERT_OK_AND_ASSIGN(auto local_sums, Checksums(*local));
  reader.join();
  EXPECT_EQ(remote_sums, local_sums);
  EXPECT_EQ(remote->stats().batches, kBatches);
  local.reset();
  remote.reset();
  ASSERT_OK(producer_->WaitUntilDrained(kTimeoutMs));
  EXPECT_EQ(producer_->stats().in_flight, 0);
  EXPECT_EQ(bridge->stats().batches_sent, kBatches);
}

TEST_F(FlightTest, DescribingIsNotConsuming) {
  namespace fl = arrow::flight;
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  const auto stream = fl::FlightDescriptor::Path({"stream"});
  ASSERT_OK_AND_ASSIGN(auto info, client->GetFlightInfo(stream));
  ASSERT_OK_AND_ASSIGN(auto schema_result, client->GetSchema(stream));
  ASSERT_OK_AND_ASSIGN(auto listing, client->ListFlights());
  ASSERT_OK_AND_ASSIGN(auto listed, listing->Next());
  ASSERT_NE(listed, nullptr);
  arrow::ipc::DictionaryMemo memo;
  ASSERT_OK_AND_ASSIGN(auto schema, schema_result->GetSchema(&memo));
  EXPECT_TRUE(schema->Equals(*Schema()));
  // Three descriptions, no consumer: none was counted, none is waited for.
  EXPECT_ERROR_CONTAINS(producer_->WaitForConsumers(1, 0), "no 1 consumers");
  EXPECT_EQ(producer_->stats().consumers_total, 0);
  ASSERT_EQ(info->endpoints().size(), 1u);
  ASSERT_OK_AND_ASSIGN(auto reader, client->DoGet(info->endpoints()[0].ticket));
  std::thread publisher([&] { PublishAll(1); });
  ASSERT_OK_AND_ASSIGN(auto table, reader->ToTable());
  publisher.join();
  EXPECT_EQ(table->num_rows(), kBatches * 500);  // from the first batch on
  EXPECT_EQ(producer_->stats().consumers_total, 1);
}

TEST_F(FlightTest, DescribingAsksWhatTheBridgesConsumersWouldGet) {
  namespace fl = arrow::flight;
  const auto stream = fl::FlightDescriptor::Path({"stream"});
  FlightBridgeOptions projected;
  projected.consumer.columns = {"name"};
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge(projected));
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  ASSERT_OK_AND_ASSIGN(auto schema_result, client->GetSchema(stream));
  arrow::ipc::DictionaryMemo memo;
  ASSERT_OK_AND_ASSIGN(auto schema, schema_result->GetSchema(&memo));
  EXPECT_TRUE(schema->Equals(*arrow::schema({arrow::field("name", arrow::utf8())})));

  // The producer refuses a describer as it would refuse the consumer, and says why.
  FlightBridgeOptions unknown;
  unknown.consumer.columns = {"nope"};
  ASSERT_OK_AND_ASSIGN(auto refusing, StartBridge(unknown));
  ASSERT_OK_AND_ASSIGN(auto refused_client, ClientOf(*refusing));
  EXPECT_ERROR_CONTAINS(refused_client->GetFlightInfo(stream).status(),
                        "refused: projection asks for column 'nope'");
  EXPECT_EQ(producer_->stats().consumers_total, 0);
}

TEST_F(FlightTest, AProducerWithoutTheDescribeFeatureIsToldByeAtOnce) {
  namespace proto = internal::protocol;
  const std::string path = test_util::UniqueTempPath("older");
  ASSERT_OK_AND_ASSIGN(auto listener, internal::UnixSocket::Listen(path, SOCK_SEQPACKET, 0600));
  uint32_t hello_flags = 0;
  std::string after_welcome;
  std::thread older([&] {  // a 1.1 producer: welcomes a consumer, knows nothing of describing
    ASSERT_OK_AND_ASSIGN(auto peer, listener.Accept(kTimeoutMs));
    std::vector<uint8_t> buffer(proto::kMaxMessageSize);
    ASSERT_OK_AND_ASSIGN(auto hello_datagram, peer.Receive(buffer, 0, kTimeoutMs));
    proto::Reader hello_reader(std::span<const uint8_t>(buffer.data(), hello_datagram.bytes));
    ASSERT_OK(hello_reader.ReadHeader());
    ASSERT_OK_AND_ASSIGN(auto hello, proto::DecodeHello(hello_reader));
    hello_flags = hello.flags;
    proto::Welcome welcome;
    welcome.features = hello.features & ~proto::kFeatureDescribe;
    ASSERT_OK_AND_ASSIGN(welcome.schema, internal::SerializeSchema(*Schema()));
    proto::Writer writer;
    ASSERT_OK(peer.Send(proto::Encode(writer, welcome), {}));
    ASSERT_OK_AND_ASSIGN(auto next, peer.Receive(buffer, 0, kTimeoutMs));
    proto::Reader next_reader(std::span<const uint8_t>(buffer.data(), next.bytes));
    ASSERT_OK_AND_ASSIGN(auto header, next_reader.ReadHeader());
    after_welcome = proto::TypeName(header.type);
  });
  FlightBridgeOptions options;
  options.socket = path;
  ASSERT_OK_AND_ASSIGN(auto bridge, FlightBridge::Start(options));
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  ASSERT_OK_AND_ASSIGN(auto schema_result,
                       client->GetSchema(arrow::flight::FlightDescriptor::Path({"stream"})));
  older.join();
  arrow::ipc::DictionaryMemo memo;
  ASSERT_OK_AND_ASSIGN(auto schema, schema_result->GetSchema(&memo));
  EXPECT_TRUE(schema->Equals(*Schema()));
  EXPECT_NE(hello_flags & proto::kHelloDescribe, 0u);
  EXPECT_EQ(after_welcome, "Bye");
}

TEST_F(FlightTest, IngestPublishesDoPutsToLocalConsumers) {
  namespace fl = arrow::flight;
  const FlightBridgeOptions options = Ingest(2);
  ASSERT_OK_AND_ASSIGN(auto bridge, FlightBridge::Start(options));
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  const auto stream = fl::FlightDescriptor::Path({"stream"});

  std::vector<std::shared_ptr<arrow::RecordBatch>> sent;
  for (int seed = 0; seed < kBatches; ++seed) {
    ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(arrow::default_memory_pool(), seed));
    sent.push_back(batch);
  }
  ASSERT_OK_AND_ASSIGN(auto sent_reader, arrow::RecordBatchReader::Make(sent, Schema()));
  ASSERT_OK_AND_ASSIGN(auto sent_sums, Checksums(*sent_reader));

  // Local consumers wait for the producer the first DoPut creates; it waits for both of them.
  std::vector<uint64_t> local_sums[2];
  std::vector<std::thread> locals;
  for (auto& sums : local_sums) {
    locals.emplace_back([&] {
      auto wait = Remote(false);
      wait.connect_timeout_ms = kTimeoutMs;
      ASSERT_OK_AND_ASSIGN(auto local, Consumer::Connect(options.socket, wait));
      ASSERT_OK_AND_ASSIGN(sums, Checksums(*local));
    });
  }
  ASSERT_OK_AND_ASSIGN(auto put, client->DoPut(stream, Schema()));
  for (const auto& batch : sent) ASSERT_OK(put.writer->WriteRecordBatch(*batch));
  ASSERT_OK(put.writer->DoneWriting());
  ASSERT_OK(put.writer->Close());
  EXPECT_EQ(bridge->stats().batches_ingested, kBatches);

  // The stream keeps its schema: another one is refused, naming both.
  auto other = arrow::schema({arrow::field("x", arrow::float64())});
  ASSERT_OK_AND_ASSIGN(auto wrong, client->DoPut(stream, other));
  const auto refused = wrong.writer->Close();
  EXPECT_ERROR_CONTAINS(refused, "DoPut schema (x: double) differs from the producer's (id: int64");
  EXPECT_ERROR_CONTAINS(refused, "name: string");

  ASSERT_OK(bridge->Shutdown());  // ends the ingested stream
  for (auto& local : locals) local.join();
  EXPECT_EQ(local_sums[0], sent_sums);
  EXPECT_EQ(local_sums[1], sent_sums);

  // A bridge without `ingest` refuses DoPut.
  ASSERT_OK_AND_ASSIGN(auto serving, StartBridge());
  ASSERT_OK_AND_ASSIGN(auto serving_client, ClientOf(*serving));
  ASSERT_OK_AND_ASSIGN(auto refused_put, serving_client->DoPut(stream, Schema()));
  EXPECT_ERROR_CONTAINS(refused_put.writer->Close(), "this bridge does not ingest");
}

TEST_F(FlightTest, IngestRefusesAMalformedBatchAndPublishesNothingOfIt) {
  ASSERT_OK_AND_ASSIGN(auto bridge, FlightBridge::Start(Ingest(0)));
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  // One string whose offsets claim 1000 bytes of a 5-byte buffer: Arrow's writer sends it as it is.
  const std::vector<int32_t> offsets{0, 1000};
  auto names = std::make_shared<arrow::StringArray>(1, arrow::Buffer::Wrap(offsets),
                                                    arrow::Buffer::FromString("short"));
  arrow::Int64Builder id_builder;
  ASSERT_OK(id_builder.Append(1));
  ASSERT_OK_AND_ASSIGN(auto ids, id_builder.Finish());
  auto lying = arrow::RecordBatch::Make(Schema(), 1, {ids, names});
  ASSERT_OK_AND_ASSIGN(auto put,
                       client->DoPut(arrow::flight::FlightDescriptor::Path({"stream"}), Schema()));
  ASSERT_OK(put.writer->WriteRecordBatch(*lying));
  ASSERT_OK(put.writer->DoneWriting());
  EXPECT_ERROR_CONTAINS(put.writer->Close(), "shmarrow bridge: DoPut batch 1: ");
  EXPECT_EQ(bridge->stats().batches_ingested, 0);
}

TEST_F(FlightTest, IngestHoldsTheWriterBackWhileLocalConsumersHoldTheirCredits) {
  namespace fl = arrow::flight;
  FlightBridgeOptions options = Ingest(1);
  options.producer.max_in_flight = 2;
  ASSERT_OK_AND_ASSIGN(auto bridge, FlightBridge::Start(options));
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  const auto stream = fl::FlightDescriptor::Path({"stream"});
  ASSERT_OK_AND_ASSIGN(auto put, client->DoPut(stream, Schema()));
  std::thread writer([&] {
    for (int seed = 0; seed < kBatches; ++seed) {
      ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(arrow::default_memory_pool(), seed));
      ASSERT_OK(put.writer->WriteRecordBatch(*batch));
    }
    ASSERT_OK(put.writer->DoneWriting());
    ASSERT_OK(put.writer->Close());
  });
  auto wait = Remote(false);
  wait.connect_timeout_ms = kTimeoutMs;
  ASSERT_OK_AND_ASSIGN(auto local, Consumer::Connect(options.socket, wait));
  // The local consumer holds its 2 credits' worth; 2 more wait in its queue; Publish of the
  // fifth waits, so the bridge reads nothing more from gRPC, whose window then holds the writer.
  std::vector<std::shared_ptr<arrow::RecordBatch>> held(2);
  for (auto& batch : held) ASSERT_OK(local->ReadNext(&batch));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  while (bridge->stats().batches_ingested < 4 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // room to overrun, were it able
  EXPECT_EQ(bridge->stats().batches_ingested, 4);
  // Meanwhile another writer is turned away rather than interleaved.
  ASSERT_OK_AND_ASSIGN(auto second, client->DoPut(stream, Schema()));
  EXPECT_ERROR_CONTAINS(second.writer->Close(), "another DoPut is publishing");
  held.clear();  // released: the rest flows
  std::shared_ptr<arrow::RecordBatch> batch;
  for (int read = 2; read < kBatches; ++read) {
    ASSERT_OK(local->ReadNext(&batch));
    ASSERT_NE(batch, nullptr);
  }
  writer.join();
  EXPECT_EQ(bridge->stats().batches_ingested, kBatches);
  batch.reset();  // else the shutdown lingers for the consumer to release it
  ASSERT_OK(bridge->Shutdown());
  ASSERT_OK(local->ReadNext(&batch));
  EXPECT_EQ(batch, nullptr);  // the end
}

TEST_F(FlightTest, FdAndTryNextServePollLoops) {
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  ASSERT_OK_AND_ASSIGN(auto remote, ConnectAny(bridge->location(), Remote(false)));
  ASSERT_GE(remote->fd(), 0);
  std::shared_ptr<arrow::RecordBatch> batch;
  ASSERT_OK_AND_ASSIGN(auto polled, remote->TryNext(&batch));
  EXPECT_EQ(polled, Consumer::Poll::kPending);  // nothing published yet
  PublishAll(1);
  StreamSummary summary(remote->schema());
  for (;;) {
    pollfd readable{remote->fd(), POLLIN, 0};
    ASSERT_EQ(::poll(&readable, 1, kTimeoutMs), 1);
    ASSERT_OK_AND_ASSIGN(polled, remote->TryNext(&batch));
    if (polled == Consumer::Poll::kEnd) break;
    if (polled == Consumer::Poll::kBatch) summary.Add(*batch);
  }
  EXPECT_EQ(summary.batches(), kBatches);
}

TEST_F(FlightTest, ProjectionAndSchemaChecksApplyToFlightStreams) {
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  auto wrong = Remote(false);
  wrong.expect_schema = arrow::schema({arrow::field("id", arrow::int32())});
  wrong.match = SchemaMatch::kSubset;
  EXPECT_ERROR_CONTAINS(ConnectAny(bridge->location(), wrong).status(),
                        "field 'id': expected int32");
  auto projected = Remote(false);
  projected.columns = {"name"};
  ASSERT_OK_AND_ASSIGN(auto remote, ConnectAny(bridge->location(), projected));
  EXPECT_EQ(remote->schema()->ToString(), "name: string");
  std::thread publisher([&] { PublishAll(1); });
  int64_t batches = 0;
  for (;;) {
    std::shared_ptr<arrow::RecordBatch> batch;
    ASSERT_OK(remote->ReadNext(&batch));
    if (batch == nullptr) break;
    EXPECT_EQ(batch->num_columns(), 1);
    ++batches;
  }
  publisher.join();
  EXPECT_EQ(batches, kBatches);
}

TEST_F(FlightTest, SameHostUpgradeReadsSharedMemoryUnlessRefused) {
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  ASSERT_OK_AND_ASSIGN(auto upgraded, ConnectAny(bridge->location(), Remote(true)));
  EXPECT_EQ(upgraded->mode(), "ring");
  // "localhost" is loopback too.
  ASSERT_OK_AND_ASSIGN(
      auto by_name, ConnectAny("grpc://localhost:" + std::to_string(bridge->port()), Remote(true)));
  EXPECT_EQ(by_name->mode(), "ring");

  FlightBridgeOptions quiet;
  quiet.advertise_socket = false;
  ASSERT_OK_AND_ASSIGN(auto silent_bridge, StartBridge(quiet));
  ASSERT_OK_AND_ASSIGN(auto stays, ConnectAny(silent_bridge->location(), Remote(true)));
  EXPECT_EQ(stays->mode(), "flight");
  PublishAll(3);
  ASSERT_OK_AND_ASSIGN(auto upgraded_sums, Checksums(*upgraded));
  ASSERT_OK_AND_ASSIGN(auto by_name_sums, Checksums(*by_name));
  ASSERT_OK_AND_ASSIGN(auto flight_sums, Checksums(*stays));
  EXPECT_EQ(upgraded_sums, flight_sums);
  EXPECT_EQ(by_name_sums, flight_sums);
}

TEST_F(FlightTest, RequestsAreTickets) {
  producer_->SetRequestHandler([](std::string_view request, ResponseWriter& response) {
    if (request != "two") return arrow::Status::Invalid("only 'two' is known, not '", request, "'");
    for (int seed = 0; seed < 2; ++seed) {
      ARROW_ASSIGN_OR_RAISE(auto batch, MakeBatch(response.pool(), seed));
      ARROW_RETURN_NOT_OK(response.Write(batch));
    }
    return arrow::Status::OK();
  });
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  ASSERT_OK_AND_ASSIGN(auto remote, ConnectAny(bridge->location(), Remote(false)));
  ASSERT_OK_AND_ASSIGN(auto answer, remote->Request("two"));
  ASSERT_OK_AND_ASSIGN(auto table, answer->ToTable());
  EXPECT_EQ(table->num_rows(), 1000);
  EXPECT_ERROR_CONTAINS(remote->Request("three").status(), "only 'two' is known, not 'three'");

  FlightBridgeOptions no_requests;
  no_requests.serve_requests = false;
  ASSERT_OK_AND_ASSIGN(auto closed_bridge, StartBridge(no_requests));
  ASSERT_OK_AND_ASSIGN(auto other, ConnectAny(closed_bridge->location(), Remote(false)));
  EXPECT_ERROR_CONTAINS(other->Request("two").status(), "unknown ticket 'request:two'");
}

TEST_F(FlightTest, UnknownTicketsDescriptorsAndActionsAreRefused) {
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*bridge));
  EXPECT_ERROR_CONTAINS(client->DoGet(arrow::flight::Ticket{"other\x01"}).status(),
                        "unknown ticket 'other\\x01'");
  EXPECT_ERROR_CONTAINS(
      client->GetFlightInfo(arrow::flight::FlightDescriptor::Path({"etc", "passwd"})).status(),
      "unknown descriptor");
  // The action's call is made when its first result is read.
  ASSERT_OK_AND_ASSIGN(auto results, client->DoAction(arrow::flight::Action{"shutdown", nullptr}));
  EXPECT_ERROR_CONTAINS(results->Next().status(), "unknown action 'shutdown'");
  // The one flight it describes is the producer's stream.
  ASSERT_OK_AND_ASSIGN(auto info,
                       client->GetFlightInfo(arrow::flight::FlightDescriptor::Path({"stream"})));
  arrow::ipc::DictionaryMemo memo;
  ASSERT_OK_AND_ASSIGN(auto schema, info->GetSchema(&memo));
  EXPECT_TRUE(schema->Equals(*Schema()));
  EXPECT_EQ(bridge->stats().calls_refused, 3);
}

TEST_F(FlightTest, TokenIsRequired) {
  FlightBridgeOptions guarded;
  guarded.token = "s3cret";
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge(guarded));
  auto wrong = Remote(false);
  wrong.remote.token = "guess";
  EXPECT_ERROR_CONTAINS(ConnectAny(bridge->location(), wrong).status(),
                        "missing or wrong bearer token");
  EXPECT_ERROR_CONTAINS(ConnectAny(bridge->location(), Remote(false)).status(),
                        "missing or wrong bearer token");
  // A client without the token learns nothing of the socket either: no upgrade.
  EXPECT_ERROR_CONTAINS(ConnectAny(bridge->location(), Remote(true)).status(),
                        "missing or wrong bearer token");
  auto right = Remote(false);
  right.remote.token = "s3cret";
  ASSERT_OK_AND_ASSIGN(auto consumer, ConnectAny(bridge->location(), right));
  EXPECT_EQ(consumer->mode(), "flight");
  // Writers too: an ingest bridge with a token takes no DoPut without it.
  FlightBridgeOptions ingest = Ingest(0);
  ingest.token = "s3cret";
  ASSERT_OK_AND_ASSIGN(auto ingesting, FlightBridge::Start(ingest));
  ASSERT_OK_AND_ASSIGN(auto client, ClientOf(*ingesting));
  ASSERT_OK_AND_ASSIGN(auto batch, MakeBatch(arrow::default_memory_pool(), 0));
  // Which call reports the refusal depends on when the client hears the server's answer.
  auto put = client->DoPut(arrow::flight::FlightDescriptor::Path({"stream"}), Schema());
  arrow::Status refused = put.status();
  if (refused.ok()) {
    refused = put->writer->WriteRecordBatch(*batch);
    if (refused.ok()) refused = put->writer->Close();
  }
  EXPECT_ERROR_CONTAINS(refused, "missing or wrong bearer token");
  EXPECT_EQ(ingesting->stats().batches_ingested, 0);
}

TEST_F(FlightTest, NobodyListeningIsConnectionRefused) {
  std::string gone;
  {
    ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
    gone = bridge->location();
  }
  auto status = ConnectAny(gone, Remote(true)).status();
  EXPECT_ERROR_CONTAINS(status, "no Flight server answers at '" + gone + "'");
  EXPECT_EQ(arrow::internal::ErrnoFromStatus(status), ECONNREFUSED);
  // A bridge whose producer is gone says so.
  ASSERT_OK_AND_ASSIGN(auto bridge, StartBridge());
  producer_->Close();
  producer_.reset();
  EXPECT_ERROR_CONTAINS(ConnectAny(bridge->location(), Remote(false)).status(),
                        "shmarrow bridge: the producer at '" + socket_ + "'");
}

TEST_F(FlightTest, BadBridgeOptionsAreRefused) {
  FlightBridgeOptions options;
  options.listen = "grpc://0.0.0.0:0";
  EXPECT_ERROR_CONTAINS(StartBridge(options).status(), "is not a loopback address");
  options.listen = "grpc+tls://127.0.0.1:0";
  EXPECT_ERROR_CONTAINS(StartBridge(options).status(), "grpc+tls needs a certificate");
  options.listen = "grpc://127.0.0.1:0";
  options.tls_cert_pem = "x";
  EXPECT_ERROR_CONTAINS(StartBridge(options).status(), "is not grpc+tls://");
  options = {};
  options.listen = "http://127.0.0.1:0";
  EXPECT_ERROR_CONTAINS(StartBridge(options).status(), "is not a Flight address");
  options = {};
  options.socket = "grpc://127.0.0.1:1";
  EXPECT_ERROR_CONTAINS(FlightBridge::Start(options).status(), "must be a UNIX socket");
}

// The core library links no Flight: it names the library that reads Flight addresses.
TEST(ConnectTest, CoreConsumerRefusesFlightAddressesNamingTheFlightLibrary) {
  for (const std::string address : {"grpc://127.0.0.1:1", "grpc+tcp://h:1", "grpc+tls://h:1"}) {
    const auto status = Consumer::Connect(address).status();
    EXPECT_TRUE(status.IsNotImplemented()) << status.ToString();
    EXPECT_ERROR_CONTAINS(status, "'" + address + "' is an Arrow Flight address");
    EXPECT_ERROR_CONTAINS(status, "link shmarrow::flight");
  }
}

}  // namespace
}  // namespace shmarrow
