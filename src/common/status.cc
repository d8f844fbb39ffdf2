#include "shmkv/status.h"

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

namespace shmkv {

std::string_view StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "InvalidArgument";
    case StatusCode::kNotFound: return "NotFound";
    case StatusCode::kAlreadyExists: return "AlreadyExists";
    case StatusCode::kFull: return "Full";
    case StatusCode::kBusy: return "Busy";
    case StatusCode::kTimeout: return "Timeout";
    case StatusCode::kIoError: return "IoError";
    case StatusCode::kProtocol: return "Protocol";
    case StatusCode::kDisconnected: return "Disconnected";
    case StatusCode::kUnavailable: return "Unavailable";
    case StatusCode::kInternal: return "Internal";
    case StatusCode::kExpired: return "Expired";
  }
  return "Unknown";
}

Status Status::FromErrno(std::string_view what, int err) {
  StatusCode code = StatusCode::kIoError;
  switch (err) {
    case ENOENT: code = StatusCode::kNotFound; break;
    case EEXIST: code = StatusCode::kAlreadyExists; break;
    case ENOSPC: code = StatusCode::kFull; break;
    case ETIMEDOUT: code = StatusCode::kTimeout; break;
    default: break;
  }
  return {code, fmt::format("{}: {}", what, std::strerror(err)), err};
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return fmt::format("{}: {}", StatusCodeName(code_), message_);
}

Status Status::WithContext(std::string_view context) const& {
  Status copy = *this;
  return std::move(copy).WithContext(context);
}

Status Status::WithContext(std::string_view context) && {
  if (!ok()) message_ = fmt::format("{}: {}", context, message_);
  return std::move(*this);
}

}  // namespace shmkv
