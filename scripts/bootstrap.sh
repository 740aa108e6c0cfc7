#!/usr/bin/env bash
# Prepare a machine for inwall: Python 3.11+ with venv, bubblewrap, and the
# project's virtualenv. Sourced by scripts/demo.sh and scripts/test.sh.
# Installs system packages with apt only when run as root; otherwise it stops
# and says exactly what to install. Re-running is cheap: pip runs only when
# pyproject.toml or constraints.txt changed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${INWALL_VENV:-$ROOT/.venv}"
APT_UPDATED=0

say() { printf '\033[1m[inwall setup]\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31m[inwall setup] error:\033[0m %s\n' "$*" >&2; exit 1; }

apt_install() {
  # $@: Debian package names
  if [ "$(id -u)" -ne 0 ]; then
    die "missing system packages: $*. Install them with: sudo apt-get install -y $*  (then re-run)"
  fi
  command -v apt-get >/dev/null || die "missing system packages: $* (and apt-get is not available to install them)"
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
}

find_python() {
  for candidate in ${INWALL_PYTHON:-} python3.13 python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      command -v "$candidate"
      return 0
    fi
  done
  return 1
}

PYTHON="$(find_python)" || die "inwall needs Python 3.11 or newer (found: $(python3 --version 2>&1 || echo none)). On Debian/Ubuntu: apt-get install python3 (3.11+), or set INWALL_PYTHON=/path/to/python3.11"

if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
  ver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info.major}.{sys.version_info.minor}")')"
  apt_install "python${ver}-venv"
fi

if ! command -v bwrap >/dev/null 2>&1; then
  apt_install bubblewrap
fi

for tool in ${INWALL_EXTRA_TOOLS:-}; do
  command -v "${tool%%:*}" >/dev/null 2>&1 || apt_install "${tool#*:}"
done

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv in $VENV"
  "$PYTHON" -m venv "$VENV" || die "could not create a virtualenv with $PYTHON"
fi

STAMP="$VENV/.inwall-deps"
WANT="$(cat "$ROOT/pyproject.toml" "$ROOT/constraints.txt" | sha256sum | cut -d' ' -f1)-${INWALL_EXTRAS:-test}"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  say "installing Python dependencies (pinned by constraints.txt)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2 || die "could not upgrade pip (is PyPI reachable?)"
  "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[${INWALL_EXTRAS:-test}]" >&2 ||
    die "pip install failed (is PyPI reachable?)"
  echo "$WANT" >"$STAMP"
fi

export PATH="$VENV/bin:$PATH"
