#!/usr/bin/env bash
# Runs the shmkv-server benchmarks against their baselines and prints the comparison table of
# docs/performance-server.md: bench/server/server_bench (which starts its own shmkv-server) and
# redis-benchmark, against one redis-server this script starts on a Unix socket in a temp dir
# and stops at the end. It builds nothing; build first:
#
#   cmake -S . -B build -G Ninja && cmake --build build
#   bench/run_server_bench.sh [BUILD_DIR]          # BUILD_DIR defaults to ./build
#
# Every process runs under a CPU placement ("layout"), because on a small VM where the two
# sides of a round trip run decides its cost more than anything shmkv does:
#   split   client side on CPU 0; shmkv-server, the ping-pong echo process and redis-server on CPU 1
#   shared  everything on CPU 0 (a round trip is two context switches, no cross-CPU wakeup)
#   free    no pinning: the scheduler picks, and a run may land on either of the above
# Environment: LAYOUTS (default "split shared free"), REPS (repetitions per benchmark, default 5;
# medians are reported), MIN_TIME (seconds per repetition, default 0.5), REDIS_N (requests per
# redis-benchmark run, default 200000), OUT_DIR (keep the raw JSON and logs there), WAIT_QUIET
# (seconds to wait, before each layout, for the 1-minute load average to drop below 0.5; default
# 0: do not wait).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$root/build}
bench=$build/bench/server/server_bench
server=$build/src/shmkv-server
LAYOUTS=${LAYOUTS:-split shared free}
REPS=${REPS:-5}
MIN_TIME=${MIN_TIME:-0.5}
REDIS_N=${REDIS_N:-200000}
WAIT_QUIET=${WAIT_QUIET:-0}
PYTHON=/usr/bin/python3

for tool in "$bench" "$server"; do
  [[ -x $tool ]] || { echo "run_server_bench.sh: $tool is missing; build first (see the header of this script)" >&2; exit 1; }
done
for tool in redis-server redis-benchmark redis-cli taskset timeout "$PYTHON"; do
  command -v "$tool" >/dev/null || { echo "run_server_bench.sh: $tool is not installed" >&2; exit 1; }
