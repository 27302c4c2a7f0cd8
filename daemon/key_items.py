"""Key statements on the DHT: a publisher's rotations and revocations, under its own keys.

A rotation statement goes under the old key and a revocation certificate under the
revoked key (salt ``p2pw-key``, see :func:`p2pweights.key_statements.dht_items`), where a
client that trusts the key looks. The publisher's daemon puts them whenever it puts its
names; a client reads the item of a name's publisher key with every resolve and records a
revocation it finds (:meth:`TrustStore.learn`), so a revoked key's names stop resolving
and its releases stop loading. Rotations are not followed from the DHT: the move waits
for a release the new key signed, which carries the statement itself.

The item is hostile input: its BEP 44 signature is checked under the key it was asked
for, then the statement's own signatures (a revocation is self-signed, a rotation signed
by both keys), so a DHT node can only withhold it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from p2pweights.errors import KeyStatementError, SignatureError
from p2pweights.key_statements import (
    DHT_SALT,
    OWN_STATEMENTS,
    dht_items,
    parse_statement_bytes,
    read_statements,
)
from p2pweights.keys import PrivateKey, PublicKey
from p2pweights.names import SignedItem
from p2pweights.trust import TrustStore

from .engine import Engine, EngineError

__all__ = ["learn_from_dht", "put_own_statements"]

log = logging.getLogger(__name__)


async def put_own_statements(
    engine: Engine, home: Path, signing_key: Callable[[PublicKey], PrivateKey | None]
) -> int:
    """Put the publisher's statements (``DATA/keys/key-statements.json``) on the DHT.

    Each key's latest word goes under that key, signed with it when its private key sits
    unencrypted in ``DATA/keys``; a statement whose key is not there is skipped.

    Returns:
        How many items were put.
    """
    path = home / OWN_STATEMENTS
    if not engine.dht_enabled or not path.is_file():
        return 0
    try:
        items = dht_items(read_statements(path))
    except (KeyStatementError, SignatureError, OSError) as exc:
        log.warning("key statements in %s not put: %s", path, exc)
        return 0
    count = 0
    for key, salt, seq, value in items:
        private = signing_key(key)
        if private is None:
            continue
        nodes = await engine.dht_put(SignedItem.sign(private, salt, seq, value))
        log.info("key statement of %s put on %d DHT nodes (seq %d)", key.fingerprint, nodes, seq)
        count += 1
    return count


async def learn_from_dht(engine: Engine, trust: TrustStore, key: PublicKey, timeout: float) -> None:
    """Record a revocation of ``key`` that the DHT holds (see the module).

    Nothing found, a walk that fails, or an item that does not check out changes nothing.
    """
    with contextlib.suppress(EngineError):
        got = await engine.dht_get(key.raw, DHT_SALT, timeout)
        item = got.best
        if item is None or item.key != key.raw or item.salt != DHT_SALT:
            return
        try:
            item.verify()
            statement = parse_statement_bytes(item.value)
        except (KeyStatementError, SignatureError) as exc:
            log.warning("DHT key statement under %s refused: %s", key.fingerprint, exc)
            return
        trust.learn([statement])  # a revocation it has recorded already changes nothing
