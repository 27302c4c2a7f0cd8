"""The local Hugging Face cache: finding it, reading a snapshot safely, writing one."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import p2pweights
from p2pweights import (
    ExportError,
    LoadError,
    PrivateKey,
    ReleaseMismatchError,
    SourceError,
    TrustStore,
    UnsafePickleError,
)
from p2pweights.cli import main
from p2pweights.hf_cache import (
    RepoRef,
    commit_for_manifest,
    export_to_hf_cache,
    hf_cache_dir,
    parse_repo_ref,
    repo_folder,
    resolve_snapshot,
)
from p2pweights.release import open_release
from p2pweights.remote import check_revision, parse_revision

from .conftest import layer_state
from .test_hostile_inputs import Payload, assert_same_state, pickle_state, snapshot

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_hf_cache(
    cache: Path, repo_id: str, src: Path, *, commit: str = COMMIT, branch: str = "main"
) -> Path:
    """Lay ``src`` out as huggingface_hub does: blobs, snapshot symlinks, refs/<branch>."""
    repo = cache / repo_folder(repo_id)
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = path.relative_to(src)
        blob = repo / "blobs" / sha256_file(path)
        blob.write_bytes(path.read_bytes())
        dest = snap / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, dest.parent), dest)
    ref = repo / "refs" / branch
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snap


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ finding the cache

_HF_VARS = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@pytest.mark.parametrize(
    "env",
    [
        {"HF_HUB_CACHE": "{tmp}/hub-cache", "HF_HOME": "{tmp}/ignored"},
        {"HUGGINGFACE_HUB_CACHE": "{tmp}/legacy", "HF_HOME": "{tmp}/ignored"},
        {"HF_HOME": "{tmp}/hf-home", "XDG_CACHE_HOME": "{tmp}/ignored"},
        {"XDG_CACHE_HOME": "{tmp}/xdg"},
        {},
    ],
)
def test_cache_dir_is_found_as_huggingface_hub_finds_it(
    tmp_path: Path, env: dict[str, str]
) -> None:
    values = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    base = {k: v for k, v in os.environ.items() if k not in _HF_VARS}
    full = {**base, **values, "HOME": str(tmp_path / "home")}
    ours = hf_cache_dir(full)
    # huggingface_hub freezes these at import, so ask a fresh interpreter.
    theirs = subprocess.run(
        [sys.executable, "-c", "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"],
        env=full,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.strip()
    assert ours == Path(theirs)
    assert ours.is_relative_to(tmp_path)


def test_cache_dir_reads_the_environment_at_call_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in _HF_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "a"))
    assert hf_cache_dir() == tmp_path / "a" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "b"))
    assert hf_cache_dir() == tmp_path / "b"


# ------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gpt2", RepoRef("gpt2")),
        (
            "sentence-transformers/all-MiniLM-L6-v2",
            RepoRef("sentence-transformers/all-MiniLM-L6-v2"),
        ),
        ("org/model@main", RepoRef("org/model", "main")),
        ("org/model@refs/pr/1", RepoRef("org/model", "refs/pr/1")),
        ("org/model@v1.0", RepoRef("org/model", "v1.0")),
        (f"org/m_1.x@{COMMIT}", RepoRef("org/m_1.x", COMMIT)),
    ],
)
def test_repo_refs_that_parse(text: str, expected: RepoRef) -> None:
    assert parse_repo_ref(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "org/",
        "/model",
        "a/b/c",
        "../model",
        "org/..",
        "org/mo..del",
        "org--x/model",
        "-org/model",
        "org/model-",
        "org/.model",
        "org/model.git",
        "org/mödel",
        "org/mo del",
        "org/mo\x00del",
        "org\\model",
        "x" * 97,
        "org/model@",
        "org/model@../../../etc",
        "org/model@a/../b",
        "org/model@.hidden",
        "org/model@main.lock",
        "org/model@main@x",
        "org/model@ma\nin",
        "org/model@" + "a" * 300,
        "org/model@/abs",
    ],
)
def test_hostile_repo_refs_are_one_line_source_errors(text: str) -> None:
    with pytest.raises(SourceError) as info:
        parse_repo_ref(text)
    assert type(info.value) is SourceError
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("revision", "version", "prefix"),
    [
        ("3", 3, None),
        (7, 7, None),
        ("0000001", 1, None),
        ("DEADBEEF", None, "deadbeef"),
        (COMMIT, None, COMMIT),
    ],
)
def test_revision_pins_parse(revision: str | int, version: int | None, prefix: str | None) -> None:
    pin = parse_revision(revision)
    assert (pin.version, pin.sha256_prefix) == (version, prefix)


@pytest.mark.parametrize(
    "revision", ["", "v3", "abc", "1234567z", "-1", "a" * 65, "main", -1, True]
)
def test_malformed_revision_pins_are_load_errors(revision: str | int) -> None:
    with pytest.raises(LoadError, match="revision"):
        parse_revision(revision)


def test_revision_pin_checks_version_and_manifest_hash(
    make_model: Callable[..., Path], make_release: Callable[..., Path], trust: TrustStore
) -> None:
    rel = open_release(make_release(make_model(), version=3), trust)
    check_revision(rel, parse_revision("3"))
    check_revision(rel, parse_revision(rel.manifest_sha256[:8]))
    check_revision(rel, parse_revision(commit_for_manifest(rel.manifest_sha256).upper()))
    with pytest.raises(ReleaseMismatchError, match="pins version 4"):
        check_revision(rel, parse_revision("4"))
    wrong = ("0" if rel.manifest_sha256[0] != "0" else "1") + rel.manifest_sha256[1:12]
    with pytest.raises(ReleaseMismatchError, match="not revision"):
        check_revision(rel, parse_revision(wrong))


# ------------------------------------------------------------------ reading a snapshot


@pytest.fixture
def cache(tmp_path: Path, make_model: Callable[..., Path]) -> Path:
    """An HF cache holding org/model (main -> COMMIT), with a nested file."""
    src = make_model(extra_files={"1_Pooling/config.json": b'{"pooling": "mean"}'})
    root = tmp_path / "hf-cache"
    make_hf_cache(root, "org/model", src)
    return root


def test_snapshot_resolves_through_refs_branch_and_commit(cache: Path) -> None:
    repo = cache / "models--org--model"
    other = "f" * 40
    (repo / "snapshots" / other).mkdir()
    (repo / "snapshots" / other / "config.json").symlink_to(
        os.path.relpath(next((repo / "blobs").iterdir()), repo / "snapshots" / other)
    )
    (repo / "refs" / "dev").write_text(other + "\n")
    main_snap = resolve_snapshot("org/model", cache)
    assert main_snap.commit == COMMIT and main_snap.repo_id == "org/model"
    assert main_snap.files == ("1_Pooling/config.json", "config.json", "model.safetensors")
    assert main_snap.path == repo / "snapshots" / COMMIT
    assert resolve_snapshot("org/model@dev", cache).commit == other
    assert resolve_snapshot(f"org/model@{other}", cache).files == ("config.json",)
    assert resolve_snapshot(f"org/model@{COMMIT}", cache).commit == COMMIT


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("org/absent", "not in the HF cache"),
        ("org/model@nobranch", "no refs/nobranch"),
        (f"org/model@{'e' * 40}", "no snapshot"),
    ],
)
def test_missing_repos_and_revisions_are_source_errors(cache: Path, spec: str, match: str) -> None:
    with pytest.raises(SourceError, match=match):
        resolve_snapshot(spec, cache)


def test_a_ref_that_holds_no_commit_is_refused(cache: Path) -> None:
    (cache / "models--org--model" / "refs" / "main").write_text("../../../etc/passwd")
    with pytest.raises(SourceError, match="40-hex commit"):
        resolve_snapshot("org/model", cache)


@pytest.mark.parametrize("attack", ["outside", "dangling", "dir-link", "fifo", "snapshot-link"])
def test_snapshot_entries_that_leave_blobs_are_refused(
    cache: Path, tmp_path: Path, attack: str
) -> None:
    snap = cache / "models--org--model" / "snapshots" / COMMIT
    secret = tmp_path / "secret.txt"
    secret.write_text("private key material")
    if attack == "outside":
        (snap / "tokenizer.json").symlink_to(secret)
    elif attack == "dangling":
        (snap / "tokenizer.json").symlink_to("../../blobs/" + "0" * 64)
    elif attack == "dir-link":
        (snap / "extra").symlink_to(tmp_path)
    elif attack == "fifo":
        os.mkfifo(snap / "pipe")
    else:  # the whole snapshot is a link to somewhere else
        other = cache / "models--org--model" / "snapshots" / ("a" * 40)
        other.symlink_to(tmp_path)
        (cache / "models--org--model" / "refs" / "main").write_text("a" * 40)
    with pytest.raises(SourceError) as info:
        resolve_snapshot("org/model", cache)
    assert "\n" not in str(info.value)


# A fake private key where a user keeps theirs: what a planted link tries to publish.
_SECRET = b"-----BEGIN OPENSSH PRIVATE KEY-----\nfake key for the test\n"


@pytest.mark.parametrize("linked", ["blobs", "snapshots"])
@pytest.mark.parametrize("verb", ["pack", "publish"])
def test_a_linked_blobs_or_snapshots_dir_never_packs_a_file_from_outside(
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    _isolated_home: Path,
    key: PrivateKey,
    linked: str,
    verb: str,
) -> None:
    """Finding 3: "inside blobs/" must mean the repo's own real blobs/, not a link's target."""
    repo = cache / "models--org--model"
    # The user's ~/.ssh (which holds their key) is made the repo's blobs/ or snapshots/
    # through a link, and config.json is pointed at the key through that link.
    dot_ssh = tmp_path / "dot-ssh"
    os.replace(repo / linked, dot_ssh)
    (dot_ssh / "id_ed25519").write_bytes(_SECRET)
    (repo / linked).symlink_to(dot_ssh)
    config = repo / "snapshots" / COMMIT / "config.json"
    config.unlink()
    config.symlink_to("../../blobs/id_ed25519" if linked == "blobs" else "../id_ed25519")
    assert config.read_bytes() == _SECRET  # the link really leads to the key
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    before = snapshot(tmp_path)
    out = tmp_path / "rel"
    key_file = str(tmp_path / "keys" / "publisher.pem")
    code, _, err = run(capsys, verb, "--from-hf-cache", "org/model", "--version", "1",
                       "--key", key_file, "--out", str(out))  # fmt: skip
    assert code == SourceError.exit_code, err
    assert err.count("\n") == 1 and "symlink" in err
    assert not out.exists() and snapshot(tmp_path) == before
    # Nothing was packed or handed to a daemon either.
    assert not (_isolated_home / "published").exists()
    with pytest.raises(SourceError, match="symlink"):
        resolve_snapshot("org/model", cache)


@pytest.mark.parametrize("linked", ["repo", "refs", "snapshot"])
def test_a_linked_repo_refs_or_snapshot_dir_is_refused(
    cache: Path, tmp_path: Path, linked: str
) -> None:
    repo = cache / "models--org--model"
    moved = tmp_path / "elsewhere"
    if linked == "repo":
        os.replace(repo, moved)
        repo.symlink_to(moved)
    elif linked == "refs":
        os.replace(repo / "refs", moved)
        (repo / "refs").symlink_to(moved)
    else:  # the snapshot dir itself, kept inside the repo so only the link is wrong
        os.replace(repo / "snapshots" / COMMIT, repo / "moved")
        (repo / "snapshots" / COMMIT).symlink_to(repo / "moved")
    with pytest.raises(SourceError, match="symlink") as info:
        resolve_snapshot("org/model", cache)
    assert type(info.value) is SourceError and "\n" not in str(info.value)


def test_a_linked_cache_root_is_followed(cache: Path, tmp_path: Path) -> None:
    """The cache dir itself may be a link (a cache moved to another disk)."""
    (tmp_path / "link-to-cache").symlink_to(cache)
    snap = resolve_snapshot("org/model", tmp_path / "link-to-cache")
    assert snap.path == cache / "models--org--model" / "snapshots" / COMMIT
    assert snap.files == ("1_Pooling/config.json", "config.json", "model.safetensors")


def test_pack_from_hf_cache_carries_the_snapshot_files(
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: PrivateKey,
    trust: TrustStore,
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    out = tmp_path / "rel"
    code, stdout, err = run(
        capsys, "pack", "--from-hf-cache", "org/model", "--version", "2", "--key",
        str(tmp_path / "keys" / "publisher.pem"), "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, err
    info = json.loads(stdout)
    assert (info["name"], info["version"]) == ("org/model", 2)
    rel = open_release(out, trust)
    assert rel.manifest.label == f"hf:org/model@{COMMIT}"
    snap = cache / "models--org--model" / "snapshots" / COMMIT
    assert {f.name: f.sha256 for f in rel.manifest.files} == {
        name: sha256_file(snap / name)
        for name in ("1_Pooling/config.json", "config.json", "model.safetensors")
    }
    # SRC and --from-hf-cache together, or a hostile ref: one line, the source exit code.
    code, _, err = run(capsys, "pack", str(snap), "--from-hf-cache", "org/model", "--version", "1",
                       "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == SourceError.exit_code and err.count("\n") == 1
    code, _, err = run(capsys, "pack", "--from-hf-cache", "org/model@../../x", "--version", "1",
                       "--out", str(tmp_path / "x"))  # fmt: skip
    assert code == SourceError.exit_code and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------ imports: sharded .bin


def _sharded_bin_dir(root: Path, shards: dict[str, dict[str, object]]) -> Path:
    root.mkdir()
    for fname, part in shards.items():
        torch.save(part, root / fname)
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {n: f for f, part in shards.items() for n in part},
    }
    (root / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    (root / "config.json").write_text('{"model_type": "test"}')
    return root


def test_sharded_bin_checkpoint_in_an_hf_cache_imports(
    tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    state = {**pickle_state(), **layer_state(layers=2, hidden=8)}
    names = sorted(state)
    third = len(names) // 3
    parts = [names[:third], names[third : 2 * third], names[2 * third :]]
    src = _sharded_bin_dir(
        tmp_path / "src",
        {
            f"pytorch_model-0000{i}-of-00003.bin": {n: state[n] for n in part}
            for i, part in enumerate(parts, 1)
        },
    )
    cache = tmp_path / "cache"
    make_hf_cache(cache, "org/binmodel", src)
    snap = resolve_snapshot("org/binmodel", cache)
    out = tmp_path / "rel"
    result = p2pweights.pack(snap.path, out, name="org/binmodel", version=1, key=key)
    kinds = {f.name: f.kind for f in result.manifest.files}
    assert sorted(n for n, k in kinds.items() if k == "torch") == [
        f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)
    ]
    assert kinds["pytorch_model.bin.index.json"] == "blob"
    assert_same_state(p2pweights.load(out, trust=trust, verify="full"), state)
    # Its originals cannot be rebuilt, so the HF cache export says so instead of guessing.
    with pytest.raises(ExportError, match="pickle"):
        export_to_hf_cache(out, "org/binmodel", cache_dir=tmp_path / "cache2", trust=trust)


def test_malicious_shard_in_an_hf_cache_is_refused_without_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    key: PrivateKey,
) -> None:  # fmt: skip
    marker = tmp_path / "pwned"
    state = pickle_state()
    src = _sharded_bin_dir(
        tmp_path / "src",
        {
            "pytorch_model-00001-of-00002.bin": dict(state),
            # A genuine-looking second shard whose pickle runs code on load.
            "pytorch_model-00002-of-00002.bin": {
                "model.evil.weight": Payload(os.system, f"touch '{marker}'")
            },
        },
    )
    cache = tmp_path / "cache"
    make_hf_cache(cache, "org/evil", src)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    before = snapshot(tmp_path)
    out = tmp_path / "rel"
    key_file = str(tmp_path / "keys" / "publisher.pem")
    code, _, err = run(capsys, "pack", "--from-hf-cache", "org/evil", "--version", "1",
                       "--key", key_file, "--out", str(out))  # fmt: skip
    assert code == UnsafePickleError.exit_code, err
    assert err.count("\n") == 1 and "was not run" in err
    assert not marker.exists(), "the pickle payload ran"
    assert not out.exists() and snapshot(tmp_path) == before
    with pytest.raises(UnsafePickleError):
        p2pweights.pack(resolve_snapshot("org/evil", cache).path, out, name="o/e", version=1,
                        key=key)  # fmt: skip
    assert not marker.exists()


# ------------------------------------------------------------------ writing the cache


def test_export_writes_the_hf_layout_with_byte_identical_files(
    cache: Path, tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    snap = resolve_snapshot("org/model", cache)
    rel_dir = tmp_path / "rel"
    p2pweights.pack(snap.path, rel_dir, name="org/model", version=1, key=key)
    rel = open_release(rel_dir, trust)
    target = tmp_path / "cache2"
    result = export_to_hf_cache(rel_dir, "other/name", cache_dir=target, trust=trust)
    commit = rel.manifest_sha256[:40]
    assert result.commit == commit == commit_for_manifest(rel.manifest_sha256)
    repo = target / "models--other--name"
    assert (repo / "refs" / "main").read_text() == commit
    assert result.snapshot == repo / "snapshots" / commit
    assert sorted(result.files) == list(snap.files)
    for name in snap.files:
        entry = result.snapshot / name
        link = os.readlink(entry)
        assert not os.path.isabs(link) and link.startswith("../")
        blob = entry.resolve()
        assert blob.parent == (repo / "blobs").resolve()
        assert blob.name == sha256_file(snap.path / name) == sha256_file(entry)
    # What was written reads back as a snapshot; the original repo is untouched.
    again = resolve_snapshot("other/name", target)
    assert again.commit == commit and again.files == snap.files
    before = snapshot(target)
    export_to_hf_cache(rel_dir, "other/name", cache_dir=target, trust=trust)  # idempotent
    assert snapshot(target) == before


def test_export_cli_hf_cache_uses_the_environment_and_refuses_bad_input(
    cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    key: PrivateKey,
) -> None:
    rel_dir = tmp_path / "rel"
    p2pweights.pack(resolve_snapshot("org/model", cache).path, rel_dir, name="o/m", version=1,
                    key=key)  # fmt: skip
    target = tmp_path / "hf-home"
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(target))
    key_arg = ["--key", key.public.text]
    code, out, err = run(capsys, "export", "--hf-cache", "o/m", str(rel_dir), *key_arg, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert Path(info["snapshot"]).is_relative_to(target / "hub" / "models--o--m" / "snapshots")
    code, out, err = run(capsys, "export", "--hf-cache", "o/m", str(rel_dir), "--cache-dir",
                         str(tmp_path / "explicit"), *key_arg)  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "explicit" / "models--o--m" / "refs" / "main").is_file()
    for bad in (
        ["--hf-cache", "../../escape", str(rel_dir)],
        ["--hf-cache", "o/m", str(rel_dir), str(tmp_path / "out")],
        [str(rel_dir)],
        [str(rel_dir), str(tmp_path / "out"), "--cache-dir", str(tmp_path)],
    ):
        before = snapshot(tmp_path)
        code, _, err = run(capsys, "export", *bad, *key_arg)
        assert code == ExportError.exit_code, (bad, err)
        assert err.count("\n") == 1
        assert snapshot(tmp_path) == before


@pytest.mark.parametrize("planted", ["repo", "blobs", "snapshots", "refs", "snapshot-subdir"])
def test_export_never_writes_through_a_planted_symlink(
    cache: Path, tmp_path: Path, key: PrivateKey, trust: TrustStore, planted: str
) -> None:
    rel_dir = tmp_path / "rel"
    p2pweights.pack(resolve_snapshot("org/model", cache).path, rel_dir, name="o/m", version=1,
                    key=key)  # fmt: skip
    commit = open_release(rel_dir, trust).manifest_sha256[:40]
    target = tmp_path / "cache2"
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = target / "models--o--m"
    if planted == "repo":
        target.mkdir()
        repo.symlink_to(outside)
    elif planted == "snapshot-subdir":
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "1_Pooling").symlink_to(outside)
    else:
        repo.mkdir(parents=True)
        (repo / planted).symlink_to(outside)
    with pytest.raises(ExportError) as info:
        export_to_hf_cache(rel_dir, "o/m", cache_dir=target, trust=trust)
    assert "\n" not in str(info.value)
    assert list(outside.iterdir()) == []


def test_export_replaces_planted_blob_and_snapshot_links_instead_of_following_them(
    cache: Path, tmp_path: Path, key: PrivateKey, trust: TrustStore
) -> None:
    rel_dir = tmp_path / "rel"
    p2pweights.pack(resolve_snapshot("org/model", cache).path, rel_dir, name="o/m", version=1,
                    key=key)  # fmt: skip
    rel = open_release(rel_dir, trust)
    commit = rel.manifest_sha256[:40]
    victim = tmp_path / "victim.txt"
    victim.write_text("do not overwrite")
    repo = tmp_path / "cache2" / "models--o--m"
    config = next(f for f in rel.manifest.files if f.name == "config.json")
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / config.sha256).symlink_to(victim)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model.safetensors").symlink_to(victim)
    export_to_hf_cache(rel_dir, "o/m", cache_dir=tmp_path / "cache2", trust=trust)
    assert victim.read_text() == "do not overwrite"
    assert not (repo / "blobs" / config.sha256).is_symlink()
    assert resolve_snapshot("o/m", tmp_path / "cache2").files == (
        "1_Pooling/config.json", "config.json", "model.safetensors",
    )  # fmt: skip