done
if (($(nproc) < 2)); then
  LAYOUTS=${LAYOUTS//split/}
  echo "run_server_bench.sh: one CPU only; skipping the split layout" >&2
fi

tmp=$(mktemp -d /tmp/shmkv-server-bench-XXXXXX)
out=${OUT_DIR:-$tmp}
mkdir -p "$out"
redis_sock=$tmp/redis.sock
redis_pid=
cleanup() {
  if [[ -n $redis_pid ]]; then
    redis-cli -s "$redis_sock" shutdown nosave >/dev/null 2>&1 || kill "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

redis-server --port 0 --unixsocket "$redis_sock" --unixsocketperm 700 --save '' --appendonly no \
  --daemonize no --dir "$tmp" --logfile "$tmp/redis.log" &
redis_pid=$!
for _ in $(seq 100); do
  [[ $(redis-cli -s "$redis_sock" ping 2>/dev/null) == PONG ]] && break
  sleep 0.1
done
[[ $(redis-cli -s "$redis_sock" ping 2>/dev/null) == PONG ]] || { echo "redis-server did not start" >&2; exit 1; }
# redis-benchmark -t get reads the literal key "key:__rand_int__" (no -r): give it a 16-byte value
# (-d 16), so every GET returns one, like every shmkv lookup finds its key.
redis-cli -s "$redis_sock" set key:__rand_int__ 0123456789abcdef >/dev/null

# Median GETs/s of REPS redis-benchmark runs; prints them all to the log.
redis_rps() {  # layout clients requests cpu
  local layout=$1 clients=$2 n=$3 cpu=$4 pin=()
  [[ $cpu != -1 ]] && pin=(taskset -c "$cpu")
  for _ in $(seq "$REPS"); do
    timeout 300 "${pin[@]}" redis-benchmark -s "$redis_sock" -c "$clients" -t get -n "$n" -d 16 -q 2>&1 |
      tr '\r' '\n' | sed -n 's/^GET: \([0-9.]*\) requests per second.*/\1/p'
  done >"$out/redis-$layout-c$clients.txt"
}

read -r -a layouts <<<"$LAYOUTS"
for layout in "${layouts[@]}"; do
  case $layout in
    split) client_cpu=0 server_cpu=1 redis_cpus=1 ;;
    shared) client_cpu=0 server_cpu=0 redis_cpus=0 ;;
    free) client_cpu=-1 server_cpu=-1 redis_cpus=0-$(($(nproc) - 1)) ;;
    *) echo "unknown layout '$layout' (split, shared, free)" >&2; exit 1 ;;
  esac
  taskset -a -p -c "$redis_cpus" "$redis_pid" >/dev/null
  for ((waited = 0; waited < WAIT_QUIET; waited += 10)); do
    awk '{ exit !($1 < 0.5) }' /proc/loadavg && break
    ((waited % 60 == 0)) && echo "waiting for a quiet machine (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    sleep 10
  done
  echo "== layout $layout: server_bench (REPS=$REPS, MIN_TIME=$MIN_TIME s)" >&2
  timeout 1800 "$bench" --shmkv_server_bin="$server" --redis_socket="$redis_sock" \
    --client_cpu="$client_cpu" --server_cpu="$server_cpu" \
    --benchmark_repetitions="$REPS" --benchmark_min_time="$MIN_TIME" \
    --benchmark_enable_random_interleaving=true --benchmark_report_aggregates_only=true \
    --benchmark_counters_tabular=true \
    --benchmark_out="$out/gb-$layout.json" --benchmark_out_format=json >"$out/gb-$layout.log" 2>&1 ||
    { cat "$out/gb-$layout.log" >&2; exit 1; }
  echo "== layout $layout: redis-benchmark -c 8 and -c 1 ($REPS runs each)" >&2
  redis_rps "$layout" 8 "$REDIS_N" "$client_cpu"
  redis_rps "$layout" 1 "$((REDIS_N / 4))" "$client_cpu"
done

# Read-only git queries (GIT_OPTIONAL_LOCKS=0: status never rewrites the index).
rev=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo '(no git)')
[[ -n $(GIT_OPTIONAL_LOCKS=0 git -C "$root" status --porcelain --untracked-files=no -- src include 2>/dev/null) ]] &&
  rev+=" + uncommitted changes in src/ or include/"
echo "shmkv $rev, $(nproc) CPUs ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r), $(redis-server --version | cut -d' ' -f1-3)"
"$PYTHON" - "$out" "${layouts[@]}" <<'EOF'
import json, math, statistics, sys

out, layouts = sys.argv[1], sys.argv[2:]
DESCRIBE = {
    "split": "client side on CPU 0; shmkv-server, echo process and redis-server on CPU 1",
    "shared": "everything on CPU 0",
    "free": "no pinning (the scheduler decides; results may be bimodal)",
}

def k(v):
    return f"{v / 1e3:,.1f} k"

def gb(v):
    return f"{v / 1e9:.2f}"

def cv(c):
    return f" (cv {100 * c:.0f}%)" if c is not None and c >= 0.05 else ""

def r2(ratio, goal):
    # Two decimals, three where two would round a miss up to the goal (0.995 -> "0.995").
    return f"{ratio:.3f}" if ratio < goal and round(ratio, 2) >= goal else f"{ratio:.2f}"

def verdict(ratio, goal):
    if math.isnan(ratio):
        return f"≥ {goal}: n/a (not measured)"
    return f"≥ {goal}: **{'met' if ratio >= goal else 'not met'}**"

