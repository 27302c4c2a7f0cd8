"""The one exception tree of p2pweights.

    P2PWeightsError                         every error this package raises on purpose
    ├── FormatError (ValueError)            input that is not a well-formed release/checkpoint
    │   ├── ManifestError                   the manifest breaks the schema, a limit, or form
    │   ├── OverCapError                    a torrent or manifest over a cap of the daemon's config
    │   ├── UnsafePathError                 a path is absolute, has `..`, or leaves its directory
    │   ├── SafetensorsHeaderError          a safetensors header is malformed or lies about sizes
    │   ├── NameFormatError                 a ``p2pw://`` name breaks the grammar (hostile ones too)
    │   ├── NameRecordError                 a name's DHT record is malformed, or over 1000 bytes
    │   ├── SearchIndexError                a publisher's search index document is malformed
    │   ├── SearchQueryError                search words or publishers that break the limits
    │   ├── SourceError                     a pack source is missing, unsupported or inconsistent
    │   │   └── UnsafePickleError           a pickle asked for more than plain tensors; not executed
    │   └── KeyStatementError               a key rotation statement or revocation is malformed
    ├── TrustError                          who signed, and whether we believe them
    │   ├── SignatureError (ValueError)     the signature does not match the manifest bytes
    │   ├── UntrustedKeyError               the publisher key is not in the trust store
    │   ├── OutOfScopeError                 the key is trusted, but not for this release's name
    │   ├── RevokedKeyError                 the key was revoked by its own certificate
    │   ├── ReleaseExpiredError             the manifest's expiry time has passed
    │   ├── RollbackError                   a name's DHT record is older than one already seen
    │   └── StaleNameError                  a name's DHT record is past its signed expiry (freeze)
    ├── ChunkError                          a chunk on disk is not what the signed manifest says
    │   ├── MissingChunkError (FileNotFoundError)
    │   └── CorruptChunkError               wrong size or wrong sha256
    ├── KeyFileError                        a key file is unreadable, of the wrong type, or locked
    ├── TrustStoreError                     the trust store is damaged or the entry is unknown
    ├── ExportError                         an export cannot be written or does not match
    ├── LoadError (ValueError)              a load asks for tensors, modes or dirs that do not fit
    ├── ConfigError (ValueError)            a config file, variable or flag is invalid
    ├── CatalogError                        the daemon's SQLite catalog is damaged or unknown
    ├── UnknownReleaseError (LookupError)   no release with that id is known to the daemon
    ├── SwarmError                          the swarm could not deliver: torrent errors, no peers
    │   ├── ReleaseMismatchError            the torrent's files differ from the signed manifest
    │   │   └── PointerMismatchError        the manifest is not the one its name's record points to
    │   ├── NameResolutionError             a name found no record (no DHT, or nothing under it)
    │   ├── FetchTimeoutError (TimeoutError)  not complete within the caller's timeout
    │   └── DiskFullError                   the store's disk is full; the fetch is paused, not lost
    └── DaemonError                         talking to the daemon failed
        ├── DaemonUnavailableError (ConnectionError)  no daemon answers, and none could start
        └── ApiError                        the daemon refused a request (carries its status)

Each class carries ``exit_code``: the CLI maps an error to it, and the README lists them.
"""

from __future__ import annotations

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
    "FetchTimeoutError",
    "FormatError",
    "KeyFileError",
    "KeyStatementError",
    "LoadError",
    "ManifestError",
    "MissingChunkError",
    "NameFormatError",
    "NameRecordError",
    "NameResolutionError",
    "OutOfScopeError",
    "OverCapError",
    "P2PWeightsError",
    "PointerMismatchError",
    "ReleaseExpiredError",
    "ReleaseMismatchError",
    "RevokedKeyError",
    "RollbackError",
    "SafetensorsHeaderError",
    "SearchIndexError",
    "SearchQueryError",
    "SignatureError",
    "SourceError",
    "StaleNameError",
    "SwarmError",
    "TrustError",
    "TrustStoreError",
    "UnknownReleaseError",
    "UnsafePathError",
    "UnsafePickleError",
    "UntrustedKeyError",
]


class P2PWeightsError(Exception):
    """Root of every error p2pweights raises on purpose."""

    exit_code = 1


class FormatError(P2PWeightsError, ValueError):
    """Input that is not a well-formed release or checkpoint."""

    exit_code = 5


class ManifestError(FormatError):
    """The manifest breaks the schema, a limit, or canonical form."""


class OverCapError(FormatError):
    """A torrent or manifest is over a cap of the daemon's config (files, tensors)."""


class UnsafePathError(FormatError):
    """A path is absolute, contains `..`, or would leave its directory."""


class SafetensorsHeaderError(FormatError):
    """A safetensors header is malformed or disagrees with the file's sizes."""


