"""The "Saving synchronously" notice: info with the reason for setups nobody can change (adapters), a warning
where the user can act (the callback added after the Trainer was built)."""

from __future__ import annotations

import logging

import tinylib
from peft import LoraConfig, get_peft_model

from aegis_ckpt.options import AsyncOptions
from aegis_ckpt.trainer.asyncsave.saver import AsyncSaver


def notice(caplog, trainer) -> logging.LogRecord:
    saver = AsyncSaver(AsyncOptions())
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="aegis_ckpt"):
        saver.choose_mode(trainer)
    saver.close()
    (record,) = [r for r in caplog.records if "Saving synchronously" in r.getMessage()]
    return record


def test_adapters_are_info_with_the_reason(tmp_path, caplog):
    model = get_peft_model(tinylib.build_model(), LoraConfig(r=2, target_modules=["c_attn"]))
    record = notice(caplog, tinylib.make_trainer(tmp_path, model=model))
    message = record.getMessage()
    assert record.levelno == logging.INFO and ("PeftModel" in message or "adapters are attached" in message)


def test_unknown_trainer_is_a_warning(caplog):
    record = notice(caplog, None)
    assert record.levelno == logging.WARNING and "add_callback" in record.getMessage()
