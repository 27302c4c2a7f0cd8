"""Pausing Python's cyclic garbage collector while a bulk step builds many objects.

Reading a 100,000-tensor checkpoint or manifest makes hundreds of thousands of small
containers (header entries, names, shapes). Every 700 new containers start a collection,
and the older generations are walked again and again while the pile grows: measured, that
was two thirds of reading the safetensors headers of a 100,000-tensor MoE. None of these
objects can form a reference cycle, so the collector is paused for the step and resumed
after it (it is not resumed if it was off already; two threads pausing at once at worst
resume it a little early, which only costs time).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["paused_gc"]


@contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block with the cyclic garbage collector off."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
