#!/usr/bin/env bash
# ThreadSanitizer run (docs/reliability.md): builds with clang and -fsanitize=thread into
# build-tsan/, runs the multi-threaded C++ suites there (client, paged-KV kernels and chunk
# hashing, file worker, server store and L2 tier), then the server's end-to-end pytest suite and
# the chaos test (SHMKV_CHAOS_CYCLES, default 200 here) against the TSan-built server. Any race
# report fails the run (TSAN_OPTIONS=halt_on_error=1; the server fixtures also require exit
# code 0 at shutdown).
#
# The Python module is not built with TSan (the interpreter is not instrumented): the suite takes
# the module and the `shmkv` CLI from a release build, SHMKV_BUILD_DIR (default build/), and
# builds those two targets there if they are missing.
#
# About 2 min on 2 idle cores from an empty build-tsan/ (4 min while other builds run), 25 s of it
# the tests.
# Usage: scripts/tsan.sh      Environment: SHMKV_BUILD_DIR, SHMKV_JOBS (default nproc),
#                             SHMKV_CHAOS_CYCLES
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${SHMKV_JOBS:-$(nproc)}
tsan_dir=build-tsan
release_dir=${SHMKV_BUILD_DIR:-build}
start=$SECONDS

# clang: GCC's TSan needs -Wno-tsan for asio's atomic fences and reports more false positives.
CC=clang CXX=clang++ cmake -S . -B "$tsan_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMKV_TSAN=ON \
  -DSHMKV_WERROR=ON -DSHMKV_BUILD_BENCH=OFF -DSHMKV_BUILD_PYTHON=OFF >/dev/null
suites=(client_server_test paged_kv_test chunk_hash_test file_worker/file_worker_test store_test disk_tier_test)
cmake --build "$tsan_dir" -j "$jobs" --target shmkv-server shmkv-file-worker "${suites[@]##*/}"
echo "tsan: built in $((SECONDS - start)) s"

export TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 ${TSAN_OPTIONS:-}"
for suite in "${suites[@]}"; do
  echo "tsan: $suite"
  "$tsan_dir/tests/$suite" --gtest_brief=1
done

if [[ ! -e "$release_dir/src/shmkv" ]] || ! compgen -G "$release_dir/python/shmkv/_native*.so" >/dev/null; then
  cmake -S . -B "$release_dir" -G Ninja -DSHMKV_WERROR=ON >/dev/null
  cmake --build "$release_dir" -j "$jobs" --target shmkv shmkv_python
fi
echo "tsan: tests/python/test_server.py, test_chaos.py and test_l3_redis.py against $tsan_dir/src/shmkv-server"
SHMKV_BUILD_DIR="$release_dir" SHMKV_SERVER_BIN="$tsan_dir/src/shmkv-server" \
  SHMKV_CHAOS_CYCLES="${SHMKV_CHAOS_CYCLES:-200}" \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/python/test_server.py tests/python/test_chaos.py \
  tests/python/test_l3_redis.py

echo "tsan: no race reported ($((SECONDS - start)) s)"
