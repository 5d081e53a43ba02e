#include "shmarrow/error.h"

#include <cstring>

namespace shmarrow {

const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
    case ErrorCode::kNone:
      return "none";
    case ErrorCode::kProtocol:
      return "protocol";
    case ErrorCode::kVersion:
      return "version";
    case ErrorCode::kSchemaMismatch:
      return "schema_mismatch";
    case ErrorCode::kLimit:
      return "limit";
    case ErrorCode::kHandler:
      return "handler";
    case ErrorCode::kRefused:
      return "refused";
    case ErrorCode::kShutdown:
      return "shutdown";
    case ErrorCode::kTimeout:
      return "timeout";
    case ErrorCode::kProducerGone:
      return "producer_gone";
    case ErrorCode::kClosed:
      return "closed";
    case ErrorCode::kBadInput:
      return "bad_input";
  }
  return "none";
}

std::string ErrorDetail::ToString() const {
  return std::string("shmarrow error code ") + ErrorCodeName(code_) +
         (from_producer_ ? " (from the producer)" : "");
}

const ErrorDetail* ErrorDetailOf(const arrow::Status& status) {
  const auto& detail = status.detail();
  // Compared by content: type_id pointers may differ between shared objects.
  if (detail == nullptr || std::strcmp(detail->type_id(), ErrorDetail::kTypeId) != 0) {
    return nullptr;
  }
  return static_cast<const ErrorDetail*>(detail.get());
}

ErrorCode ErrorCodeOf(const arrow::Status& status) {
  const auto* detail = ErrorDetailOf(status);
  return detail == nullptr ? ErrorCode::kNone : detail->code();
}

arrow::Status WithCode(const arrow::Status& status, ErrorCode code, bool from_producer) {
  if (status.ok()) return status;
  return status.WithDetail(std::make_shared<ErrorDetail>(code, from_producer));
}

}  // namespace shmarrow
