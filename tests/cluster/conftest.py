"""A real single-node Slurm for the cluster tests, one per test session, and the uninterrupted runs they share.

``slurm`` starts munged, slurmctld and slurmd as root (``slurm_cluster.sh``: no cgroups, loopback, free ports,
cred_expire=5 for fast requeues) and stops them after the session. Without root or Slurm the tests skip locally
and fail in CI (``CI`` set), where ``.ci/run`` installs slurm-wlm and munge first.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from clusterlib import CLUSTER_SCRIPT, ReferenceRuns, SlurmCluster


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    why = None
    if sys.platform != "linux" or os.geteuid() != 0:
        why = "a test Slurm cluster needs Linux and root"
    elif shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        why = "slurm-wlm is not installed and apt-get is missing"
    if why:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Slurm tests: {why}")
        pytest.skip(why)
    state_dir = tmp_path_factory.mktemp("slurm")
    proc = subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), "start", str(state_dir)], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state_dir)], timeout=120)
        pytest.fail(f"could not start the test Slurm cluster: {proc.stderr[-3000:]}")
    conf = proc.stdout.strip().splitlines()[-1].partition("=")[2]
    try:
        yield SlurmCluster(conf=conf, state_dir=state_dir)
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state_dir)], timeout=120)


@pytest.fixture(scope="session")
def reference_runs(tmp_path_factory):
    runs = ReferenceRuns(tmp_path_factory.mktemp("reference"))
    try:
        yield runs
    finally:
        runs.stop()
