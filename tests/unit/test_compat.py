"""Setups that cannot work are refused or warned about, on the real argument classes users pass."""

from __future__ import annotations

import logging

import pytest
from transformers import Seq2SeqTrainingArguments, TrainingArguments

from aegis_ckpt.compat import check_training_setup
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import CheckpointOptions

COMMON = dict(report_to="none", use_cpu=True)


def test_plain_arguments_pass(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="aegis_ckpt"):
        check_training_setup(TrainingArguments(tmp_path, **COMMON), CheckpointOptions())
        check_training_setup(Seq2SeqTrainingArguments(tmp_path, **COMMON), CheckpointOptions(keep_best=False))
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
