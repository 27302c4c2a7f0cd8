"""p2pweights: signed, tensor-aligned model releases, shared peer to peer.

The public API::

    import p2pweights
    state = p2pweights.load("path/to/release")          # dict[str, Tensor], memory-mapped
    p2pweights.load_into(model, "path/to/release")
    with p2pweights.open("path/to/release") as r:       # lazy, like safetensors.safe_open
        r.get_tensor("lm_head.weight")
    state = p2pweights.load("magnet:?xt=urn:btmh:1220...")  # fetched by the daemon
    for name, tensor in p2pweights.stream("magnet:?xt=..."):  # as each chunk lands
        ...
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from .errors import (
    ApiError,
    CatalogError,
    ChunkError,
    ConfigError,
    CorruptChunkError,
    DaemonError,
    DaemonUnavailableError,
    DiskFullError,
    ExportError,
    FetchTimeoutError,
    FormatError,
    KeyFileError,
    LoadError,
    ManifestError,
    MissingChunkError,
    OutOfScopeError,
    OverCapError,
    P2PWeightsError,
    ReleaseExpiredError,
    ReleaseMismatchError,
    RevokedKeyError,
    SafetensorsHeaderError,
    SignatureError,
    SourceError,
    SwarmError,
    TrustError,
    TrustStoreError,
    UnknownReleaseError,
    UnsafePathError,
    UnsafePickleError,
    UntrustedKeyError,
)

if TYPE_CHECKING:
    from ._load_into import load_into
    from .export import ExportResult, export
    from .keys import PrivateKey, PublicKey, generate_key, load_private_key
    from .loader import ReleaseReader, load, open
    from .manifest import Manifest
    from .pack import PackResult, pack
    from .release import Release, open_release
    from .remote import fetch
    from .stream import TensorStream, stream
    from .trust import TrustEntry, TrustStore
    from .verify import verify_release

__version__ = "0.1.0"

__all__ = [
    "ApiError",
    "CatalogError",
    "ChunkError",
    "ConfigError",
    "CorruptChunkError",
    "DaemonError",
    "DaemonUnavailableError",
    "DiskFullError",
    "ExportError",
    "ExportResult",
    "FetchTimeoutError",
    "FormatError",
    "KeyFileError",
    "LoadError",
    "Manifest",
    "ManifestError",
    "MissingChunkError",
    "OutOfScopeError",
    "OverCapError",
    "P2PWeightsError",
    "PackResult",
    "PrivateKey",
    "PublicKey",
    "Release",
    "ReleaseExpiredError",
    "ReleaseMismatchError",
    "ReleaseReader",
    "RevokedKeyError",
    "SafetensorsHeaderError",
    "SignatureError",
    "SourceError",
    "SwarmError",
    "TensorStream",
    "TrustEntry",
    "TrustError",
    "TrustStore",
    "TrustStoreError",
    "UnknownReleaseError",
    "UnsafePathError",
    "UnsafePickleError",
    "UntrustedKeyError",
    "__version__",
    "export",
    "fetch",
    "generate_key",
    "load",
    "load_into",
    "load_private_key",
    "open",
    "open_release",
    "pack",
    "stream",
    "verify_release",
]

# Where each name that is not an error lives. They are imported on first use, so that
# ``import p2pweights.errors`` or ``p2pweights.client`` (the CLI, the daemon) costs what
# those modules cost, not torch: only the names that make or read tensors import it.
_LAZY = {
    "ExportResult": "export",
    "Manifest": "manifest",
    "PackResult": "pack",
    "PrivateKey": "keys",
    "PublicKey": "keys",
    "Release": "release",
    "ReleaseReader": "loader",
    "TensorStream": "stream",
    "TrustEntry": "trust",
    "TrustStore": "trust",
    "export": "export",
    "fetch": "remote",
    "generate_key": "keys",
    "load": "loader",
    "load_into": "_load_into",
    "load_private_key": "keys",
    "open": "loader",
    "open_release": "release",
    "pack": "pack",
    "stream": "stream",
    "verify_release": "verify",
}


def __getattr__(name: str) -> Any:
    """Import a public name on first use (PEP 562) and keep it as a module global."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib  # noqa: PLC0415 - only on the first use of a lazy name

    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """The package, whose public functions win over same-named submodules.

    The import system binds a submodule on its package when it first loads it. Three
    submodules share their name with the function they define (``pack``, ``export``,
    ``stream``); ``p2pweights.pack`` is the function, as it was when the package imported
    everything eagerly, whichever of the two is imported first.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
