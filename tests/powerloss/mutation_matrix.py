"""Run power-loss tests under each mutation (``AEGIS_POWERCUT_MUTATION``) and print which test catches which.

    PYTHONPATH=. .venv/bin/python tests/powerloss/mutation_matrix.py [MUTATION ...]

Each mutation is run against the tests listed for it below, one pytest process each; a mutation is caught when
the test fails. Takes a few minutes; the table it prints is the one in docs/reliability.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

from mutations import MUTATIONS  # noqa: E402

SYNC = "test_powerloss_trainer.py::test_power_cut_during_a_synchronous_trainer_save_and_its_pruning"
ASYNC = "test_powerloss_trainer.py::test_power_cut_during_an_asynchronous_save"
EMERGENCY = "test_powerloss_trainer.py::test_power_cut_during_an_emergency_save_on_sigterm"
LOOP = "test_powerloss_loop.py::test_power_cut_during_custom_loop_saves_run_state_and_pruning"
TOKENIZER = "test_powerloss_train.py::test_power_cut_while_the_tokenizer_cache_is_written"
FINAL = "test_powerloss_train.py::test_power_cut_during_the_final_save_export_and_completion"

TARGETS = {
    "commit: no flush of model.safetensors": [ASYNC, SYNC],
    "commit: no flush of optimizer.pt": [ASYNC, SYNC],
    "commit: no flush of the folder before the manifest": [LOOP, SYNC],
    "commit: no flush of the parent after the manifest": [EMERGENCY, SYNC],
    "commit: manifest before the data is flushed": [SYNC],
    "atomic write: no flush of the temp file": [SYNC],
    "atomic write: no flush of the folder after the rename": [SYNC],
    "atomic write: rename before flush": [SYNC],
    "publish: no flush of the output dir after the rename": [ASYNC, LOOP, FINAL],
    "audit: no flush of the appended line": [SYNC],
    "audit: no flush of the folder after creating the log": [LOOP],
    "publish_dir: no flush of the files": [TOKENIZER],
    "publish_dir: no flush of the parent after the rename": [TOKENIZER],
}


def run(mutation: str, node: str) -> bool:
    """True when the test fails under the mutation (the mutation is caught)."""
    env = dict(os.environ, AEGIS_POWERCUT_MUTATION=mutation, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(HERE / node)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    return proc.returncode != 0


def main(names: list[str]) -> int:
    for name in names or list(TARGETS):
        assert name in MUTATIONS, name
        results = [(node.split("::")[1], run(name, node)) for node in TARGETS[name]]
        caught = [test for test, failed in results if failed]
        missed = [test for test, failed in results if not failed]
        print(
            f"| {name} | caught by: {', '.join(caught) or '-'} | not by: {', '.join(missed) or '-'} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
