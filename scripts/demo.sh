#!/usr/bin/env bash
# The shmkv demo, from a fresh clone: installs the Debian packages, builds what the demo needs,
# then runs scripts/demo.py (a server on embedded defaults, simulated engine workers, multi-turn
# chats sharing system prompts; progress bar, summary, PNG chart in demo-output/).
# Arguments go to the demo: `scripts/demo.sh --help`, `--quick`, `--workers 4 --conversations 64`,
# `--engine vllm` (the workers go through the vLLM adapter's call sequence, docs/vllm.md),
# `--nodes 2 --workers 4` (two servers sharing chunks through a local Redis Cluster, docs/l3-redis.md).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ " $* " != *" --help "* && " $* " != *" -h "* ]]; then
  echo "== installing dependencies (apt, skipped when present) ==" >&2
  scripts/install-deps.sh
  # shmkv-file-worker too: the server starts it for --disk-dir (it looks next to itself first).
  echo "== building shmkv-server, shmkv-file-worker and the Python module in build/ (first build: a few minutes) ==" >&2
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  # Ninja's progress ([n/N] per step) goes to the terminal, on one line when it is a tty.
  cmake --build build -j "$(nproc)" --target shmkv-server shmkv shmkv-file-worker shmkv_python >&2
fi
exec /usr/bin/python3 scripts/demo.py --build-dir build "$@"
