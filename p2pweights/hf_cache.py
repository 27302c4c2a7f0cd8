"""The local Hugging Face hub cache: read a snapshot to pack it, write one from a release.

The layout is huggingface_hub's (written here directly; the library does not import it)::

    <cache>/models--ORG--NAME/
        blobs/<sha256>                      the files' bytes, one per content
        snapshots/<commit>/<file>           relative symlinks to ../../blobs/<sha256>
        refs/main                           the commit that "main" points at

The cache dir is found as huggingface_hub finds it, at call time: ``$HF_HUB_CACHE``, else
``$HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub``,
else ``~/.cache/huggingface/hub``.

A p2pweights release has no git commit, so an exported snapshot is named by the first 40
hex digits of the sha256 of the release's signed ``manifest.json``: the same release always
gets the same "commit", a different release a different one, and the commit doubles as a
manifest-sha256 prefix for ``p2pweights.fetch(..., revision=...)``.

Everything read from the cache is treated as untrusted: repo ids and revisions must be
well formed, the repo's dir and its ``blobs/``, ``snapshots/`` and ``refs/`` must be real
directories (not links), a snapshot's symlinks must land on regular files in the repo's
own real ``blobs/``, and an export never writes outside the cache dir, nor through a
symlink planted in it.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ._atomic import TMP_SUFFIX, atomic_write_bytes
from ._paths import check_relative, join_inside
from .errors import ExportError, P2PWeightsError, SourceError, UnsafePathError
from .export import _rebuild_file
from .release import open_release, resolve_source
from .trust import TrustStore, trust_for
from .verify import VerifyMode, verify_chunks

__all__ = [
    "HFCacheExport",
    "HFSnapshot",
    "RepoRef",
    "commit_for_manifest",
    "export_to_hf_cache",
    "hf_cache_dir",
    "parse_repo_id",
    "parse_repo_ref",
    "repo_folder",
    "resolve_snapshot",
]

# huggingface_hub's validate_repo_id, ASCII only: "name" or "namespace/name", 1..96
# characters, each part starting and ending with a letter, digit or "_", no "--" or "..",
# not ending in ".git".
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?"
_REPO_ID = re.compile(f"(?:{_REPO_PART}/)?{_REPO_PART}")
_MAX_REPO_ID = 96
_COMMIT = re.compile(r"[0-9a-f]{40}")
# A branch or tag name as found under refs/: git's rules, restricted to a safe alphabet.
_REF_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MAX_REF = 255
_REF_FILE_LIMIT = 4096
_ENV_VAR = re.compile(r"\$(?:(\w+)|\{([^}]*)\})")


def hf_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The HF hub cache dir, found the way huggingface_hub finds it (read at call time).

    Args:
        environ: the environment to read (default ``os.environ``); ``~`` and ``$VAR`` in
            the values expand against it, as huggingface_hub expands them.
    """
    env = os.environ if environ is None else environ
    home = env.get("HOME") or os.path.expanduser("~")

    def expand(value: str) -> Path:
        value = _ENV_VAR.sub(lambda m: env.get(m[1] or m[2], m[0]), value)
        if value == "~" or value.startswith("~/"):
            value = home + value[1:]
        return Path(value)

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return expand(env[var])
    if env.get("HF_HOME"):
        return expand(env["HF_HOME"]) / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join(home, ".cache")
    return expand(xdg) / "huggingface" / "hub"


@dataclass(frozen=True, slots=True)
class RepoRef:
    """``ORG/NAME[@REVISION]``: a repo id and an optional branch, tag or commit."""

    repo_id: str
    revision: str | None = None


def parse_repo_id(text: str, *, error: type[P2PWeightsError] = SourceError) -> str:
    """Check a Hugging Face repo id (``name`` or ``namespace/name``) and return it.

    Raises:
        SourceError (or ``error``): the id breaks huggingface_hub's rules.
    """
    shown = repr(text[:80]) if isinstance(text, str) else repr(type(text))
    if (
        not isinstance(text, str)
        or len(text) > _MAX_REPO_ID
        or not _REPO_ID.fullmatch(text)
        or "--" in text
        or ".." in text
        or text.endswith(".git")
    ):
        raise error(
            f"{shown} is not a Hugging Face repo id (ORG/NAME: up to {_MAX_REPO_ID} letters, "
            "digits, '_', '-', '.'; no '--' or '..')"
        )
    return text


def _check_revision(rev: str) -> str:
    if _COMMIT.fullmatch(rev):
        return rev
    parts = rev.split("/")
    if (
        len(rev) > _MAX_REF
        or not all(_REF_PART.fullmatch(p) for p in parts)
        or ".." in rev
        or rev.endswith(".lock")
    ):
        raise SourceError(
            f"revision {rev[:80]!r} is neither a 40-hex commit nor a branch or tag name"
        )
    return rev