class NameFormatError(FormatError):
    """A ``p2pw://`` name breaks the grammar: traversal, absurd length, bad key text."""

    exit_code = 2


class NameRecordError(FormatError):
    """A name's DHT record is malformed, or would not fit BEP 44's 1000 bytes."""


class SearchIndexError(FormatError):
    """A publisher's search index document is malformed, over its limits, or not its own."""


class SearchQueryError(FormatError):
    """Search words or ``--publisher`` keys that break the limits (a usage error)."""

    exit_code = 2


class SourceError(FormatError):
    """A pack source is missing, unsupported, or inconsistent."""

    exit_code = 8


class UnsafePickleError(SourceError):
    """A pickle asked for something other than plain tensors; it was not executed."""


class KeyStatementError(FormatError):
    """A key rotation statement or revocation certificate is malformed or over a limit.

    A statement whose form is right but whose signature does not verify is a
    ``SignatureError`` instead.
    """


class TrustError(P2PWeightsError):
    """Who signed a release, and whether we believe them."""

    exit_code = 3


class SignatureError(TrustError, ValueError):
    """The signature does not match the manifest bytes and publisher key."""


class UntrustedKeyError(TrustError):
    """The publisher key is not in the trust store (nor given explicitly)."""

    exit_code = 4


class OutOfScopeError(TrustError):
    """The publisher key is trusted, but its trust entry does not cover this release's name.

    Not an ``UntrustedKeyError``: a key already in the trust store is never trusted again
    on first use, so a key accepted for one name cannot widen itself to another.
    """

    exit_code = 18


class RevokedKeyError(TrustError):
    """The publisher key was revoked by a certificate it signed itself; never trusted again.

    Not an ``UntrustedKeyError``: trust on first use never applies to a revoked key.
    """

    exit_code = 22


class ReleaseExpiredError(TrustError):
    """The manifest's expiry time has passed."""


class RollbackError(TrustError):
    """A name's DHT record is older (sequence number or version) than one already seen.

    Someone serves a genuine but superseded record: the high-water mark kept in the
    catalog for each (publisher, name) refuses it, also after a restart.
    """

    exit_code = 20


class StaleNameError(TrustError):
    """A name's DHT record is past its signed expiry: a freeze attack, or a gone publisher."""

    exit_code = 21


class ChunkError(P2PWeightsError):
    """A chunk on disk is not what the signed manifest says it is."""

    exit_code = 7


class MissingChunkError(ChunkError, FileNotFoundError):
    """A chunk named by the manifest is not on disk."""

    exit_code = 6


class CorruptChunkError(ChunkError):
    """A chunk has the wrong size or the wrong sha256."""


class KeyFileError(P2PWeightsError):
    """A key file is unreadable, of the wrong type, or needs another passphrase."""

    exit_code = 9


class TrustStoreError(P2PWeightsError):
    """The trust store file is damaged, or the entry asked for is not in it."""

    exit_code = 10


class ExportError(P2PWeightsError):
    """An export cannot be written, or what it rebuilt does not match the manifest."""

    exit_code = 11


class LoadError(P2PWeightsError, ValueError):
    """A load request that cannot be met: unknown tensors, bad device, wrong directory."""

    exit_code = 12


class ConfigError(P2PWeightsError, ValueError):
    """A config file, environment variable or flag is invalid."""

    exit_code = 2


class CatalogError(P2PWeightsError):
    """The daemon's SQLite catalog is damaged, unreadable, or of an unknown schema."""

    exit_code = 13


class UnknownReleaseError(P2PWeightsError, LookupError):
    """No release with that id is known to the daemon."""

    exit_code = 16


class SwarmError(P2PWeightsError):
    """The swarm could not deliver a release: torrent errors, or no usable peers."""

    exit_code = 14


class ReleaseMismatchError(SwarmError):
    """The torrent's file list differs from the signed manifest's chunk list."""

    exit_code = 3


class PointerMismatchError(ReleaseMismatchError):
    """The fetched manifest's name, version or sha256 is not what its name's record says."""


class NameResolutionError(SwarmError):
    """A name found no record: the DHT is off, or no node holds an item under the name."""


class FetchTimeoutError(SwarmError, TimeoutError):
    """A fetch, load or stream was not complete within its ``timeout``; the fetch goes on."""


class DiskFullError(SwarmError):
    """The store's filesystem is full: the fetch is paused and goes on once space is freed."""

    exit_code = 17


class DaemonError(P2PWeightsError):
    """Talking to the daemon failed."""

    exit_code = 15


class DaemonUnavailableError(DaemonError, ConnectionError):
    """No daemon answers on the socket, and none could be started."""


class ApiError(DaemonError):
    """The daemon refused a request; ``status`` is the HTTP status, ``kind`` its error class."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 500,
        kind: str = "ApiError",
        exit_code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        if exit_code is not None:
            self.exit_code = exit_code
