"""``python -m p2pweightsd run|doctor``: the daemon's entry point (see :mod:`.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