def parse_repo_ref(text: str) -> RepoRef:
    """Parse ``ORG/NAME[@REVISION]`` strictly.

    Raises:
        SourceError: a malformed repo id or revision.
    """
    if not isinstance(text, str):
        raise SourceError("a repo reference must be a string")
    repo, sep, rev = text.partition("@")
    repo_id = parse_repo_id(repo)
    if not sep:
        return RepoRef(repo_id)
    if not rev:
        raise SourceError(f"{text[:80]!r} has an empty revision after '@'")
    return RepoRef(repo_id, _check_revision(rev))


def repo_folder(repo_id: str) -> str:
    """The cache folder of a model repo: ``models--ORG--NAME``."""
    return "models--" + repo_id.replace("/", "--")


def commit_for_manifest(manifest_sha256: str) -> str:
    """The snapshot "commit" of an exported release: its manifest sha256, first 40 digits."""
    return manifest_sha256[:40]


@dataclass(frozen=True, slots=True)
class HFSnapshot:
    """A snapshot found in the local HF cache, every file checked to be a regular file."""

    repo_id: str
    commit: str
    path: Path
    files: tuple[str, ...]


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except FileNotFoundError:
        return False


def _read_ref(repo_dir: Path, rev: str) -> str:
    refs = _plain_dir(repo_dir / "refs", repo_dir.name)
    try:
        ref = join_inside(refs, rev, what="revision")
    except UnsafePathError as exc:
        raise SourceError(str(exc)) from exc
    try:
        with open(ref, "rb") as fh:
            data = fh.read(_REF_FILE_LIMIT)
    except FileNotFoundError:
        raise SourceError(
            f"revision {rev!r} is not in the cache of {repo_dir.name} (no refs/{rev})"
        ) from None
    except OSError as exc:
        raise SourceError(f"cannot read refs/{rev}: {exc.strerror or exc}") from exc
    commit = data.decode("ascii", errors="replace").strip()
    if not _COMMIT.fullmatch(commit):
        raise SourceError(f"refs/{rev} of {repo_dir.name} does not hold a 40-hex commit")
    return commit


def _plain_dir(path: Path, repo: str) -> Path:
    """``path`` itself, if it is a real directory and not a symlink to one.

    Raises:
        SourceError: a symlink (it could lead anywhere the user can read), or no dir at all.
    """
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise SourceError(f"{repo} in the HF cache has no {path.name}/") from None
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if stat.S_ISLNK(mode):
        raise SourceError(f"{repo}: {path.name} in the HF cache is a symlink; refused")
    if not stat.S_ISDIR(mode):
        raise SourceError(f"{repo}: {path.name} in the HF cache is not a directory")
    return path


def resolve_snapshot(spec: str, cache_dir: Path | None = None) -> HFSnapshot:
    """Find ``ORG/NAME[@REVISION]`` in the local HF cache and check every file of it.

    The revision defaults to ``main``; a branch or tag is resolved through ``refs/<name>``,
    a 40-hex commit is used as is. Only the cache dir itself may be a symlink (a cache
    moved to another disk); ``models--ORG--NAME``, its ``blobs/``, ``snapshots/``,
    ``refs/`` and the snapshot dir must be real directories, so "inside ``blobs/``" means
    inside the repo's own ``blobs/``, not wherever a planted link points. Each snapshot
    entry must be a regular file or a symlink that resolves to a regular file directly in
    that real ``blobs/``.

    Raises:
        SourceError: a malformed spec, a repo or revision not in the cache, a repo dir
            that is a symlink, or a snapshot entry that is dangling, a directory link, or
            leads outside the repo's real ``blobs/``.
    """
    ref = parse_repo_ref(spec)
    cache = cache_dir if cache_dir is not None else hf_cache_dir()
    try:
        root = cache.resolve(strict=True)
    except (OSError, RuntimeError):
        raise SourceError(f"{ref.repo_id} is not in the HF cache at {cache} (no cache)") from None
    folder = repo_folder(ref.repo_id)
    if not os.path.lexists(root / folder):
        raise SourceError(f"{ref.repo_id} is not in the HF cache at {cache} (no {folder})")
    # Every path below is joined from the real root and names that are checked not to be
    # links, so each one is already its own real path.
    repo_dir = _plain_dir(root / folder, folder)
    rev = ref.revision or "main"
    commit = rev if _COMMIT.fullmatch(rev) else _read_ref(repo_dir, rev)
    blobs = _plain_dir(repo_dir / "blobs", folder)
    snapshots = _plain_dir(repo_dir / "snapshots", folder)
    if not os.path.lexists(snapshots / commit):
        raise SourceError(f"{ref.repo_id}: no snapshot {commit} in the HF cache at {cache}")
    snap = _plain_dir(snapshots / commit, folder)
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(snap):
        here = Path(dirpath)
        for d in dirnames:
            if (here / d).is_symlink():
                raise SourceError(f"{ref.repo_id}@{commit[:12]}: {d} is a directory symlink")
        dirnames.sort()
        for fn in sorted(filenames):
            path = here / fn
            rel = path.relative_to(snap).as_posix()
            try:
                check_relative(rel, what="snapshot file")
            except UnsafePathError as exc:
                raise SourceError(str(exc)) from exc
            _check_entry(path, rel, blobs)
            files.append(rel)
    if not files:
        raise SourceError(f"{ref.repo_id}: snapshot {commit} is empty")
    return HFSnapshot(ref.repo_id, commit, snap, tuple(sorted(files)))


