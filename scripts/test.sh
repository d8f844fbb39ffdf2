#!/usr/bin/env bash
# Runs every check shmkv has, the same way on a developer machine and in CI:
#   1. installs the Debian packages the project needs (idempotent),
#   2. checks formatting of every C++ file,
#   3. builds (RelWithDebInfo, GCC, -Werror) and runs all tests: GoogleTest and pytest through
#      CTest (the pytest suites include the chaos test, tests/python/test_chaos.py),
#   4. builds everything once more with clang (-Werror, Release): a second compiler's warnings,
#   4b. the portable platform (SHMKV_PORTABLE_PLATFORM=ON: the implementations macOS uses, on
#      Linux; GCC Release -Werror, the build type users build) and the segment, stale-cleanup,
#      server, client, gc and file-worker tests against it (docs/platform.md),
#   5. builds again with AddressSanitizer + UndefinedBehaviorSanitizer (Debug, so the
#      allocator's internal checks are on) and runs the C++ tests there,
#   6. scripts/tsan.sh: clang ThreadSanitizer build, the multi-threaded C++ suites, and the
#      server's end-to-end and chaos tests against the TSan-built server,
#   7. scripts/fuzz.sh: every libFuzzer target (clang, ASan+UBSan) for 60 s (--fuzz-seconds N),
#   8. where nvcc exists, a CUDA build of the paged-KV kernels,
#   9. the engine-adapter tests (tests/engines/) against the real vLLM and SGLang packages, in the
#      virtual environments of scripts/engines-venv.sh: run when they exist, created first with
#      --engines (about 8 min and 9.4 GiB for vLLM).
# Exits non-zero on the first failure. Build trees: build/, build-clang/, build-portable/,
# build-asan/, build-tsan/, build-fuzz/.
# SHMKV_WERROR is OFF by default for users' builds; every configure here turns it on.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)

