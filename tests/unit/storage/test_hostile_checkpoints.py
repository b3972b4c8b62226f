"""Confinement (guarantee 8): what a checkpoint folder contains never makes the tool read, write, move or delete
anything outside the output dir, and a malformed folder is set aside with a one-line reason instead of crashing or
hanging the scan.

Every case is built with real files, real symbolic links and real fifos. A hostile manifest is written as an
attacker would: with its checksum recomputed, and with the exact size and xxh3 of the outside file it points at,
so only confinement (not the checksums) can refuse it. Each case checks the same things: the scan finishes, the
hostile folder is quarantined with a reason naming the problem, the older good checkpoint is chosen, and the
world outside the output dir is byte-for-byte and entry-for-entry what it was.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.resume import scan_checkpoints
from aegis_ckpt.storage import commit
from aegis_ckpt.storage.commit import commit_checkpoint, verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME, QUARANTINE_RECORD
from aegis_ckpt.storage.plaincheck import check_plain_checkpoint
from aegis_ckpt.storage.store import CheckpointStore

SECRET = b"the outside world: never read, never moved\n" * 3


# ---- helpers ---------------------------------------------------------------------------------------------------
def snapshot(root: Path) -> dict[str, tuple[str, bytes | str | None, int]]:
    """Every entry under ``root`` (links not followed): kind, content or link target, mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p), st.st_mtime_ns)
            elif p.is_file():
                out[str(p)] = ("file", p.read_bytes(), st.st_mtime_ns)
            else:
                out[str(p)] = ("other", None, st.st_mtime_ns)
    return out


def digest_of(data: bytes) -> dict:
    return {"size": len(data), "xxh3_128": xxhash.xxh3_128_hexdigest(data)}


def rewrite_manifest(folder: Path, mutate: Callable[[dict], None]) -> None:
    """Change a manifest as a hostile writer would: mutate the body, then recompute its checksum."""
    path = folder / MANIFEST_NAME
    body = json.loads(path.read_text(encoding="utf-8"))
    body.pop("manifest_checksum")
    mutate(body)
    body["manifest_checksum"] = commit._canonical_checksum(body)
    path.write_text(json.dumps(body), encoding="utf-8")


