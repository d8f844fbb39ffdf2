#!/usr/bin/env bash
# Builds the libFuzzer targets under fuzz/ with clang (ASan + UBSan + coverage) into build-fuzz/
# and runs each for a while. Exits non-zero when a target finds a crash, a sanitizer report or a
# leak (the input that did it is kept under build-fuzz/fuzz-artifacts/<target>/).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: scripts/fuzz.sh [--seconds N] [--target NAME] [--jobs N] [--build-dir DIR] [--list]

Builds every libFuzzer target of fuzz/ with clang (-fsanitize=fuzzer,address,undefined) in a
build tree of its own, then runs the chosen targets one after the other, each for N seconds.

  --seconds N     how long each target runs (default 60). Long runs: --seconds 3600.
  --target NAME   run only this target (repeatable); default: every target.
  --jobs N        parallel compile jobs (default: nproc).
  --build-dir D   the build tree (default build-fuzz).
  --list          print the target names and exit.
  -h, --help      this text.

Each target NAME reads its committed seeds from fuzz/corpus/NAME/ and its dictionary from
fuzz/dict/NAME.dict; what it discovers goes to D/fuzz-corpus/NAME/ (kept between runs, never
committed) and a crashing input to D/fuzz-artifacts/NAME/. For each target the script prints the
total executions and executions per second. Exit status: 0 when every target ran clean, 1 when
one found something (its output names the artifact), 2 on a usage or build error.

Reproduce a finding:  D/fuzz/NAME D/fuzz-artifacts/NAME/crash-...
Minimise it:          D/fuzz/NAME -minimize_crash=1 -runs=10000 D/fuzz-artifacts/NAME/crash-...
EOF
}

seconds=60
targets=()
jobs=$(nproc)
build_dir=build-fuzz
list_only=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
    --target) targets+=("${2:?--target needs a name}"); shift 2 ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift 2 ;;
    --build-dir) build_dir=${2:?--build-dir needs a directory}; shift 2 ;;
    --list) list_only=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "fuzz.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  echo "fuzz.sh: --seconds must be a positive whole number, got '$seconds'" >&2
  exit 2
fi
if ! command -v clang++ >/dev/null; then
  echo "fuzz.sh: clang++ is not installed (scripts/install-deps.sh installs it)" >&2
  exit 2
fi

echo "== configuring and building the fuzz targets in $build_dir (clang) =="
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_C_COMPILER=clang \
  -DCMAKE_CXX_COMPILER=clang++ -DSHMKV_FUZZ=ON -DSHMKV_BUILD_TESTS=OFF -DSHMKV_BUILD_BENCH=OFF \
  -DSHMKV_BUILD_PYTHON=OFF >/dev/null || exit 2
cmake --build "$build_dir" -j "$jobs" --target shmkv_fuzzers || exit 2

mapfile -t known < "$build_dir/fuzz/fuzzers.txt"
if [[ $list_only -eq 1 ]]; then
  printf '%s\n' "${known[@]}"
  exit 0
fi
if [[ ${#targets[@]} -eq 0 ]]; then
  targets=("${known[@]}")
fi
for t in "${targets[@]}"; do
  if ! printf '%s\n' "${known[@]}" | grep -qx -- "$t"; then
    echo "fuzz.sh: no fuzz target '$t'; there are: ${known[*]}" >&2
    exit 2
  fi
done

# Sanitizer findings must end the run with an error (libFuzzer then keeps the input).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}

failed=()
summary=()
for t in "${targets[@]}"; do
  corpus="$build_dir/fuzz-corpus/$t"
  artifacts="$build_dir/fuzz-artifacts/$t/"
  log="$build_dir/fuzz-logs/$t.log"
  mkdir -p "$corpus" "$artifacts" "$(dirname "$log")"
  echo "== $t: ${seconds}s (log $log) =="
  set +e
  # -max_len 16384: long enough for lines over the worker's 8192-byte limit.
  "$build_dir/fuzz/$t" -max_total_time="$seconds" -print_final_stats=1 -max_len=16384 -timeout=30 \
    -dict="fuzz/dict/$t.dict" -artifact_prefix="$artifacts" "$corpus" "fuzz/corpus/$t" >"$log" 2>&1
  rc=$?
  set -e
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  units=$(find "$corpus" -type f | wc -l)
  line="$t: ${execs:-?} execs, ${rate:-?} execs/s, ${units} corpus inputs"
  if [[ $rc -ne 0 ]]; then
    line+=" -- FAILED (exit $rc)"
    failed+=("$t")
    grep -E '^(==[0-9]+==ERROR|SUMMARY|fuzz rule violated|artifact_prefix|Test unit written)' "$log" | head -20 || true
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary =="
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzz.sh: findings in: ${failed[*]} (inputs under $build_dir/fuzz-artifacts/)" >&2
  exit 1
fi