usage() {
  cat <<'USAGE'
Usage: scripts/test.sh [options]
  --skip-asan         leave out the ASan+UBSan build and its tests (quicker local runs only;
                      CI runs everything)
  --skip-tsan         leave out scripts/tsan.sh, the ThreadSanitizer build and its tests (2 to
                      4 min on 2 cores)
  --fuzz-seconds N    how long scripts/fuzz.sh runs each libFuzzer target (default 60; 0 leaves
                      fuzzing out; hours: scripts/fuzz.sh --seconds 3600)
  --chaos-cycles N    kill cycles of tests/python/test_chaos.py, in the release run and the
                      TSan run (sets SHMKV_CHAOS_CYCLES; default 500, 200 under TSan)
  --engines           create the engine test environments first (scripts/engines-venv.sh) so
                      that step 9 runs; without it step 9 runs only where they already exist
  -h, --help          this help
Environment: SHMKV_TEST_SCALE (ASan run's operation count divisor, default 4).
USAGE
}

run_tsan=1
run_asan=1
fuzz_seconds=60
make_engines=0
while (($#)); do
  case "$1" in
    --skip-tsan) run_tsan=0 ;;
    --skip-asan) run_asan=0 ;;
    --fuzz-seconds)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || { echo "test.sh: --fuzz-seconds needs a number of seconds" >&2; exit 2; }
      fuzz_seconds=$2
      shift ;;
    --chaos-cycles)
      [[ $# -ge 2 && "$2" =~ ^[0-9]+$ && "$2" -gt 0 ]] || { echo "test.sh: --chaos-cycles needs a positive number" >&2; exit 2; }
      export SHMKV_CHAOS_CYCLES=$2
      shift ;;
    --engines) make_engines=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "test.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n== %s ==\n' "$*"; }

step "dependencies"
scripts/install-deps.sh

step "formatting (clang-format --dry-run -Werror)"
mapfile -t sources < <(git ls-files --cached --others --exclude-standard -- '*.cc' '*.h' '*.cu')
clang-format --dry-run -Werror "${sources[@]}"
echo "${#sources[@]} files formatted"

step "release build and tests"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHMKV_WERROR=ON >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build --output-on-failure -j "$jobs" --timeout 600

step "clang build (-Werror, Release: every C++ file of the project, a second compiler's warnings)"
CC=clang CXX=clang++ cmake -S . -B build-clang -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHMKV_WERROR=ON >/dev/null
cmake --build build-clang -j "$jobs"

step "portable platform build (SHMKV_PORTABLE_PLATFORM=ON, GCC Release) and its tests"
# Only what the tests below need. The portable file worker has no io_uring: its uring cases are
# left out (its --io-engine auto falls back to threads, which the threads cases cover).
cmake -S . -B build-portable -G Ninja -DCMAKE_BUILD_TYPE=Release -DSHMKV_PORTABLE_PLATFORM=ON -DSHMKV_WERROR=ON \
  -DSHMKV_BUILD_BENCH=OFF >/dev/null
cmake --build build-portable -j "$jobs" --target segment_test stale_test client_server_test segment_holder \
  shmkv-server shmkv shmkv-file-worker shmkv_python
for t in segment_test stale_test client_server_test; do
  echo "build-portable/tests/$t"
  build-portable/tests/$t --gtest_brief=1
done
SHMKV_BUILD_DIR=build-portable /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/python/test_server.py \
  tests/python/test_gc_cli.py tests/python/test_binaries.py tests/python/test_file_worker.py -k 'not uring'

if ((run_asan)); then
  step "ASan+UBSan build and tests"
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug -DSHMKV_SANITIZE=ON -DSHMKV_WERROR=ON \
    -DSHMKV_BUILD_BENCH=OFF -DSHMKV_BUILD_PYTHON=OFF >/dev/null
  cmake --build build-asan -j "$jobs"
  # The Python suite loads an uninstrumented interpreter; it runs in the release build above.
  SHMKV_TEST_SCALE=${SHMKV_TEST_SCALE:-4} ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build-asan --output-on-failure -j "$jobs" --timeout 900 -E '^pytest$'
  # The server end-to-end suite once more, against the sanitized server (the module stays the
  # release one; the server is the process under test).
  SHMKV_BUILD_DIR=build SHMKV_SERVER_BIN=build-asan/src/shmkv-server \
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/python/test_server.py tests/python/test_l3_redis.py
else
  step "ASan+UBSan build and tests: skipped (--skip-asan)"
fi

if ((run_tsan)); then
  step "ThreadSanitizer build and tests (scripts/tsan.sh)"
  SHMKV_BUILD_DIR=build SHMKV_JOBS="$jobs" scripts/tsan.sh
else
  step "ThreadSanitizer build and tests: skipped (--skip-tsan)"
fi

if ((fuzz_seconds > 0)); then
  step "fuzzing (scripts/fuzz.sh, ${fuzz_seconds} s per target)"
  scripts/fuzz.sh --seconds "$fuzz_seconds" --jobs "$jobs"
else
  step "fuzzing: skipped (--fuzz-seconds 0)"
fi

step "CUDA build (the paged-KV kernels compile and link; without a device they report unavailable)"
# nvcc is not a Debian package the project installs: the step runs where a CUDA toolkit is present.
nvcc_bin=$(command -v nvcc || true)
[[ -z "$nvcc_bin" && -x /usr/local/cuda/bin/nvcc ]] && nvcc_bin=/usr/local/cuda/bin/nvcc
if [[ -n "$nvcc_bin" ]]; then
  cmake -S . -B build-cuda -G Ninja -DSHMKV_CUDA=ON -DSHMKV_WERROR=ON -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DSHMKV_BUILD_BENCH=OFF \
    -DSHMKV_BUILD_PYTHON=OFF >/dev/null
  cmake --build build-cuda -j "$jobs" --target paged_kv_test
  build-cuda/tests/paged_kv_test --gtest_brief=1
else
  echo "skipped: no nvcc on this machine"
fi

step "engine adapters against the real engines (tests/engines/)"
engines_dir=${SHMKV_ENGINES_VENV:-.venv-engines}
if ((make_engines)); then
  scripts/engines-venv.sh --dir "$engines_dir"
fi
for engine in vllm sglang; do
  py="$engines_dir/$engine/bin/python"
  mapfile -t engine_tests < <(compgen -G "tests/engines/test_${engine}_*.py" || true)
  if ((${#engine_tests[@]} == 0)); then
    echo "skipped $engine: no tests/engines/test_${engine}_*.py"
  elif [[ -x "$py" ]]; then
    SHMKV_BUILD_DIR=build "$py" -m pytest -q -p no:cacheprovider "${engine_tests[@]}"
  else
    echo "skipped $engine: no $py (scripts/test.sh --engines creates it)"
  fi
done

step "all checks passed"