def scan_within(output_dir: Path, seconds: float = 60.0):
    """Run the resume scan on a thread: a hang (reading /dev/zero or a fifo) fails the test instead of the
    suite."""
    box: dict = {}

    def run() -> None:
        try:
            box["report"] = scan_checkpoints(output_dir, verify="full")
        except BaseException as e:  # noqa: BLE001 - handed to the test
            box["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "the scan hangs"
    if "error" in box:
        raise box["error"]
    return box["report"]


@pytest.fixture
def world(tmp_path, committed_checkpoint):
    """An output dir with a good committed checkpoint-1 and a committed checkpoint-2 to make hostile, and an
    outside folder (beside the output dir) holding a secret and a complete committed checkpoint."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    committed_checkpoint(outside, 9)  # a valid checkpoint outside: a link to it must still be refused
    out = tmp_path / "out"
    committed_checkpoint(out, 1)
    hostile = committed_checkpoint(out, 2)
    return out, hostile, outside


def assert_set_aside(out: Path, outside: Path, before: dict, expected_reason: str) -> None:
    report = scan_within(out)
    statuses = {c.step: (c.status, c.detail) for c in report.candidates}
    assert statuses[2][0] == "quarantined", statuses
    assert expected_reason in statuses[2][1], statuses[2][1]
    assert "\n" not in statuses[2][1]
    assert report.chosen == str(out / "checkpoint-1")
    assert not os.path.lexists(out / "checkpoint-2")
    records = CheckpointStore(out).quarantined()
    assert len(records) == 1 and expected_reason in records[0]["reason"]
    assert snapshot(outside) == before, "something outside the output dir changed"


# ---- names read from a manifest --------------------------------------------------------------------------------
HOSTILE_NAMES = [
    ("../../outside/secret.txt", "component"),
    ("{outside}/secret.txt", "absolute path"),
    ("C:/outside/secret.txt", "drive letter"),
    ("c:secret.txt", "drive letter"),
    ("..\\..\\outside\\secret.txt", "backslash"),
    ("model.safetensors\x00.txt", "NUL"),
    ("", "empty file name"),
    ("./model.safetensors", "component"),
    ("sub//model.safetensors", "component"),
    ("sub/../../../outside/secret.txt", "component"),
]


@pytest.mark.parametrize("name, reason", HOSTILE_NAMES, ids=[r for _, r in HOSTILE_NAMES])
def test_a_name_leaving_the_folder_is_refused_even_when_size_and_xxh3_match(world, name, reason):
    out, hostile, outside = world
    name = name.format(outside=outside)
    before = snapshot(outside)
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__(name, digest_of(SECRET)))
    assert_set_aside(out, outside, before, reason)


def test_dev_zero_with_size_zero_is_refused_without_hanging(world):
    out, hostile, outside = world
    before = snapshot(outside)
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__("/dev/zero", digest_of(b"")))
    assert_set_aside(out, outside, before, "absolute path")


def test_a_fifo_named_by_the_manifest_is_refused_without_hanging(world):
    out, hostile, outside = world
    before = snapshot(outside)
    os.mkfifo(hostile / "queue")
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__("queue", digest_of(b"")))
    assert_set_aside(out, outside, before, "queue is a fifo")


def test_a_device_named_through_a_link_is_refused(world):
    out, hostile, outside = world
    before = snapshot(outside)
    os.symlink("/dev/zero", hostile / "zeros.bin")
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__("zeros.bin", digest_of(b"")))
    assert_set_aside(out, outside, before, "zeros.bin is a symbolic link")


def test_a_directory_named_as_a_file_is_refused(world):
    out, hostile, outside = world
    before = snapshot(outside)
    (hostile / "nested").mkdir()
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__("nested", digest_of(b"")))
    assert_set_aside(out, outside, before, "nested is a directory")


# ---- symbolic links ----------------------------------------------------------------------------------------------
def test_a_weights_file_linked_to_an_identical_file_outside_is_refused(world):
    """The manifest is untouched and the bytes behind the link are exactly the ones it lists."""
    out, hostile, outside = world
    copy = outside / "model.safetensors"
    copy.write_bytes((hostile / "model.safetensors").read_bytes())
    (hostile / "model.safetensors").unlink()
    os.symlink(copy, hostile / "model.safetensors")
    before = snapshot(outside)
    assert_set_aside(out, outside, before, "model.safetensors is a symbolic link")


def test_a_folder_on_the_way_that_is_a_link_outside_is_refused(world):
    out, hostile, outside = world
    before = snapshot(outside)
    os.symlink(outside, hostile / "shared")
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__("shared/secret.txt", digest_of(SECRET)))
    assert_set_aside(out, outside, before, "shared is a symbolic link")


def test_an_unlisted_link_in_the_folder_is_refused(world):
    """The Trainer loads ``scaler.pt`` when it exists, listed in the manifest or not."""
    out, hostile, outside = world
    before = snapshot(outside)
    os.symlink(outside / "secret.txt", hostile / "scaler.pt")
    assert_set_aside(out, outside, before, "scaler.pt is a symbolic link")


def test_an_unlisted_fifo_in_the_folder_is_refused(world):
    out, hostile, outside = world
    before = snapshot(outside)
    os.mkfifo(hostile / "rng_state_1.pth")
    assert_set_aside(out, outside, before, "rng_state_1.pth is a fifo")


def test_a_manifest_that_is_a_link_is_refused(world):
    """A link to the valid manifest of the outside checkpoint (whose files this folder holds copies of)."""
    out, hostile, outside = world
    (hostile / MANIFEST_NAME).unlink()
    for name in os.listdir(outside / "checkpoint-9"):
        if name != MANIFEST_NAME:
            (hostile / name).write_bytes((outside / "checkpoint-9" / name).read_bytes())
    os.symlink(outside / "checkpoint-9" / MANIFEST_NAME, hostile / MANIFEST_NAME)
    before = snapshot(outside)
    assert_set_aside(out, outside, before, f"{MANIFEST_NAME} is a symbolic link")


def test_a_manifest_that_is_a_fifo_does_not_hang_the_scan(world):
    out, hostile, outside = world
    before = snapshot(outside)
    (hostile / MANIFEST_NAME).unlink()
    os.mkfifo(hostile / MANIFEST_NAME)
    assert_set_aside(out, outside, before, "uncommitted")


def test_a_checkpoint_folder_that_is_a_link_is_moved_as_a_link_and_never_followed(world):
    """``checkpoint-3`` links to a complete, valid committed checkpoint outside: it is still refused, quarantine
    moves the link itself, and nothing is written into the target (no quarantine record there)."""
    out, _hostile, outside = world
    (out / "checkpoint-2").rename(out / "checkpoint-2-kept-aside")
    os.symlink(outside / "checkpoint-9", out / "checkpoint-2")
    before = snapshot(outside)
    assert_set_aside(out, outside, before, "symbolic link")
    assert not (outside / "checkpoint-9" / QUARANTINE_RECORD).exists()
    moved = [p for p in CheckpointStore(out).quarantine_dir.iterdir() if p.is_symlink()]
    assert len(moved) == 1 and os.readlink(moved[0]) == str(outside / "checkpoint-9")
    # Retention and the trash never delete through such a link either.
    store = CheckpointStore(out)
    os.symlink(outside / "checkpoint-9", out / "checkpoint-5")
    assert [e.step for e in store.committed()] == [1]
    assert store.prune(max_keep=1) == []
    (store.trash_dir).mkdir(parents=True, exist_ok=True)
    os.replace(out / "checkpoint-5", store.trash_dir / "pruned-5")
    store.empty_trash()
    assert not os.path.lexists(store.trash_dir / "pruned-5")
    assert snapshot(outside) == before


# ---- field types -------------------------------------------------------------------------------------------------
def _set(key, value):
    return lambda body: body.__setitem__(key, value)


def _set_file_field(field, value):
    return lambda body: body["files"]["model.safetensors"].__setitem__(field, value)


MALFORMED = [
    ("files-is-a-list", _set("files", ["model.safetensors"]), "files is list"),
    ("files-is-a-string", _set("files", "model.safetensors"), "files is str"),
    ("files-empty", _set("files", {}), "files is empty"),
    ("entry-not-mapping", lambda b: b["files"].__setitem__("model.safetensors", 7), "not a mapping"),
    ("size-string", _set_file_field("size", "1000"), "not a non-negative integer"),
    ("size-negative", _set_file_field("size", -1), "not a non-negative integer"),
    ("size-bool", _set_file_field("size", True), "not a non-negative integer"),
    ("size-float", _set_file_field("size", 10.0), "not a non-negative integer"),
    ("xxh3-short", _set_file_field("xxh3_128", "abc"), "hex string"),
    ("xxh3-not-hex", _set_file_field("xxh3_128", "z" * 32), "hex string"),
    ("xxh3-number", _set_file_field("xxh3_128", 12345), "hex string"),
    ("sha256-short", _set_file_field("sha256", "ab"), "sha256"),
    ("step-string", _set("step", "2"), "step is"),
    ("step-negative", _set("step", -2), "step is"),
    ("committed-string", _set("committed_unix", "yesterday"), "committed_unix"),
    ("meta-list", _set("meta", [1, 2]), "meta is not a mapping"),
    ("reason-number", _set("reason", 5), "reason is not a string"),
]


@pytest.mark.parametrize("mutate, reason", [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_a_malformed_field_sets_the_folder_aside_instead_of_crashing(world, mutate, reason):
    out, hostile, outside = world
    before = snapshot(outside)
    rewrite_manifest(hostile, mutate)
    assert_set_aside(out, outside, before, reason)


def test_a_manifest_that_is_not_json_or_nests_too_deeply_is_set_aside(world, committed_checkpoint):
    out, hostile, outside = world
    before = snapshot(outside)
    (hostile / MANIFEST_NAME).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert_set_aside(out, outside, before, "unreadable manifest")


# ---- content the Trainer could not load --------------------------------------------------------------------------
STATES = [
    ("not-json", "{not json", "unreadable"),
    ("a-list", "[1, 2]", "not a JSON object"),
    ("step-string", json.dumps({"global_step": "2"}), "says step '2'"),
    ("epoch-string", json.dumps({"global_step": 2, "epoch": "one"}), "epoch is str"),
    ("callbacks-list", json.dumps({"global_step": 2, "stateful_callbacks": [1]}), "stateful_callbacks"),
    ("unknown-field", json.dumps({"global_step": 2, "surprise": 1}), "does not know: surprise"),
]


@pytest.mark.parametrize("text, reason", [s[1:] for s in STATES], ids=[s[0] for s in STATES])
def test_a_verified_folder_whose_trainer_state_cannot_load_is_set_aside(world, text, reason):
    """The manifest matches the (bad) bytes exactly: only the load check can tell."""
    out, hostile, outside = world
    before = snapshot(outside)
    (hostile / "trainer_state.json").write_text(text, encoding="utf-8")
    commit_checkpoint(hostile, step=2, reason="test")
    assert verify_checkpoint(hostile).ok
    assert_set_aside(out, outside, before, reason)


# ---- checkpoints without a manifest (plain Trainer, allow_unverified) ----------------------------------------------
def test_weight_index_names_are_confined(tmp_path, plain_checkpoint):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shard.safetensors").write_bytes(b"x" * 64)
    folder = plain_checkpoint(tmp_path / "out", 4)
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../../outside/shard.safetensors"}}), encoding="utf-8"
    )
    problems = check_plain_checkpoint(folder, 4)
    assert any("model.safetensors.index.json unreadable" in p and "component" in p for p in problems), (
        problems
    )
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1]}), encoding="utf-8")
    assert any("weight_map is not a mapping" in p for p in check_plain_checkpoint(folder, 4))


def test_a_committed_weight_index_naming_files_outside_is_refused(world):
    """The index matches its manifest entry byte for byte; the Trainer would join its names onto the folder."""
    out, hostile, outside = world
    before = snapshot(outside)
    (hostile / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"w": "../../outside/secret.txt"}}), encoding="utf-8"
    )
    commit_checkpoint(hostile, step=2, reason="test")
    assert verify_checkpoint(hostile).ok
    assert_set_aside(out, outside, before, "model.safetensors.index.json unreadable")


def test_a_committed_weight_index_naming_a_shard_the_manifest_does_not_list_is_set_aside(world):
    """Every shard the index names must be a manifest file, so that verification covers it: here the last shard
    was missing when the folder was committed (the manifest and the index agree with the bytes on disk)."""
    out, hostile, outside = world
    before = snapshot(outside)
    shards = [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    for name in shards[:2]:
        (hostile / name).write_bytes(b"x" * 64)
    (hostile / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 3}, "weight_map": {f"w{k}": s for k, s in enumerate(shards)}}),
        encoding="utf-8",
    )
    commit_checkpoint(hostile, step=2, reason="test")
    assert verify_checkpoint(hostile).ok
    assert_set_aside(out, outside, before, "names shard(s) the manifest does not list: " + shards[2])


def test_unverified_folders_with_links_are_refused_before_anything_is_read(tmp_path, plain_checkpoint):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = plain_checkpoint(tmp_path / "out", 4)
    real = outside / "optimizer.pt"
    real.write_bytes((folder / "optimizer.pt").read_bytes())
    (folder / "optimizer.pt").unlink()
    os.symlink(real, folder / "optimizer.pt")
    assert check_plain_checkpoint(folder, 4) == ["optimizer.pt is a symbolic link"]
    report = scan_checkpoints(tmp_path / "out", allow_unverified=True)
    assert report.chosen is None and report.candidates[0].status == "quarantined"
    assert real.read_bytes()  # still there, untouched


def test_verify_command_refuses_and_never_hangs_on_dev_zero(world, capsys):
    out, hostile, _outside = world
    rewrite_manifest(hostile, lambda body: body["files"].__setitem__("/dev/zero", digest_of(b"")))
    box = {}
    thread = threading.Thread(
        target=lambda: box.setdefault("code", cli_main(["verify", str(out), "--full"])), daemon=True
    )
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "aegis-ckpt verify --full hangs"
    text = capsys.readouterr().out
    assert box["code"] == 1 and "checkpoint-2: BAD" in text and "absolute path" in text
    assert (out / "checkpoint-2").is_dir(), "verify is read-only"
