"""Streaming a release: tensors as their chunks land, first layers first.

``stream(source)`` yields ``(name, tensor)`` in a fixed order (layer order by default:
embeddings, layers 0..N-1, then the rest). A remote source is fetched through the daemon
with its chunks prioritised in that order; each tensor is yielded as soon as its chunk is
complete, flushed and verified, while later chunks are still downloading. A local release
streams at once.

The daemon's side of the protocol: the fetch is started with ``ordered``; the daemon
announces each completed chunk with a ``chunk`` event (and lists them in the release's
``ready_chunks``), and ``complete`` when all are in. The reader subscribes to events
before starting the fetch, so no announcement is missed. It authenticates the manifest
itself (its own trust store) before it maps anything, and verifies each chunk like
``load`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple

import torch

from .chunking import chunk_order, layer_order
from .errors import FetchTimeoutError, LoadError, P2PWeightsError, SwarmError
from .loader import ReleaseReader, Source, _patterns, _select
from .paths import data_dir
from .release import open_release, resolve_source
from .remote import DEFAULT_TIMEOUT, ensure_daemon, is_remote, raise_release_error
from .trust import TrustStore, trust_for
from .verify import VerifyMode, check_mode

__all__ = ["IncompatibleKeys", "TensorStream", "load_into_streaming", "stream"]

log = logging.getLogger(__name__)

_MAX_ORDER_SENT = 512
"""Chunk paths sent to the daemon as an explicit order; the rest follow in layer order."""
_STATE_EVENTS = frozenset({"downloading", "complete", "error", "removed", "disk_full"})


class IncompatibleKeys(NamedTuple):
    """What a streaming ``load_into`` did not match (like torch's load_state_dict result)."""

    missing_keys: list[str]
    unexpected_keys: list[str]


@dataclass(frozen=True)
class _Msg:
    kind: str  # "release" | "chunk" | "complete" | "error"
    value: Any = None


class _DaemonFeed:
    """Runs the daemon side of a stream on its own thread and event loop.

    Puts on ``messages``: ``release`` (the release dir, once the daemon authenticated the
    manifest), ``chunk`` (a chunk path that is complete and flushed), ``complete`` and
    ``error`` (an exception).
    """

    def __init__(
        self,
        uri: str,
        *,
        home: Path,
        include: Sequence[str],
        peers: Sequence[str],
        trust_on_first_use: bool,
    ) -> None:
        self.messages: queue.Queue[_Msg] = queue.Queue()
        self._uri, self._home, self._include = uri, home, list(include)
        self._peers, self._tofu = list(peers), trust_on_first_use
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._rid: str | None = None
        self._client: Any = None
        self._thread = threading.Thread(target=self._run, name="p2pw-stream", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(self._main())
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)
        self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        self._loop.close()

    async def _main(self) -> None:
        try:
            await self._follow()
        except asyncio.CancelledError:
            raise
        except P2PWeightsError as exc:
            self.messages.put(_Msg("error", exc))
        except Exception as exc:  # a broken connection or a bug: the reader must not hang
            self.messages.put(_Msg("error", SwarmError(f"streaming from the daemon failed: {exc}")))
        # Keep the loop for send_order() until close() cancels this task.
        await asyncio.Event().wait()

    async def _follow(self) -> None:
        client = await ensure_daemon(self._home)
        self._client = client
        events = client.events()
        try:
            await anext(events)  # "subscribed": every event from here on is seen
            started = await client.fetch(
                self._uri,
                peers=self._peers,
                include=self._include,
                trust_on_first_use=self._tofu,
                ordered=True,
            )
            rid = self._rid = str(started["id"])
            if await self._on_info(await client.show(rid)):
                return
            async for event in events:
                if event.get("id") != rid:
                    continue
                kind = event.get("kind")
                if kind == "chunk":
                    self.messages.put(_Msg("chunk", str(event["path"])))
                elif kind in _STATE_EVENTS and await self._on_info(await client.show(rid)):
                    return
            raise SwarmError("the daemon's event stream ended (did the daemon stop?)")
        finally:
            await events.aclose()

    async def _on_info(self, info: dict[str, Any]) -> bool:
        """Report what a release record says; True once there is nothing more to follow."""
        state = info["state"]
        if state in ("error", "paused"):  # paused: the daemon's disk is full
            try:
                raise_release_error(info)
            except P2PWeightsError as exc:
                self.messages.put(_Msg("error", exc))
            return True
        if state in ("downloading", "seeding", "complete"):
            self.messages.put(_Msg("release", Path(info["path"])))
            for path in info.get("ready_chunks", []):
                self.messages.put(_Msg("chunk", str(path)))
        if state in ("seeding", "complete"):
            self.messages.put(_Msg("complete"))
            return True
        return False

    def send_order(self, chunks: Sequence[str]) -> None:
        """Ask the daemon for these chunks first (best effort: a stale order is harmless)."""
        if self._rid is None or self._client is None or not self._thread.is_alive():
            return  # the fetch never started, or the feed was closed
        try:
            future = asyncio.run_coroutine_threadsafe(
                self._client.order(self._rid, list(chunks[:_MAX_ORDER_SENT])), self._loop
            )
            future.result(timeout=30)
        except (P2PWeightsError, RuntimeError, TimeoutError) as exc:
            log.debug("chunk order not sent: %s", exc)

    def close(self) -> None:
        """Stop following (the daemon's fetch goes on), and wait for the thread."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already finished
                self._loop.call_soon_threadsafe(self._cancel)
            self._thread.join(timeout=30)

    def _cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()


class TensorStream:
    """An iterator of ``(name, tensor)``, verified, in order, as chunks land.

    Made by :func:`stream`. The release is opened (fetch started, manifest authenticated)
    on :meth:`start` or the first ``next``; :attr:`names` then lists what will come.
    """

    def __init__(
        self,
        source: Source,
        order: Sequence[str] | None,
        *,
        device: str,
        verify: VerifyMode,
        include: Iterable[str] | str | None,
        trust: TrustStore | None,
        home: Path | str | None,
        peers: Sequence[str],
        trust_on_first_use: bool,
        timeout: float,
    ) -> None:
        check_mode(verify)
        self._source, self._order = source, None if order is None else list(order)
        self._device, self._verify = device, verify
        self._include = _patterns(include)
        self._trust, self._home, self._peers = trust, home, list(peers)
        self._tofu, self._timeout = trust_on_first_use, timeout
        self._deadline = 0.0
        self._feed: _DaemonFeed | None = None
        self._reader: ReleaseReader | None = None
        self._ready: set[str] = set()
        self._complete = False
        self._iter: Iterator[tuple[str, torch.Tensor]] | None = None
        self.names: list[str] = []
        """Tensor names in the order they will be yielded (after :meth:`start`)."""
        self.first_yield: float | None = None
        """``time.monotonic()`` of the first tensor handed out."""

    @property
    def reader(self) -> ReleaseReader:
        """The authenticated release being streamed (after :meth:`start`)."""
        if self._reader is None:
            raise LoadError("the stream has not started")
        return self._reader

    def start(self) -> list[str]:
        """Open the release (start the fetch, authenticate the manifest); return the names."""
        if self._reader is not None:
            return self.names
        self._deadline = time.monotonic() + self._timeout
        if is_remote(self._source):
            patterns = self._include or []
            self._feed = _DaemonFeed(
                str(self._source),
                home=data_dir(self._home),
                include=patterns,
                peers=self._peers,
                trust_on_first_use=self._tofu,
            )
            root = self._next_release()
        else:
            root = resolve_source(self._source)
            self._complete = True
        release = open_release(root, trust_for(self._trust, self._home))
        self._reader = ReleaseReader(release, verify=self._verify, device=self._device)
        tensors = release.manifest.tensors
        chosen = set(_select(tensors, self._include))
        if self._order is None:
            self.names = layer_order(chosen)
        else:
            unknown = [n for n in self._order if n not in tensors]
            if unknown:
                raise LoadError(f"order names {unknown[0]!r}, not a tensor of this release")
            self.names = [n for n in dict.fromkeys(self._order) if n in chosen]
            if self._feed is not None:
                chunk_of = {n: tensors.chunk_of(n) for n in chosen}
                self._feed.send_order(chunk_order(self.names, chunk_of))
        return self.names

    def _next_release(self) -> Path:
        while True:
            msg = self._get()
            if msg.kind == "release":
                return Path(msg.value)
            self._take(msg)

    def _get(self) -> _Msg:
        assert self._feed is not None
        left = self._deadline - time.monotonic()
        try:
            msg = self._feed.messages.get(timeout=max(left, 0.0))
        except queue.Empty:
            raise FetchTimeoutError(
                f"stream of {str(self._source)[:80]} not complete after {self._timeout:.0f}s"
            ) from None
        if msg.kind == "error":
            raise msg.value
        return msg

    def _take(self, msg: _Msg) -> None:
        if msg.kind == "chunk":
            self._ready.add(msg.value)
        elif msg.kind == "complete":
            self._complete = True

    def _wait_chunk(self, path: str) -> None:
        while not self._complete and path not in self._ready:
            self._take(self._get())

    def _generate(self) -> Iterator[tuple[str, torch.Tensor]]:
        reader = self.reader
        tensors = reader.release.manifest.tensors
        by_chunk: dict[str, list[str]] = {}
        for n in self.names:
            by_chunk.setdefault(tensors.chunk_of(n), []).append(n)
        for name in self.names:
            chunk = tensors.chunk_of(name)
            self._wait_chunk(chunk)
            # One chunk at a time: verified, then mapped (CPU) or staged and copied.
            if group := by_chunk.pop(chunk, None):
                reader.prepare(group)
            if self.first_yield is None:
                self.first_yield = time.monotonic()
            yield name, reader.get_tensor(name)

    def __iter__(self) -> TensorStream:
        return self

    def __next__(self) -> tuple[str, torch.Tensor]:
        try:
            if self._iter is None:
                self.start()
                self._iter = self._generate()
            return next(self._iter)
        except BaseException:  # the end, or a failure: stop following the daemon either way
            self.close()
            raise

    def close(self) -> None:
        """Stop following the daemon (its fetch goes on) and drop the chunk maps."""
        if self._feed is not None:
            self._feed.close()
            self._feed = None
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> TensorStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def stream(
    source: Source,
    order: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    verify: VerifyMode = "fast",
    include: Iterable[str] | str | None = None,
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    peers: Sequence[str] = (),
    trust_on_first_use: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> TensorStream:
    """Yield ``(name, tensor)`` as each tensor's chunk is complete and verified.

    Args:
        source: a release dir, an exported dir, or a magnet link / v2 info-hash /
            ``.torrent`` (fetched through the daemon, started on demand, which downloads
            the chunks in this order).
        order: tensor names in the order wanted; names left out are not yielded. The
            default is layer order: embeddings, layers 0..N-1, then the rest.
        device: a torch device; ``cpu`` gives zero-copy memory-mapped tensors, others
            are copied chunk by chunk through one reused staging buffer.
        verify: ``fast`` or ``full`` chunk verification, as for :func:`load`.
        include: glob patterns; only matching tensors are fetched and yielded.
        trust: the keys to believe; defaults to the data dir's trust store.
        home: the data dir.
        peers: ``IP:PORT`` peers to fetch a remote source from.
        trust_on_first_use: let the daemon trust an unknown publisher (explicit opt-in).
        timeout: seconds for the whole stream (then ``FetchTimeoutError``).

    Returns:
        A :class:`TensorStream`; iterate it, or use it as a context manager.

    Raises:
        Everything :func:`load` raises, while iterating.

    """
    return TensorStream(
        source,
        order,
        device=device,
        verify=verify,
        include=include,
        trust=trust,
        home=home,
        peers=peers,
        trust_on_first_use=trust_on_first_use,
        timeout=timeout,
    )


def load_into_streaming(
    module: torch.nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: VerifyMode = "fast",
    include: Iterable[str] | str | None = None,
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    peers: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,
) -> IncompatibleKeys:
    """Fill ``module``'s parameters and buffers tensor by tensor as chunks land.

    Names (with ``strict``) and shapes (always) are checked against the manifest
    before any byte is copied. Each tensor goes straight into the module's own storage (on its
    device), so nothing is held twice.

    Raises:
        LoadError: shapes that do not match the module, or with ``strict`` names.
        Everything :func:`stream` raises.
    """
    targets = dict(module.state_dict(keep_vars=True))
    with stream(
        source,
        verify=verify,
        include=include,
        trust=trust,
        home=home,
        peers=peers,
        timeout=timeout,
    ) as ts:
        names = ts.start()
        tensors = ts.reader.release.manifest.tensors
        unexpected = [n for n in names if n not in targets]
        named = set(names)
        missing = [n for n in targets if n not in named]
        wrong = [n for n in names if n in targets and tuple(targets[n].shape) != tensors[n].shape]
        if wrong or (strict and (unexpected or missing)):
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} keys, e.g. {missing[0]!r}")
            if unexpected:
                parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]!r}")
            if wrong:
                n = wrong[0]
                parts.append(
                    f"{len(wrong)} shape mismatches, e.g. {n!r}: release "
                    f"{list(tensors[n].shape)}, module {list(targets[n].shape)}"
                )
            raise LoadError("state dict does not match the module: " + "; ".join(parts))
        with torch.no_grad():
            for name, tensor in ts:
                target = targets.get(name)
                if target is not None:
                    target.copy_(tensor)
    return IncompatibleKeys(missing, unexpected)
