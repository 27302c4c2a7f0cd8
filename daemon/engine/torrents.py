"""Release torrents: make them reproducibly, and parse torrents and magnets strictly."""

from __future__ import annotations

import ipaddress
import os
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import libtorrent as lt

from p2pweights._paths import check_relative
from p2pweights.errors import (
    ChunkError,
    CorruptChunkError,
    FormatError,
    KeyStatementError,
    ManifestError,
    MissingChunkError,
    OverCapError,
)
from p2pweights.key_statements import MAX_FILE_BYTES, STATEMENTS_NAME
from p2pweights.manifest import LIMITS, Manifest
from p2pweights.release import MANIFEST_NAME, SIGNATURE_NAME

from .settings import CREATOR
from .values import MagnetLink, TorrentFile, TorrentFileEntry

DEFAULT_PIECE_SIZE = 1024 * 1024
"""Piece size of release torrents. It is part of the info dict, so part of the info-hash.

1 MiB, not 4: a leecher can pass a piece on only once it is whole, so smaller pieces
spread faster through a swarm (1 seeder + 4 leechers, 179 MB at 8 MB/s each: 1.13x the
fluid bound against 1.42x with 4 MiB; ``docs/performance.md``). v2 hashes every 16 KiB
block either way; the cost is 32 bytes of piece layer per piece (3.2 MB per 100 GB)."""

MAX_TORRENT_BYTES = 64 * 1024 * 1024
"""Largest .torrent accepted (v2 piece layers cost 32 bytes per piece)."""

MAX_MAGNET_CHARS = 64 * 1024

_MIN_PIECE = 16 * 1024
_MAX_PIECE = 64 * 1024 * 1024
_ZERO_ROOT = "0" * 64


def torrent_name(manifest: Manifest) -> str:
    """The root directory name of a release's torrent: ``ORG--MODEL-vN``."""
    return f"{manifest.name.replace('/', '--')}-v{manifest.version}"


def _read_manifest(release_dir: Path) -> Manifest:
    path = release_dir / MANIFEST_NAME
    try:
        with open(path, "rb") as fh:
            data = fh.read(LIMITS.manifest_bytes + 1)
    except FileNotFoundError:
        raise ManifestError(f"{path} is missing: not a release directory") from None
    except OSError as exc:
        raise ManifestError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > LIMITS.manifest_bytes:
        raise ManifestError(f"{path} is over the limit of {LIMITS.manifest_bytes} bytes")
    return Manifest.from_bytes(data)


def _file_size(path: Path, rel: str) -> int:
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise MissingChunkError(f"{rel} is missing from the release at {path.parent}") from None
    if not path.is_file():
        raise ChunkError(f"{rel} in the release is not a regular file")
    return st.st_size


