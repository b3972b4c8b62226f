"""The final model off the machine: ``aegis-ckpt train`` with a remote uploads ``final_model/`` after the final
export with its completion marker last; ``aegis-ckpt pull`` and a fresh machine's resume fetch it (verified)
beside the final checkpoint; without the marker (an upload cut short) it is never fetched."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testenv import subprocess_env

from aegis_ckpt import find_resume_checkpoint
from aegis_ckpt.remote.finalmodel import FINAL_MARKER_NAME
from aegis_ckpt.storage.commit import verify_checkpoint
from aegis_ckpt.storage.layout import MANIFEST_NAME

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cluster"))
from clusterlib import assert_same_weights, final_weights, train_args  # noqa: E402

pytestmark = pytest.mark.slow

STEPS = 12


def aegis(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "aegis_ckpt", *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_final_model_is_mirrored_with_its_marker_last_and_pulled_back(tmp_path, bucket_url, s3):
    out = tmp_path / "run"
    run = aegis("train", *train_args(out, STEPS, "--set", f"remote.url={bucket_url}"))
    assert run.returncode == 0, run.stderr[-3000:]
    root = bucket_url.removeprefix("s3://")
    s3.invalidate_cache()
    names = {p.rsplit("/", 1)[-1] for p in s3.find(f"{root}/final_model")}
    assert {"model.safetensors", MANIFEST_NAME, FINAL_MARKER_NAME} <= names
    marker_time = s3.info(f"{root}/final_model/{FINAL_MARKER_NAME}")["LastModified"]
    assert all(s3.info(f"{root}/final_model/{n}")["LastModified"] <= marker_time for n in names)

    pulled = aegis("pull", bucket_url, str(tmp_path / "pulled"))
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert str(tmp_path / "pulled" / "final_model") in pulled.stdout
    assert verify_checkpoint(tmp_path / "pulled" / "final_model", full=True).ok
    assert_same_weights(final_weights(tmp_path / "pulled"), final_weights(out))

    fresh = tmp_path / "fresh"  # a fresh machine's resume brings the final model with the final checkpoint
    assert find_resume_checkpoint(fresh, remote_url=bucket_url) == str(fresh / f"checkpoint-{STEPS}")
    assert_same_weights(final_weights(fresh), final_weights(out))

    s3.rm_file(f"{root}/final_model/{FINAL_MARKER_NAME}")  # as if the upload was cut short before the marker
    again = aegis("pull", bucket_url, str(tmp_path / "unmarked"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert not (tmp_path / "unmarked" / "final_model").exists()

    rerun = aegis(
        "train", *train_args(out, STEPS, "--set", f"remote.url={bucket_url}")
    )  # finished: completes it
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    s3.invalidate_cache()
    assert s3.exists(f"{root}/final_model/{FINAL_MARKER_NAME}")
