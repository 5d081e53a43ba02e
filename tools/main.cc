// shmarrow: send, receive and inspect Arrow streams in shared memory, and serve them over Flight.
#include <arrow/config.h>

#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "commands.h"
#include "shmarrow/error.h"
#include "shmarrow/version.h"

namespace {

using shmarrow::cli::Args;
using shmarrow::cli::DeprecatedAlias;
using shmarrow::cli::OptionSpec;

struct Command {
  std::string name;
  std::string operands;  // after "[options]" in the usage line
  std::string summary;   // one line, for `shmarrow --help`
  std::vector<OptionSpec> options;
  std::vector<DeprecatedAlias> aliases;
  std::string notes;  // after the options
  arrow::Status (*run)(Args&);
};

const std::vector<OptionSpec> kVersionAndHelp = {
    {"--help", "", "this text"},
    {"--version", "", "print the version of shmarrow and of Arrow C++"},
};

const std::vector<Command>& Commands() {
  static const std::vector<Command> commands = {
      {"send",
       "",
       "publish generated batches (or an Arrow IPC file) to consumers",
       {
           {"--socket", "PATH", "where to listen (/tmp/shmarrow.sock; @name: abstract namespace)"},
           {"--rows", "N", "rows per batch (100)"},
           {"--batches", "N", "batches (1)"},
           {"--schema", "NAME:TYPE,...",
            "columns (rand:int32); types int32 int64 float64 utf8 bool"},
           {"--null-fraction", "F", "share of nulls in each column (0)"},
           {"--seed", "N", "random seed (1)"},
           {"--accept-timeout-ms", "N", "give up waiting for consumers after N ms (-1: forever)"},
           {"--json", "", "print a JSON summary of what is sent on stdout"},
           {"", "",
            "without --mode, the single hand-over: build the batches in one memfd, seal\n"
            "it, hand it to each client"},
           {"--from", "FILE", "republish an Arrow IPC file or stream instead"},
           {"--clients", "N", "clients to serve before exiting (1)"},
           {"--capacity", "BYTES", "address space reserved for the memfd (64GiB)"},
           {"", "",
            "--mode ring|sealed: a stream to any number of consumers (shmarrow::Producer\n"
            "on a SOCK_SEQPACKET socket), batches built in shared memory, zero copy"},
           {"--mode", "ring|sealed", "ring: one shared ring; sealed: a sealed memfd per batch"},
           {"--ring-size", "BYTES", "ring mode's shared memory (64MiB)"},
           {"--wait-consumers", "N",
            "wait for N consumers before the first batch (1; 0: publish at once, "
            "to whoever is attached)"},
           {"--rate", "N", "batches per second (0: as fast as possible)"},
           {"--block-timeout-ms", "N", "wait for room up to N ms (-1: forever; 0: fail fast)"},
           {"--max-in-flight", "N", "batches a consumer may hold (64)"},
           {"--max-consumers", "N", "consumers attached at once (64)"},
           {"--retain", "N", "batches kept for late consumers asking for the oldest (0)"},
           {"--pages", "auto|hugetlb|off",
            "auto: huge pages where shmem_enabled offers them; hugetlb: the reserved "
            "vm.nr_hugepages; off: 4 KiB pages"},
           {"--schema-change-at", "K", "after K batches, add an int64 column \"extra\""},
           {"--serve-requests", "",
            "answer \"rows=N\" with N generated rows of the current schema"},
           {"--drain-timeout-ms", "N",
            "after the end, wait up to N ms for consumers to release every batch (10000)"},
       },
       {{"--linger-ms", "--drain-timeout-ms"}},
       "--json with --mode: the summary of the stream plus \"producer\": {published,\n"
       "bytes_copied, consumers_total, dropped, page_size}. A terminal shows progress on\n"
       "stderr.\n",
       &shmarrow::cli::RunSend},
      {"recv",
       "",
       "receive a stream (any mode or Flight) and print a report",
       {
           {"--socket", "PATH", "the producer's socket (/tmp/shmarrow.sock; @name: abstract)"},
           {"--from", "ADDRESS",
            "instead of --socket: a socket path, or a Flight address grpc://HOST:PORT, "
            "grpc+tls://HOST:PORT (a path after the port names a flight; docs/flight.md)"},
           {"--connect-timeout-ms", "N", "retry for up to N ms while no producer listens (0)"},
           {"--read-timeout-ms", "N", "fail after N ms without a message (-1: wait forever)"},
           {"--validate", "full|basic", "how much of each batch is checked (full)"},
           {"--json", "", "print a one-line JSON summary instead of the report"},
           {"--allow-unsealed", "",
            "single hand-over: copy an unsealed memfd instead of refusing it"},
           {"--allow-uid", "UID,...",
            "accept a producer running as one of these uids (by default its SO_PEERCRED uid "
            "must be this process's)"},
           {"--allow-any-uid", "", "accept a producer of any uid"},
           {"--lossy", "", "lose the oldest batches instead of holding the producer back"},
           {"--from-oldest", "", "start with the oldest batches the producer retains"},
           {"--max-in-flight", "N", "batches held at once (0: the producer's limit)"},
           {"--columns", "a,b", "projection: only these columns"},
           {"--expect-schema", "NAME:TYPE,...", "refuse a producer whose schema differs"},
           {"--schema-subset", "", "with --expect-schema: those fields must exist, others may too"},
           {"--delay-ms", "N", "hold each batch N ms (a deliberately slow consumer)"},
           {"--request", "TEXT",
            "send TEXT to the producer's handler and report its answer instead of "
            "the stream (meanwhile a lossy consumer of the stream holding at most "
            "--max-in-flight batches, default 1)"},
           {"", "", "Flight (--from grpc://...) only"},
           {"--token-file", "FILE", "bearer token (else $SHMARROW_FLIGHT_TOKEN)"},
           {"--tls-roots", "FILE", "PEM root certificates to trust"},
           {"--tls-hostname", "NAME", "the name the server's certificate must carry"},
           {"--no-upgrade", "",
            "stay on Flight even when the bridge's producer is on this host and "
            "would accept this process through shared memory"},
       },
       {{"--wait-ms", "--connect-timeout-ms"}, {"--timeout-ms", "--read-timeout-ms"}},
       "--json: schema, batches, rows and per-column checksums; the single hand-over\n"
       "adds \"memfd\" and \"buffers_in_mapping\", the other modes \"mode\", \"dropped\"\n"
       "and \"schema_changes\" (docs/protocol.md).\n",
       &shmarrow::cli::RunRecv},
      {"flight-serve",
       "",
       "serve a producer's stream to Arrow Flight clients until SIGINT/SIGTERM",
       {
           {"--socket", "PATH", "the producer's socket (/tmp/shmarrow.sock)"},
           {"--listen", "grpc://HOST:PORT", "where to serve (grpc://127.0.0.1:0: a free port)"},
           {"--allow-remote", "", "allow listening on a non-loopback address"},
           {"--tls-cert", "FILE", "PEM certificate (with grpc+tls://)"},
           {"--tls-key", "FILE", "PEM private key (with grpc+tls://)"},
           {"--token-file", "FILE",
            "require \"Bearer <token>\" (else $SHMARROW_FLIGHT_TOKEN, if set)"},
           {"--no-requests", "", "refuse \"request:<bytes>\" tickets"},
           {"--no-advertise", "", "do not tell local clients the producer's socket"},
           {"--max-in-flight", "N", "per remote stream's consumer of the producer"},
           {"--validate", "full|basic", "per remote stream's consumer (full)"},
           {"--connect-timeout-ms", "N",
            "per remote stream: retry for up to N ms while no producer listens (0)"},
           {"", "", "ingest (DoPut publishes through a producer at --socket)"},
           {"--ingest", "",
            "serve DoPut of path [\"stream\"]: the first DoPut's schema is the stream's"},
           {"--mode", "ring|sealed", "the producer's memory (ring)"},
           {"--ring-size", "BYTES", "ring mode: bytes of shared memory (64MiB)"},
           {"--retain", "N", "batches kept for late consumers (0)"},
           {"--max-consumers", "N", "(64)"},
           {"--wait-consumers", "N", "wait for N local consumers before the first batch (0)"},
           {"--drain-timeout-ms", "N", "at shutdown, wait for consumers to drain (10000)"},
       },
       {{"--wait-ms", "--connect-timeout-ms"}, {"--linger-ms", "--drain-timeout-ms"}},
       "Prints the address on stdout; tickets are \"stream\" and \"request:<bytes>\"\n"
       "(docs/flight.md).\n",
       &shmarrow::cli::RunFlightServe},
      {"inspect",
       " FILE",
       "validate an Arrow IPC file or stream on disk, or say what the file is",
       {{"--json", "", "print a one-line JSON summary"}},
       {},
       "",
       &shmarrow::cli::RunInspect},
  };
  return commands;
}

/// The options in two columns, help text wrapped to fit 80 columns.
void PrintOptions(std::ostream& out, const std::vector<OptionSpec>& options) {
  constexpr size_t kColumn = 28, kWidth = 80;
  const std::string indent(kColumn, ' ');
  for (const auto& option : options) {
    if (option.name.empty()) {
      out << "\n" << option.help << ":\n";
      continue;
    }
    std::string left = "  " + option.name + (option.value.empty() ? "" : " " + option.value);
    left += left.size() < kColumn ? std::string(kColumn - left.size(), ' ') : "\n" + indent;
    out << left;
    std::istringstream words(option.help);
    size_t column = kColumn;
    for (std::string word; words >> word;) {
      if (column > kColumn && column + 1 + word.size() > kWidth) {
        out << "\n" << indent;
        column = kColumn;
      }
      if (column > kColumn) {
        out << ' ';
        ++column;
      }
      out << word;
      column += word.size();
    }
    out << "\n";
  }
}

void PrintCommandHelp(const Command& command) {
  std::cout << "usage: shmarrow " << command.name << " [options]" << command.operands << "\n"
            << command.summary << "\n\noptions:\n";
  PrintOptions(std::cout, command.options);
  std::cout << "\n";
  PrintOptions(std::cout, kVersionAndHelp);
  if (!command.aliases.empty()) {
    std::cout << "\ndeprecated spellings, still accepted:\n";
    for (const auto& alias : command.aliases) {
      std::cout << "  " << alias.old_name << " (now " << alias.name << ")\n";
    }
  }
  if (!command.notes.empty()) std::cout << "\n" << command.notes;
}

void PrintUsage(std::ostream& out) {
  out << "usage: shmarrow COMMAND [options]\n"
         "Arrow record batches between processes through shared memory (memfd).\n\n"
         "commands:\n";
  for (const auto& command : Commands()) {
    std::string name = "  " + command.name;
    name.resize(16, ' ');
    out << name << command.summary << "\n";
  }
  out << "\n'shmarrow COMMAND --help' lists a command's options; 'shmarrow --version' prints the\n"
         "version. Exit status: 0 ok, 1 error (one line on stderr), 2 usage.\n";
}

void PrintVersion() {
  std::cout << "shmarrow " << SHMARROW_VERSION_STRING << " (Arrow C++ "
            << arrow::GetBuildInfo().version_string << ")\n";
}

/// One line, for scripts and logs.
std::string OneLine(std::string message) {
  for (char& c : message) {
    if (c == '\n') c = ' ';
  }
  return message;
}

}  // namespace

