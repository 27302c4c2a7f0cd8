"""A peer that holds every chunk of a release but not its manifest, in its own process.

    python _withholding_peer.py --listen 127.0.0.N TORRENT_FILE RELEASE_DIR

Seeds the torrent's honest chunk bytes from RELEASE_DIR and marks the pieces of
``manifest.json`` as missing (``have_pieces``), so a fetching peer can get every chunk
from it but never the manifest: the chunk bytes arrive first. Prints {"port": P} and runs
until stdin closes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _raw_peer import had_torrent, listen_port, session


def main() -> None:
    addr, torrent, release = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    ses = session(addr)
    atp = had_torrent(torrent, release)
    ti = atp.ti
    fs = ti.layout()
    have = list(atp.have_pieces)
    manifest = next(i for i in range(fs.num_files()) if fs.file_path(i).endswith("/manifest.json"))
    first = ti.map_file(manifest, 0, 0).piece
    last = ti.map_file(manifest, max(fs.file_size(manifest) - 1, 0), 0).piece
    for piece in range(int(first), int(last) + 1):
        have[piece] = False
    atp.have_pieces = have
    atp.file_priorities = [0] * fs.num_files()  # it never fetches the manifest either
    ses.add_torrent(atp)
    port = listen_port(ses)
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
