"""The public surface is what we meant it to be, and the exception tree holds together."""

from __future__ import annotations

import inspect

import p2pweights
from p2pweights import errors


def test_public_names_are_pinned() -> None:
    assert p2pweights.__all__ == sorted(p2pweights.__all__)
    assert set(p2pweights.__all__) == {
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
        "RevokedKeyError",
        "ReleaseReader",
        "SafetensorsHeaderError",
        "SignatureError",
        "SourceError",
        "SwarmError",
        "TrustEntry",
        "TrustError",
        "TensorStream",
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
    }
    for name in p2pweights.__all__:
        assert hasattr(p2pweights, name), name


def test_every_error_is_rooted_and_documented() -> None:
    classes = [
        c
        for _, c in inspect.getmembers(errors, inspect.isclass)
        if issubclass(c, Exception) and c.__module__ == errors.__name__
    ]
    assert set(errors.__all__) == {c.__name__ for c in classes}
    for cls in classes:
        assert issubclass(cls, errors.P2PWeightsError)
        assert cls.__doc__
        # The tree drawn at the top of errors.py names every class.
        assert cls.__name__ in (errors.__doc__ or "")
        assert isinstance(cls.exit_code, int) and cls.exit_code >= 1
    assert issubclass(errors.MissingChunkError, FileNotFoundError)
    assert issubclass(errors.SignatureError, ValueError)
