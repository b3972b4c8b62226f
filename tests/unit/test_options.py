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


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, None),
        (40_000, 40_000),
        ("5GB", 5 * 10**9),
        ("500MiB", 500 * 2**20),
        ("1.5 kb", 1500),
        ("123", 123),
    ],
)
def test_max_shard_bytes_takes_bytes_or_a_size_text(value, expected):
    assert CheckpointOptions(max_shard_bytes=value).max_shard_bytes == expected


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "5 GBs", "lots", "0.1B", [5]])
def test_max_shard_bytes_refuses_anything_else_in_one_line(value):
    with pytest.raises(ConfigError, match=r"max_shard_bytes must be the largest weight shard") as info:
        CheckpointOptions(max_shard_bytes=value)
    assert "\n" not in str(info.value) and repr(value) in str(info.value)


def test_max_shard_bytes_from_a_config_section_and_a_flag():
    from transformers import HfArgumentParser

    from aegis_ckpt import AegisArguments

    assert CheckpointOptions.from_mapping({"max_shard_bytes": "2GB"}).max_shard_bytes == 2 * 10**9
    with pytest.raises(ConfigError, match="max_shard_bytes must be"):
        CheckpointOptions.from_mapping({"max_shard_bytes": "2 apples"})
    (aegis,) = HfArgumentParser(AegisArguments).parse_args_into_dataclasses(["--max_shard_bytes", "300MB"])
    assert aegis.to_options()[0].max_shard_bytes == 300 * 10**6
    (aegis,) = HfArgumentParser(AegisArguments).parse_args_into_dataclasses([])
    assert aegis.to_options()[0].max_shard_bytes is None  # save_pretrained's default, as the Trainer's save
