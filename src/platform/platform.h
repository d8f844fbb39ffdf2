// The platform layer: every difference between Linux and other POSIX systems (macOS) that shmkv
// depends on lives under src/platform/ (docs/platform.md). Code outside it calls these functions
// and has no #if on the operating system.
//
// Two kinds of difference, selected two ways:
//   - Behaviour with a Linux implementation and a portable one (how segments are listed, the
//     liveness lock, the /dev/shm capacity check, reserving a segment's pages, prefault, huge
//     pages, io_uring, a child dying with its parent): SHMKV_LINUX_PLATFORM selects. It is 1 on
//     Linux unless the build sets SHMKV_PORTABLE_PLATFORM (CMake option of that name), which
//     builds the portable implementations, the ones macOS runs, on Linux, where POSIX shm_open
//     works too: that is how the macOS logic is tested (scripts/test.sh, "portable platform").
//   - Kernel interfaces that exist under one name per system (a pidfd or a kqueue to watch a
//     process exit; SO_PEERCRED or LOCAL_PEERCRED for a socket peer's credentials): selected by
//     the operating system alone, since Linux has no other way to get the same answer.
//
// Thread-safety: everything here is free functions without shared mutable state, safe to call
// from any thread, unless a function says otherwise.
#pragma once

#if defined(__linux__) && !defined(SHMKV_PORTABLE_PLATFORM)
#define SHMKV_LINUX_PLATFORM 1
#else
#define SHMKV_LINUX_PLATFORM 0
#endif

// io_uring for the file worker's READ/WRITE: Linux-platform builds link liburing; the portable
// ones move bytes with pread/pwrite on the thread pool only (src/file_worker/uring.h).
#define SHMKV_HAVE_IO_URING SHMKV_LINUX_PLATFORM

namespace shmkv::platform {

// True when the Linux implementations are built; false for the portable ones.
inline constexpr bool kLinux = SHMKV_LINUX_PLATFORM != 0;

// True when the file worker can use io_uring (whether the kernel allows it is decided at run time).
inline constexpr bool kHaveIoUring = SHMKV_HAVE_IO_URING != 0;

}  // namespace shmkv::platform
