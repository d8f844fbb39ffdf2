#!/usr/bin/env bash
# Creates the virtual environments in which the engine-adapter tests run against the real engine
# packages (tests/engines/, docs/vllm.md, docs/sglang.md). Test-only: shmkv never depends
# on vLLM or SGLang at run time.
#
#   .venv-engines/vllm    vllm==0.33.0     (tests/engines/test_vllm_*.py)
#   .venv-engines/sglang  sglang==0.5.23   (tests/engines/test_sglang_*.py)
#
# One environment per engine: the two pin different torch (and other) versions, so one resolver
# run for both would fail or downgrade one of them. Both are made by Debian's interpreter with
# --system-site-packages, so numpy, pytest and the shmkv module's pybind11 ABI stay the system
# ones. Idempotent: an environment whose marker file names the pinned version is kept as is.
# Prints the install time and the disk each environment takes.
#
# Usage: scripts/engines-venv.sh [--only vllm|sglang] [--dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

VLLM_VERSION=0.33.0
SGLANG_VERSION=0.5.23
dir=${SHMKV_ENGINES_VENV:-.venv-engines}
only=""
while (($#)); do
  case "$1" in
    --only) only=${2:?--only needs vllm or sglang}; shift ;;
    --dir) dir=${2:?--dir needs a directory}; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "engines-venv.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
  shift
done

make_venv() {  # name, requirement, extra packages...
  local name=$1 req=$2 venv="$dir/$1"
  shift 2
  local extra=("$@")
  if [[ -f "$venv/.shmkv-installed" && "$(cat "$venv/.shmkv-installed")" == "$req" ]]; then
    echo "engines-venv: $venv already has $req"
    return
  fi
  local start=$SECONDS
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  # The pip of Debian 12 (23.0) resolves these pins; a newer one is not needed.
  # scipy: the engines pull numpy 2, which Debian's scipy (seen through --system-site-packages,
  # imported by transformers) cannot load; a scipy of the venv's own shadows it, and numpy is pinned
  # to the 2.x range the engines' own pins accept (pip otherwise picks 1.26 for the old scipy).
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$venv/bin/pip" install --quiet --no-cache-dir "$req" "${extra[@]}"
  echo "$req" >"$venv/.shmkv-installed"
  local took=$((SECONDS - start))
  echo "engines-venv: $venv: $req installed in ${took} s, $(du -sh "$venv" | cut -f1) on disk"
}

mkdir -p "$dir"
[[ -z "$only" || "$only" == vllm ]] && make_venv vllm "vllm==$VLLM_VERSION" scipy "numpy>=2,<2.4"
[[ -z "$only" || "$only" == sglang ]] && make_venv sglang "sglang==$SGLANG_VERSION" scipy "numpy>=2,<2.4"
exit 0
