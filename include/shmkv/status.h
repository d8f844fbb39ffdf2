// Status and Result<T>: the one error type of the shmkv library.
//
// Every fallible operation returns a Status (or a Result<T> that carries either a value or a
// non-OK Status). Messages are written for the person who reads the log: they name the object
// (segment, offset, key, operation) and the reason. An OS failure keeps its errno.
//
// Thread-safety: Status and Result are values; distinct objects may be used from any thread.
#pragma once

#include <cassert>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "shmkv/export.h"

namespace shmkv {

enum class StatusCode : int {
  kOk = 0,
  kInvalidArgument,  // the caller passed something that can never succeed
  kNotFound,         // a named object does not exist
  kAlreadyExists,    // an exclusive create found the object present
  kFull,             // no room now; may succeed after something is freed
  kBusy,             // held by someone else now; may succeed later
  kTimeout,          // a deadline expired
  kIoError,          // an OS call failed (errno() says which)
  kProtocol,         // a peer sent something that breaks the wire contract
  kDisconnected,     // the peer closed the connection or the server restarted
  kUnavailable,      // an optional facility (CUDA, io_uring) is not present
  kInternal,         // a broken invariant: a bug in shmkv
  // Keep kExpired last: the client maps wire names back by iterating up to it.
  kExpired,  // a lease (reservation or pin) passed its TTL: the bytes it covered are not valid
};

SHMKV_EXPORT std::string_view StatusCodeName(StatusCode code);

class [[nodiscard]] SHMKV_EXPORT Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message, int sys_errno = 0)
      : code_(code), errno_(sys_errno), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {StatusCode::kAlreadyExists, std::move(m)}; }
  static Status Full(std::string m) { return {StatusCode::kFull, std::move(m)}; }
  static Status Busy(std::string m) { return {StatusCode::kBusy, std::move(m)}; }
  static Status Timeout(std::string m) { return {StatusCode::kTimeout, std::move(m)}; }
  static Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status Protocol(std::string m) { return {StatusCode::kProtocol, std::move(m)}; }
  static Status Disconnected(std::string m) { return {StatusCode::kDisconnected, std::move(m)}; }
  static Status Unavailable(std::string m) { return {StatusCode::kUnavailable, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }
  static Status Expired(std::string m) { return {StatusCode::kExpired, std::move(m)}; }
  // An OS call failed: "<what>: <strerror(err)>". ENOENT maps to kNotFound, EEXIST to
  // kAlreadyExists, ENOSPC to kFull, ETIMEDOUT to kTimeout, everything else to kIoError.
  static Status FromErrno(std::string_view what, int err);

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  int sys_errno() const { return errno_; }
  const std::string& message() const { return message_; }
  // "<CodeName>: <message>", or "OK".
  std::string ToString() const;

  // Prefixes context to the message, keeping code and errno: "attach segment x: <message>".
  Status WithContext(std::string_view context) const&;
  Status WithContext(std::string_view context) &&;

 private:
  StatusCode code_ = StatusCode::kOk;
  int errno_ = 0;
  std::string message_;
};

// Either a T or a non-OK Status. Accessing value() of an error is a bug (asserted).
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}        // NOLINT(google-explicit-constructor)
  Result(Status status) : v_(std::move(status)) {  // NOLINT(google-explicit-constructor)
    assert(!std::get<Status>(v_).ok() && "a Result holding a Status must hold an error");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  T& value() & {
    assert(ok());
    return std::get<T>(v_);
  }
  const T& value() const& {
    assert(ok());
    return std::get<T>(v_);
  }
  T&& value() && {
    assert(ok());
    return std::get<T>(std::move(v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

  // OK when a value is held.
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

 private:
  std::variant<T, Status> v_;
};

}  // namespace shmkv

// Returns early from the enclosing function when `expr` (a Status) is not OK.
#define SHMKV_RETURN_IF_ERROR(expr)                \
  do {                                             \
    ::shmkv::Status shmkv_status_ = (expr);        \
    if (!shmkv_status_.ok()) return shmkv_status_; \
  } while (0)
