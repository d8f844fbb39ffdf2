#include "platform/process.h"

#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif
#if defined(__APPLE__)
#include <sys/event.h>
#include <sys/ucred.h>
#endif
#if SHMKV_LINUX_PLATFORM
#include <sys/prctl.h>
#include <sys/signalfd.h>
#else
#include <fcntl.h>

#include <chrono>
#include <system_error>
#include <thread>
#endif

#include <algorithm>
#include <cerrno>
#include <vector>

#include <fmt/format.h>

namespace shmkv::platform {

std::string DescribeUid(uid_t uid) {
  long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<size_t>(hint) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found != nullptr && found->pw_name != nullptr) {
    return fmt::format("uid {} ({})", uid, found->pw_name);
  }
  return fmt::format("uid {}", uid);
}

sys::UniqueFd WatchProcessExit(pid_t pid) {
  if (pid <= 0) return {};
#if defined(__linux__) && defined(SYS_pidfd_open)
  auto r = sys::Call([&] { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); });
  return r.ok() ? sys::UniqueFd(r.value) : sys::UniqueFd();
#elif defined(__APPLE__)
  // A kqueue with one EVFILT_PROC/NOTE_EXIT filter turns readable when the process exits.
  auto kq = sys::Call([] { return ::kqueue(); });
  if (!kq.ok()) return {};
  sys::UniqueFd fd(kq.value);
  struct kevent change {};
  EV_SET(&change, static_cast<uintptr_t>(pid), EVFILT_PROC, EV_ADD | EV_ONESHOT, NOTE_EXIT, 0, nullptr);
  // ESRCH: already gone (or not ours to see): no watch.
  if (::kevent(fd.get(), &change, 1, nullptr, 0, nullptr) != 0) return {};
  return fd;
#else
  return {};
#endif
}

bool ProcessExited(const sys::UniqueFd& watch) {
  struct pollfd p {
    watch.get(), POLLIN, 0
  };
  auto r = sys::Call([&] { return ::poll(&p, 1, 0); });
  return r.ok() && r.value == 1;
}

Result<PeerCredentials> GetPeerCredentials(int socket_fd) {
#if defined(__linux__)
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return Status::FromErrno("getsockopt(SO_PEERCRED)", errno);
  }
  return PeerCredentials{cred.uid, cred.gid, cred.pid};
#elif defined(__APPLE__)
  struct xucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(socket_fd, SOL_LOCAL, LOCAL_PEERCRED, &cred, &len) != 0) {
    return Status::FromErrno("getsockopt(LOCAL_PEERCRED)", errno);
  }
  if (cred.cr_version != XUCRED_VERSION) {
    return Status::Unavailable(fmt::format("LOCAL_PEERCRED reported version {}", cred.cr_version));
  }
  PeerCredentials peer{cred.cr_uid, cred.cr_ngroups > 0 ? cred.cr_groups[0] : gid_t{0}, 0};
  pid_t pid = 0;
  len = sizeof pid;
  if (::getsockopt(socket_fd, SOL_LOCAL, LOCAL_PEERPID, &pid, &len) == 0) peer.pid = pid;
  return peer;
#else
  uid_t uid = 0;
  gid_t gid = 0;
  if (::getpeereid(socket_fd, &uid, &gid) != 0) return Status::FromErrno("getpeereid", errno);
  return PeerCredentials{uid, gid, 0};
#endif
}

bool PeerInGroup(int socket_fd, const PeerCredentials& peer, gid_t gid) {
  if (peer.gid == gid) return true;
#if defined(__linux__)
  std::vector<gid_t> groups(64);
  for (;;) {
    auto len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(socket_fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) == 0) {
      groups.resize(len / sizeof(gid_t));
      return std::find(groups.begin(), groups.end(), gid) != groups.end();
    }
    if (errno != ERANGE || groups.size() >= 65536) return false;
    groups.resize(len / sizeof(gid_t) + 1);
  }
#elif defined(__APPLE__)
  struct xucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(socket_fd, SOL_LOCAL, LOCAL_PEERCRED, &cred, &len) != 0 || cred.cr_version != XUCRED_VERSION) {
    return false;
  }
  const int n = std::min<int>(cred.cr_ngroups, NGROUPS);
  return std::find(cred.cr_groups, cred.cr_groups + n, gid) != cred.cr_groups + n;
#else
  (void)socket_fd;
  return false;
#endif
}

Status KillWhenParentExits(pid_t parent) {
#if SHMKV_LINUX_PLATFORM
  (void)parent;
  return sys::Call([] { return ::prctl(PR_SET_PDEATHSIG, SIGKILL); }).ToStatus("prctl(PR_SET_PDEATHSIG)");
#else
  // Reparenting changes getppid(); 50 ms bounds how long an orphan keeps running.
  try {
    std::thread([parent] {
      while (::getppid() == parent) std::this_thread::sleep_for(std::chrono::milliseconds(50));
      ::kill(::getpid(), SIGKILL);
    }).detach();
  } catch (const std::system_error& e) {
    return Status(StatusCode::kIoError, fmt::format("starting the parent watch thread: {}", e.what()), e.code().value());
  }
  return Status::Ok();
#endif
}

Result<sys::UniqueFd> StopSignalDescriptor() {
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  if (int err = ::pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr); err != 0) {
    return Status::FromErrno("pthread_sigmask(SIG_BLOCK, SIGTERM|SIGINT)", err);
  }
#if SHMKV_LINUX_PLATFORM
  auto fd = sys::Call([&] { return ::signalfd(-1, &stop_signals, SFD_CLOEXEC | SFD_NONBLOCK); });
  if (!fd.ok()) return fd.ToStatus("signalfd");
  return sys::UniqueFd(fd.value);
#else
  int fds[2] = {-1, -1};
  if (::pipe(fds) != 0) return Status::FromErrno("pipe for the stop signals", errno);
  sys::UniqueFd read_end(fds[0]);
  for (int fd : fds) (void)::fcntl(fd, F_SETFD, FD_CLOEXEC);
  // The thread owns the write end for the life of the process; the signals stay blocked in it
  // too (inherited), which is what sigwait needs.
  try {
    std::thread([stop_signals, write_fd = fds[1]] {
      int signal = 0;
      while (::sigwait(&stop_signals, &signal) != 0) {
      }
      (void)!::write(write_fd, "s", 1);
    }).detach();
  } catch (const std::system_error& e) {
    ::close(fds[1]);
    return Status(StatusCode::kIoError, fmt::format("starting the signal thread: {}", e.what()), e.code().value());
  }
  return read_end;
#endif
}

}  // namespace shmkv::platform
