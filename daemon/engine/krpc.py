"""A small BEP 5/44 KRPC client: put a signed mutable item verbatim, read items back.

The libtorrent Python binding's ``dht_put_mutable_item`` always signs the value itself,
with a sequence number one above the highest it finds, and the binding has no
``dht_direct_request``. So it can neither re-put an item someone else signed (a seeder
keeping its publisher's name alive) nor keep a publisher's sequence number monotonic
after the DHT forgot the item (its put would start again at 1, which every client that
saw a later number refuses as a rollback). This client speaks KRPC on a UDP socket of
its own: ``get`` along the nodes closest to the item's target for write tokens, then
``put`` with the original ``k``, ``salt``, ``seq``, ``sig`` and ``v``. Queries carry
``ro=1`` (BEP 43), so nodes do not add this socket to their routing tables.

Every answer is hostile input: its size is capped, the bencoding is decoded strictly
with a depth and length limit, and only the fields used are read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
import struct
from collections.abc import Iterable
from typing import Any

from p2pweights.names import SignedItem

__all__ = ["KrpcClient", "bdecode", "bencode", "item_target", "resolve_nodes"]

K = 8
"""Nodes a put goes to: BEP 44's closest K."""
_MAX_PACKET = 1500
_MAX_QUERIES = 64
_ROUNDS = 4

Node = tuple[str, int]


def bencode(value: Any) -> bytes:
    """Bencode ints, bytes, str, lists and dicts (keys sorted as bytes)."""
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode("utf-8")
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list | tuple):
        return b"l" + b"".join(bencode(v) for v in value) + b"e"
    if isinstance(value, dict):
        items = sorted((k.encode() if isinstance(k, str) else k, v) for k, v in value.items())
        return b"d" + b"".join(bencode(k) + bencode(v) for k, v in items) + b"e"
    raise TypeError(f"cannot bencode {type(value).__name__}")


def bdecode(data: bytes, *, max_depth: int = 8) -> Any:
    """Decode one bencoded value that spans all of ``data``.

    Raises:
        ValueError: malformed, nested too deep, or trailing bytes.
    """
    value, end = _decode(data, 0, max_depth)
    if end != len(data):
        raise ValueError("trailing bytes after the bencoded value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth < 0:
        raise ValueError("bencoding nested too deep")
    c = data[i : i + 1]
    if c == b"i":
        end = data.index(b"e", i)
        text = data[i + 1 : end]
        if not text or len(text) > 20 or not text.lstrip(b"-").isdigit():
            raise ValueError("bad integer")
        return int(text), end + 1
    if c in (b"l", b"d"):
        i += 1
        items: list[Any] = []
        while data[i : i + 1] != b"e":
            if i >= len(data):
                raise ValueError("unterminated list or dict")
            v, i = _decode(data, i, depth - 1)
            items.append(v)
        if c == b"l":
            return items, i + 1
        if len(items) % 2 or not all(isinstance(k, bytes) for k in items[::2]):
            raise ValueError("bad dict")
        return dict(zip(items[::2], items[1::2], strict=True)), i + 1
    colon = data.index(b":", i)
    length_text = data[i:colon]
    if not length_text.isdigit() or len(length_text) > 5:
        raise ValueError("bad string length")
    end = colon + 1 + int(length_text)
    if end > len(data):
        raise ValueError("string runs past the end")
    return data[colon + 1 : end], end


def item_target(key: bytes, salt: bytes) -> bytes:
    """BEP 44's target of a mutable item: sha1 of the key and the salt."""
    return hashlib.sha1(key + salt).digest()  # noqa: S324 - BEP 44 defines it so


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[dict[bytes, Any]]] = {}
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > _MAX_PACKET:
            return
        try:
            msg = bdecode(data)
        except (ValueError, IndexError):
            return
        if not isinstance(msg, dict):
            return
        tid = msg.get(b"t")
        if msg.get(b"y") == b"q" and isinstance(tid, bytes) and self.transport is not None:
            # libtorrent adds this socket to its routing table now and then, ro=1 or
            # not; a query left unanswered stalls every walk that meets it until its
            # timeout, while an error ends it at once and marks this "node" failed.
            self.transport.sendto(bencode({"t": tid, "y": "e", "e": [202, "read-only"]}), addr)
            return
        fut = self.waiting.pop(tid, None) if isinstance(tid, bytes) else None
        if fut is not None and not fut.done():
            fut.set_result(msg)


