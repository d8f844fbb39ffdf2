// TCP mode of the file worker: a listening socket and one Session per client.
//
// Every connection must authenticate (Run refuses an empty token): loopback is no boundary
// between the users of one machine, and an authenticated client can read and write any segment
// the worker's uid can open. Unauthenticated connections are bounded twice, so they cannot crowd
// out real clients: each has an authentication deadline (SessionOptions::auth_timeout_ms), and
// at most max_unauthenticated exist at once (a new one closes the oldest). max_clients counts
// authenticated clients only. Host names other than "localhost" are refused rather than resolved,
// so what is bound is exactly what was written.
//
// Thread-safety: a TcpServer is driven by one thread (Run); each client gets its own thread.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "common/syscall.h"
#include "file_worker/file_store.h"
#include "file_worker/session.h"
#include "file_worker/thread_pool.h"
#include "shmkv/status.h"

namespace shmkv::file_worker {

struct ListenAddress {
  sockaddr_storage addr{};
  socklen_t addr_len = 0;
  bool loopback = false;
};

// "HOST:PORT", "[IPV6]:PORT" or ":PORT" (host 127.0.0.1). HOST is an IPv4 or IPv6 literal or
// "localhost"; PORT is decimal 0..65535 (0: any free port).
Result<ListenAddress> ParseListenAddress(std::string_view text);

// "127.0.0.1:41234" or "[::1]:41234".
std::string FormatAddress(const sockaddr_storage& addr);

class TcpServer {
 public:
  struct Options {
    // Authenticated clients at once; one more gets "ERROR too many clients" at AUTH and is closed.
    size_t max_clients = 64;
    // Connections that have not authenticated yet; a new one beyond this closes the oldest.
    size_t max_unauthenticated = 16;
    SessionOptions session;  // its token must not be empty
  };

  static Result<TcpServer> Listen(const ListenAddress& address);

  // The address actually bound (with the real port when 0 was asked for).
  std::string BoundAddress() const;

  // Accepts and serves clients until stop_fd becomes readable, then stops accepting, ends every
  // session (their in-flight commands finish) and returns. kInvalidArgument without a token.
  Status Run(const FileStore& store, ThreadPool& pool, const Options& options, int stop_fd);

 private:
  TcpServer() = default;
  sys::UniqueFd fd_;
};

}  // namespace shmkv::file_worker
