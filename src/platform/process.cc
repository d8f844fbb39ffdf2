#include "platform/process.h"

#include <fcntl.h>
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
#include <mach-o/dyld.h>
#include <sys/event.h>
#include <sys/param.h>
#include <sys/ucred.h>
#endif
#if SHMKV_LINUX_PLATFORM
#include <sys/prctl.h>
#include <sys/signalfd.h>
#endif

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace shmkv::platform {
#if !SHMKV_LINUX_PLATFORM
namespace {

// Starts a detached helper thread with every signal blocked in it, so a process-directed signal
// (SIGTERM) is never delivered to the helper and never runs its default action there.
template <typename F>
Status StartHelperThread(std::string_view what, F&& body) {
  sigset_t all;
  sigset_t old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_BLOCK, &all, &old);
  Status s;
  try {
    std::thread(std::forward<F>(body)).detach();
  } catch (const std::system_error& e) {
    s = Status(StatusCode::kIoError, fmt::format("starting the {} thread: {}", what, e.what()), e.code().value());
  }
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return s;
}

}  // namespace
#endif

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

Status KillWhenParentExits() {
#if SHMKV_LINUX_PLATFORM
  return sys::Call([] { return ::prctl(PR_SET_PDEATHSIG, SIGKILL); }).ToStatus("prctl(PR_SET_PDEATHSIG)");
#else
  // Reparenting changes getppid(); 50 ms bounds how long an orphan keeps running.
  return StartHelperThread("parent watch", [parent = ::getppid()] {
    while (::getppid() == parent) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    ::kill(::getpid(), SIGKILL);
  });
#endif
}

Status CloexecPipe(sys::UniqueFd& read_end, sys::UniqueFd& write_end) {
  int fds[2] = {-1, -1};
#if SHMKV_LINUX_PLATFORM
  if (::pipe2(fds, O_CLOEXEC) != 0) return Status::FromErrno("pipe2", errno);
#else
  if (::pipe(fds) != 0) return Status::FromErrno("pipe", errno);
#endif
  read_end.reset(fds[0]);
  write_end.reset(fds[1]);
#if !SHMKV_LINUX_PLATFORM
  for (int fd : fds) {
    if (::fcntl(fd, F_SETFD, FD_CLOEXEC) != 0) return Status::FromErrno("fcntl(FD_CLOEXEC) of a pipe", errno);
  }
#endif
  return Status::Ok();
}

Result<std::string> ExecutablePath() {
#if defined(__APPLE__)
  uint32_t size = 0;
  (void)::_NSGetExecutablePath(nullptr, &size);
  std::string path(size, '\0');
  if (::_NSGetExecutablePath(path.data(), &size) != 0) return Status::Internal("_NSGetExecutablePath failed");
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) == nullptr) return Status::FromErrno("realpath of the executable", errno);
  return std::string(resolved);
#else
  std::error_code ec;
  std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return Status::FromErrno("reading /proc/self/exe", ec.value());
  return exe.string();
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
  sys::UniqueFd read_end, write_end;
  SHMKV_RETURN_IF_ERROR(CloexecPipe(read_end, write_end).WithContext("the stop-signal pipe"));
  // The thread owns the write end for the life of the process.
  SHMKV_RETURN_IF_ERROR(StartHelperThread("stop signal", [stop_signals, write_fd = write_end.release()] {
    int signal = 0;
    while (::sigwait(&stop_signals, &signal) != 0) {
    }
    (void)!::write(write_fd, "s", 1);
  }));
  return read_end;
#endif
}

}  // namespace shmkv::platform
