// The C++ client an inference worker uses: connect, register, map the pool, and move KV chunks
// in and out of it zero-copy. Protocol: docs/protocol.md.
//
// Store:    PrepareStore -> write into each Slot::bytes -> (device sync) -> CommitStore
// Retrieve: Lookup -> PrepareRetrieve -> read from each Slot::bytes -> (device sync) -> CommitRetrieve
//
// Posted commits (protocol 2, servers of this version on): PostCommitStore/PostCommitRetrieve
// send the commit and return without waiting for its reply, saving one round trip each. The
// server applies it in order, before any later request of this client, exactly as CommitStore
// would (all or nothing, visible to other clients at once). Its outcome is read by this client's
// next call: if the commit failed, that call returns the commit's error (naming it) and the
// server did not execute that call either (it was sent `chained`); or by Sync(), which only
// waits for the posted replies. Nothing is lost: a timeout or disconnect that drops unread
// replies says so in its error, and destroying a Client with posted replies unread waits for
// them and logs a failure (call Sync() to get it as a Status). Against a version-1 server the
// Post* calls wait for their reply like CommitStore/CommitRetrieve.
//
// Every call has a deadline (ClientOptions::timeout). On expiry it returns kTimeout with a
// message naming the operation, the instance and the deadline, and drops the connection (a late
// reply must never be taken for the answer to a later call).
//
// Server restarts. A call that finds its connection lost (the server restarted or died since the
// previous call) reconnects, re-registers and maps the new segment. Calls that change nothing on
// the server are then sent once more, within the same deadline, and succeed against the new
// server: Lookup without pin, Stats, and the register itself. Every other call (PrepareStore,
// CommitStore, AbortStore, Lookup with pin, PrepareRetrieve, CommitRetrieve, the Post* commits,
// Remove, Clear) returns kDisconnected instead: the reservations and pins it refers to died with
// the old server; the caller starts over, and its next call reconnects. Nothing is retried when
// posted replies were lost with the connection: that call returns kDisconnected naming them. Slot
// spans stay valid for as long as their SlotBatch lives, also across a reconnect (the batch holds
// the mapping it points into), but slots of a previous server generation no longer refer to
// anything the server knows.
//
// Expired leases. A reservation older than the server's --reserve-ttl, or a pin older than its
// --pin-ttl, expires. CommitStore naming such a key returns kExpired and commits nothing (the
// expired key's slot is released; the other keys stay reserved: commit or abort them).
// CommitRetrieve naming such a key returns kExpired after releasing the pins of all the other
// keys; the bytes read for the expired keys may have been overwritten by another writer and must
// not be used. last_expired() names the keys.
//
// Trust. Right after connecting, before sending anything, the client checks that the server
// process runs as this process's effective uid or as root (SO_PEERCRED): any local user could
// bind the socket path first. It maps the segment only if that server uid owns it and no other
// user may access it (mode & 0007 == 0). Either refusal is kInvalidArgument naming the socket or
// segment and the uids (and mode) involved.
//
// Thread-safety: a Client is not thread-safe; use one per thread, or lock around it (the Python
// binding does: one mutex per client, also taken by close()).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "shmkv/export.h"
#include "shmkv/segment.h"
#include "shmkv/status.h"
#include "shmkv/types.h"

namespace shmkv {

struct ClientOptions {
  // Path of the server's control socket.
  std::string socket_path;
  // Names this worker in server logs and in error messages (default: "pid-<pid>").
  std::string instance_id;
  // The namespace this worker's keys live in.
  Namespace ns;
  // Deadline of every call, connect and register included.
  std::chrono::milliseconds timeout{5000};
  // Register the pool mapping with cudaHostRegister when CUDA is present.
  bool pin_with_cuda = true;
};

struct RegistrationInfo {
  uint64_t session = 0;
  std::string shm_name;  // exactly the segment the server created
  uint64_t pool_size = 0;
  uint64_t alignment = 0;
  std::string server_version;
  uint32_t protocol = 0;
  uint64_t generation = 0;  // changes when the server restarts
  // The segment's file as the server reported it (e.g. /mnt/huge/lmcache_l1_pool_7 with
  // --shm-dir); empty from a server that does not report it (its segment is in /dev/shm).
  std::string shm_path;
};

struct Slot {
  SlotStatus status = SlotStatus::kMissing;
  uint64_t offset = 0;         // into the pool
  uint64_t length = 0;         // bytes of the object
  std::span<std::byte> bytes;  // the object's bytes in the mapped pool; empty unless kOk
};

struct SlotBatch {
  std::vector<Slot> slots;                       // one per key, in key order
  std::shared_ptr<const SharedSegment> mapping;  // keeps `bytes` valid
};

class SHMKV_EXPORT Client {
 public:
  static Result<Client> Connect(const ClientOptions& options);
  // Asks a server for its statistics without registering (for tools).
  static Result<StatsMap> QueryStats(const std::string& socket_path, std::chrono::milliseconds timeout);

  Client(Client&&) noexcept;
  Client& operator=(Client&&) noexcept;
  ~Client();

  const RegistrationInfo& info() const;
  std::shared_ptr<const SharedSegment> mapping() const;

  Result<SlotBatch> PrepareStore(std::span<const std::string_view> keys, std::span<const uint64_t> sizes);
  Status CommitStore(std::span<const std::string_view> keys);
  Result<uint64_t> AbortStore(std::span<const std::string_view> keys);
  // Number of leading keys present; with `pin`, they stay pinned until retrieved (or the TTL).
  Result<uint64_t> Lookup(std::span<const std::string_view> keys, bool pin = false);
  Result<SlotBatch> PrepareRetrieve(std::span<const std::string_view> keys);
  Status CommitRetrieve(std::span<const std::string_view> keys);

  // CommitStore / CommitRetrieve without waiting for the reply (see the top of this file). An
  // error here is one of sending (or of a version-1 server's synchronous reply); the commit's
  // own outcome comes with the next call or Sync().
  Status PostCommitStore(std::span<const std::string_view> keys);
  Status PostCommitRetrieve(std::span<const std::string_view> keys);
  // Waits for the replies of every posted commit; the first failure among them, or OK.
  Status Sync();
  // Posted commits whose reply has not been read yet.
  size_t posted() const;
  // After a call returned kExpired: the 0-based indices, into the keys of the commit that failed,
  // of the keys whose lease passed its TTL (see "Expired leases" above). For a posted commit
  // whose failure a later call or Sync() returned, the indices are into the posted commit's keys
  // (the message names it). Empty after any other outcome; every call resets it.
  const std::vector<uint32_t>& last_expired() const;
  // Per key: removed (from every tier), missing, or busy (readers hold it; nothing removed).
  Result<std::vector<RemoveOutcome>> Remove(std::span<const std::string_view> keys);
  // Removes every unpinned object of this namespace; returns the count.
  Result<uint64_t> Clear();
  Result<StatsMap> Stats();

  // One key, one copy in: prepare, copy, commit. kAlreadyExists when present, kBusy, kFull.
  Status Put(std::string_view key, std::span<const std::byte> data);
  // One key, one copy out: prepare, copy, release. kNotFound when missing.
  Result<std::vector<std::byte>> Get(std::string_view key);

 private:
  struct Impl;
  explicit Client(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace shmkv
