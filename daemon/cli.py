"""The daemon's command line (click, like ``p2pw``): ``run`` and ``doctor``.

These are the only definitions of the daemon's flags. ``p2pw daemon run`` and
``p2pw daemon start`` hand their arguments to ``python -m p2pweightsd run``, and
``p2pw doctor`` to ``python -m p2pweightsd doctor``: the CLI starts the daemon as a
process and never imports it (imports go daemon → p2pweights only), and the daemon
process starts clean, with nothing the CLI loaded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import click

from p2pweights.errors import P2PWeightsError

from .config import load_config

__all__ = ["main"]

_HOME_HELP = "Data dir (default: $P2PW_HOME, else the per-user data dir)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The p2pweights daemon (usually run as `p2pw daemon run|start`)."""


@cli.command()
@click.option("--home", type=click.Path(path_type=Path), help=_HOME_HELP)
@click.option(
    "--profile",
    type=click.Choice(["default", "lan", "local"]),
    help="lan: DHT/LSD inside the LAN, no public bootstrap or UPnP; "
    "local: loopback only, no DHT/LSD/UPnP/NAT-PMP/uTP.",
)
@click.option("--listen", metavar="IP:PORT[,...]", help="libtorrent listen interfaces.")
@click.option("--outgoing-interface", metavar="IP", help="Source address of peer connections.")
@click.option("--dht/--no-dht", default=None, help="Use the DHT (on loopback in local).")
@click.option("--lsd/--no-lsd", default=None, help="Use local service discovery (multicast).")
@click.option("--dht-bootstrap", metavar="HOST:PORT[,...]", help="DHT bootstrap nodes.")
@click.option("--upload-rate", type=click.IntRange(min=0), help="Bytes/s, 0 = unlimited.")
@click.option("--download-rate", type=click.IntRange(min=0), help="Bytes/s, 0 = unlimited.")
@click.option(
    "--rate-limit-local/--no-rate-limit-local",
    default=None,
    help="Apply the rate limits to loopback and LAN peers too.",
)
@click.option(
    "--tcp-port",
    type=click.IntRange(min=0, max=65535),
    help="Also serve the API on 127.0.0.1:PORT (bearer token).",
)
@click.option(
    "--resume-interval", type=click.FloatRange(min=0), help="Seconds between resume saves."
)
@click.option(
    "--name-ttl",
    type=click.IntRange(min=1),
    help="Seconds a p2pw:// name record this daemon signs stays valid (default 7 days).",
)
@click.option(
    "--name-republish-interval",
    type=click.FloatRange(min=0.1),
    help="Seconds between re-puts of p2pw:// names (default 1800).",
)
@click.option(
    "--follow-interval",
    type=click.FloatRange(min=0.1),
    help="Seconds between looks at followed p2pw:// names (default 300, ±20 %).",
)
@click.option(
    "--ready-fd",
    type=int,
    help="Write 'ready' to this fd once serving (used by `p2pw daemon start`).",
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def run(
    home: Path | None,
    ready_fd: int | None,
    log_level: str,
    **overrides: object,
) -> None:
    """Run the daemon in the foreground until SIGTERM or SIGINT.

    Configuration: config.toml, then P2PW_* variables, then these flags.
    """
    from .runner import serve  # noqa: PLC0415 - libtorrent: only for the verb that runs

    logging.basicConfig(
        level=getattr(logging, log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = load_config(home, overrides=overrides)
    asyncio.run(serve(config, ready_fd=ready_fd))


@cli.command()
@click.option("--home", type=click.Path(path_type=Path), help=_HOME_HELP)
@click.option("--repair", is_flag=True, help="Rebuild the catalog from the store (daemon stopped).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object for scripts.")
def doctor(home: Path | None, repair: bool, as_json: bool) -> None:
    """Check the catalog and the store; exit 13 when something is wrong."""
    from . import doctor as checks  # noqa: PLC0415 - libtorrent: only for this verb

    config = load_config(home)
    findings = checks.repair(config) if repair else checks.diagnose(config)
    bad = any(f.severity == "error" for f in findings)
    if as_json:
        report = {"ok": not bad, "findings": [f.as_dict() for f in findings]}
        click.echo(json.dumps(report, indent=2))
    else:
        for f in findings:
            click.echo(f"{f.severity:<8} {f.message}")
    if bad:
        raise click.exceptions.Exit(13)


def main(argv: list[str] | None = None) -> int:
    """Run the daemon's CLI and return its exit code (our errors map to theirs)."""
    try:
        # Without standalone mode, click returns a command's Exit code instead of raising.
        # `p2pw daemon run` and `p2pw doctor` exec this module: their help names them.
        prog = os.environ.get("P2PWEIGHTSD_PROG_NAME") or "p2pweightsd"
        code = cli.main(args=argv, prog_name=prog, standalone_mode=False)
    except P2PWeightsError as exc:
        click.echo(f"p2pweightsd: error: {exc}", err=True)
        return exc.exit_code
    except (KeyboardInterrupt, click.exceptions.Abort):
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
