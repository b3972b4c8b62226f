"""A node of a node-local run fetching its share of a remote copy (``cluster.noderemote``), against the real S3
server, in one process (the node is rank 0 of a one-process node: its share is the shared files and
``rng_state_0.pth``). The two-node resume itself runs in ``test_node_local_remote.py``.

Invariants: a node fetches the shared files and its own ranks' RNG states only, every file checked against the
remote manifest's hashes before the copy is committed locally; a copy that fails that (a damaged file) or lacks
this node's RNG state is not used, and the next older remote copy is; a local checkpoint at least as new as the
remote ones is kept and nothing is fetched.
"""

from __future__ import annotations

from pathlib import Path

from aegis_ckpt.cluster.noderemote import pull_newer_common
from aegis_ckpt.options import RemoteOptions
from aegis_ckpt.remote.location import RemoteLocation
from aegis_ckpt.remote.upload import upload_checkpoint
from aegis_ckpt.storage.commit import commit_checkpoint, read_manifest, verify_checkpoint


def _node_local_copy(plain_checkpoint, where: Path, step: int, ranks=(0, 1)) -> Path:
    """What a node-local run's remote copy holds: the shared files and every rank's RNG state."""
    folder = plain_checkpoint(where, step)
    rng = folder / "rng_state.pth"
    for rank in ranks:
        (folder / f"rng_state_{rank}.pth").write_bytes(rng.read_bytes() + bytes([rank]))
    rng.unlink()
    commit_checkpoint(folder, step=step, reason="test", meta={"world_size": 2})
    return folder


def test_a_node_fetches_its_own_share_of_the_newest_copy(tmp_path, bucket_url, plain_checkpoint):
    location = RemoteLocation(bucket_url)
    for step in (10, 20):
        upload_checkpoint(location, _node_local_copy(plain_checkpoint, tmp_path / "src", step))
    out = tmp_path / "node0"
    assert pull_newer_common(out, 0, RemoteOptions(url=bucket_url), verify="full") == 20
    folder = out / "checkpoint-20"
    assert sorted(p.name for p in folder.glob("rng_state*")) == ["rng_state_0.pth"]  # not rank 1's
    assert verify_checkpoint(folder, full=True).ok
    assert set(read_manifest(folder).files) == {p.name for p in folder.iterdir()} - {"aegis_manifest.json"}
    assert read_manifest(folder).meta["world_size"] == 2
    assert not (out / "checkpoint-10").exists()  # only the newest was needed


def test_a_damaged_or_foreign_copy_is_passed_over_for_the_next_older(
    tmp_path, bucket_url, s3, plain_checkpoint
):
    location = RemoteLocation(bucket_url)
    upload_checkpoint(location, _node_local_copy(plain_checkpoint, tmp_path / "src", 10))
    upload_checkpoint(location, _node_local_copy(plain_checkpoint, tmp_path / "src", 20))
    upload_checkpoint(location, _node_local_copy(plain_checkpoint, tmp_path / "src", 30, ranks=(1, 2)))
    root = bucket_url.removeprefix("s3://")
    damaged = bytearray(s3.cat_file(f"{root}/checkpoint-20/rng_state_0.pth"))
    damaged[-1] ^= 0xFF
    s3.pipe_file(f"{root}/checkpoint-20/rng_state_0.pth", bytes(damaged))  # same size, other bytes
    out = tmp_path / "node0"
    # checkpoint-30 lacks rank 0's RNG state (saved by other ranks); checkpoint-20's does not verify.
    assert pull_newer_common(out, 0, RemoteOptions(url=bucket_url), verify="full") == 10
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-10"]  # nothing else published


def test_a_local_checkpoint_as_new_as_the_remote_is_kept(tmp_path, bucket_url, plain_checkpoint):
    location = RemoteLocation(bucket_url)
    upload_checkpoint(location, _node_local_copy(plain_checkpoint, tmp_path / "src", 10))
    out = tmp_path / "node0"
    assert pull_newer_common(out, 10, RemoteOptions(url=bucket_url), verify="full") == 10
    assert not out.exists()  # nothing fetched
