#!/usr/bin/env bash
# Posted store+retrieve through shmkv-server against memcpy, with the pool on /dev/shm (4 KiB
# pages, --huge-pages off) and on a tmpfs mounted huge=always (--shm-dir, --huge-pages on): the
# figures of docs/performance.md "Huge pages for the pool". It builds nothing; build first:
#
#   cmake -S . -B build -G Ninja -DSHMKV_BUILD_BENCH=ON && cmake --build build --target server_bench shmkv-server
#   sudo bench/huge_pages_bench.sh [BUILD_DIR]          # root: it mounts the tmpfs (and unmounts it)
#
# Each configuration runs bench/server/server_bench's PairedData/.../post:1 cases (a shmkv cycle,
# commits posted, remove timed, alternating with a memcpy of the same bytes between private
# buffers in one loop; ratio = memcpy time / shmkv time) and the DataSlotMemcpy diagnostic (the
# copies into and out of the slots alone, no calls) over DataMemcpy (the same copies between
# private buffers), in the split layout (client on CPU 0, server on CPU 1).
# Each runs twice: with the private buffers (memcpy's, and the source and destination of shmkv's
# copies) on 4 KiB pages, as glibc's malloc gives them where transparent_hugepage/enabled is
# `madvise`, and on transparent huge pages (--private_huge_pages=1), as where it is `always`. The
# configurations alternate ROUNDS times so all meet the same machine load; the tables show the
# median over rounds of each repetition median.
# Environment: ROUNDS (default 3), REPS (repetitions per case and round, default 3), MIN_TIME
# (seconds per repetition, default 0.5), POOL (default 1GiB), OUT_DIR (keep the JSON there),
# CLIENT_CPU / SERVER_CPU (default 0 / 1; -1: no pinning).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
bench=$build/bench/server/server_bench
server=$build/src/shmkv-server
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-3}
MIN_TIME=${MIN_TIME:-0.5}
POOL=${POOL:-1GiB}
CLIENT_CPU=${CLIENT_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
PYTHON=/usr/bin/python3

for tool in "$bench" "$server"; do
  [[ -x $tool ]] || { echo "huge_pages_bench.sh: $tool is missing; build first (see the header)" >&2; exit 1; }
done
if (($(nproc) < 2)); then CLIENT_CPU=-1; SERVER_CPU=-1; fi

tmp=$(mktemp -d /tmp/shmkv-huge-bench-XXXXXX)
out=${OUT_DIR:-$tmp/out}
mkdir -p "$out" "$tmp/huge"
mounted=
cleanup() {
  [[ -n $mounted ]] && umount "$tmp/huge" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pool_bytes=$("$PYTHON" -c "import sys; s=sys.argv[1]; u={'GiB':30,'MiB':20}; print(next((int(s[:-3])<<b for k,b in u.items() if s.endswith(k)), None) or int(s))" "$POOL")
tmpfs_mib=$(((pool_bytes >> 20) + 64))
if ! mount -t tmpfs -o "huge=always,size=${tmpfs_mib}m,mode=0700" none "$tmp/huge" 2>"$tmp/mount.err"; then
  echo "huge_pages_bench.sh: cannot mount a huge=always tmpfs (run as root): $(cat "$tmp/mount.err")" >&2
  exit 1
fi
mounted=1

filter='PairedData/mib:[0-9]+/batch:[0-9]+/post:1|DataSlotMemcpy|DataMemcpy'
run() {  # run CONFIG ROUND ARGS...
  local config=$1 round=$2
  shift 2
  "$bench" --pool_size="$POOL" --client_cpu="$CLIENT_CPU" --server_cpu="$SERVER_CPU" "$@" \
    --benchmark_filter="$filter" --benchmark_repetitions="$REPS" --benchmark_min_time="$MIN_TIME" \
    --benchmark_report_aggregates_only=true --benchmark_format=json --benchmark_out_format=json \
    --benchmark_out="$out/$config-$round.json" >/dev/null 2>"$out/$config-$round.log" ||
    { echo "huge_pages_bench.sh: server_bench ($config) failed:" >&2; cat "$out/$config-$round.log" >&2; exit 1; }
}
for ((r = 1; r <= ROUNDS; r++)); do
  for priv in 0 1; do
    run "devshm-p$priv" "$r" --private_huge_pages=$priv --server_arg=--huge-pages=off
    run "huge-p$priv" "$r" --private_huge_pages=$priv --server_arg=--shm-dir="$tmp/huge" --server_arg=--huge-pages=on
  done
done

"$PYTHON" - "$out" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
shapes = [(1, 1), (8, 1), (32, 1), (1, 32), (8, 4)]
def load(config):
    per, ctx = {}, None
    for r in range(1, rounds + 1):
        doc = json.load(open(f"{out}/{config}-{r}.json"))
        ctx = doc["context"]
        for b in doc["benchmarks"]:
            if b.get("aggregate_name") == "median":
                per.setdefault(b["run_name"], []).append(b)
    return per, ctx
for priv in (0, 1):
    res = {c: load(f"{c}-p{priv}") for c in ("devshm", "huge")}
    def med(c, n, k):
        vals = [b[k] for b in res[c][0].get(n, []) if k in b]
        return statistics.median(vals) if vals else float("nan")
    anon = med("huge", "PairedData/mib:32/batch:1/post:1/real_time", "anon_huge_mib")
    private = f"transparent huge pages (MADV_HUGEPAGE; {anon:.0f} MiB AnonHugePages)" if priv else "4 KiB pages (glibc malloc)"
    print(f"private buffers: {private}; pool: /dev/shm huge_pages={res['devshm'][1].get('pool_huge_pages')}, "
          f"huge=always tmpfs huge_pages={res['huge'][1].get('pool_huge_pages')}; {rounds} rounds alternating, medians")
    print()
    print("| objects × size | memcpy GB/s | /dev/shm: shmkv GB/s | **÷ memcpy** | huge tmpfs: shmkv GB/s | **÷ memcpy** (goal ≥ 0.9) | slot copies alone ÷ memcpy: /dev/shm / huge |")
    print("|---|---|---|---|---|---|---|")
    for mib, batch in shapes:
        name = f"PairedData/mib:{mib}/batch:{batch}/post:1/real_time"
        diag = f"DataSlotMemcpy/mib:{mib}/batch:{batch}/real_time"
        dm = f"DataMemcpy/mib:{mib}/batch:{batch}/real_time"
        cpy = statistics.median([med("devshm", name, "memcpy_gbps"), med("huge", name, "memcpy_gbps")])
        ds = lambda c: med(c, diag, "bytes_per_second") / med(c, dm, "bytes_per_second")
        print(f"| {batch} × {mib} MiB | {cpy:.1f} | {med('devshm', name, 'shmkv_gbps'):.1f} | **{med('devshm', name, 'ratio'):.2f}** "
              f"| {med('huge', name, 'shmkv_gbps'):.1f} | **{med('huge', name, 'ratio'):.2f}** | "
              f"{ds('devshm'):.2f} / {ds('huge'):.2f} |")
    print()
EOF
