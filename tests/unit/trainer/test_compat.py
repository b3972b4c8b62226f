"""Setups that cannot work are refused or warned about, on the real argument classes users pass."""

from __future__ import annotations

import logging

import pytest
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import CheckpointOptions
from aegis_ckpt.trainer.compat import check_training_setup, started_alone_by_accelerate_cpu_launcher

COMMON = dict(report_to="none", use_cpu=True)


def test_plain_arguments_pass(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        check_training_setup(TrainingArguments(tmp_path, **COMMON), CheckpointOptions(), env={})
        check_training_setup(
            Seq2SeqTrainingArguments(tmp_path, **COMMON), CheckpointOptions(keep_best=False), env={}
        )
    assert caplog.records == []


def test_load_best_model_at_end_needs_keep_best(tmp_path):
    args = TrainingArguments(
        tmp_path, eval_strategy="steps", save_strategy="steps", load_best_model_at_end=True, **COMMON
    )
    check_training_setup(args, CheckpointOptions(keep_best=True))
    with pytest.raises(ConfigError, match="Keep keep_best=True"):
        check_training_setup(args, CheckpointOptions(keep_best=False, max_keep=2))


def test_trl_sync_ref_model_warns_that_resume_is_not_exact(tmp_path, caplog):
    trl = pytest.importorskip("trl")
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        check_training_setup(trl.DPOConfig(tmp_path, sync_ref_model=True, **COMMON), CheckpointOptions())
    assert "sync_ref_model=True" in caplog.text and "not part of any checkpoint" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        check_training_setup(trl.DPOConfig(tmp_path, **COMMON), CheckpointOptions())
    assert caplog.text == ""


# The environments accelerate 1.x's launchers give the training process (printed by a real launch):
ACCELERATE_CPU_2 = {"ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
ACCELERATE_CPU_1 = {"ACCELERATE_USE_CPU": "True"}
TORCHRUN_WORKER = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}
MPI_WORKER = {**ACCELERATE_CPU_2, "PMI_SIZE": "2"}


@pytest.mark.parametrize(
    "env, alone",
    [
        (ACCELERATE_CPU_2, True),
        (ACCELERATE_CPU_1, False),
        (TORCHRUN_WORKER, False),
        (MPI_WORKER, False),
        ({}, False),
    ],
    ids=["accelerate-cpu-2", "accelerate-cpu-1", "torchrun", "mpirun", "plain"],
)
def test_accelerate_cpu_launcher_starting_one_of_several_processes_is_recognised(
    env, alone, tmp_path, caplog
):
    assert started_alone_by_accelerate_cpu_launcher(env) is alone
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        check_training_setup(TrainingArguments(tmp_path, **COMMON), CheckpointOptions(), env=env)
    assert ("started only this one" in caplog.text) is alone
