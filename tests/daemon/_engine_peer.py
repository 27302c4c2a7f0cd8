"""A seeding peer in its own process, for the engine tests.

    python _engine_peer.py --listen 127.0.0.2 [--upload-limit N] [--piece-size N]
                           [--seed-mode] [--torrent FILE] RELEASE_DIR...

With ``--torrent`` the given .torrent is seeded from the (single) dir as it is, without
checking it against the dir's manifest: a peer that offers a lying torrent.

Seeds each release dir in place, prints one JSON line ``{"port": P, "torrents": [ids]}``
once every torrent is seeding, then runs until its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

try:
    from p2pweightsd import engine as eng
except ImportError:  # not installed yet: run from the source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from daemon import engine as eng  # type: ignore[no-redef]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--upload-limit", type=int, default=0)
    parser.add_argument("--piece-size", type=int, default=eng.DEFAULT_PIECE_SIZE)
    parser.add_argument("--seed-mode", action="store_true")
    parser.add_argument("--torrent", type=Path)
    parser.add_argument("releases", nargs="+", type=Path)
    args = parser.parse_args()

    settings = eng.EngineSettings.local_only(
        args.listen, upload_rate_limit=args.upload_limit,
        apply_limits_to_local=args.upload_limit > 0,
    )
    engine = await eng.Engine.start(settings)
    ids = []
    for rel in args.releases:
        tf = (eng.parse_torrent(args.torrent.read_bytes()) if args.torrent
              else eng.make_torrent(rel, piece_size=args.piece_size))
        ids.append(engine.add(tf, rel, file_paths=tf.release_layout(), seed_mode=args.seed_mode))
    for tid in ids:
        await asyncio.wait_for(engine.wait_finished(tid), 30)
    print(json.dumps({"port": engine.listen_port, "torrents": ids}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await engine.close(save_resume=False)


if __name__ == "__main__":
    asyncio.run(main())
