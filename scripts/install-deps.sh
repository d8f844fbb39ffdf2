#!/usr/bin/env bash
# Installs every Debian package shmkv builds, tests, benchmarks or demos with (docs/design.md §9).
# Idempotent: packages already present are skipped, and with all present it returns in well under
# a second without touching apt. Set SHMKV_SKIP_TORCH=1 to leave out the optional python3-torch.
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

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The Debian redis-server package starts a system instance; shmkv's tests start their own.
if command -v systemctl >/dev/null 2>&1; then
  "${sudo_cmd[@]}" systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
