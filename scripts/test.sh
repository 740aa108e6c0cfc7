#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite, then the static gates
# (ruff, mypy --strict). Extra arguments go to pytest.
set -euo pipefail
INWALL_EXTRA_TOOLS="${INWALL_EXTRA_TOOLS:-curl:curl ip:iproute2}"
source "$(dirname "$0")/bootstrap.sh"
cd "$ROOT"
python -m pytest "$@"
echo "== ruff" >&2
ruff check src tests bench
echo "== mypy --strict src" >&2
mypy
