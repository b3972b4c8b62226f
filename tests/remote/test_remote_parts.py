"""One checkpoint whose files lie on two nodes, against the real S3 server in-process: each node's ``NodeMirror``
uploads its share; rank 0 uploads the manifest of the union only once the other node's share is there, of this
session; the result downloads and verifies with every rank's files. Plus the agreement's MIN carried by a MAX."""

from __future__ import annotations

import json

import pytest
from remotelib import remote_steps

from aegis_ckpt.distributed import NO_UPLOAD_LIMIT, StepFlags
from aegis_ckpt.options import RemoteOptions
from aegis_ckpt.remote.download import pull_newest
from aegis_ckpt.remote.location import RemoteLocation
from aegis_ckpt.remote.nodemirror import NodeMirror
from aegis_ckpt.storage.commit import commit_checkpoint, verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME
from aegis_ckpt.storage.store import CheckpointStore


def node_copy(out, rank: int, step: int = 5):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights" * 1000)
    (folder / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    (folder / f"rng_state_{rank}.pth").write_bytes(bytes([rank]) * 333)
    commit_checkpoint(folder, step=step)
    return folder


def mirrors(tmp_path, url, *, session1: int = 7):
    opts = RemoteOptions(url=url, attempts=2)
    coord = NodeMirror(opts, tmp_path / "node0", rank=0, session=7, parts_expected=1)
    part = NodeMirror(opts, tmp_path / "node1", rank=1, session=session1, parts_expected=1)
    return coord, part


def test_manifest_only_after_the_other_nodes_share_and_it_lists_every_rank(tmp_path, bucket_url, s3):
    coord, part = mirrors(tmp_path, bucket_url)
    coord.submit(node_copy(tmp_path / "node0", 0))
    assert coord.flush(60)
    assert remote_steps(s3, bucket_url) == {5: False}  # rank 0's files are up, the manifest waits
    part.submit(node_copy(tmp_path / "node1", 1))
    assert part.flush(60) and part.uploaded_step == 5
    assert remote_steps(s3, bucket_url) == {5: False}  # the agreement has not said so yet
    coord.peers_reached(5)
    assert coord.flush(60)
    assert remote_steps(s3, bucket_url) == {5: True}
    root = bucket_url.removeprefix("s3://")
    files = json.loads(s3.cat_file(f"{root}/checkpoint-5/{MANIFEST_NAME}"))["files"]
    assert sorted(files) == ["model.safetensors", "rng_state_0.pth", "rng_state_1.pth", "trainer_state.json"]
    folder, skipped = pull_newest(RemoteLocation(bucket_url), CheckpointStore(tmp_path / "fresh"))
    assert skipped == [] and verify_checkpoint(folder, full=True).ok
    assert (folder / "rng_state_1.pth").read_bytes() == bytes([1]) * 333
    coord.close(10), part.close(10)


@pytest.mark.parametrize("session1", [7, 8], ids=["share-missing", "share-of-another-session"])
def test_a_step_without_the_other_nodes_share_of_this_session_gets_no_manifest(
    tmp_path, bucket_url, s3, session1
):
    coord, part = mirrors(tmp_path, bucket_url, session1=session1)
    coord.submit(node_copy(tmp_path / "node0", 0))
    if session1 != 7:  # a record left by an earlier session of the run (the step saved again since)
        part.submit(node_copy(tmp_path / "node1", 1))
        assert part.flush(60)
    assert coord.flush(60)
    coord.peers_reached(5)  # even if the agreement said so, the share of this session must be there
    assert coord.flush(60)
    assert remote_steps(s3, bucket_url) == {5: False}
    assert pull_newest(RemoteLocation(bucket_url), CheckpointStore(tmp_path / "fresh"))[0] is None
    coord.close(10), part.close(10)


def test_the_agreement_carries_the_min_uploaded_step_in_its_max():
    ranks = [
        StepFlags(uploads_from=-NO_UPLOAD_LIMIT),
        StepFlags(uploads_from=-30),
        StepFlags(uploads_from=-20),
    ]
    agreed = ranks[0].merge(ranks[1]).merge(ranks[2])
    assert agreed.uploaded_by_all == 20
    assert StepFlags().uploaded_by_all == 0  # no agreement at this step: nothing confirmed