def make_torrent(
    release_dir: Path,
    *,
    hybrid: bool = False,
    piece_size: int = DEFAULT_PIECE_SIZE,
    trackers: Sequence[str] = (),
    private: bool = False,
    web_seeds: Sequence[str] = (),
) -> TorrentFile:
    """Build the torrent of a release directory.

    The torrent holds ``manifest.json``, ``manifest.sig``, ``key-statements.json`` when
    the release has one, and every chunk the manifest lists, under the root directory
    :func:`torrent_name`. The bytes are reproducible: the creation date is the manifest's
    ``created`` and no mtimes are stored, so anyone holding the release makes the same
    torrent and the same info-hash.

    Args:
        release_dir: the release.
        hybrid: also make v1 piece hashes (for v1-only clients); default v2-only.
        piece_size: a power of two from 16 KiB to 64 MiB. Part of the info-hash.
        trackers: announce URLs to put in the torrent.
        private: set BEP 27's private flag (part of the info-hash): peers come only from
            the trackers, never from the DHT, PEX or LSD.
        web_seeds: BEP 19 web seed URLs for the ``url-list`` (a mirror tree's root, as
            ``p2pw mirror`` writes it). Not part of the info-hash.

    Returns:
        The torrent.

    Raises:
        ManifestError: the manifest is missing or malformed.
        MissingChunkError: a file the manifest names is not there.
        CorruptChunkError: a chunk's size or v2 root differs from the manifest.
        FormatError: a bad piece size.

    """
    if piece_size < _MIN_PIECE or piece_size > _MAX_PIECE or piece_size & (piece_size - 1):
        raise FormatError(f"piece size {piece_size} is not a power of two in 16 KiB..64 MiB")
    for url in trackers:
        _check_tracker(url)
    for url in web_seeds:
        check_web_seed(url)
    if private and not trackers:
        raise FormatError("a private torrent needs a tracker: it has no other source of peers")
    manifest = _read_manifest(release_dir)
    name = torrent_name(manifest)
    sizes = {
        MANIFEST_NAME: _file_size(release_dir / MANIFEST_NAME, MANIFEST_NAME),
        SIGNATURE_NAME: _file_size(release_dir / SIGNATURE_NAME, SIGNATURE_NAME),
    }
    if (release_dir / STATEMENTS_NAME).is_file():  # key rotations travel with the release
        sizes[STATEMENTS_NAME] = _file_size(release_dir / STATEMENTS_NAME, STATEMENTS_NAME)
        if sizes[STATEMENTS_NAME] > MAX_FILE_BYTES:
            raise KeyStatementError(f"{STATEMENTS_NAME} is over {MAX_FILE_BYTES} bytes")
    for chunk in manifest.chunks:
        size = _file_size(release_dir / chunk.path, chunk.path)
        if size != chunk.size:
            raise CorruptChunkError(
                f"chunk {chunk.path} has {size} bytes, the manifest says {chunk.size}"
            )
        sizes[chunk.path] = size
    entries = [lt.create_file_entry(f"{name}/{rel}", size) for rel, size in sorted(sizes.items())]
    flags = 0 if hybrid else lt.create_torrent.v2_only
    ct = lt.create_torrent(entries, piece_size, flags)
    # set_piece_hashes reads `<base>/<name>/<path>`; a symlink named after the torrent
    # lets it read the release dir in place, whatever that dir is called.
    with tempfile.TemporaryDirectory(prefix="p2pw-torrent-") as tmp:
        os.symlink(release_dir.resolve(), Path(tmp) / name)
        try:
            lt.set_piece_hashes(ct, tmp)
        except RuntimeError as exc:
            raise ChunkError(f"cannot hash the release at {release_dir}: {exc}") from exc
    ct.set_creation_date(manifest.created)
    ct.set_creator(CREATOR)
    ct.set_priv(private)
    for tier, url in enumerate(trackers):
        ct.add_tracker(url, tier)
    for url in web_seeds:
        ct.add_url_seed(url)
    torrent = parse_torrent(lt.bencode(ct.generate()))
    roots = {f.path: f.v2_root for f in torrent.files}
    for chunk in manifest.chunks:
        if roots.get(chunk.path) != chunk.v2_root:
            raise CorruptChunkError(
                f"chunk {chunk.path} hashes to v2 root {roots.get(chunk.path)}, "
                f"the manifest says {chunk.v2_root}"
            )
    return torrent


def _check_tracker(value: str, what: str = "tracker") -> str:
    """``value`` if it is an http/https/udp URL.

    Raises:
        FormatError: it is not.

    """
    try:
        scheme = urllib.parse.urlsplit(value).scheme
    except ValueError as exc:  # e.g. an unclosed "[" IPv6 host
        raise FormatError(f"{what} {value[:60]!r} is not a URL") from exc
    if scheme not in ("http", "https", "udp") or len(value) > 2048:
        raise FormatError(f"{what} {value[:60]!r} is not an http/https/udp URL")
    return value


def check_web_seed(value: str, what: str = "web seed") -> str:
    """``value`` if it is an http/https URL (a BEP 19 web seed).

    Raises:
        FormatError: it is not.

    """
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname
    except ValueError as exc:
        raise FormatError(f"{what} {value[:60]!r} is not a URL") from exc
    if parts.scheme not in ("http", "https") or not host or len(value) > 2048:
        raise FormatError(f"{what} {value[:60]!r} is not an http/https URL")
    if any(ord(c) <= 0x20 for c in value):
        raise FormatError(f"{what} {value[:60]!r} holds spaces or control characters")
    return value


