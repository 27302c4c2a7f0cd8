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
from .export import ExportResult, export
from .keys import PrivateKey, PublicKey, generate_key, load_private_key
from .loader import ReleaseReader, load, load_into, open
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
