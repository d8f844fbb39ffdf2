// Platform layer, processes and users (src/platform/platform.h): watching a process exit, the
// credentials of a Unix-socket peer, and a child that dies with its parent.
//
//                      Linux                               macOS / portable
//   exit watch         pidfd_open (OS-selected)            kqueue EVFILT_PROC NOTE_EXIT (macOS);
//                                                          a Linux portable build keeps pidfd
//   peer credentials   SO_PEERCRED, SO_PEERGROUPS          LOCAL_PEERCRED, LOCAL_PEERPID (macOS)
//                      (OS-selected)                       a Linux portable build keeps SO_PEERCRED
//   die with parent    prctl(PR_SET_PDEATHSIG, SIGKILL)    a thread polling getppid()
//                      (SHMKV_LINUX_PLATFORM)
//   stop signals as    signalfd (SHMKV_LINUX_PLATFORM)     a sigwait thread writing to a pipe
//   a descriptor
//   close-on-exec      pipe2(O_CLOEXEC)                    pipe, then fcntl(FD_CLOEXEC)
//   pipe               (SHMKV_LINUX_PLATFORM)
//   own executable     /proc/self/exe (OS-selected)        _NSGetExecutablePath (macOS)
//
// Thread-safety: free functions without shared state; safe from any thread.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/syscall.h"
#include "platform/platform.h"
#include "shmkv/status.h"

namespace shmkv::platform {

// "uid 1000 (alice)", or "uid 1000" when no user name resolves.
std::string DescribeUid(uid_t uid);

// A descriptor that becomes readable (poll, or an asio stream_descriptor's wait_read) once
// process `pid` has exited; invalid when the system cannot watch it: pid <= 0 (a peer in another
// pid namespace reports 0), the process is already gone, or the kernel has no such facility.
// Callers treat an invalid descriptor as "cannot know", never as "still running".
sys::UniqueFd WatchProcessExit(pid_t pid);

// True when the process behind a valid WatchProcessExit descriptor has exited. Does not block.
bool ProcessExited(const sys::UniqueFd& watch);

// The process at the other end of a connected Unix socket, as the kernel recorded it (at
// connect/listen; the peer cannot forge it).
struct PeerCredentials {
  uid_t uid = 0;  // effective uid
  gid_t gid = 0;  // effective (primary) gid
  pid_t pid = 0;  // 0 when the system does not say (or the peer is in another pid namespace)
};

// Fails (with the errno) when the kernel will not say.
Result<PeerCredentials> GetPeerCredentials(int socket_fd);

// True when the peer of `socket_fd` has `gid` as its primary group or among its supplementary
// groups (Linux: SO_PEERGROUPS; macOS: the groups LOCAL_PEERCRED reports, at most 16).
bool PeerInGroup(int socket_fd, const PeerCredentials& peer, gid_t gid);

// From now on, this process is killed (SIGKILL) when its current parent exits. Linux:
// PR_SET_PDEATHSIG. Portable: a detached thread that polls getppid() every 50 ms and kills the
// process once it differs from the parent at the time of this call. A parent that died before
// the call is not seen by either: the caller checks getppid() right after.
Status KillWhenParentExits();

// A pipe whose two ends are close-on-exec: fds[0] reads, fds[1] writes. Portable: the flag is
// set right after pipe(), so a fork+exec by another thread in between could inherit the ends
// (shmkv spawns children from one thread only).
Status CloexecPipe(sys::UniqueFd& read_end, sys::UniqueFd& write_end);

// The absolute path of this process's executable (to find programs installed next to it).
Result<std::string> ExecutablePath();

// Blocks SIGTERM and SIGINT in the calling thread (call it before starting threads: they inherit
// the mask) and returns a descriptor that turns readable, and stays readable (nobody reads it),
// once either arrives. Linux: a signalfd. Portable: the read end of a pipe that a sigwait thread
// writes one byte to.
Result<sys::UniqueFd> StopSignalDescriptor();

}  // namespace shmkv::platform
