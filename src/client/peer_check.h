// Which server a worker trusts: one that runs as the worker's own user, or as root. Any local user
// can bind a Unix socket at a predictable path before the real server starts; a worker that talked
// to it would hand its KV bytes (prompts) to that user and map a pool that user controls.
//
// Thread-safety: free functions without shared state.
#pragma once

#include <sys/types.h>

#include <string_view>

#include <fmt/format.h>

#include "platform/process.h"
#include "shmkv/status.h"

namespace shmkv::client {

// OK when a server running as `server` may serve a worker running as `self` (both effective
// uids): the same user, or a root server. A root worker trusts only a root server.
inline Status CheckServerUid(std::string_view socket_path, uid_t server, uid_t self) {
  if (server == self || server == 0) return Status::Ok();
  return Status::InvalidArgument(fmt::format(
      "refusing the server at '{}': it runs as {}, this process as {}; a worker trusts only a server of its own user "
      "or root (another local user may have bound the socket)",
      socket_path, platform::DescribeUid(server), platform::DescribeUid(self)));
}

// The effective uid of the process at the other end of a connected Unix socket (as of its
// listen(); the kernel records it, the peer cannot forge it).
inline Result<uid_t> PeerUid(int fd) {
  auto peer = platform::GetPeerCredentials(fd);
  if (!peer.ok()) return peer.status();
  return peer->uid;
}

}  // namespace shmkv::client
