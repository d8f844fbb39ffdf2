#include "file_worker/file_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#if defined(__linux__)
#include <linux/openat2.h>
#endif

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <utility>

#include <fmt/format.h>

#include "common/log.h"
#include "file_worker/protocol.h"
#include "file_worker/uring.h"

namespace shmkv::file_worker {
namespace {

constexpr size_t kMaxPathBytes = 4096;
constexpr size_t kMaxComponentBytes = 255;
constexpr int kMaxListDepth = 64;
// One read/write call moves at most this much; Linux caps a call just under 2 GiB anyway.
constexpr uint64_t kMaxIoChunk = uint64_t{1} << 30;

// Cleared process-wide the first time the kernel answers ENOSYS (older than 5.6, or a seccomp
// profile that hides openat2): from then on every resolution takes the walk.
std::atomic<bool> g_openat2_usable{true};

bool BadPathByte(unsigned char c) {
  return c <= 0x20 || c == 0x7f;
}

// "a/b/c" -> {"a/b", "c"}; "c" -> {"", "c"}.
std::pair<std::string_view, std::string_view> SplitLeaf(std::string_view rel) {
  const size_t slash = rel.rfind('/');
  if (slash == std::string_view::npos) return {std::string_view{}, rel};
  return {rel.substr(0, slash), rel.substr(slash + 1)};
}

Status SymlinkRefused(std::string_view where) {
  return Status(StatusCode::kInvalidArgument,
                fmt::format("{} is or passes through a symbolic link (links are never followed)", Quote(where, 256)),
                ELOOP);
}

Status FromErrnoAt(std::string_view what, std::string_view rel, int err) {
  if (err == ELOOP) return SymlinkRefused(rel);
  if (err == EXDEV) {
    return Status(StatusCode::kInvalidArgument, fmt::format("{} resolves outside the root", Quote(rel, 256)), err);
  }
  return Status::FromErrno(fmt::format("{} {}", what, Quote(rel, 256)), err);
}

std::string TempName() {
  thread_local std::mt19937_64 rng{(uint64_t{std::random_device{}()} << 32) ^ std::random_device{}() ^
                                   static_cast<uint64_t>(::getpid())};
  return fmt::format("{}{:016x}", kTempPrefix, rng());
}

std::string Join(std::string_view dir, std::string_view leaf) {
  return dir.empty() ? std::string(leaf) : fmt::format("{}/{}", dir, leaf);
}

// Unlinks a temporary file unless dismissed: a failed write leaves nothing behind.
class TempGuard {
 public:
  TempGuard(int dirfd, std::string name) : dirfd_(dirfd), name_(std::move(name)) {}
  ~TempGuard() {
    if (!name_.empty()) ::unlinkat(dirfd_, name_.c_str(), 0);
  }
  TempGuard(const TempGuard&) = delete;
  TempGuard& operator=(const TempGuard&) = delete;
  void dismiss() { name_.clear(); }

