"""Which Trainer subclasses keep asynchronous saves: those whose save methods add nothing to a checkpoint.

Checked on the real classes of the installed transformers and TRL (instances made without ``__init__``: only
their type matters). If TRL changes one of the allow-listed overrides, the source check below fails: re-check
that it still writes only the model card before keeping it on the list.
"""

from __future__ import annotations

import inspect
import re

import pytest
from transformers import Seq2SeqTrainer, Trainer

from aegis_ckpt.trainer.compat import _MODEL_CARD_ONLY_OVERRIDES, overridden_save_method

TRL_MODEL_CARD_ONLY_BODY = """
if self.args.hub_model_id is None:
    model_name = Path(self.args.output_dir).name
else:
    model_name = self.args.hub_model_id.split("/")[-1]
self.create_model_card(model_name=model_name)
super()._save_checkpoint(model, trial)
"""


def bare(cls):
    return cls.__new__(cls)


def body_of(function) -> str:
    lines = inspect.getsource(function).splitlines()[1:]  # drop the def line
    lines = [line for line in lines if line.strip() and not line.strip().startswith("#")]
    indent = min(len(line) - len(line.lstrip()) for line in lines)
    return "\n".join(line[indent:] for line in lines)


def test_transformers_trainers_keep_async_saves():
    assert overridden_save_method(bare(Trainer)) is None
    assert overridden_save_method(bare(Seq2SeqTrainer)) is None


def test_a_subclass_overriding_a_save_method_is_named():
    class WithExtraHead(Seq2SeqTrainer):
        def _save(self, output_dir=None, state_dict=None):
            super()._save(output_dir, state_dict)

    class Child(WithExtraHead):
        pass

    assert overridden_save_method(bare(Child)) == (
        "test_a_subclass_overriding_a_save_method_is_named.<locals>.WithExtraHead._save"
    )


def test_trl_model_card_only_overrides_are_allowed_and_grpo_is_not():
    trl = pytest.importorskip("trl")
    for module, name in sorted(_MODEL_CARD_ONLY_OVERRIDES):
        cls = getattr(trl, name)
        assert cls.__module__ == module
        assert body_of(cls._save_checkpoint) == TRL_MODEL_CARD_ONLY_BODY.strip(), (
            f"{name} changed: re-check it"
        )
        assert overridden_save_method(bare(cls)) is None, name
    # GRPO also writes entropy_ctrl_state.json into the checkpoint folder.
    assert re.search(r"entropy_ctrl_state\.json", inspect.getsource(trl.GRPOTrainer._save_checkpoint))
    assert overridden_save_method(bare(trl.GRPOTrainer)) == "GRPOTrainer._save_checkpoint"
