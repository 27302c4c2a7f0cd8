"""``load_into``: a verified state dict into a module, whole or streamed.

It sits above both ``loader`` (the whole load) and ``stream`` (tensor by tensor as chunks
land), so neither of those imports the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .errors import LoadError
from .loader import Source, load
from .stream import load_into_streaming
from .trust import TrustStore
from .verify import VerifyMode

__all__ = ["load_into"]


def load_into(
    module: torch.nn.Module,
    source: Source,
    *,
    strict: bool = True,
    verify: VerifyMode = "fast",
    include: Iterable[str] | str | None = None,
    trust: TrustStore | None = None,
    home: Path | str | None = None,
    peers: Sequence[str] = (),
    stream: bool = False,
) -> Any:
    """Load a verified state dict into ``module`` (``module.load_state_dict``).

    With ``stream`` the module is filled tensor by tensor as chunks land (layer order;
    a remote source's first layers arrive first), instead of after the whole fetch.

    Returns:
        ``(missing_keys, unexpected_keys)``: torch's result, or with ``stream`` a
        :class:`~p2pweights.stream.IncompatibleKeys` with the same fields.

    Raises:
        LoadError: with ``strict``, keys or shapes that do not match the module.
        Everything :func:`~p2pweights.loader.load` raises.

    """
    if stream:
        return load_into_streaming(
            module,
            source,
            strict=strict,
            verify=verify,
            include=include,
            trust=trust,
            home=home,
            peers=peers,
        )
    state = load(source, verify=verify, include=include, trust=trust, home=home, peers=peers)
    try:
        return module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise LoadError(" ".join(line.strip() for line in first)[:500]) from exc
