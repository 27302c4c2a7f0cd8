"""Unit tests of the path checks: each refusal, its boundary, and what its message names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pweights import UnsafePathError
from p2pweights._paths import MAX_PATH_CHARS, check_relative, join_inside


@pytest.mark.parametrize(
    ("path", "says"),
    [
        (None, "must be a non-empty string"),
        ("", "must be a non-empty string"),
        (b"chunks/x", "must be a non-empty string"),
        ("a" * (MAX_PATH_CHARS + 1), f"longer than {MAX_PATH_CHARS} characters"),
        ("/etc/passwd", "is not a plain relative path"),
        ("chunks\\x", "is not a plain relative path"),
        ("chunks/x\x00", "is not a plain relative path"),
        ("C:/x", "is not a plain relative path"),
        ("c:x", "is not a plain relative path"),
        ("chunks/\n", "control characters"),
        ("chunks/\x1f", "control characters"),
        ("chunks/\ud800", "unpaired surrogate"),
        ("chunks/../x", "'..' component"),
        ("chunks/./x", "'..' component"),
        ("chunks//x", "'..' component"),
        ("chunks/", "'..' component"),
        ("..", "'..' component"),
    ],
)
def test_each_refusal_names_the_thing_and_the_reason(path: object, says: str) -> None:
    with pytest.raises(UnsafePathError, match=r"^the widget ") as info:
        check_relative(path, what="the widget")
    assert says in str(info.value)


@pytest.mark.parametrize(
    "path", ["a", "a" * MAX_PATH_CHARS, "chunks/x", "a/b:c", "é/ü", "a b/.c", "..."]
)
def test_plain_relative_paths_pass_unchanged(path: str) -> None:
    assert check_relative(path, what="p") is path


def test_join_inside_checks_the_path_and_refuses_links_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "in").mkdir(parents=True)
    (tmp_path / "out").mkdir()
    os.symlink(tmp_path / "out", root / "link")
    os.symlink(root / "in", root / "inner")
    assert join_inside(root, "in/x", what="f") == root / "in" / "x"
    assert join_inside(root, "inner/x", what="f") == root / "inner" / "x"  # a link inside
    with pytest.raises(UnsafePathError, match=r"^the file 'link/x' resolves outside "):
        join_inside(root, "link/x", what="the file")
    with pytest.raises(UnsafePathError, match=r"^the file .*'\.\.' component"):
        join_inside(root, "in/../../out", what="the file")
    long = "link/" + "x" * 200
    with pytest.raises(UnsafePathError) as info:
        join_inside(root, long, what="f")
    assert f"f {long[:80]!r} resolves" in str(info.value)


@pytest.mark.parametrize(
    "path",
    ["/" + "a" * 200, "a" * 200 + "\n", "a" * 200 + "\ud800", "a" * 200 + "/..", "C:" + "a" * 200],
)
def test_a_refusal_quotes_only_the_first_80_characters(path: str) -> None:
    # Hostile names can be long: the message (and so the log line) stays short.
    with pytest.raises(UnsafePathError) as info:
        check_relative(path, what="p")
    assert f"p {path[:80]!r} " in str(info.value)
