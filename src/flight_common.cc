#include <arrow/util/uri.h>
#include <sys/stat.h>

#include <charconv>
#include <fstream>

#include "errno_status.h"
#include "flight_internal.h"

namespace shmarrow::internal::flight {
namespace {

constexpr const char* kBootIdPath = "/proc/sys/kernel/random/boot_id";

arrow::Result<std::string> BootId() {
  std::ifstream file(kBootIdPath);
  std::string id;
  if (!std::getline(file, id) || id.empty()) {
    return arrow::Status::IOError("cannot read the boot id from ", kBootIdPath);
  }
  return id;
}

bool IsAbstract(const std::string& socket) { return !socket.empty() && socket[0] == '@'; }

/// "name=value\n" at the front of `rest`, consumed.
arrow::Result<std::string_view> TakeLine(std::string_view& rest, std::string_view name) {
  if (!rest.starts_with(name) || rest.size() <= name.size() || rest[name.size()] != '=') {
    return arrow::Status::Invalid("socket advert: expected '", name, "=' before '",
                                  rest.substr(0, 32), "'");
  }
  rest.remove_prefix(name.size() + 1);
  const auto end = rest.find('\n');
  if (end == std::string_view::npos) {
    return arrow::Status::Invalid("socket advert: '", name, "' has no line end");
  }
  auto value = rest.substr(0, end);
  rest.remove_prefix(end + 1);
  return value;
}

arrow::Result<uint64_t> TakeNumber(std::string_view& rest, std::string_view name) {
  ARROW_ASSIGN_OR_RAISE(auto text, TakeLine(rest, name));
  uint64_t value = 0;
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (error != std::errc() || end != text.data() + text.size() || text.empty()) {
    return arrow::Status::Invalid("socket advert: '", name, "' is not a number: '", text, "'");
  }
  return value;
}

}  // namespace

arrow::Result<FlightAddress> ParseFlightAddress(const std::string& address) {
  if (!IsFlightAddress(address)) {
    return arrow::Status::Invalid("'", address,
                                  "' is not a Flight address (grpc://, grpc+tcp://, grpc+tls://)");
  }
  arrow::util::Uri uri;
  const auto parsed = uri.Parse(address);
  if (!parsed.ok()) {
    return arrow::Status::Invalid("Flight address '", address, "': ", parsed.message());
  }
  FlightAddress out;
  out.tls = uri.scheme() == "grpc+tls";
  out.host = uri.host();
  out.port = uri.port();
  if (out.host.empty() || out.port < 0) {
    return arrow::Status::Invalid("Flight address '", address, "' needs a host and a port");
  }
  const std::string whole_path = uri.path();
  std::string_view path = whole_path;
  while (!path.empty()) {
    const auto slash = path.find('/');
    if (slash != 0) out.path.emplace_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

bool IsLoopbackHost(std::string_view host) {
  return host == "localhost" || host.starts_with("127.") || host == "::1" || host == "[::1]";
}

arrow::Result<SocketAdvert> AdvertiseSocket(const std::string& socket) {
  SocketAdvert advert;
  ARROW_ASSIGN_OR_RAISE(advert.boot_id, BootId());
  advert.socket = socket;
  if (!IsAbstract(socket)) {
    struct stat info{};
    if (::stat(socket.c_str(), &info) != 0) return ErrnoStatus(errno, "stat '", socket, "'");
    advert.device = info.st_dev;
    advert.inode = info.st_ino;
  }
  return advert;
}

std::string EncodeAdvert(const SocketAdvert& advert) {
  return "boot_id=" + advert.boot_id + "\ndevice=" + std::to_string(advert.device) +
         "\ninode=" + std::to_string(advert.inode) + "\nsocket=" + advert.socket;
}

arrow::Result<SocketAdvert> DecodeAdvert(std::string_view bytes) {
  SocketAdvert advert;
  std::string_view rest = bytes;
  ARROW_ASSIGN_OR_RAISE(auto boot_id, TakeLine(rest, "boot_id"));
  advert.boot_id = std::string(boot_id);
  ARROW_ASSIGN_OR_RAISE(advert.device, TakeNumber(rest, "device"));
  ARROW_ASSIGN_OR_RAISE(advert.inode, TakeNumber(rest, "inode"));
  if (!rest.starts_with("socket=") || rest.size() == 7) {
    return arrow::Status::Invalid("socket advert: no 'socket=' with a name at its end");
  }
  advert.socket = std::string(rest.substr(7));
  if (advert.socket.find('\0') != std::string::npos) {
    return arrow::Status::Invalid("socket advert: the socket name contains a NUL byte");
  }
  return advert;
}

arrow::Status CheckAdvertIsLocal(const SocketAdvert& advert) {
  ARROW_ASSIGN_OR_RAISE(auto boot_id, BootId());
  if (advert.boot_id != boot_id) {
    return arrow::Status::Invalid("the bridge runs on another host (boot id ", advert.boot_id,
                                  ", here ", boot_id, ")");
  }
  if (IsAbstract(advert.socket)) return arrow::Status::OK();
  struct stat info{};
  if (::stat(advert.socket.c_str(), &info) != 0) {
    return ErrnoStatus(errno, "stat '", advert.socket, "'");
  }
  if (info.st_dev != advert.device || info.st_ino != advert.inode) {
    return arrow::Status::Invalid("'", advert.socket, "' here is another file than the bridge's");
  }
  return arrow::Status::OK();
}

}  // namespace shmarrow::internal::flight
