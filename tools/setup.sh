#!/usr/bin/env bash
# One-command, idempotent set-up of the suite's environment (called by every Makefile target).
# Prints one line per step; the full pip/apt output goes to .cache/setup.log.
# A second call with unchanged pyproject.toml and this script returns in about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3.11}
LOG=.cache/setup.log
mkdir -p .cache
STAMP="$VENV/.setup-stamp"
WANT=$(cat pyproject.toml tools/setup.sh | sha256sum | cut -c1-16)

step() { printf '  setup · %s\n' "$*"; }
fail() {
  echo "setup failed during: $*. The last lines of $LOG:" >&2
  tail -n 15 "$LOG" | sed 's/^/    /' >&2
  exit 1
}

# Debian data packages (fonts for glyphs, textures, Fashion-MNIST).
DEB_PACKAGES="dataset-fashion-mnist fonts-noto-core fonts-unifont fonts-freefont-ttf fonts-dejavu-core gimp-data gimp-data-extras"
missing=""
for p in $DEB_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    step "installing Debian data packages:$missing"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >>"$LOG" 2>&1 \
      || fail "apt-get install$missing"
  else
    echo "Missing Debian data packages:$missing. Run: sudo apt-get install$missing" >&2; exit 1
  fi
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ]; then
  exit 0
fi

# torch 2.14.1 with its CUDA libraries takes about 5.5 GB in the venv: check the disk before pip does.
NEED_GB=${SETUP_NEED_GB:-7}  # overridable for the test of this check
mkdir -p "$(dirname "$VENV")"
free_gb=$(df -Pk "$(dirname "$VENV")" | awk 'NR==2 {print int($4 / 1048576)}')
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1 && [ "${free_gb:-0}" -lt "$NEED_GB" ]; then
  echo "setup cannot install torch: the virtualenv $VENV needs about $NEED_GB GB of free disk and" \
       "only ${free_gb} GB is free on $(df -P "$(dirname "$VENV")" | awk 'NR==2 {print $6}'). Free some space" \
       "(old clones, results/ of finished studies, ~/.cache/pip) or set VENV=<a path on a larger disk>." >&2
  exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
  step "creating virtualenv $VENV ($($PY --version))"
  $PY -m venv "$VENV" >>"$LOG" 2>&1 || fail "python -m venv"
fi
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
step "torch 2.14.1 + torchvision 0.29.1 (from the local wheel store when present)"
$PIP install -q torch==2.14.1 torchvision==0.29.1 >>"$LOG" 2>&1 || fail "pip install torch"
step "pinned Python packages (pyproject.toml, extras: dev)"
$PIP install -q "setuptools>=68" wheel >>"$LOG" 2>&1 || fail "pip install setuptools"
$PIP install -q --no-build-isolation -e ".[dev]" >>"$LOG" 2>&1 || fail "pip install -e .[dev]"

if ! "$VENV/bin/python" -c "import learn2learn" >>"$LOG" 2>&1; then
  # learn2learn 0.2.0's shipped C files do not compile on Python 3.11: regenerate them with Cython 3.
  # Its heavy optional dependencies (qpth, cvxpy, gsutil) are deliberately not installed.
  step "learn2learn 0.2.0 (rebuilt with Cython 3 for Python 3.11)"
  tmp=$(mktemp -d); VENV_ABS=$(cd "$VENV" && pwd)
  $PIP download -q --no-deps --no-binary :all: -d "$tmp" learn2learn==0.2.0 >>"$LOG" 2>&1 || fail "pip download learn2learn"
  tar xzf "$tmp"/learn2learn-0.2.0.tar.gz -C "$tmp"
  (cd "$tmp/learn2learn-0.2.0" && "$VENV_ABS/bin/cython" -3 learn2learn/data/*.pyx) >>"$LOG" 2>&1 || fail "cython learn2learn"
  $PIP install -q --no-deps --no-build-isolation "$tmp/learn2learn-0.2.0" >>"$LOG" 2>&1 || fail "pip install learn2learn"
  rm -rf "$tmp"
fi
"$VENV/bin/python" -c "import learn2learn, segmentation_models_pytorch, timm, lightning, wandb" >>"$LOG" 2>&1 \
  || fail "import check (learn2learn, smp, timm, lightning, wandb)"
echo "$WANT" > "$STAMP"
step "environment ready ($VENV)"
