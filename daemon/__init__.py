"""p2pweightsd: the background service; its libtorrent session lives in :mod:`.engine`."""
