// shmarrow: send, receive and inspect Arrow streams in shared memory, and serve them over Flight.
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "commands.h"

namespace {

constexpr const char* kUsage = R"(usage: shmarrow COMMAND [options]

  send     without --mode: build record batches in a memfd, seal it, hand it to consumers
           (the single hand-over)
             --socket PATH (default /tmp/shmarrow.sock; @name = abstract)
             --rows N (100)  --batches N (1)  --schema NAME:TYPE,... (rand:int32;
             types int32 int64 float64 utf8 bool)  --null-fraction F (0)  --seed N (1)
             --from FILE (republish an Arrow IPC file or stream instead)
             --clients N (1)  --accept-timeout-ms N (wait forever)  --capacity BYTES
             --json (print a summary of what is served)
  send --mode ring|sealed
           publish a stream of batches to any number of consumers (shmarrow::Producer on a
           SOCK_SEQPACKET socket); batches are built in shared memory, zero copy
             --socket PATH  --rows N (100)  --batches N (1)  --schema ...  --null-fraction F
             --seed N  as above
             --ring-size BYTES (64MiB; suffixes K/KiB M/MiB G/GiB; ring mode)
             --rate N (batches per second; 0 = as fast as possible)
             --wait-consumers N (0; wait for N consumers before the first batch, for up to
             --accept-timeout-ms N, default forever)
             --block-timeout-ms N (-1 = wait for room forever; 0 = fail fast)
             --max-in-flight N (64; batches a consumer may hold)  --max-consumers N (64)
             --retain N (0; batches kept for late consumers asking for the oldest)
             --pages auto|hugetlb|off (auto: huge pages where shmem_enabled offers them;
             hugetlb: reserved vm.nr_hugepages; off: 4 KiB)
             --schema-change-at K (after K batches, add an int64 column "extra")
             --serve-requests (answer "rows=N" with N generated rows of the current schema)
             --linger-ms N (10000; after the end, wait for consumers to drain)
             --json (one line at the end: the summary of stream 0 plus "producer":
             {published, bytes_copied, consumers_total, dropped, page_size})
           a terminal shows progress on stderr; a failed publish exits 1
  recv     receive a stream (any mode) and print a report
             --socket PATH  --wait-ms N (0; wait for a producer to listen)
             --timeout-ms N (-1; fail after N ms without a message)
             --validate full|basic (full)  --json
             --allow-unsealed (single hand-over: copy an unsealed memfd instead of refusing)
             --allow-uid UID,... / --allow-any-uid (accept a producer of another uid; by
             default its SO_PEERCRED uid must be this process's)
             --lossy (lose the oldest batches instead of holding the producer back)
             --from-oldest (start with the oldest batches the producer retains)
             --max-in-flight N (0 = the producer's limit)
             --columns a,b (projection)
             --expect-schema NAME:TYPE,... (refuse a producer whose schema differs)
             --schema-subset (with --expect-schema: the fields must exist, others may too)
             --delay-ms N (hold each batch N ms: a deliberately slow consumer)
             --request TEXT (send TEXT to the producer's handler and report its answer
             instead of the stream; meanwhile it takes the stream as a lossy consumer holding
             at most --max-in-flight batches, default 1, so it never holds the producer back)
           --json: the summary (schema, batches, rows, per-column checksums); the single
           hand-over adds "memfd" and "buffers_in_mapping", the other modes add "mode"
           (ring/sealed), "dropped" and "schema_changes". After a schema change the summary
           shows the last schema; each column's checksum covers the rows of the batches that
           have it (same name and type), with rows numbered over the whole stream, so a
           column added midway starts at the row where it appears.
           --from ADDRESS (instead of --socket: a socket path, or a Flight address
             grpc://HOST:PORT, grpc+tls://HOST:PORT; a path after the port names a flight of
             any Flight server; docs/flight.md); with Flight, "mode" is "flight" and
             --token-file FILE (else $SHMARROW_FLIGHT_TOKEN)  --tls-roots FILE (PEM)
             --tls-hostname NAME  --no-upgrade (stay on Flight even when the bridge's producer
             is on this host and would accept this process through shared memory)
  flight-serve
           serve a producer's stream to Arrow Flight clients (tickets "stream" and
           "request:<bytes>"); prints the address on stdout, runs until SIGINT/SIGTERM
             --socket PATH  --listen grpc://HOST:PORT (grpc://127.0.0.1:0: a free port)
             --allow-remote (needed to listen on a non-loopback address)
             --tls-cert FILE --tls-key FILE (PEM; with grpc+tls://)
             --token-file FILE (else $SHMARROW_FLIGHT_TOKEN: require "Bearer <token>")
             --no-requests  --no-advertise (do not tell local clients the socket)
             --max-in-flight N  --validate full|basic  --wait-ms N (per remote stream's
             consumer of the producer)
  inspect  validate an Arrow IPC file or stream on disk
             FILE  --json

exit status: 0 ok, 1 error (one line on stderr), 2 usage
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  for (const auto& arg : rest) {
    if (arg == "--help" || arg == "-h") {
      std::cout << kUsage;
      return 0;
    }
  }
  auto args = shmarrow::cli::Args::Parse(
      rest, {"--json", "--allow-unsealed", "--serve-requests", "--lossy", "--from-oldest",
             "--schema-subset", "--allow-remote", "--no-requests", "--no-advertise",
             "--no-upgrade", "--allow-any-uid"});
  if (!args.ok()) {
    std::cerr << "shmarrow " << command << ": " << args.status().message() << "\n";
    return 2;
  }
  arrow::Status status;
  if (command == "send") status = shmarrow::cli::RunSend(*args);
  else if (command == "recv") status = shmarrow::cli::RunRecv(*args);
  else if (command == "flight-serve") status = shmarrow::cli::RunFlightServe(*args);
  else if (command == "inspect") status = shmarrow::cli::RunInspect(*args);
  else {
    std::cerr << "shmarrow: unknown command '" << command << "'\n" << kUsage;
    return 2;
  }
  if (!status.ok()) {
    const bool usage = shmarrow::cli::IsUsageError(status);
    std::string message = usage ? status.message() : status.ToString();
    for (char& c : message) {
      if (c == '\n') c = ' ';  // one line, for scripts and logs
    }
    std::cerr << "shmarrow " << command << ": " << message << "\n";
    return usage ? 2 : 1;
  }
  return 0;
}