def _check_entry(path: Path, rel: str, blobs: Path) -> None:
    mode = path.lstat().st_mode
    if stat.S_ISREG(mode):
        return
    if not stat.S_ISLNK(mode):
        raise SourceError(f"snapshot entry {rel} is not a regular file")
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise SourceError(f"snapshot entry {rel} is a dangling symlink") from None
    # blobs/ is flat and real: the whole chain of links must end directly in it.
    if target.parent != blobs:
        raise SourceError(f"snapshot entry {rel} links outside the repo's blobs/")
    if not stat.S_ISREG(target.stat().st_mode):
        raise SourceError(f"snapshot entry {rel} does not link to a regular file")


# ------------------------------------------------------------------------------ export


@dataclass(frozen=True, slots=True)
class HFCacheExport:
    """What :func:`export_to_hf_cache` wrote."""

    cache_dir: Path
    repo_id: str
    commit: str
    snapshot: Path
    files: tuple[str, ...]


def _real_dir(path: Path) -> Path:
    """Create ``path`` as a directory, refusing a symlink or file planted in its place."""
    try:
        path.mkdir(exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {path}: {exc.strerror or exc}") from exc
    if not _is_real_dir(path):
        raise ExportError(f"{path} is not a plain directory (a symlink or a file)")
    return path


def export_to_hf_cache(
    source: str | Path,
    repo_id: str,
    *,
    cache_dir: Path | None = None,
    verify: VerifyMode = "fast",
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> HFCacheExport:
    """Write a release into the HF cache as repo ``repo_id``, and point ``refs/main`` at it.

    Every original file is rebuilt byte for byte into ``blobs/<sha256>`` and checked
    against its signed sha256 before it is renamed into place; the snapshot holds relative
    symlinks to the blobs, so ``from_pretrained(repo_id)`` with ``HF_HUB_OFFLINE=1`` reads
    the files the publisher packed. Exporting the same release again rewrites the same
    names.

    Raises:
        ExportError: a bad repo id, a release converted from pickles (its originals cannot
            be rebuilt), a cache path that is a symlink or a file, or a rebuilt file that
            does not match its signed sha256.
        Everything loading raises, for an inauthentic or damaged release.
    """
    repo_id = parse_repo_id(repo_id, error=ExportError)
    store = trust_for(trust, home)
    release = open_release(resolve_source(source), store)
    manifest = release.manifest
    pickles = [f.name for f in manifest.files if f.kind == "torch"]
    if pickles:
        raise ExportError(
            f"{pickles[0]} was converted from a pickle and cannot be rebuilt for the HF cache; "
            "use `p2pw export RELEASE DIR` (safetensors shards) instead"
        )
    verify_chunks(release.root, manifest.chunks, verify)
    cache = cache_dir if cache_dir is not None else hf_cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the HF cache {cache}: {exc.strerror or exc}") from exc
    commit = commit_for_manifest(release.manifest_sha256)
    repo_dir = _real_dir(cache / repo_folder(repo_id))
    blobs = _real_dir(repo_dir / "blobs")
    snap = _real_dir(_real_dir(repo_dir / "snapshots") / commit)
    refs = _real_dir(repo_dir / "refs")
    written: list[str] = []
    try:
        for f in manifest.files:
            # The manifest's parser checked every name (relative, no ``..``). Not
            # join_inside: the entry itself may already be our link into blobs/; each
            # parent is made a real dir below, which keeps the entry inside.
            dest = snap / f.name
            blob = blobs / f.sha256
            _rebuild_file(release, f, blob, progress)
            _place_link(snap, dest, blob)
            written.append(f.name)
        atomic_write_bytes(refs / "main", commit.encode("ascii"))
    except OSError as exc:
        raise ExportError(
            f"cannot write the HF cache in {repo_dir}: {exc.strerror or exc}"
        ) from exc
    return HFCacheExport(cache, repo_id, commit, snap, tuple(written))


def _place_link(snap: Path, dest: Path, blob: Path) -> None:
    """Make ``dest`` a relative symlink to ``blob``, replacing what was there atomically."""
    parent = snap
    for part in dest.relative_to(snap).parts[:-1]:
        parent = _real_dir(parent / part)
    target = os.path.relpath(blob, parent)
    try:
        if os.readlink(dest) == target:
            return
    except OSError:
        pass  # absent, or not a symlink: replaced below
    if _is_real_dir(dest):
        raise ExportError(f"{dest} is a directory; cannot place a file there")
    tmp = parent / f".{dest.name}.{secrets.token_hex(6)}{TMP_SUFFIX}"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
