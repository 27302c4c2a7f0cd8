"""The engine's BEP 44 seam on a loopback DHT of 8 libtorrent sessions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pweights.keys import PrivateKey
from p2pweights.names import NameRecord, SignedItem, salt_for

try:
    from p2pweightsd import engine as eng
    from p2pweightsd.engine.krpc import KrpcClient
except ImportError:  # pragma: no cover - run from the source tree
    from daemon import engine as eng  # type: ignore[no-redef]
    from daemon.engine.krpc import KrpcClient  # type: ignore[no-redef]


async def start_dht(n: int, base: str) -> list[eng.Engine]:
    """``n`` sessions on ``base``.2, .3, ...; all bootstrap from the first."""
    first = await eng.Engine.start(
        eng.EngineSettings.local_only(f"{base}.2", enable_dht=True, dht_allow_local=True)
    )
    boot = f"{base}.2:{first.listen_port}"
    rest = [
        await eng.Engine.start(
            eng.EngineSettings.local_only(f"{base}.{3 + i}", dht_bootstrap_nodes=boot)
        )
        for i in range(n - 1)
    ]
    return [first, *rest]


def on_dht(body: Callable[[list[eng.Engine]], Awaitable[None]]) -> None:
    """Run ``body`` on a fresh loopback DHT of 8 sessions, closed afterwards."""

    async def main() -> None:
        engines = await start_dht(8, "127.0.9")
        try:
            await body(engines)
        finally:
            await asyncio.gather(*(e.close(save_resume=False) for e in engines))

    asyncio.run(main())


def _item(key: PrivateKey, seq: int, version: int = 1) -> SignedItem:
    now = int(time.time())
    record = NameRecord("org/model", version, "a" * 64, "b" * 64, now, now + 600)
    return SignedItem.sign(key, salt_for("org/model"), seq, record.encode())


def test_put_verbatim_then_get_from_another_node() -> None:
    async def body(dht: list[eng.Engine]) -> None:
        key = PrivateKey(Ed25519PrivateKey.generate())
        item = _item(key, 41)
        assert await dht[1].dht_put(item) >= 1
        got = await dht[6].dht_get(item.key, item.salt, 10)
        assert got.authoritative
        assert got.best == item  # the very bytes signed, sequence number and signature
        got.best.verify()

    on_dht(body)


def test_the_highest_sequence_number_wins() -> None:
    async def body(dht: list[eng.Engine]) -> None:
        key = PrivateKey(Ed25519PrivateKey.generate())
        older, newer = _item(key, 5, version=1), _item(key, 6, version=2)
        assert await dht[2].dht_put(older) >= 1
        assert await dht[3].dht_put(newer) >= 1
        await dht[4].dht_put(older)  # nodes holding seq 6 refuse it; others may not
        got = await dht[7].dht_get(key.public.raw, older.salt, 10)
        assert got.best == newer

    on_dht(body)


def test_a_forged_item_is_never_stored_nor_returned() -> None:
    async def body(dht: list[eng.Engine]) -> None:
        key = PrivateKey(Ed25519PrivateKey.generate())
        genuine = _item(key, 9)
        forged = SignedItem(genuine.key, genuine.salt, 10, genuine.signature, genuine.value)
        assert await dht[1].dht_put(forged) == 0
        got = await dht[5].dht_get(key.public.raw, genuine.salt, 10)
        assert got.best is None and got.authoritative

    on_dht(body)


def test_nothing_under_a_name_is_an_authoritative_none() -> None:
    async def body(dht: list[eng.Engine]) -> None:
        key = PrivateKey(Ed25519PrivateKey.generate())
        got = await dht[3].dht_get(key.public.raw, salt_for("org/none"), 10)
        assert got.authoritative and got.best is None

    on_dht(body)


def test_a_node_answers_what_it_holds() -> None:
    async def body(dht: list[eng.Engine]) -> None:
        """The KRPC client reads one node's copy: how tests see where an item is stored."""
        key = PrivateKey(Ed25519PrivateKey.generate())
        item = _item(key, 3)
        await dht[1].dht_put(item)
        client = KrpcClient("127.0.9.20")
        try:
            held = [await client.get(n, item.key, item.salt) for e in dht for n in e.dht_nodes()]
        finally:
            client.close()
        assert item in held

    on_dht(body)


def test_a_get_with_the_dht_off_is_an_engine_error() -> None:
    async def main() -> None:
        engine = await eng.Engine.start(eng.EngineSettings.local_only("127.0.9.30"))
        try:
            with pytest.raises(eng.EngineError, match="DHT is off"):
                await engine.dht_get(bytes(32), b"", 1)
        finally:
            await engine.close(save_resume=False)

    asyncio.run(main())