 private:
  int dirfd_;
  std::string name_;
};

struct DirCloser {
  void operator()(DIR* d) const { ::closedir(d); }
};
using DirPtr = std::unique_ptr<DIR, DirCloser>;

bool ListableName(std::string_view name) {
  if (name.starts_with(kTempPrefix)) return false;
  return std::none_of(name.begin(), name.end(), [](char c) { return BadPathByte(static_cast<unsigned char>(c)); });
}

Status ListInto(sys::UniqueFd dir, const std::string& prefix, int depth, std::vector<std::string>* out) {
  if (depth > kMaxListDepth) {
    return Status::InvalidArgument(
        fmt::format("directory tree deeper than {} levels under {}", kMaxListDepth, Quote(prefix, 256)));
  }
  DirPtr d(::fdopendir(dir.get()));
  if (!d) return Status::FromErrno(fmt::format("opendir {}", Quote(prefix, 256)), errno);
  (void)dir.release();  // owned by the DIR now
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(d.get());
    if (e == nullptr) {
      if (errno != 0) return Status::FromErrno(fmt::format("readdir {}", Quote(prefix, 256)), errno);
      break;
    }
    const std::string_view name = e->d_name;
    if (name == "." || name == ".." || !ListableName(name)) continue;
    unsigned char type = e->d_type;
    if (type == DT_UNKNOWN) {
      struct stat st {};
      if (::fstatat(::dirfd(d.get()), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // raced away
      type = S_ISREG(st.st_mode) ? DT_REG : S_ISDIR(st.st_mode) ? DT_DIR : DT_UNKNOWN;
    }
    const std::string rel = Join(prefix, name);
    if (type == DT_REG) {
      out->push_back(rel);
    } else if (type == DT_DIR) {
      auto sub = sys::Call(
          [&] { return ::openat(::dirfd(d.get()), e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); });
      if (!sub.ok()) {
        if (sub.err == ENOENT || sub.err == ELOOP || sub.err == ENOTDIR) continue;  // raced: gone or replaced
        return Status::FromErrno(fmt::format("open directory {}", Quote(rel, 256)), sub.err);
      }
      SHMKV_RETURN_IF_ERROR(ListInto(sys::UniqueFd(sub.value), rel, depth + 1, out));
    }
  }
  return Status::Ok();
}

// io_uring and pread/pwrite return the same thing (count or failure), so one loop serves both.
sys::CallResult<ssize_t> PWrite(UringExecutor* io, int fd, const std::byte* src, size_t n, uint64_t off) {
  if (io == nullptr) return sys::Call([&] { return ::pwrite(fd, src, n, static_cast<off_t>(off)); });
  const int64_t r = io->Write(fd, src, static_cast<uint32_t>(n), off);
  if (r < 0) return {-1, static_cast<int>(-r)};
  return {static_cast<ssize_t>(r), 0};
}

sys::CallResult<ssize_t> PRead(UringExecutor* io, int fd, std::byte* dst, size_t n, uint64_t off) {
  if (io == nullptr) return sys::Call([&] { return ::pread(fd, dst, n, static_cast<off_t>(off)); });
  const int64_t r = io->Read(fd, dst, static_cast<uint32_t>(n), off);
  if (r < 0) return {-1, static_cast<int>(-r)};
  return {static_cast<ssize_t>(r), 0};
}

// Writes all of [src, src+len) at offset 0 of fd.
Status WriteAll(UringExecutor* io, int fd, const std::byte* src, uint64_t len, std::string_view rel) {
  uint64_t done = 0;
  while (done < len) {
    const auto chunk = static_cast<size_t>(std::min(len - done, kMaxIoChunk));
    auto r = PWrite(io, fd, src + done, chunk, done);
    if (!r.ok()) return Status::FromErrno(fmt::format("write {} at {}", Quote(rel, 256), done), r.err);
    if (r.value == 0) return Status::IoError(fmt::format("write {}: no progress at byte {}", Quote(rel, 256), done));
    done += static_cast<uint64_t>(r.value);
  }
  return Status::Ok();
}

}  // namespace

Result<FileStore> FileStore::Open(const std::string& root, const Options& options) {
  if (root.empty()) return Status::InvalidArgument("--root: a directory is required");
  std::error_code ec;
  std::filesystem::path abs = std::filesystem::absolute(root, ec);
  if (ec) return Status::FromErrno(fmt::format("--root '{}'", root), ec.value());
  std::string given = abs.lexically_normal().string();
  while (given.size() > 1 && given.back() == '/') given.pop_back();
  if (options.create_root) {
    std::filesystem::create_directories(given, ec);
    if (ec) return Status::FromErrno(fmt::format("creating --root '{}'", given), ec.value());
  }
  std::unique_ptr<char, decltype(&std::free)> real(::realpath(given.c_str(), nullptr), &std::free);
  if (!real) return Status::FromErrno(fmt::format("--root '{}'", given), errno);
  FileStore store;
  store.given_root_ = std::move(given);
  store.canonical_root_ = real.get();
  store.options_ = options;
  if (store.canonical_root_ == "/") {
    return Status::InvalidArgument("--root must not be '/': confining to the whole file system confines nothing");
  }
  auto fd = sys::Call([&] { return ::open(store.canonical_root_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC); });
  if (!fd.ok()) return fd.ToStatus(fmt::format("opening --root '{}'", store.canonical_root_));
  store.root_fd_ = sys::UniqueFd(fd.value);

  if (options.direct) {
    // tmpfs (and some FUSE file systems) refuse O_DIRECT: say so at start, not on every command.
    const std::string probe = TempName();
    auto pfd = sys::Call([&] {
      return ::openat(store.root_fd_.get(), probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_DIRECT | O_CLOEXEC, 0600);
    });
    if (!pfd.ok()) {
      return Status(StatusCode::kUnavailable,
                    fmt::format("--direct: the file system of --root '{}' does not support O_DIRECT ({}); tmpfs does "
                                "not; use a directory on a disk file system or drop --direct",
                                store.canonical_root_, std::strerror(pfd.err)),
                    pfd.err);
    }
    sys::UniqueFd probe_fd(pfd.value);
    TempGuard remove_probe(store.root_fd_.get(), probe);
    void* buf = std::aligned_alloc(kDirectAlignment, kDirectAlignment);
    if (buf == nullptr) return Status::Internal("aligned_alloc failed");
    std::memset(buf, 0, kDirectAlignment);
    auto w = sys::Call([&] { return ::pwrite(probe_fd.get(), buf, kDirectAlignment, 0); });
    std::free(buf);
    if (!w.ok()) {
      return Status(StatusCode::kUnavailable,
                    fmt::format("--direct: an aligned O_DIRECT write under --root '{}' failed ({})",
                                store.canonical_root_, std::strerror(w.err)),
                    w.err);
    }
  }
  return store;
}

Result<RelPath> FileStore::Normalize(std::string_view path, bool allow_root) const {
  if (path.empty()) return Status::InvalidArgument("empty path");
  if (path.size() > kMaxPathBytes) {
    return Status::InvalidArgument(fmt::format("path longer than {} bytes", kMaxPathBytes));
  }
  for (size_t i = 0; i < path.size(); ++i) {
    const auto c = static_cast<unsigned char>(path[i]);
    if (BadPathByte(c)) {
      return Status::InvalidArgument(
          fmt::format("path {} has a space or control byte 0x{:02x} at {}", Quote(path), c, i + 1));
    }
  }
  std::string_view rest = path;
  if (path.front() == '/') {
    bool inside = false;
    for (const std::string* prefix : {&canonical_root_, &given_root_}) {
      if (path == *prefix) {
        rest = {};
        inside = true;
      } else if (path.size() > prefix->size() && path.starts_with(*prefix) && path[prefix->size()] == '/') {
        rest = path.substr(prefix->size() + 1);
        inside = true;
      }
      if (inside) break;
    }
    if (!inside) {
      return Status::InvalidArgument(
          fmt::format("absolute path {} is outside the root '{}'", Quote(path, 256), canonical_root_));
    }
  }
  std::string out;
  out.reserve(rest.size());
  while (!rest.empty()) {
    const size_t slash = std::min(rest.find('/'), rest.size());
    const std::string_view comp = rest.substr(0, slash);
    rest.remove_prefix(std::min(slash + 1, rest.size()));
    if (comp.empty() || comp == ".") continue;
    if (comp == "..") return Status::InvalidArgument(fmt::format("path {} has a '..' component", Quote(path, 256)));
    if (comp.size() > kMaxComponentBytes) {
      return Status::InvalidArgument(
          fmt::format("path {} has a component longer than {} bytes", Quote(path), kMaxComponentBytes));
    }
    if (comp.starts_with(kTempPrefix)) {
      return Status::InvalidArgument(fmt::format(
          "path {}: names starting with '{}' are reserved for in-progress writes", Quote(path, 256), kTempPrefix));
    }
    if (!out.empty()) out.push_back('/');
    out.append(comp);
  }
  if (out.empty() && !allow_root) {
    return Status::InvalidArgument(fmt::format("path {} names the root directory, not a file", Quote(path, 256)));
  }
  return RelPath(std::move(out));
}

Result<sys::UniqueFd> FileStore::OpenDir(std::string_view dir, bool create) const {
  if (dir.empty()) {
    auto r = sys::Call([&] { return ::openat(root_fd_.get(), ".", O_PATH | O_DIRECTORY | O_CLOEXEC); });
    if (!r.ok()) return r.ToStatus("opening the root");
    return sys::UniqueFd(r.value);
  }
#if defined(__linux__) && defined(SYS_openat2)
  if (options_.allow_openat2 && g_openat2_usable.load(std::memory_order_relaxed)) {
    const std::string d(dir);
    open_how how{};
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    auto r = sys::Call(
        [&] { return static_cast<int>(::syscall(SYS_openat2, root_fd_.get(), d.c_str(), &how, sizeof how)); });
    if (r.ok()) return sys::UniqueFd(r.value);
    if (r.err == ENOSYS) {
      g_openat2_usable.store(false, std::memory_order_relaxed);
      Log().info("openat2 is not available; resolving paths by walking them with O_NOFOLLOW");
    } else if (r.err == EAGAIN) {
      // RESOLVE_BENEATH can fail spuriously under a concurrent rename; the walk is always exact.
    } else if (!(r.err == ENOENT && create)) {
      return FromErrnoAt("open directory", dir, r.err);
    }
  }
#endif
  return WalkDir(dir, create);
}

Result<sys::UniqueFd> FileStore::WalkDir(std::string_view dir, bool create) const {
  auto start = sys::Call([&] { return ::openat(root_fd_.get(), ".", O_PATH | O_DIRECTORY | O_CLOEXEC); });
  if (!start.ok()) return start.ToStatus("opening the root");
  sys::UniqueFd cur(start.value);
  std::string_view rest = dir;
  size_t walked = 0;  // bytes of `dir` resolved so far, for messages
  while (!rest.empty()) {
    const size_t slash = std::min(rest.find('/'), rest.size());
    const std::string comp(rest.substr(0, slash));
    rest.remove_prefix(std::min(slash + 1, rest.size()));
    walked += comp.size() + (walked == 0 ? 0 : 1);
    const std::string_view so_far = dir.substr(0, std::min(walked, dir.size()));
    auto open_comp = [&] {
      return sys::Call(
          [&] { return ::openat(cur.get(), comp.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC); });
    };
    auto r = open_comp();
    if (!r.ok() && r.err == ENOENT && create) {
      auto m = sys::Call([&] { return ::mkdirat(cur.get(), comp.c_str(), 0700); });
      if (!m.ok() && m.err != EEXIST) return FromErrnoAt("create directory", so_far, m.err);
      r = open_comp();
    }
    if (!r.ok()) {
      struct stat st {};
      if (::fstatat(cur.get(), comp.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode)) {
        return SymlinkRefused(so_far);
      }
      return FromErrnoAt("open directory", so_far, r.err);
    }
    sys::UniqueFd next(r.value);
    // O_PATH | O_NOFOLLOW would hand back a symlink itself; O_DIRECTORY refuses that, and this
    // check makes the guarantee independent of that detail.
    struct stat st {};
    auto s = sys::Call([&] { return ::fstat(next.get(), &st); });
    if (!s.ok()) return FromErrnoAt("stat directory", so_far, s.err);
    if (S_ISLNK(st.st_mode)) return SymlinkRefused(so_far);
    if (!S_ISDIR(st.st_mode)) return FromErrnoAt("open directory", so_far, ENOTDIR);
    cur = std::move(next);
  }
  return cur;
}

Result<uint64_t> FileStore::Write(const RelPath& path, const std::byte* src, uint64_t len, UringExecutor* io) const {
  const auto [parent, leaf] = SplitLeaf(path.str());
  const std::string leaf_name(leaf);
  auto dir = OpenDir(parent, /*create=*/true);
  if (!dir.ok()) return dir.status();
  struct stat st {};
  if (::fstatat(dir->get(), leaf_name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (S_ISLNK(st.st_mode)) return SymlinkRefused(path.str());
    if (!S_ISREG(st.st_mode)) {
      return Status::InvalidArgument(fmt::format("{} exists and is not a regular file", Quote(path.str(), 256)));
    }
  }

  const int flags = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | (options_.direct ? O_DIRECT : 0);
  std::string tmp;
  sys::CallResult<int> opened{-1, EEXIST};
  for (int attempt = 0; attempt < 8 && !opened.ok() && opened.err == EEXIST; ++attempt) {
    tmp = TempName();
    opened = sys::Call([&] { return ::openat(dir->get(), tmp.c_str(), flags, 0600); });
  }
  if (!opened.ok()) return FromErrnoAt("create a temporary file for", path.str(), opened.err);
  TempGuard remove_tmp(dir->get(), tmp);
  {
    sys::UniqueFd fd(opened.value);
    SHMKV_RETURN_IF_ERROR(WriteAll(io, fd.get(), src, len, path.str()));
    if (options_.fsync) {
      SHMKV_RETURN_IF_ERROR(sys::Call([&] {
                              return ::fdatasync(fd.get());
                            }).ToStatus(fmt::format("fdatasync {}", Quote(path.str(), 256))));
    }
    // close() can report a deferred write error (NFS, quota): check it before publishing the name.
    const int raw = fd.release();
    if (::close(raw) != 0 && errno != EINTR) return FromErrnoAt("close", path.str(), errno);
  }
  auto renamed = sys::Call([&] { return ::renameat(dir->get(), tmp.c_str(), dir->get(), leaf_name.c_str()); });
  if (!renamed.ok()) return FromErrnoAt("rename into place", path.str(), renamed.err);
  remove_tmp.dismiss();
  if (options_.fsync) {
    // The rename is durable only once the directory is; an O_PATH descriptor cannot be fsync'ed.
    auto d = sys::Call([&] { return ::openat(dir->get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
    if (!d.ok()) return FromErrnoAt("open the directory of", path.str(), d.err);
    sys::UniqueFd dfd(d.value);
    SHMKV_RETURN_IF_ERROR(sys::Call([&] {
                            return ::fsync(dfd.get());
                          }).ToStatus(fmt::format("fsync the directory of {}", Quote(path.str(), 256))));
  }
  return len;
}

Result<uint64_t> FileStore::Read(const RelPath& path, std::byte* dst, uint64_t len, UringExecutor* io) const {
  const auto [parent, leaf] = SplitLeaf(path.str());
  const std::string leaf_name(leaf);
  auto dir = OpenDir(parent, /*create=*/false);
  if (!dir.ok()) return dir.status();
  // O_NONBLOCK: opening a FIFO planted in the root must not hang this thread.
  const int flags = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | (options_.direct ? O_DIRECT : 0);
  auto opened = sys::Call([&] { return ::openat(dir->get(), leaf_name.c_str(), flags); });
  if (!opened.ok()) return FromErrnoAt("open", path.str(), opened.err);
  sys::UniqueFd fd(opened.value);
  struct stat st {};
  SHMKV_RETURN_IF_ERROR(
      sys::Call([&] { return ::fstat(fd.get(), &st); }).ToStatus(fmt::format("stat {}", Quote(path.str(), 256))));
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(fmt::format("{} is not a regular file", Quote(path.str(), 256)));
  }
  SHMKV_RETURN_IF_ERROR(sys::Call([&] {
                          return ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK & ~O_CLOEXEC);
                        }).ToStatus(fmt::format("fcntl {}", Quote(path.str(), 256))));
  const auto file_size = static_cast<uint64_t>(st.st_size);
  // O_DIRECT must ask for the aligned length; the read still stops at end of file, and whole
  // blocks land only inside [dst, dst + len), which the caller has bounds-checked.
  const uint64_t want = options_.direct ? len : std::min(len, file_size);
  uint64_t done = 0;
  while (done < want) {
    const auto chunk = static_cast<size_t>(std::min(want - done, kMaxIoChunk));
    auto r = PRead(io, fd.get(), dst + done, chunk, done);
    if (!r.ok()) return Status::FromErrno(fmt::format("read {} at {}", Quote(path.str(), 256), done), r.err);
    if (r.value == 0) break;  // end of file (it may have shrunk since fstat)
    done += static_cast<uint64_t>(r.value);
  }
  return std::min(done, len);
}

Result<std::optional<FileStore::Leaf>> FileStore::FindLeaf(const RelPath& path, bool absent_on_enotdir) const {
  const auto [parent, leaf] = SplitLeaf(path.str());
  auto dir = OpenDir(parent, /*create=*/false);
  if (!dir.ok()) {
    const int err = dir.status().sys_errno();
    if (err == ENOENT || (absent_on_enotdir && err == ENOTDIR)) return std::optional<Leaf>();
    return dir.status();
  }
  Leaf out{std::move(dir).value(), std::string(leaf), {}};
  auto r = sys::Call([&] { return ::fstatat(out.dir.get(), out.name.c_str(), &out.st, AT_SYMLINK_NOFOLLOW); });
  if (!r.ok()) {
    if (r.err == ENOENT) return std::optional<Leaf>();
    return FromErrnoAt("stat", path.str(), r.err);
  }
  if (S_ISLNK(out.st.st_mode)) return SymlinkRefused(path.str());
  return std::optional<Leaf>(std::move(out));
}

Result<bool> FileStore::Exists(const RelPath& path) const {
  auto leaf = FindLeaf(path, /*absent_on_enotdir=*/true);
  if (!leaf.ok()) return leaf.status();
  return leaf->has_value() && S_ISREG((*leaf)->st.st_mode);
}

Result<bool> FileStore::Delete(const RelPath& path) const {
  auto found = FindLeaf(path, /*absent_on_enotdir=*/false);
  if (!found.ok()) return found.status();
  if (!found->has_value()) return false;
  const Leaf& leaf = **found;
  if (!S_ISREG(leaf.st.st_mode)) {
    return Status::InvalidArgument(
        fmt::format("{} is not a regular file; DELETE removes files only", Quote(path.str(), 256)));
  }
  auto u = sys::Call([&] { return ::unlinkat(leaf.dir.get(), leaf.name.c_str(), 0); });
  if (!u.ok()) {
    if (u.err == ENOENT) return false;
    return FromErrnoAt("delete", path.str(), u.err);
  }
  return true;
}

Result<uint64_t> FileStore::Stat(const RelPath& path) const {
  const auto [parent, leaf] = SplitLeaf(path.str());
  auto dir = OpenDir(parent, /*create=*/false);
  if (!dir.ok()) return dir.status();
  struct stat st {};
  const std::string leaf_name(leaf);
  auto r = sys::Call([&] { return ::fstatat(dir->get(), leaf_name.c_str(), &st, AT_SYMLINK_NOFOLLOW); });
  if (!r.ok()) return FromErrnoAt("stat", path.str(), r.err);
  if (S_ISLNK(st.st_mode)) return SymlinkRefused(path.str());
  if (!S_ISREG(st.st_mode)) {
    return Status::InvalidArgument(fmt::format("{} is not a regular file", Quote(path.str(), 256)));
  }
  return static_cast<uint64_t>(st.st_size);
}

Result<std::vector<std::string>> FileStore::List(const RelPath& dir) const {
  std::vector<std::string> out;
  auto pathfd = OpenDir(dir.str(), /*create=*/false);
  if (!pathfd.ok()) {
    if (pathfd.status().sys_errno() == ENOENT) return out;
    return pathfd.status();
  }
  auto r = sys::Call([&] { return ::openat(pathfd->get(), ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC); });
  if (!r.ok()) return FromErrnoAt("open directory", dir.str(), r.err);
  SHMKV_RETURN_IF_ERROR(ListInto(sys::UniqueFd(r.value), dir.str(), 0, &out));
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace shmkv::file_worker
