#!/usr/bin/env bash
# `cmake --install` of a build tree into a fresh prefix, then checks that the installed tree is
# usable the documented ways (docs/install.md):
#   1. the layout: headers, libshmkv-client, the CMake package, the pkg-config file, binaries;
#   2. the binaries run (--version);
#   3. libshmkv-client exports shmkv's public API and none of its internals or dependencies;
#   4. find_package(shmkv) + shmkv::client: tests/install/consumer configures, builds and runs;
#   5. pkg-config shmkv-client: the same program compiles, links and runs;
#   6. with --python, `import shmkv` from the installed package loads the installed library;
#   7. after moving the whole prefix elsewhere, 5 and 6 still work ($ORIGIN, ${pcfiledir}).
# Usage: install_test.sh BUILD_DIR [--python]. CXX picks the compiler of the consumer builds,
# SHMKV_PYTHON the interpreter (default /usr/bin/python3), SHMKV_VERSION the version the
# pkg-config file must report.
set -euo pipefail
build_dir=$(cd "$1" && pwd)
with_python=0
[[ "${2:-}" == "--python" ]] && with_python=1
here=$(cd "$(dirname "$0")" && pwd)
cxx=${CXX:-c++}
python=${SHMKV_PYTHON:-/usr/bin/python3}

work=$(mktemp -d "${TMPDIR:-/tmp}/shmkv-install-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
prefix=$work/prefix
fail() {
  echo "install_test: FAILED: $*" >&2
  exit 1
}

echo "== cmake --install $build_dir --prefix $prefix"
cmake --install "$build_dir" --prefix "$prefix" >"$work/install.log" || { cat "$work/install.log" >&2; fail "cmake --install"; }

# 1. Layout. The library directory is lib or lib/<multiarch> (GNUInstallDirs): find it.
config=$(find "$prefix" -name shmkvConfig.cmake -print -quit)
[[ -n "$config" ]] || fail "no shmkvConfig.cmake under $prefix"
libdir=$(cd "$(dirname "$config")/../.." && pwd)
for f in include/shmkv/client.h include/shmkv/chunk_hash.h include/shmkv/export.h include/shmkv/status.h \
  bin/shmkv-server bin/shmkv bin/shmkv-file-worker; do
  [[ -e "$prefix/$f" ]] || fail "$f is not installed"
done
for f in libshmkv-client.so cmake/shmkv/shmkvConfigVersion.cmake cmake/shmkv/shmkvTargets.cmake \
  pkgconfig/shmkv-client.pc; do
  [[ -e "$libdir/$f" ]] || fail "${libdir#"$prefix"/}/$f is not installed"
done
if find "$prefix/include" -path '*/shmkv/*' ! -name '*.h' | grep -q .; then fail "non-header files under include/"; fi
echo "layout ok (library directory ${libdir#"$prefix"/})"

# 2. The binaries start (they link no shmkv shared library; this catches a missing RPATH).
for b in shmkv-server shmkv shmkv-file-worker; do
  "$prefix/bin/$b" --version >/dev/null || fail "$b --version"
done
echo "binaries ok"

# 3. Exports: the public API is there, internals and dependencies are not.
symbols=$(nm -D --defined-only "$libdir/libshmkv-client.so" | c++filt)
for want in 'shmkv::ChunkDigests(' 'shmkv::Client::Connect(' 'shmkv::Status::FromErrno(' \
  'shmkv::SharedSegment::Attach(' 'shmkv::GatherChunks('; do
  grep -qF "$want" <<<"$symbols" || fail "libshmkv-client.so does not export $want"
done
leaked=$(grep -E ' (fmt::|spdlog::|shmkv::(platform|sys|wire|client|kv|shm)::)' <<<"$symbols" | head -5 || true)
[[ -z "$leaked" ]] || fail "libshmkv-client.so exports internals: $leaked"
echo "exports ok ($(wc -l <<<"$symbols") dynamic symbols)"

# 4. find_package(shmkv) and shmkv::client.
cmake -S "$here/consumer" -B "$work/consumer-build" -DCMAKE_CXX_COMPILER="$cxx" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/consumer.log" 2>&1 || { cat "$work/consumer.log" >&2; fail "configuring the consumer"; }
cmake --build "$work/consumer-build" >>"$work/consumer.log" 2>&1 || { cat "$work/consumer.log" >&2; fail "building the consumer"; }
"$work/consumer-build/consumer" || fail "the CMake consumer"
echo "find_package ok"

# 5. pkg-config. Compiled against one prefix, run from where the library is now (-rpath).
pkg_build() {
  local pcdir=$1 out=$2
  local flags
  flags=$(PKG_CONFIG_PATH="$pcdir" pkg-config --cflags --libs shmkv-client) || fail "pkg-config shmkv-client"
  # shellcheck disable=SC2086  # the flags are words
  "$cxx" -std=c++20 -Wall -Wextra -Werror "$here/consumer/consumer.cc" $flags -Wl,-rpath,"${pcdir%/pkgconfig}" \
    -o "$out" || fail "compiling the consumer with pkg-config flags ($flags)"
  "$out" || fail "the pkg-config consumer"
}
pkg_build "$libdir/pkgconfig" "$work/consumer-pc"
if [[ -n "${SHMKV_VERSION:-}" ]]; then
  pc_version=$(PKG_CONFIG_PATH="$libdir/pkgconfig" pkg-config --modversion shmkv-client)
  [[ "$pc_version" == "$SHMKV_VERSION" ]] || fail "shmkv-client.pc says version $pc_version, the project $SHMKV_VERSION"
fi
echo "pkg-config ok"

# 6. The Python package loads the installed extension and, through its RPATH, the installed library.
py_check() {
  local root=$1 pydir
  pydir=$(find "$root" -path '*/shmkv/__init__.py' -printf '%h\n' -quit)
  [[ -n "$pydir" ]] || fail "the Python package is not installed under $root"
  PYTHONPATH=$(dirname "$pydir") "$python" - "$root" <<'PY' || fail "importing the installed Python package"
import os, sys
import shmkv
from shmkv import _native
root = os.path.realpath(sys.argv[1])
assert os.path.realpath(_native.__file__).startswith(root), _native.__file__
maps = open("/proc/self/maps").read()
libs = {line.split()[-1] for line in maps.splitlines() if "libshmkv-client" in line}
assert libs and all(os.path.realpath(p).startswith(root) for p in libs), libs
root_digest = _native.chain_root("m", 1, "bfloat16", "NHD", "")
assert len(_native.chunk_digests(root_digest, list(range(512)), 256)) == 2
print("python ok:", _native.__file__)
PY
}
if ((with_python)); then py_check "$prefix"; fi

# 7. Relocated: the same tree under another name.
mv "$prefix" "$work/moved"
moved_libdir=$work/moved/${libdir#"$prefix"/}
pkg_build "$moved_libdir/pkgconfig" "$work/consumer-pc-moved"
if ((with_python)); then py_check "$work/moved"; fi
echo "relocated tree ok"
echo "install test passed"