class KrpcClient:
    """Queries DHT nodes from one UDP socket bound to ``host`` (the daemon's address)."""

    def __init__(self, host: str = "0.0.0.0", *, timeout: float = 1.0) -> None:  # noqa: S104
        self.host = host
        self.timeout = timeout
        self.node_id = os.urandom(20)
        self._transport: asyncio.DatagramTransport | None = None
        self._proto = _Protocol()

    async def _open(self) -> None:
        if self._transport is None:
            loop = asyncio.get_running_loop()
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self._proto, local_addr=(self.host, 0), family=family
            )
            self._transport = transport

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    async def query(self, node: Node, method: str, args: dict[str, Any]) -> dict[bytes, Any] | None:
        """One query; the answer's ``r`` dict, or None on an error, a timeout or junk."""
        await self._open()
        assert self._transport is not None
        tid = os.urandom(4)
        fut: asyncio.Future[dict[bytes, Any]] = asyncio.get_running_loop().create_future()
        self._proto.waiting[tid] = fut
        msg = {"t": tid, "y": "q", "q": method, "ro": 1, "a": {"id": self.node_id, **args}}
        try:
            self._transport.sendto(bencode(msg), node)
            answer = await asyncio.wait_for(fut, self.timeout)
        except (TimeoutError, OSError):
            return None
        finally:
            self._proto.waiting.pop(tid, None)
        reply = answer.get(b"r")
        return reply if answer.get(b"y") == b"r" and isinstance(reply, dict) else None

    async def lookup(
        self, target: bytes, seeds: Iterable[Node]
    ) -> tuple[list[tuple[Node, bytes]], list[SignedItem]]:
        """Walk towards ``target`` with ``get``; returns write tokens and items seen.

        Returns:
            ``(node, token)`` of the nodes that answered, closest first, and every
            mutable item they returned (unverified: the caller checks signatures).
        """
        await self._open()  # once, before the queries run side by side
        asked: set[Node] = set()
        known: dict[Node, bytes] = dict.fromkeys(seeds, b"")
        tokens: dict[Node, bytes] = {}
        items: list[SignedItem] = []

        def dist(node: Node) -> int:
            nid = known.get(node) or b"\xff" * 20
            return int.from_bytes(bytes(a ^ b for a, b in zip(nid, target, strict=True)), "big")

        for _ in range(_ROUNDS):
            batch = sorted((n for n in known if n not in asked), key=dist)[: 2 * K]
            batch = batch[: max(0, _MAX_QUERIES - len(asked))]
            if not batch:
                break
            asked.update(batch)
            replies = await asyncio.gather(
                *(self.query(n, "get", {"target": target}) for n in batch)
            )
            for node, r in zip(batch, replies, strict=True):
                if r is None:
                    continue
                nid, token = r.get(b"id"), r.get(b"token")
                if isinstance(nid, bytes) and len(nid) == 20:
                    known[node] = nid
                if isinstance(token, bytes) and 0 < len(token) <= 64:
                    tokens[node] = token
                for found in _nodes(r):
                    known.setdefault(found, b"")
                item = _item(r)
                if item is not None:
                    items.append(item)
        order = sorted(tokens, key=dist)
        return [(n, tokens[n]) for n in order], items

    async def put(self, item: SignedItem, seeds: Iterable[Node]) -> int:
        """Put ``item`` as it is on the K nodes closest to its target.

        Returns:
            How many nodes accepted it (a node holding a higher ``seq`` refuses).
        """
        tokens, _ = await self.lookup(item_target(item.key, item.salt), seeds)
        args = {
            "k": item.key,
            "seq": item.seq,
            "sig": item.signature,
            "v": item.value,
        }
        if item.salt:
            args["salt"] = item.salt
        replies = await asyncio.gather(
            *(self.query(n, "put", {**args, "token": tok}) for n, tok in tokens[:K])
        )
        return sum(r is not None for r in replies)

    async def get(self, node: Node, key: bytes, salt: bytes) -> SignedItem | None:
        """The item one node holds under ``key`` and ``salt`` (for checks and tests)."""
        await self._open()
        r = await self.query(node, "get", {"target": item_target(key, salt)})
        item = _item(r) if r is not None else None
        return None if item is None else SignedItem(key, salt, item.seq, item.signature, item.value)


def _nodes(r: dict[bytes, Any]) -> list[Node]:
    out: list[Node] = []
    compact = r.get(b"nodes")
    if isinstance(compact, bytes):
        for i in range(0, len(compact) - len(compact) % 26, 26):
            ip, port = compact[i + 20 : i + 24], compact[i + 24 : i + 26]
            out.append((socket.inet_ntoa(ip), struct.unpack("!H", port)[0]))
    compact6 = r.get(b"nodes6")
    if isinstance(compact6, bytes):
        for i in range(0, len(compact6) - len(compact6) % 38, 38):
            ip6 = ipaddress.IPv6Address(compact6[i + 20 : i + 36])
            out.append((str(ip6), struct.unpack("!H", compact6[i + 36 : i + 38])[0]))
    return [n for n in out if n[1] > 0]


def _item(r: dict[bytes, Any]) -> SignedItem | None:
    k, sig, seq, v = r.get(b"k"), r.get(b"sig"), r.get(b"seq"), r.get(b"v")
    if not (isinstance(k, bytes) and isinstance(sig, bytes) and type(seq) is int):
        return None
    if not isinstance(v, bytes):  # only string values are ours
        return None
    return SignedItem(k, b"", seq, sig, v)


async def resolve_nodes(texts: Iterable[str]) -> list[Node]:
    """``HOST:PORT`` texts as addresses (host names looked up); bad ones are skipped."""
    loop = asyncio.get_running_loop()
    out: list[Node] = []
    for text in texts:
        host, _, port = text.strip().rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit():
            continue
        with contextlib.suppress(OSError):
            infos = await loop.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
            out.extend((str(i[4][0]), int(i[4][1])) for i in infos[:2])
    return out