int main(int argc, char** argv) {
  const std::vector<std::string> all(argv + 1, argv + argc);
  if (all.empty()) {
    PrintUsage(std::cerr);
    return 2;
  }
  if (all[0] == "--help" || all[0] == "-h") {
    PrintUsage(std::cout);
    return 0;
  }
  if (all[0] == "--version") {
    PrintVersion();
    return 0;
  }
  const Command* command = nullptr;
  for (const auto& candidate : Commands()) {
    if (candidate.name == all[0]) command = &candidate;
  }
  if (command == nullptr) {
    std::cerr << "shmarrow: unknown command '" << all[0] << "'\n\n";
    PrintUsage(std::cerr);
    return 2;
  }
  const std::string prefix = "shmarrow " + command->name + ": ";
  auto args = Args::Parse({all.begin() + 1, all.end()}, command->options, command->aliases);
  if (!args.ok()) {
    std::cerr << prefix << args.status().message() << "; see 'shmarrow " << command->name
              << " --help'\n";
    return 2;
  }
  if (args->help()) {
    PrintCommandHelp(*command);
    return 0;
  }
  if (args->version()) {
    PrintVersion();
    return 0;
  }
  for (const auto& warning : args->warnings()) std::cerr << prefix << warning << "\n";
  const arrow::Status status = command->run(*args);
  if (!status.ok()) {
    const bool usage = shmarrow::cli::IsUsageError(status);
    // shmarrow's error code is for programs (Status::ToString would append it); people read the
    // kind and the message, and an errno's text where there is one.
    const std::string text = usage ? status.message()
                             : shmarrow::ErrorDetailOf(status) != nullptr
                                 ? status.CodeAsString() + ": " + status.message()
                                 : status.ToString();
    std::cerr << prefix << OneLine(text) << "\n";
    return usage ? 2 : 1;
  }
  return 0;
}
