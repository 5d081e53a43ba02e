// shmarrow: send, receive and inspect Arrow streams in shared memory.
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "commands.h"

namespace {

constexpr const char* kUsage = R"(usage: shmarrow COMMAND [options]

  send     build record batches in a memfd, seal it, hand it to consumers
             --socket PATH (default /tmp/shmarrow.sock; @name = abstract)
             --rows N (100)  --batches N (1)  --schema NAME:TYPE,... (rand:int32;
             types int32 int64 float64 utf8 bool)  --null-fraction F (0)  --seed N (1)
             --from FILE (republish an Arrow IPC file or stream instead)
             --clients N (1)  --accept-timeout-ms N (wait forever)  --capacity BYTES
             --json (print a summary of what is served)
  recv     receive a stream and print a report
             --socket PATH  --wait-ms N (0)  --validate full|basic (full)  --json
             --allow-unsealed (copy an unsealed memfd into private memory instead of refusing)
  inspect  validate an Arrow IPC file or stream on disk
             FILE  --json
)";

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h") {
    std::cout << kUsage;
    return argc < 2 ? 2 : 0;
  }
  const std::string command = argv[1];
  const std::vector<std::string> rest(argv + 2, argv + argc);
  auto args = shmarrow::cli::Args::Parse(rest, {"--json", "--allow-unsealed"});
  if (!args.ok()) {
    std::cerr << "shmarrow " << command << ": " << args.status().message() << "\n";
    return 2;
  }
  arrow::Status status;
  if (command == "send") status = shmarrow::cli::RunSend(*args);
  else if (command == "recv") status = shmarrow::cli::RunRecv(*args);
  else if (command == "inspect") status = shmarrow::cli::RunInspect(*args);
  else {
    std::cerr << "shmarrow: unknown command '" << command << "'\n" << kUsage;
    return 2;
  }
  if (!status.ok()) {
    std::string message = status.ToString();
    for (char& c : message) {
      if (c == '\n') c = ' ';  // one line, for scripts and logs
    }
    std::cerr << "shmarrow " << command << ": " << message << "\n";
    return 1;
  }
  return 0;
}
