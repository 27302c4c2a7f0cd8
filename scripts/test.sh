#!/usr/bin/env bash
# One command: create .venv if needed, install everything, then lint, type-check and run
# the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
P2PW_SYSTEM_PACKAGES=1 bash "$root/scripts/setup.sh"
venv="${P2PW_VENV:-$root/.venv}"
cd "$root"
"$venv/bin/ruff" check .
"$venv/bin/mypy"

# Safety net: after the installs, run the suite in a private network namespace, so no
# test can reach beyond this machine whatever a library defaults to. Set P2PW_NO_NETNS=1
# to skip it (the tests pin every socket to loopback anyway).
pytest=("$venv/bin/python" -m pytest "$@")
if [ "${P2PW_NO_NETNS:-}" != 1 ] && command -v unshare >/dev/null && command -v ip >/dev/null; then
    flags=(-n)
    [ "$(id -u)" = 0 ] || flags=(-r -n)
    if unshare "${flags[@]}" true 2>/dev/null; then
        exec unshare "${flags[@]}" -- sh -c 'ip link set lo up && exec "$@"' sh "${pytest[@]}"
    fi
    echo "test.sh: cannot create a network namespace here; running on the host's loopback" >&2
fi
exec "${pytest[@]}"
