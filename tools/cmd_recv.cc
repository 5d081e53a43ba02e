#include <iostream>
#include <sstream>

#include "commands.h"
#include "report.h"
#include "shmarrow/handover.h"
#include "shmarrow/shared_stream.h"
#include "shmarrow/summary.h"

namespace shmarrow::cli {
namespace {

std::string SealList(int seals) {
  static constexpr struct {
    int bit;
    const char* name;
  } kOrder[] = {{0x1, "F_SEAL_SEAL"}, {0x2, "F_SEAL_SHRINK"}, {0x4, "F_SEAL_GROW"},
                {0x8, "F_SEAL_WRITE"}, {0x10, "F_SEAL_FUTURE_WRITE"}};
  std::string out;
  for (const auto& seal : kOrder) {
    if (seals & seal.bit) out += (out.empty() ? "" : "|") + std::string(seal.name);
  }
  return out.empty() ? "none" : out;
}

}  // namespace

arrow::Status RunRecv(Args& args) {
  const std::string socket = args.String("--socket", kDefaultSocketPath);
  ARROW_ASSIGN_OR_RAISE(int64_t wait_ms, args.Int("--wait-ms", 0));
  const std::string validate = args.String("--validate", "full");
  const bool json = args.Flag("--json");
  SharedStreamOptions options;
  options.require_seals = !args.Flag("--allow-unsealed");
  ARROW_RETURN_NOT_OK(args.CheckAllUsed());
  if (validate == "basic") options.validation = Validation::kBasic;
  else if (validate != "full") return arrow::Status::Invalid("--validate takes full or basic");

  ARROW_ASSIGN_OR_RAISE(UniqueFd fd, ReceiveFd(socket, static_cast<int>(wait_ms)));
  ARROW_ASSIGN_OR_RAISE(auto stream, SharedStream::Open(std::move(fd), options));
  if (!stream->mapped()) {
    std::cerr << "shmarrow recv: the memfd is not sealed; its " << stream->size()
              << " bytes were copied into private memory (--allow-unsealed)" << std::endl;
  }
  ARROW_ASSIGN_OR_RAISE(auto reader, stream->OpenReader());

  StreamSummary summary(reader->schema());
  Report report(reader->schema());
  bool in_mapping = true;
  for (;;) {
    ARROW_ASSIGN_OR_RAISE(auto batch, reader->Next());
    if (batch == nullptr) break;
    in_mapping = in_mapping && AllBuffersInside(*stream, *batch);
    summary.Add(*batch);
    report.Add(batch);
  }
  if (json) {
    std::ostringstream extra;
    extra << "\"memfd\":{\"inode\":" << stream->inode() << ",\"bytes\":" << stream->size()
          << ",\"seals\":\"" << SealList(stream->seals())
          << "\"},\"buffers_in_mapping\":" << (in_mapping ? "true" : "false");
    std::cout << summary.ToJson(extra.str()) << std::endl;
  } else {
    report.Print(std::cout);
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::cli
