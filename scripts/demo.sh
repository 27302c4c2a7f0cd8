#!/usr/bin/env bash
# One command: create .venv if needed, install everything, run the demo.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup.sh"
exec "${P2PW_VENV:-$root/.venv}/bin/python" "$root/scripts/demo.py" "$@"
