#!/usr/bin/env bash
# Installs every Debian package shmkv builds, tests, benchmarks or demos with (docs/design.md §9).
# Idempotent: packages already present are skipped, and with all present it returns in well under
# a second without touching apt. Set SHMKV_SKIP_TORCH=1 to leave out the optional python3-torch.
#
# When another apt or dpkg holds the package locks (unattended-upgrades at boot, a second shell),
# it waits for them, saying so, up to SHMKV_APT_LOCK_TIMEOUT seconds (default 600), instead of
# failing at once with apt's exit 100. For the tests: SHMKV_APT_LOCKS (the lock files to watch),
# SHMKV_EXTRA_PACKAGES (more packages) and SHMKV_INSTALL_DEPS_DRY_RUN=1 (print the apt commands
# instead of running them).
set -euo pipefail

packages=(
  # toolchain and hygiene
  build-essential cmake ninja-build pkg-config clang-format clang-tidy
  # clang: the -Werror build with a second compiler, libFuzzer targets and the TSan build
  clang libclang-rt-14-dev llvm
  # C++ libraries
  libasio-dev libmsgpack-cxx-dev libcli11-dev libspdlog-dev libfmt-dev libssl-dev
  libxxhash-dev liburing-dev libhiredis-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  # Python (Debian's /usr/bin/python3)
  python3-dev python3-pybind11 pybind11-dev python3-numpy python3-pytest python3-matplotlib
  python3-prometheus-client
  # peers and baselines used by tests and benchmarks
  redis-server redis-tools fio
)
if [[ "${SHMKV_SKIP_TORCH:-0}" != 1 ]]; then
  packages+=(python3-torch)
fi
# shellcheck disable=SC2206  # a space-separated list
packages+=(${SHMKV_EXTRA_PACKAGES:-})

missing=()
for p in "${packages[@]}"; do
  # dpkg-query is cheap; "install ok installed" is the only state that counts as present.
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

lock_timeout=${SHMKV_APT_LOCK_TIMEOUT:-600}
# shellcheck disable=SC2206  # a space-separated list
apt_locks=(${SHMKV_APT_LOCKS:-/var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock /var/cache/apt/archives/lock})

# Prints "PATH PID" for the first lock another process holds, nothing when all are free. apt and
# dpkg take fcntl locks; F_GETLK asks without taking one (taking it, even for a moment, could make
# the other apt fail). Needs Debian's python3; without it, apt's own DPkg::Lock::Timeout waits.
lock_holder() {
  [[ -x /usr/bin/python3 ]] || return 0
  /usr/bin/python3 - "${apt_locks[@]}" <<'PY'
import fcntl, os, struct, sys
FLOCK = "hhqqi"  # struct flock: l_type, l_whence, l_start, l_len, l_pid (native layout)
for path in sys.argv[1:]:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        continue
    try:
        got = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(FLOCK, fcntl.F_WRLCK, 0, 0, 0, 0))
        l_type, _, _, _, l_pid = struct.unpack(FLOCK, got[:struct.calcsize(FLOCK)])
        if l_type != fcntl.F_UNLCK:
            print(path, l_pid)
            break
    except OSError:
        pass
    finally:
        os.close(fd)
PY
}

wait_for_apt_locks() {
  # Whole seconds slept, counted: bash's $SECONDS ticks on whole seconds of the shell's clock, so a
  # difference of 2 may come after 1.1 s.
  local waited=0 said=0 holder path pid what
  while holder=$(lock_holder) && [[ -n "$holder" ]]; do
    read -r path pid <<<"$holder"
    what=$(ps -o comm= -p "$pid" 2>/dev/null || true)
    if ((waited >= lock_timeout)); then
      echo "install-deps: $path is still held by pid $pid${what:+ ($what)} after ${lock_timeout} s; let it" \
        "finish (or stop it) and run this again, or wait longer with SHMKV_APT_LOCK_TIMEOUT" >&2
      exit 1
    fi
    if ((said == 0)); then
      echo "install-deps: waiting for another package manager: $path is held by pid $pid${what:+ ($what)}" \
        "(up to ${lock_timeout} s)" >&2
      said=1
    fi
    sleep 1
    waited=$((waited + 1))
  done
  if ((said == 1)); then echo "install-deps: the package locks are free after ${waited} s" >&2; fi
  return 0
}

apt_run() {
  if [[ "${SHMKV_INSTALL_DEPS_DRY_RUN:-0}" == 1 ]]; then
    echo "install-deps: would run: $*" >&2
  else
    "$@"
  fi
}

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
# apt waits on its own too (DPkg::Lock::Timeout), for a lock taken between the check and its start.
apt_wait=(-o "DPkg::Lock::Timeout=$lock_timeout")
wait_for_apt_locks
apt_run "${sudo_cmd[@]}" apt-get "${apt_wait[@]}" update -qq
wait_for_apt_locks
apt_run "${sudo_cmd[@]}" apt-get "${apt_wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
if [[ "${SHMKV_INSTALL_DEPS_DRY_RUN:-0}" == 1 ]]; then exit 0; fi
# The Debian redis-server package starts a system instance; shmkv's tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  "${sudo_cmd[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
