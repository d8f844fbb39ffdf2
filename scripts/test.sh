#!/usr/bin/env bash
# Runs every check shmkv has, the same way on a developer machine and in CI:
#   1. installs the Debian packages the project needs (idempotent),
#   2. checks formatting of every C++ file,
#   3. builds (RelWithDebInfo) and runs all tests: GoogleTest and pytest through CTest,
#   4. builds again with AddressSanitizer + UndefinedBehaviorSanitizer (Debug, so the
#      allocator's internal checks are on) and runs the C++ tests there.
# Exits non-zero on the first failure. Build trees: build/ and build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

step() { printf '\n== %s ==\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "formatting (clang-format --dry-run -Werror)"
mapfile -t sources < <(git ls-files --cached --others --exclude-standard -- '*.cc' '*.h' '*.cu')
clang-format --dry-run -Werror "${sources[@]}"
echo "${#sources[@]} files formatted"

step "release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600

step "ASan+UBSan build and tests"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSHMKV_SANITIZE=ON -DSHMKV_BUILD_BENCH=OFF \
  -DSHMKV_BUILD_PYTHON=OFF >/dev/null
cmake --build build-asan -j "$jobs"
# The Python suite loads an uninstrumented interpreter; it runs in the release build above.
SHMKV_TEST_SCALE=${SHMKV_TEST_SCALE:-4} ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -E '^pytest$'
# The server end-to-end suite once more, against the sanitized server (the module stays the
# release one; the server is the process under test).
SHMKV_BUILD_DIR=build SHMKV_SERVER_BIN=build-asan/src/shmkv-server \
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/python/test_server.py

step "CUDA build (the paged-KV kernels compile and link; without a device they report unavailable)"
# nvcc is not a Debian package the project installs: the step runs where a CUDA toolkit is present.
nvcc_bin=$(command -v nvcc || true)
[[ -z "$nvcc_bin" && -x /usr/local/cuda/bin/nvcc ]] && nvcc_bin=/usr/local/cuda/bin/nvcc
if [[ -n "$nvcc_bin" ]]; then
  cmake -S . -B build-cuda -G Ninja -DSHMKV_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DSHMKV_BUILD_BENCH=OFF \
    -DSHMKV_BUILD_PYTHON=OFF >/dev/null
  cmake --build build-cuda -j "$jobs" --target paged_kv_test
  build-cuda/tests/paged_kv_test --gtest_brief=1
else
  echo "skipped: no nvcc on this machine"
fi

step "all checks passed"
