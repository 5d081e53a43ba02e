// shmarrow's error codes: what kind of failure an arrow::Status from the library reports, carried
// as the Status's detail so that callers (and the Python binding) decide by code, never by text.
#pragma once

#include <arrow/status.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace shmarrow {

/// Codes 1-7 are the protocol's Error codes (docs/protocol.md) with their wire values; the others
/// never travel.
enum class ErrorCode : uint32_t {
  kNone = 0,      // no shmarrow code: OK, or a failure the library only passes on (errno, Arrow)
  kProtocol = 1,  // a peer broke the protocol: malformed or unexpected message
  kVersion = 2,   // incompatible major protocol version
  kSchemaMismatch = 3,  // a schema or projection does not match
  kLimit = 4,           // a limit was exceeded (consumers, in flight, message size, queued)
  kHandler = 5,         // a request failed at the producer (its handler failed or is missing)
  kRefused = 6,         // refused by credentials (the producer's uid check or the consumer's)
  kShutdown = 7,        // the producer is going away (closed)
  kTimeout = 100,       // nothing happened within the timeout (or at once, with timeout 0)
  kProducerGone = 101,  // the producer vanished without ending the stream
  kClosed = 102,        // this Producer/Consumer/bridge is closed, or was closed while waiting
  kBadInput = 103,      // the caller's input is invalid (argument, call order, file contents)
};

/// "protocol", "version", ..., "bad_input"; "none" for kNone and unknown values.
const char* ErrorCodeName(ErrorCode code);

/// The detail of a Status from shmarrow: its code and whether the producer reported it (an Error
/// message whose code this is) rather than this process.
class ErrorDetail : public arrow::StatusDetail {
 public:
  static constexpr const char* kTypeId = "shmarrow::ErrorDetail";

  explicit ErrorDetail(ErrorCode code, bool from_producer = false)
      : code_(code), from_producer_(from_producer) {}

  const char* type_id() const override { return kTypeId; }
  std::string ToString() const override;

  ErrorCode code() const { return code_; }
  bool from_producer() const { return from_producer_; }

 private:
  ErrorCode code_;
  bool from_producer_;
};

/// The shmarrow detail of `status`, or nullptr (OK, or a Status without one).
const ErrorDetail* ErrorDetailOf(const arrow::Status& status);

/// The code of `status`: kNone when it is OK or carries no shmarrow code.
ErrorCode ErrorCodeOf(const arrow::Status& status);

/// `status` with `code` attached (an OK status stays OK). It replaces any other detail, so an
/// errno-carrying status is better left as it is.
[[nodiscard]] arrow::Status WithCode(const arrow::Status& status, ErrorCode code,
                                     bool from_producer = false);

/// A Status of Arrow kind `kind` whose message is the concatenated `what`, carrying `code`.
template <typename... Args>
[[nodiscard]] arrow::Status MakeError(arrow::StatusCode kind, ErrorCode code, Args&&... what) {
  return arrow::Status::FromArgs(kind, std::forward<Args>(what)...)
      .WithDetail(std::make_shared<ErrorDetail>(code));
}

}  // namespace shmarrow
