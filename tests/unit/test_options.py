"""Option validation: refused values raise ConfigError with a message that says which value and why."""

from __future__ import annotations

import math

import pytest

from aegis_ckpt import AegisCheckpointCallback, CheckpointOptions, ConfigError


def test_defaults():
    opts = CheckpointOptions()
    assert opts.save_interval_sec == 180.0 and opts.max_keep == 5 and opts.verify == "full"


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3", None])
def test_max_keep_must_be_a_positive_integer(value):
    with pytest.raises(ConfigError, match=r"max_keep must be an integer >= 1 .*newest committed checkpoint"):
        CheckpointOptions(max_keep=value)


@pytest.mark.parametrize("value", [0, 0.0, -5, math.nan, True, "10"])
def test_save_interval_must_be_positive(value):
    with pytest.raises(ConfigError, match=r"save_interval_sec must be a number > 0 .*wall-clock time"):
        CheckpointOptions(save_interval_sec=value)


def test_milestone_spacing_and_verify_mode():
    with pytest.raises(ConfigError, match="keep_milestone_every_sec must be a number > 0"):
        CheckpointOptions(keep_milestone_every_sec=0)
    assert CheckpointOptions(keep_milestone_every_sec=None).keep_milestone_every_sec is None
    with pytest.raises(ConfigError, match=r"verify must be one of \('full', 'quick'\)"):
        CheckpointOptions(verify="fast")


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        CheckpointOptions(max_keep=0)


def test_from_mapping_names_unknown_keys_with_a_suggestion():
    with pytest.raises(ConfigError) as info:
        CheckpointOptions.from_mapping(
            {"max_keep": 3, "save_intervall_sec": 10, "keep_all": True}, where="cfg.yaml"
        )
    message = str(info.value)
    assert "unknown key cfg.yaml.keep_all" in message
    assert "also unknown: save_intervall_sec" in message


def test_from_mapping_builds_and_validates():
    opts = CheckpointOptions.from_mapping({"max_keep": 2, "save_interval_sec": 0.5})
    assert (opts.max_keep, opts.save_interval_sec) == (2, 0.5)
    with pytest.raises(ConfigError, match="max_keep"):
        CheckpointOptions.from_mapping({"max_keep": 0})


def test_callback_validates_through_the_same_dataclass():
    with pytest.raises(ConfigError, match="max_keep"):
        AegisCheckpointCallback(max_keep=0)
    with pytest.raises(ConfigError, match="save_interval_sec"):
        AegisCheckpointCallback(save_interval_sec=-1)
    with pytest.raises(TypeError, match="either the CheckpointOptions object or keyword options"):
        AegisCheckpointCallback(max_keep=2, options=CheckpointOptions())
    cb = AegisCheckpointCallback(save_interval_sec=7, max_keep=2)
    assert cb.options.save_interval_sec == 7 and cb.options.max_keep == 2 and cb.policy.interval_sec == 7
