"""``python -m p2pweightsd run``: the daemon's entry point (``p2pw daemon run`` execs it)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from p2pweights.errors import P2PWeightsError

from . import doctor
from .config import load_config
from .runner import serve


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build the config once, run the daemon; returns the exit code."""
    parser = argparse.ArgumentParser(prog="p2pweightsd", description="The p2pweights daemon.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run in the foreground")
    run.add_argument("--home", help="data dir (default: $P2PW_HOME or the per-user data dir)")
    run.add_argument("--profile", choices=["default", "local", "lan"])
    run.add_argument("--listen", help="libtorrent listen interfaces, e.g. 127.0.0.2:0")
    run.add_argument("--outgoing-interface")
    run.add_argument(
        "--dht",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the DHT (on loopback in the local profile)",
    )
    run.add_argument(
        "--lsd",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use local service discovery (multicast)",
    )
    run.add_argument("--dht-bootstrap", help="comma-separated host:port list")
    run.add_argument("--upload-rate", type=int, help="bytes/s, 0 = unlimited")
    run.add_argument("--download-rate", type=int, help="bytes/s, 0 = unlimited")
    run.add_argument("--rate-limit-local", action="store_true", default=None)
    run.add_argument("--tcp-port", type=int, help="also serve the API on 127.0.0.1:PORT")
    run.add_argument("--resume-interval", type=float)
    run.add_argument("--ready-fd", type=int, help="write 'ready' to this fd when serving")
    run.add_argument("--log-level", default="INFO")
    doc = sub.add_parser("doctor", help="check the data dir; --repair rebuilds the catalog")
    doc.add_argument("--home")
    doc.add_argument("--repair", action="store_true")
    doc.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        return _doctor(args.home, repair=args.repair, as_json=args.json)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    overrides = {
        "profile": args.profile,
        "listen": args.listen,
        "outgoing_interface": args.outgoing_interface,
        "dht": args.dht,
        "lsd": args.lsd,
        "dht_bootstrap": args.dht_bootstrap,
        "upload_rate": args.upload_rate,
        "download_rate": args.download_rate,
        "rate_limit_local": args.rate_limit_local,
        "tcp_port": args.tcp_port,
        "resume_interval": args.resume_interval,
    }
    try:
        config = load_config(args.home, overrides=overrides)
        asyncio.run(serve(config, ready_fd=args.ready_fd))
    except P2PWeightsError as exc:
        print(f"p2pweightsd: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def _doctor(home: str | None, *, repair: bool, as_json: bool) -> int:
    """Run the doctor; exit 0 when nothing is wrong, 13 when something is."""
    try:
        config = load_config(home)
        findings = doctor.repair(config) if repair else doctor.diagnose(config)
    except P2PWeightsError as exc:
        print(f"p2pw: error: {exc}", file=sys.stderr)
        return exc.exit_code
    bad = any(f.severity == "error" for f in findings)
    if as_json:
        print(json.dumps({"ok": not bad, "findings": [f.as_dict() for f in findings]}, indent=2))
    else:
        for f in findings:
            print(f"{f.severity:<8} {f.message}")
    return 13 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
