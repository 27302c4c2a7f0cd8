"""Canonical JSON: the exact bytes a publisher signs, and a strict parser for hostile input.

Canonical form is UTF-8, keys sorted, no insignificant whitespace, no NaN or infinities,
integers only (no floats: every number in a manifest is a size, an offset or a time).
The parser refuses oversized input before reading it, and duplicate keys, floats, NaN and
deep nesting (json's own recursion guard, then a walk over the containers alone) as it
parses, so a hostile manifest costs time and memory bounded by its size.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ._gc import paused_gc
from .errors import ManifestError

__all__ = ["MAX_DEPTH", "Pairs", "dumps", "encode_parsed", "loads_strict"]

MAX_DEPTH = 32


def dumps(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes.

    Args:
        value: JSON-compatible data with str keys and int numbers.

    Returns:
        The canonical UTF-8 encoding.

    Raises:
        ManifestError: if the value holds floats or anything JSON cannot express.

    """
    _reject_floats(value, 0)
    return encode_parsed(value)


def encode_parsed(value: Any) -> bytes:
    """Canonical bytes of a value that :func:`loads_strict` produced (already float-free).

    Raises:
        ManifestError: anything JSON cannot express.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(f"value cannot be encoded as canonical JSON: {exc}") from exc
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ManifestError("value holds an unpaired UTF-16 surrogate") from exc


def _reject_floats(value: Any, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise ManifestError(f"JSON nesting deeper than {MAX_DEPTH}")
    if isinstance(value, float):
        raise ManifestError("floats are not allowed in canonical JSON")
    if type(value) is list and not set(map(type, value)) - {str, int, bool, type(None)}:
        return  # most of a big manifest is flat lists of names or indices: checked in C
    if isinstance(value, dict):
        for item in value.values():
            _reject_floats(item, depth + 1)
    elif isinstance(value, list | tuple):
        for item in value:
            _reject_floats(item, depth + 1)


class Pairs(list):  # type: ignore[type-arg]
    """A JSON object as its ``(key, value)`` pairs, in order (``loads_strict(pairs=True)``).

    A list subclass, so json's scanner builds it in C with no Python call per object; the
    caller refuses duplicate keys (``len(dict(p)) != len(p)``) and nesting its schema does
    not allow.
    """

    __slots__ = ()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, val in pairs:
        if key in out:
            raise ManifestError(f"duplicate JSON key {key[:80]!r}")
        out[key] = val
    return out


def _refuse_constant(name: str) -> Any:
    raise ManifestError(f"JSON constant {name} is not allowed")


def _refuse_float(text: str) -> Any:
    raise ManifestError(f"non-integer number {text[:40]!r} is not allowed")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD]")
"""``\\ud800``-style escapes: the only way a lone surrogate gets into parsed JSON."""


def _too_deep(value: Any, level: int) -> bool:
    """True when containers nest more than ``MAX_DEPTH`` deep below ``value`` (at ``level``).

    Run on the parsed value: json's C scanner refuses runaway nesting itself (a
    RecursionError, long before memory matters), so what is left is bounded by the input.
    Only containers are visited; a list of 100,000 strings is passed over in C.
    """
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
    else:
        return False
    if level > MAX_DEPTH:
        return True
    kinds = set(map(type, items))
    if list not in kinds and dict not in kinds:
        return False
    return any(_too_deep(v, level + 1) for v in items if type(v) in (list, dict))


def loads_strict(
    data: bytes, *, max_bytes: int, what: str = "manifest", pairs: bool = False
) -> Any:
    """Parse hostile JSON bytes with hard limits.

    Args:
        data: the raw bytes.
        max_bytes: refuse input longer than this.
        what: a noun for error messages.
        pairs: return objects as :class:`Pairs` and leave duplicate keys and nesting
            depth to the caller's schema check (a 100,000-entry safetensors header then
            costs no Python call per entry here).

    Returns:
        The decoded value.

    Raises:
        ManifestError: too long, not UTF-8, too deep, duplicate keys, floats, NaN, or not JSON.

    """
    if len(data) > max_bytes:
        raise ManifestError(f"{what} is {len(data)} bytes, over the limit of {max_bytes}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what} is not valid UTF-8 (byte {exc.start})") from exc
    # A 100,000-tensor header or manifest allocates as many containers (see _gc).
    try:
        with paused_gc():
            value = json.loads(
                text,
                object_pairs_hook=Pairs if pairs else _no_duplicates,
                parse_constant=_refuse_constant,
                parse_float=_refuse_float,
            )
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc.msg} at byte {exc.pos}") from exc
    except ValueError as exc:  # e.g. integers past Python's digit limit
        raise ManifestError(f"{what} is not acceptable JSON: {str(exc)[:120]}") from exc
    except RecursionError as exc:  # far deeper than MAX_DEPTH: the scanner's own guard
        raise ManifestError(f"{what} nests deeper than {MAX_DEPTH} levels") from exc
    if not pairs and _too_deep(value, 1):
        raise ManifestError(f"{what} nests deeper than {MAX_DEPTH} levels")
    # "\ud800" escapes decode to lone surrogates, which are not text; only escapes can
    # produce them, so the walk runs only when the input has such an escape.
    if _SURROGATE_ESCAPE.search(text):
        _reject_surrogates(value, what)
    return value


def _reject_surrogates(value: Any, what: str) -> None:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ManifestError(f"{what} holds an unpaired UTF-16 surrogate") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_surrogates(key, what)
            _reject_surrogates(item, what)
    elif isinstance(value, list | tuple):  # Pairs hold (key, value) tuples
        for item in value:
            _reject_surrogates(item, what)
