#!/usr/bin/env bash
# Installs LMCache 0.5.6 (the system shmkv re-implements) into a private virtual environment, for
# the side-by-side benchmark bench/vs_lmcache.py only: LMCache is never a dependency of shmkv.
#
#   scripts/setup-lmcache-venv.sh [VENV_DIR]     (default: build-lmcache-venv, git-ignored)
#
# Idempotent: an environment that already imports the pinned versions is left as it is.
# What it takes (measured on the development VM, PyPI at ~35 MB/s): lmcache and its 90 pure-Python
# and small native dependencies 3 min 54 s and 0.9 GiB; torch 3 min 28 s and 5.3 GiB more. Torch
# is needed because LMCache's native extension links libtorch and resolves a libstdc++ 13 symbol
# (std::string::_M_replace_cold) through it: Debian 12's torch 1.13 and libstdc++ 12 cannot load
# it ("undefined symbol: _ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEE15_M_replace_cold...").
# PyPI has no CPU-only torch for Linux, so this is the CUDA 13 build (its libraries load without a
# GPU; LMCache then runs on its CPU device). Check `df -h` first: about 7 GiB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-build-lmcache-venv}
LMCACHE_VERSION=0.5.6
TORCH_VERSION=2.15.0

if [[ -x "$venv/bin/python" ]] &&
  "$venv/bin/python" - "$LMCACHE_VERSION" "$TORCH_VERSION" <<'PY' 2>/dev/null; then
import importlib.metadata as m, sys
sys.exit(0 if (m.version("lmcache"), m.version("torch")) == (sys.argv[1], sys.argv[2]) else 1)
PY
  echo "setup-lmcache-venv: $venv already has lmcache $LMCACHE_VERSION and torch $TORCH_VERSION"
  exit 0
fi

avail_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
if ((avail_kib < 9 * 1024 * 1024)); then
  echo "setup-lmcache-venv: needs about 7 GiB and only $((avail_kib / 1024 / 1024)) GiB are free here" >&2
  exit 1
fi
start=$(date +%s)
# Debian's interpreter, as for everything in this project; system packages stay visible (numpy,
# msgpack and friends), the pinned versions below take precedence inside the venv.
/usr/bin/python3 -m venv --system-site-packages "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir "torch==$TORCH_VERSION" "lmcache==$LMCACHE_VERSION"
"$venv/bin/python" -c "import lmcache.lmcache_native, torch; print('lmcache', __import__('lmcache').__version__, 'torch', torch.__version__)"
echo "setup-lmcache-venv: $venv ready in $(($(date +%s) - start)) s, $(du -sh "$venv" | cut -f1)"
