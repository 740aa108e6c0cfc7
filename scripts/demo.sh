#!/usr/bin/env bash
# Set up (if needed) and run the demo: a control plane, a sandboxed worker and a
# session on this machine. Uses Claude when ANTHROPIC_API_KEY is set, otherwise
# the offline scripted model. Extra arguments go to `inwall demo` (e.g. --json).
set -euo pipefail
INWALL_EXTRAS="${INWALL_EXTRAS:-test}"
source "$(dirname "$0")/bootstrap.sh"
exec inwall demo "$@"