def parse_torrent(data: bytes, *, max_files: int = 0) -> TorrentFile:
    """Parse and validate a .torrent (hostile input).

    Args:
        data: the bencoded torrent.
        max_files: refuse a torrent of more files than this (pad files aside); 0 = no cap
            but libtorrent's own decode limits.

    Raises:
        OverCapError: more files than ``max_files``.
        FormatError: not a torrent, not v2, or odd paths (absolute, ``..``, symlinks).

    """
    if len(data) > MAX_TORRENT_BYTES:
        raise FormatError(f"torrent is over the limit of {MAX_TORRENT_BYTES} bytes")
    try:
        ti = lt.torrent_info(data)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise FormatError(f"not a valid torrent: {exc}") from exc
    return torrent_from_info(ti, data, max_files=max_files)


def torrent_from_info(ti: Any, data: bytes, *, max_files: int = 0) -> TorrentFile:
    """A :class:`TorrentFile` from libtorrent's ``torrent_info`` and its bencoded bytes.

    Args:
        ti: libtorrent's ``torrent_info``.
        data: its bencoded bytes.
        max_files: as for :func:`parse_torrent`.

    Raises:
        OverCapError: more files than ``max_files``.
        FormatError: not v2, or paths that are absolute, symlinks or outside the root.
    """
    hashes = ti.info_hashes()
    if not hashes.has_v2():
        raise FormatError("not a BitTorrent v2 torrent (no v2 info-hash)")
    fs = ti.layout()
    _check_file_cap(fs, max_files)
    name = fs.name()
    check_relative(name, what="torrent name")
    if "/" in name:
        raise FormatError(f"torrent name {name[:80]!r} has a '/'")
    files = tuple(_files_of(fs, name))
    return TorrentFile(
        data=data,
        name=name,
        info_hash_v2=str(hashes.v2),
        info_hash_v1=str(hashes.v1) if hashes.has_v1() else None,
        piece_size=ti.piece_length(),
        magnet=lt.make_magnet_uri(ti),
        files=files,
        num_files=fs.num_files(),
        web_seeds=tuple(_web_seeds_of(data)),
    )


def _web_seeds_of(data: bytes) -> Iterable[str]:
    """The torrent's url-list entries that are http(s) URLs; odd ones are skipped."""
    decoded: Any = lt.bdecode(data)
    urls: Any = decoded.get(b"url-list", []) if isinstance(decoded, dict) else []
    for entry in [urls] if isinstance(urls, bytes) else urls if isinstance(urls, list) else []:
        try:
            yield check_web_seed(entry.decode("utf-8") if isinstance(entry, bytes) else "")
        except (FormatError, UnicodeDecodeError):
            continue


def _check_file_cap(fs: Any, max_files: int) -> None:
    """Refuse a torrent of more real files than ``max_files``, before any is looked at.

    Checked before the file list becomes Python objects and before anything is mapped
    into the store: each file costs memory in libtorrent and here (50,000 files cost
    about 95 MB), and libtorrent's own bdecode limit only stops about 450,000.
    """
    if not max_files or fs.num_files() <= max_files:
        return
    pad = lt.file_storage.flag_pad_file  # a hybrid torrent pads between files: not counted
    real = sum(1 for i in range(fs.num_files()) if not fs.file_flags(i) & pad)
    if real > max_files:
        raise OverCapError(
            f"the torrent has {real} files, over this daemon's cap of {max_files} "
            "(max_torrent_files in its config)"
        )


def _files_of(fs: Any, name: str) -> Iterable[TorrentFileEntry]:
    pad = lt.file_storage.flag_pad_file
    symlink = lt.file_storage.flag_symlink
    for i in range(fs.num_files()):
        flags = fs.file_flags(i)
        if flags & pad:
            continue
        path = fs.file_path(i)
        if flags & symlink:
            raise FormatError(f"torrent file {path[:80]!r} is a symlink")
        if fs.num_files() == 1 and path == name:
            rel = name
        elif path.startswith(name + "/"):
            rel = path[len(name) + 1 :]
        else:
            raise FormatError(f"torrent file {path[:80]!r} is outside the root {name!r}")
        check_relative(rel, what="torrent file path")
        root = str(fs.root(i))
        yield TorrentFileEntry(i, rel, fs.file_size(i), "" if root == _ZERO_ROOT else root)


