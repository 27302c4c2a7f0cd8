"""The `p2pw` command line: one click group, a subcommand per verb.

Only p2pweights' own errors are caught; each maps to its documented exit code with a
one-line message (``--debug`` shows the traceback). Every command takes ``--json`` for
scripts; progress bars go to stderr, and only when it is a terminal.
"""

from __future__ import annotations

import json
import sys

import click

from ..errors import P2PWeightsError
from . import _daemon, _daemon_admin, _keys, _local, _resolve, _search  # noqa: F401 - importing registers commands
from ._base import cli

__all__ = ["cli", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        code = cli.main(args=argv, prog_name="p2pw", standalone_mode=False)
        if isinstance(code, int):  # a command's click.exceptions.Exit, returned by click
            return code
    except P2PWeightsError as exc:
        if debug:
            raise
        as_json = "--json" in (argv if argv is not None else sys.argv[1:])
        if as_json:
            click.echo(
                json.dumps(
                    {"error": str(exc), "type": type(exc).__name__, "exit_code": exc.exit_code}
                )
            )
        click.echo(f"p2pw: error: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:  # not ours, but still one line: a file where a dir should be...
        if debug:
            raise
        click.echo(f"p2pw: error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("p2pw: aborted", err=True)
        return 130
    except click.ClickException as exc:
        if "--json" in (argv if argv is not None else sys.argv[1:]):
            kind = "UsageError" if isinstance(exc, click.UsageError) else type(exc).__name__
            doc = {"error": exc.format_message(), "type": kind, "exit_code": exc.exit_code}
            click.echo(json.dumps(doc))
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