for layout in layouts:
    with open(f"{out}/gb-{layout}.json") as f:
        doc = json.load(f)
    runs = doc["benchmarks"]
    load = ", ".join(f"{x:.2f}" for x in doc["context"].get("load_avg", []))
    ok = [b for b in runs if not b.get("error_occurred")]
    # Medians of the repetitions; with REPS=1 there are no aggregates, only the one run.
    med = {b["run_name"]: b for b in ok if b.get("run_type") == "iteration"}
    med.update({b["run_name"]: b for b in ok if b.get("aggregate_name") == "median"})
    cvs = {b["run_name"]: b for b in runs if b.get("aggregate_name") == "cv"}
    errors = sorted({b["run_name"] + ": " + b.get("error_message", "") for b in runs if b.get("error_occurred")})

    def m(name, field):
        if name not in med:
            return float("nan")
        return med[name][field]

    def c(name, field):
        return cvs.get(name, {}).get(field)

    def redis(clients):
        with open(f"{out}/redis-{layout}-c{clients}.txt") as f:
            vals = [float(x) for x in f.read().split()]
        return (statistics.median(vals) if vals else float("nan")), vals

    raw = next((n for n in med if n.startswith("RawPingPong/")), "RawPingPong")
    polled = next((n for n in med if n.startswith("RawPingPongPolled/")), "RawPingPongPolled")
    req, rep = (raw.split("/")[1:3] + ["?", "?"])[:2] if "/" in raw else ("?", "?")
    def pair(batch, post):
        return f"StoreCommit/batch:{batch}/post:{post}/real_time"
    def ret(post, threads):
        return f"RetrievePair/post:{post}/real_time/threads:{threads}"
    raw_rt = m(raw, "round_trips_per_s")
    polled_rt = m(polled, "round_trips_per_s")
    pair_ops, pair_rt = m(pair(1, 0), "ops_per_s"), m(pair(1, 0), "round_trips_per_s")
    post_ops, post_rq = m(pair(1, 1), "ops_per_s"), m(pair(1, 1), "round_trips_per_s")
    us_per_key = 1e6 / m(pair(256, 0), "items_per_second")
    us_per_key_post = 1e6 / m(pair(256, 1), "items_per_second")
    look1, look8 = m("Lookup/real_time/threads:1", "round_trips_per_s"), m("Lookup/real_time/threads:8", "round_trips_per_s")
    ret8_ops, ret8_rt = m(ret(0, 8), "ops_per_s"), m(ret(0, 8), "round_trips_per_s")
    ret8p_ops = m(ret(1, 8), "ops_per_s")
    ret1_ops, ret1p_ops = m(ret(0, 1), "ops_per_s"), m(ret(1, 1), "ops_per_s")
    hget1, hget8 = m("RedisGet/real_time/threads:1", "round_trips_per_s"), m("RedisGet/real_time/threads:8", "round_trips_per_s")
    rb8, rb8_all = redis(8)
    rb1, rb1_all = redis(1)

    print(f"\n### Layout `{layout}`: {DESCRIBE[layout]}\n")
    print(f"load average when server_bench started: {load} (anything else running skews every figure)\n")
    print("Control path (medians; rates are wall-clock; with 8 clients, the sum over the 8)\n")
    print("| measure | shmkv | baseline | ratio | goal |")
    print("|---|---|---|---|---|")
    print(f"| raw Unix-socket ping-pong between 2 processes, {req.split(':')[-1]} B request / {rep.split(':')[-1]} B reply, blocking write+read | | {k(raw_rt)} rt/s{cv(c(raw, 'round_trips_per_s'))} | | |")
    print(f"| 1-key prepare_store+commit_store, both waited for: **pairs/s** | {k(pair_ops)} pairs/s | | | |")
    print(f"| same, **round trips/s** (2 per pair) vs raw ping-pong round trips/s | {k(pair_rt)} rt/s{cv(c(pair(1, 0), 'round_trips_per_s'))} | {k(raw_rt)} rt/s | **{r2(pair_rt / raw_rt, 0.8)}** | {verdict(pair_rt / raw_rt, 0.8)} |")
    print(f"| 1-key prepare_store + posted commit_store (protocol 2; one wait per pair): requests/s (2 per pair) vs raw rt/s | {k(post_rq)} req/s{cv(c(pair(1, 1), 'round_trips_per_s'))} | {k(raw_rt)} rt/s | **{r2(post_rq / raw_rt, 0.8)}** | {verdict(post_rq / raw_rt, 0.8)} |")
    print(f"| same, pairs/s vs raw rt/s (a whole store per raw round trip) | {k(post_ops)} pairs/s | {k(raw_rt)} rt/s | {post_ops / raw_rt:.2f} | (reference) |")
    print(f"| 1-key lookup (1 round trip), 1 client, vs raw ping-pong | {k(look1)} rt/s | {k(raw_rt)} rt/s | {look1 / raw_rt:.2f} | (reference) |")
    print(f"| diagnostic: ping-pong waiting like shmkv 1 did (poll / epoll) vs raw ping-pong | {k(polled_rt)} rt/s | {k(raw_rt)} rt/s | {polled_rt / raw_rt:.2f} | |")
    print(f"| 256-key prepare_store + 256-key commit_store, **µs per key**: waited / posted | {us_per_key:.2f} / {us_per_key_post:.2f} µs/key{cv(c(pair(256, 0), 'items_per_second'))} | | | |")
    print(f"| 8 clients: lookup round trips/s vs `redis-benchmark -c 8 -t get -d 16` GETs/s | {k(look8)} rt/s{cv(c('Lookup/real_time/threads:8', 'round_trips_per_s'))} | {k(rb8)} GET/s | **{r2(look8 / rb8, 1)}** | {verdict(look8 / rb8, 1)} |")
    print(f"| 8 clients: prepare_retrieve+commit_retrieve pairs/s vs redis-benchmark GETs/s | {k(ret8_ops)} pairs/s | {k(rb8)} GET/s | {r2(ret8_ops / rb8, 1)} | (reference) |")
    print(f"| 8 clients: prepare_retrieve + posted commit_retrieve pairs/s vs redis-benchmark GETs/s | {k(ret8p_ops)} pairs/s | {k(rb8)} GET/s | {r2(ret8p_ops / rb8, 1)} | (reference) |")
    print(f"| 8 clients: lookup vs hiredis GET from 8 blocking threads (the shmkv client's model) | {k(look8)} rt/s | {k(hget8)} GET/s | {look8 / hget8:.2f} | (reference) |")
    print(f"| 1 client: lookup vs `redis-benchmark -c 1` / hiredis, GETs/s | {k(look1)} rt/s | {k(rb1)} / {k(hget1)} GET/s | {look1 / rb1:.2f} / {look1 / hget1:.2f} | (reference) |")
    print(f"| 1 client: retrieve pairs/s, waited / posted, vs hiredis GETs/s | {k(ret1_ops)} / {k(ret1p_ops)} pairs/s | {k(hget1)} GET/s | {ret1_ops / hget1:.2f} / {ret1p_ops / hget1:.2f} | (reference) |")
    for kind, what, goal in ((0, "1-key prepare_store+commit_store, both waited for: round trips/s", 0.8),
                             (1, "1-key prepare_store + posted commit_store: requests/s", 0.8),
                             (2, "1-key lookup: round trips/s", None)):
        name = f"PairedControl/kind:{kind}/real_time"
        ratio = m(name, "ratio")
        tail = f"{verdict(ratio, goal)}" if goal else "(reference)"
        print(f"| **paired** (alternating blocks of 32 in one loop): {what} vs raw ping-pong | {k(m(name, 'shmkv_rt_per_s'))} | {k(m(name, 'raw_rt_per_s'))} rt/s | **{r2(ratio, goal or 0)}**{cv(c(name, 'ratio'))} | {tail} |")
    print(f"\nredis-benchmark runs, GET/s: -c 8: {', '.join(f'{v:,.0f}' for v in rb8_all)}; -c 1: {', '.join(f'{v:,.0f}' for v in rb1_all)}\n")

    print("Data path (GB/s = (bytes stored + bytes retrieved) / s, 1 GB = 10^9 B; medians). "
          "waited: every call waits for its reply; posted: commits posted (protocol 2). "
          "remove untimed / timed: the per-iteration remove that frees the slots for the next iteration.\n")
    print("| objects × size | shmkv waited, remove untimed | shmkv posted, remove untimed | shmkv posted, **all timed** | memcpy in+out, same bytes | **÷ memcpy** (goal ≥ 0.9): waited / posted / **all timed** | Redis SET+GET | **÷ Redis** (goal ≥ 3), all timed | diag: the copies to/from slots, no calls (÷ memcpy) |")
    print("|---|---|---|---|---|---|---|---|---|")
    moves = []
    for mib, batch in ((1, 1), (8, 1), (32, 1), (1, 32), (8, 4)):
        shape = f"mib:{mib}/batch:{batch}"
        def shm(post, rm):
            name = f"DataShmkv/{shape}/post:{post}/remove:{rm}/real_time"
            moves.append(m(name, "slot_moves"))
            return m(name, "bytes_per_second"), c(name, "bytes_per_second")
        (w, wcv), (p, pcv), (a, acv) = shm(0, 0), shm(1, 0), shm(1, 1)
        cpy = m(f"DataMemcpy/{shape}/real_time", "bytes_per_second")
        red = m(f"DataRedis/{shape}/real_time", "bytes_per_second")
        slot = m(f"DataSlotMemcpy/{shape}/real_time", "bytes_per_second")
        print(f"| {batch} × {mib} MiB | {gb(w)}{cv(wcv)} | {gb(p)}{cv(pcv)} | {gb(a)}{cv(acv)} | {gb(cpy)}{cv(c(f'DataMemcpy/{shape}/real_time', 'bytes_per_second'))} | {r2(w / cpy, 0.9)} / {r2(p / cpy, 0.9)} / **{r2(a / cpy, 0.9)}**: {'met' if a / cpy >= 0.9 else 'not met'} | {gb(red)} | **{a / red:.1f}**: {'met' if a / red >= 3 else 'not met'} | {gb(slot)} ({slot / cpy:.2f}) |")
    print("\nPaired data path (a shmkv cycle with the remove timed, alternating with the memcpy baseline of the same bytes in one loop; ratio = memcpy time / shmkv time)\n")
    print("| objects × size | shmkv waited | memcpy | **ratio** | shmkv posted | memcpy | **ratio** (goal ≥ 0.9) |")
    print("|---|---|---|---|---|---|---|")
    for mib, batch in ((1, 1), (8, 1), (32, 1), (1, 32), (8, 4)):
        w = f"PairedData/mib:{mib}/batch:{batch}/post:0/real_time"
        p = f"PairedData/mib:{mib}/batch:{batch}/post:1/real_time"
        print(f"| {batch} × {mib} MiB | {m(w, 'shmkv_gbps'):.2f} | {m(w, 'memcpy_gbps'):.2f} | {r2(m(w, 'ratio'), 0.9)}{cv(c(w, 'ratio'))} | {m(p, 'shmkv_gbps'):.2f} | {m(p, 'memcpy_gbps'):.2f} | **{r2(m(p, 'ratio'), 0.9)}**{cv(c(p, 'ratio'))}: {'met' if m(p, 'ratio') >= 0.9 else 'not met'} |")
    if any(v != 0 for v in moves):
        print(f"\nnote: the slots moved between iterations in some runs (slot_moves medians {moves})")
    if errors:
        print("\nfailed benchmarks:\n" + "\n".join(f"- {e}" for e in errors))
EOF
echo "raw results: ${OUT_DIR:-(temporary; set OUT_DIR to keep them)}" >&2
