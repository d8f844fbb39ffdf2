// FileStore: every file operation of the file worker, confined to one root directory.
//
// Confinement is structural, not a string check on a resolved path: the store holds a descriptor
// of the root and reaches every file with *at() calls relative to it, never following a symbolic
// link. Directories are resolved with openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) where the
// kernel has it, else by walking component by component with O_NOFOLLOW; the last component is
// always opened, stat'ed, renamed or unlinked with O_NOFOLLOW / AT_SYMLINK_NOFOLLOW. Together with
// the lexical rules of Normalize (no "..", absolute paths only under the root) no operation can
// create, read or change a file outside the root, also when someone plants a symlink inside it.
//
// Writes land under a temporary name (".shmkv-tmp-<random>") in the target's directory and are
// renamed into place, so the final name never shows a torn file. Without `fsync` this protects
// against a crash of the worker (kill -9), not against power loss; with it, the data and the
// directory entry are synced before the reply.
//
// Thread-safety: a FileStore is immutable after Open; all const methods may run concurrently.
#pragma once

#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/syscall.h"
#include "shmkv/status.h"

namespace shmkv::file_worker {
class UringExecutor;
}

namespace shmkv::file_worker {

// Temporary files of in-progress writes start with this; clients can neither name nor list them.
inline constexpr std::string_view kTempPrefix = ".shmkv-tmp-";

// A path that passed Normalize: relative to the root, components joined by '/', none of them
// empty, ".", ".." or reserved. The empty path is the root itself.
class RelPath {
 public:
  const std::string& str() const { return text_; }
  bool is_root() const { return text_.empty(); }

 private:
  friend class FileStore;
  explicit RelPath(std::string text) : text_(std::move(text)) {}
  std::string text_;
};

class FileStore {
 public:
  struct Options {
    bool direct = false;        // O_DIRECT for Read and Write
    bool fsync = false;         // fdatasync the file and fsync its directory before a write replies
    bool allow_openat2 = true;  // false forces the component walk (tests cover both resolvers)
    bool create_root = true;    // create the root directory (and its parents) when missing
  };

  // Opens (and if asked creates) the root. With `direct`, probes that its file system supports
  // O_DIRECT and fails with a clear message otherwise (tmpfs does not).
  static Result<FileStore> Open(const std::string& root, const Options& options);

  FileStore(FileStore&&) noexcept = default;
  FileStore& operator=(FileStore&&) noexcept = default;

  // Lexical check of a client path. Relative paths are taken relative to the root; an absolute
  // path is accepted only when it starts with the root (as given, or canonical) at a component
  // boundary, and is then made relative. Empty and "." components are dropped; ".." anywhere,
  // control bytes, spaces, reserved temp names and overlong paths are refused. The root itself
  // is accepted only when allow_root (LIST).
  Result<RelPath> Normalize(std::string_view path, bool allow_root = false) const;

  // Copies len bytes from src into the file (created with mode 0600, missing parent directories
  // with 0700), atomically replacing an existing regular file. Refuses to replace a symlink or
  // anything but a regular file. Returns len. With `io`, the bytes move through io_uring instead
  // of pwrite; everything else (temp name, rename, fsync) is the same.
  Result<uint64_t> Write(const RelPath& path, const std::byte* src, uint64_t len, UringExecutor* io = nullptr) const;
  // Copies min(len, file size) bytes of the file to dst; returns the count. Only regular files are
  // read (a FIFO or device planted in the root is refused without blocking). With `io`, through
  // io_uring instead of pread.
  Result<uint64_t> Read(const RelPath& path, std::byte* dst, uint64_t len, UringExecutor* io = nullptr) const;
  // True when the path names a regular file; false when nothing is there. A symlink is an error.
  Result<bool> Exists(const RelPath& path) const;
  // Removes a regular file: true when removed, false when nothing was there.
  Result<bool> Delete(const RelPath& path) const;
  // The size of a regular file.
  Result<uint64_t> Stat(const RelPath& path) const;
  // Every regular file under `dir`, recursively, as paths relative to the root, sorted. Symlinks,
  // temp files and names that could not be sent back on one protocol line (spaces, control
  // bytes) are left out. A missing directory lists as empty.
  Result<std::vector<std::string>> List(const RelPath& dir) const;

  const std::string& root() const { return canonical_root_; }
  const Options& options() const { return options_; }

 private:
  FileStore() = default;

  // Opens the directory `dir` beneath the root as an O_PATH descriptor; with create, missing
  // directories are made on the way.
  Result<sys::UniqueFd> OpenDir(std::string_view dir, bool create) const;
  Result<sys::UniqueFd> WalkDir(std::string_view dir, bool create) const;

  // The last component of `path`, stat'ed in its parent without following a symlink (a symlink
  // is refused). nullopt when it does not exist: a missing leaf or parent (ENOENT), and also a
  // parent that is not a directory (ENOTDIR) when absent_on_enotdir.
  struct Leaf {
    sys::UniqueFd dir;
    std::string name;
    struct stat st {};
  };
  Result<std::optional<Leaf>> FindLeaf(const RelPath& path, bool absent_on_enotdir) const;

  sys::UniqueFd root_fd_;
  std::string given_root_;      // absolute, lexically normal, as on the command line
  std::string canonical_root_;  // realpath of the root
  Options options_;
};

}  // namespace shmkv::file_worker
