"""The custom loop's rank handling without a process group: every call is local and takes the decisions the
single-process managers always took; a save writes one ``rng_state.pth``; a checkpoint of another number of
processes is refused on resume. (With 2 real processes: tests/distributed/test_custom_loop_torchrun.py.)"""

from __future__ import annotations

import json

import pytest
import torch

from aegis_ckpt import RollingCheckpointManager
from aegis_ckpt.distributed import StepFlags
from aegis_ckpt.loop.loopstate import LOOP_STATE_NAME, RestoreError
from aegis_ckpt.loop.ranks import LoopRanks
from aegis_ckpt.loop.resumepath import load_on_every_rank
from aegis_ckpt.storage.commit import read_manifest


def test_without_a_process_group_every_decision_is_local():
    ranks = LoopRanks(clock=lambda: 0.0)
    ranks.setup()
    assert (ranks.rank, ranks.world_size, ranks.is_main, ranks.active) == (0, 1, True, False)
    assert ranks.agree(StepFlags(save_due=1, signal=15), step=3) == StepFlags(save_due=1, signal=15)
    assert ranks.any(True) and not ranks.any(False)
    assert ranks.from_main(True) and not ranks.from_main(False)
    assert ranks.share({"chosen": "checkpoint-3"}) == {"chosen": "checkpoint-3"}
    ranks.barrier()
    ranks.close()


def test_a_due_contributed_before_the_last_save_is_dropped_but_a_signal_is_kept():
    """The agreement may report a step late: a "due" from a step the last save already covered is stale."""
    ranks = LoopRanks(clock=lambda: 0.0)
    ranks.last_saved_step = 5
    assert ranks.agree(StepFlags(save_due=1, signal=2), step=5) == StepFlags(signal=2)
    assert ranks.agree(StepFlags(save_due=1), step=6) == StepFlags(save_due=1)


def test_a_single_process_save_keeps_its_file_names_and_records_one_process(tmp_path):
    model = torch.nn.Linear(2, 2)
    with RollingCheckpointManager(tmp_path / "out") as ckpt:
        ckpt.register_model(model)
        ckpt.step(1)
        folder = ckpt.save_checkpoint("manual")
    manifest = read_manifest(folder)
    assert "rng_state.pth" in manifest.files and "rng_state_0.pth" not in manifest.files
    assert manifest.meta["world_size"] == 1
    assert json.loads((folder / LOOP_STATE_NAME).read_text())["world_size"] == 1


def test_a_checkpoint_of_another_number_of_processes_is_refused(tmp_path):
    model = torch.nn.Linear(2, 2)
    with RollingCheckpointManager(tmp_path / "out") as ckpt:
        ckpt.register_model(model)
        ckpt.step(1)
        folder = ckpt.save_checkpoint("manual")
        state = json.loads((folder / LOOP_STATE_NAME).read_text())
        (folder / LOOP_STATE_NAME).write_text(json.dumps({**state, "world_size": 2}))
        with pytest.raises(RestoreError, match="saved by 2 process"):
            load_on_every_rank(ckpt._engine, folder, restore_rng=True)
        assert load_on_every_rank(ckpt._engine, folder, restore_rng=False)["step"] == 1
