"""Where p2pweights keeps its files: one data dir, chosen at the entry point.

Order: an explicit argument (``--home``), then ``$P2PW_HOME``, then the platform's
per-user data dir. Nothing here runs at import time.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["ENV_HOME", "data_dir", "default_key_path", "trust_path"]

ENV_HOME = "P2PW_HOME"


def data_dir(override: Path | str | None = None) -> Path:
    """The data dir: ``override``, else ``$P2PW_HOME``, else the platform default."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(ENV_HOME)
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir("p2pweights", appauthor=False))


def trust_path(home: Path) -> Path:
    """The trust store file inside a data dir."""
    return home / "trust.json"


def default_key_path(home: Path) -> Path:
    """Where `p2pw key generate` writes when no path is given."""
    return home / "keys" / "publisher.pem"
