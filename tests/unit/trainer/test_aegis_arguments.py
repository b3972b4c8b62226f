"""``AegisArguments``: HfArgumentParser next to TrainingArguments (flags and YAML), the callback taking it, and
the fields generated from the option dataclasses."""

from __future__ import annotations

import dataclasses

import pytest
from transformers import HfArgumentParser, TrainingArguments

from aegis_ckpt import AegisArguments, AegisCheckpointCallback
from aegis_ckpt.errors import ConfigError
from aegis_ckpt.options import AsyncOptions, CheckpointOptions, EmergencyOptions


def parse(*flags: str):
    parser = HfArgumentParser((TrainingArguments, AegisArguments))
    return parser.parse_args_into_dataclasses(["--output_dir", "unused", "--report_to", "none", *flags])


def test_flags_next_to_training_arguments():
    training, aegis = parse(
        "--save_interval_sec",
        "180",
        "--max_keep",
        "3",
        "--no_keep_best",
        "--async_writer",
        "process",
        "--learning_rate",
        "1e-4",
    )
    assert training.learning_rate == 1e-4
    options, emergency, async_options = aegis.to_options()
    assert (options.save_interval_sec, options.max_keep, options.keep_best) == (180.0, 3, False)
    assert async_options.writer == "process" and emergency == EmergencyOptions()


def test_help_lists_the_options_and_choices():
    text = HfArgumentParser(AegisArguments).format_help()
    assert "--save_interval_sec" in text and "{thread,process}" in text and "Wall-clock seconds" in text


def test_yaml_file(tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text("output_dir: out\nreport_to: none\nsave_interval_sec: 30\nasync_save: false\n")
    training, aegis = HfArgumentParser((TrainingArguments, AegisArguments)).parse_yaml_file(str(path))
    assert aegis.save_interval_sec == 30 and aegis.to_options()[2].enabled is False


def test_every_option_field_is_one_argument_and_none_collides_with_training_arguments():
    names = [f.name for f in dataclasses.fields(AegisArguments)]
    option_fields = sum(
        len(dataclasses.fields(c)) for c in (CheckpointOptions, EmergencyOptions, AsyncOptions)
    )
    assert len(names) == len(set(names)) == option_fields + 1  # + adopt_plain (a resume choice)
    assert not set(names) & {f.name for f in dataclasses.fields(TrainingArguments)}


def test_bad_values_are_refused_by_the_option_classes():
    with pytest.raises(ConfigError, match="max_keep must be an integer >= 1"):
        AegisArguments(max_keep=0)
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        parse("--async_when_busy", "later")


def test_callback_takes_the_arguments(tmp_path, make_trainer):
    callback = AegisCheckpointCallback(args=AegisArguments(save_interval_sec=42, grace_period_sec=5))
    assert callback.options.save_interval_sec == 42 and callback.emergency.grace_period_sec == 5
    with pytest.raises(TypeError, match="either args=AegisArguments"):
        AegisCheckpointCallback(max_keep=2, args=AegisArguments())
    # max_keep left unset falls back to the Trainer's save_total_limit, as with the flat keywords.
    make_trainer(tmp_path, callbacks=[callback], save_total_limit=2)
    assert callback.options.max_keep == 2
    explicit = AegisCheckpointCallback(args=AegisArguments(max_keep=4))
    make_trainer(tmp_path, callbacks=[explicit], save_total_limit=2)
    assert explicit.options.max_keep == 4