def parse_magnet(uri: str) -> MagnetLink:
    """Parse and validate a magnet link naming a v2 torrent (hostile input).

    Accepted: one ``xt=urn:btmh:1220<64 hex>``, optionally one ``xt=urn:btih:<40 hex>``
    (hybrids), ``dn``, ``tr`` (http, https, udp), ``x.pe`` (``ip:port`` or
    ``[ipv6]:port`` or ``host:port``), ``ws`` (http, https web seeds). Other keys are
    ignored.

    Raises:
        FormatError: anything malformed, or no v2 info-hash.

    """
    if not isinstance(uri, str) or len(uri) > MAX_MAGNET_CHARS:
        raise FormatError("magnet link is not a string or is too long")
    if not uri.startswith("magnet:?"):
        raise FormatError(f"{uri[:40]!r} is not a magnet link")
    try:
        uri.encode("utf-8")  # libtorrent takes UTF-8; lone surrogates have no encoding
    except UnicodeEncodeError:
        raise FormatError("magnet link holds an unpaired UTF-16 surrogate") from None
    try:
        pairs = urllib.parse.parse_qsl(
            uri[len("magnet:?") :], strict_parsing=True, keep_blank_values=True, max_num_fields=1000
        )
    except ValueError as exc:
        raise FormatError(f"malformed magnet link: {exc}") from exc
    v2: str | None = None
    v1: str | None = None
    name: str | None = None
    peers: list[tuple[str, int]] = []
    trackers: list[str] = []
    web_seeds: list[str] = []
    for key, value in pairs:
        if any(ord(c) < 0x20 for c in value):
            raise FormatError(f"magnet {key} holds control characters")
        if key == "xt":
            if value.startswith("urn:btmh:"):
                mh = value[len("urn:btmh:") :].lower()
                if v2 is not None or len(mh) != 68 or not mh.startswith("1220") or not _is_hex(mh):
                    raise FormatError("magnet has a malformed or repeated urn:btmh info-hash")
                v2 = mh[4:]
            elif value.startswith("urn:btih:"):
                ih = value[len("urn:btih:") :].lower()
                if v1 is not None or len(ih) != 40 or not _is_hex(ih):
                    raise FormatError("magnet has a malformed or repeated urn:btih info-hash")
                v1 = ih
            else:
                raise FormatError(f"magnet xt {value[:40]!r} is neither btmh nor btih")
        elif key == "dn":
            if name is not None or len(value) > 255:
                raise FormatError("magnet dn is repeated or too long")
            name = value
        elif key == "tr":
            trackers.append(_check_tracker(value, "magnet tracker"))
        elif key == "ws":
            web_seeds.append(check_web_seed(value, "magnet web seed"))
        elif key == "x.pe":
            peers.append(_parse_peer(value))
    if v2 is None:
        raise FormatError("magnet link has no v2 info-hash (xt=urn:btmh:1220…)")
    try:
        params = lt.parse_magnet_uri(uri)
    except RuntimeError as exc:
        raise FormatError(f"libtorrent rejects the magnet link: {exc}") from exc
    if str(params.info_hashes.v2) != v2:
        raise FormatError("libtorrent reads another info-hash from the magnet link")
    return MagnetLink(uri, v2, v1, name, tuple(peers), tuple(trackers), tuple(web_seeds))


def _is_hex(s: str) -> bool:
    return all(c in "0123456789abcdef" for c in s)


def _parse_peer(value: str) -> tuple[str, int]:
    host, sep, port_s = value.rpartition(":")
    # isdigit() alone admits digits int() refuses, such as "²"
    if not sep or not (port_s.isascii() and port_s.isdigit()) or not 0 < int(port_s) < 65536:
        raise FormatError(f"magnet peer {value[:60]!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise FormatError(f"magnet peer {value[:60]!r} has a bad IPv6 address") from exc
    elif not host or len(host) > 253 or not all(c.isalnum() or c in ".-" for c in host):
        raise FormatError(f"magnet peer {value[:60]!r} has a bad host")
    return host, int(port_s)


def without_url_list(data: bytes) -> bytes:
    """The torrent without its ``url-list`` (the info dict, so the info-hash, is unchanged).

    Its web seeds are untrusted: the engine adds only those its caller allows.
    """
    if b"8:url-list" not in data:
        return data
    decoded: Any = lt.bdecode(data)
    if not isinstance(decoded, dict) or b"url-list" not in decoded:
        return data
    del decoded[b"url-list"]
    return bytes(lt.bencode(decoded))
