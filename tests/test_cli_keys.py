"""`p2pw key rotate|revoke` and `p2pw trust revoke`: --json shapes and exit codes."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from p2pweights.cli import main
from p2pweights.key_statements import STATEMENTS_NAME, Revocation, Rotation, read_statements
from p2pweights.keys import load_private_key

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, object]:
    code, out, err = run(capsys, *args, "--json")
    assert code == 0, err
    data: dict[str, object] = json.loads(out)
    return data


def _home() -> Path:
    return Path(os.environ["P2PW_HOME"])


def test_rotate_pack_and_verify_move_trust_then_revoke_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, make_model: Callable[..., Path]
) -> None:
    a = run_json(capsys, "key", "generate")
    b = run_json(capsys, "key", "generate", "--out", str(tmp_path / "b.pem"))
    src = make_model()
    v1 = tmp_path / "v1"
    run_json(capsys, "pack", str(src), "--name", "org/m", "--version", "1", "--out", str(v1))
    assert not (v1 / STATEMENTS_NAME).exists()  # nothing to carry yet

    out = tmp_path / "rotation.json"
    rot = run_json(capsys, "key", "rotate", "--new", str(tmp_path / "b.pem"), "--out", str(out))
    assert rot["path"] == str(out) and ISO.fullmatch(str(rot["time"]))
    assert (rot["old_key"], rot["new_key"]) == (a["public_key"], b["public_key"])
    assert rot["new_fingerprint"] == b["fingerprint"]
    assert {"old_fingerprint", "statement"} <= set(rot)
    own = read_statements(_home() / "keys" / "key-statements.json")
    assert len(own) == 1 and isinstance(own[0], Rotation)
    assert json.loads(out.read_text()) == own[0].to_doc()

    v2 = tmp_path / "v2"
    packed = run_json(
        capsys, "pack", str(src), "--name", "org/m", "--version", "2", "--out", str(v2),
        "--key", str(tmp_path / "b.pem"),
    )  # fmt: skip
    assert packed["key_statements"] == 1 and read_statements(v2 / STATEMENTS_NAME) == own

    # A client home that trusts A only: verifying v2 moves the entry to B.
    client = tmp_path / "client"
    run_json(capsys, "--home", str(client), "trust", "add", str(a["public_key"]), "--name", "org")
    ok = run_json(capsys, "--home", str(client), "verify", str(v2))
    assert ok["publisher_name"] == "org" and ok["publisher"] == b["public_key"]
    listed = run_json(capsys, "--home", str(client), "trust", "list")
    (entry,) = listed["keys"]  # type: ignore[misc]
    assert entry["name"] == "org" and entry["public_key"] == b["public_key"]
    assert entry["retired"][0]["public_key"] == a["public_key"]
    assert ISO.fullmatch(entry["retired"][0]["time"]) and listed["revoked"] == []

    # The publisher revokes B; the client records the certificate.
    cert = tmp_path / "b.revoked.json"
    rev = run_json(
        capsys, "key", "revoke", "--key", str(tmp_path / "b.pem"), "--out", str(cert),
        "--reason", "lost laptop",
    )  # fmt: skip
    assert rev["path"] == str(cert) and rev["public_key"] == b["public_key"]
    assert ISO.fullmatch(str(rev["time"])) and rev["reason"] == "lost laptop"
    got = run_json(capsys, "--home", str(client), "trust", "revoke", "--certificate", str(cert))
    assert got == {
        "revoked": True,
        "name": "org",
        "public_key": b["public_key"],
        "fingerprint": b["fingerprint"],
        "time": rev["time"],
        "reason": "lost laptop",
    }
    code, out_text, err = run(capsys, "--home", str(client), "verify", str(v2), "--json")
    assert code == 22 and json.loads(out_text)["type"] == "RevokedKeyError"
    assert "revoked" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(
        capsys, "--home", str(client), "trust", "add", str(b["public_key"]), "--name", "b"
    )
    assert code == 22, err
    listed = run_json(capsys, "--home", str(client), "trust", "list")
    assert listed["keys"] == [] and listed["revoked"] == [
        {"public_key": b["public_key"], "fingerprint": b["fingerprint"], "time": rev["time"]}
    ]
    # The publisher's own data dir stopped trusting B too, and packs nothing with it.
    code, _, err = run(
        capsys, "pack", str(src), "--name", "org/m", "--version", "3",
        "--out", str(tmp_path / "v3"), "--key", str(tmp_path / "b.pem"),
    )  # fmt: skip
    assert code == 22 and "revoked" in err
    assert isinstance(read_statements(_home() / "keys" / "key-statements.json")[-1], Revocation)


def test_revoke_defaults_and_bad_certificates(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a = run_json(capsys, "key", "generate")
    rev = run_json(capsys, "key", "revoke")
    path = Path(str(rev["path"]))
    assert path == _home() / "keys" / "publisher.revocation.json" and path.is_file()
    assert rev["public_key"] == a["public_key"]
    # A rotation is no certificate; damaged files are format errors (exit 5).
    b = tmp_path / "b.pem"
    run_json(capsys, "key", "generate", "--out", str(b))
    c = tmp_path / "c.pem"
    run_json(capsys, "key", "generate", "--out", str(c))
    rot = tmp_path / "rot.json"
    run_json(capsys, "key", "rotate", "--key", str(b), "--new", str(c), "--out", str(rot))
    for bad, text in [
        (rot, "not a revocation"),
        (tmp_path / "junk.json", "not valid JSON"),
        (tmp_path / "huge.json", "over the limit"),
    ]:
        if bad.name == "junk.json":
            bad.write_text("{nope")
        elif bad.name == "huge.json":
            bad.write_bytes(b" " * 5000)
        code, out, err = run(capsys, "trust", "revoke", "--certificate", str(bad), "--json")
        assert code == 5 and json.loads(out)["type"] == "KeyStatementError", err
        assert text in err
    doc = json.loads(path.read_text())
    doc["reason"] = "edited"
    path.write_text(json.dumps(doc))
    code, _, err = run(capsys, "trust", "revoke", "--certificate", str(path))
    assert code == 3 and "not signed" in err  # SignatureError
    code, _, err = run(capsys, "key", "rotate", "--new", str(_home() / "keys" / "publisher.pem"))
    assert code == 5 and "the new key is the old key" in err
    assert load_private_key(b).public.text != a["public_key"]
