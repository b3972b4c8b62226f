"""The run config: every bad input is refused with a message that names the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.train.config import apply_overrides, load_config, parse_config

REPO = Path(__file__).resolve().parents[3]


def minimal(**sections):
    raw = {
        "model": {"arch": "gpt2", "config": {"n_layer": 1}},
        "data": {"train_file": "corpus.txt"},
        "training": {"output_dir": "out"},
    }
    for key, value in sections.items():
        raw[key] = value
    return raw


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_configs_parse_and_resolve_paths_against_the_config_file():
    tiny = load_config(REPO / "configs" / "tiny.yaml")
    assert tiny.output_dir == REPO / "runs" / "tiny"  # normalised: no "configs/.." in logs and messages
    assert Path(tiny.data.train_file).resolve() == REPO / "data" / "tiny_corpus.txt"
    assert tiny.checkpoint.save_interval_sec == 20
    assert tiny.training["report_to"] == "none"
    v2 = load_config(REPO / "configs" / "aegis_v2.yaml")
    assert v2.checkpoint.save_interval_sec == 180 and v2.checkpoint.max_keep == 5
    assert v2.model.lora is not None and v2.model.name_or_path == "Qwen/Qwen2.5-0.5B"


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_malformed_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "model:\n  arch: gpt2\n training: [\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(path)


def test_empty_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="is empty"):
        load_config(write(tmp_path, ""))
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


@pytest.mark.parametrize(
    "raw, named",
    [
        ({**minimal(), "trainer": {}}, "trainer"),
        (minimal(training={"output_dir": "o", "max_stepz": 3}), "max_stepz"),
        (minimal(checkpoint={"save_every": 3}), "save_every"),
        (minimal(model={"arch": "gpt2", "layers": 3}), "layers"),
        (minimal(resume={"verfy": "full"}), "verfy"),
    ],
)
def test_unknown_keys_are_named(raw, named):
    with pytest.raises(ConfigError, match=f"unknown (key|section) .*{named}"):
        parse_config(raw)


@pytest.mark.parametrize(
    "checkpoint, message",
    [
        ({"max_keep": 0}, "max_keep must be an integer >= 1"),
        ({"max_keep": 2.5}, "checkpoint.max_keep: expected an integer, got 2.5"),
        ({"save_interval_sec": 0}, "save_interval_sec must be a number > 0"),
        ({"save_interval_sec": -5}, "save_interval_sec must be a number > 0"),
        ({"save_interval_sec": "soon"}, "checkpoint.save_interval_sec: expected a number, got 'soon'"),
        ({"max_shard_bytes": "big"}, "max_shard_bytes must be the largest weight shard"),
    ],
)
def test_bad_checkpoint_values(checkpoint, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(minimal(checkpoint=checkpoint))


def test_output_dir_is_required_and_data_source_is_exactly_one():
    with pytest.raises(ConfigError, match="output_dir is required"):
        parse_config(minimal(training={"max_steps": 3}))
    with pytest.raises(ConfigError, match="exactly one of train_file"):
        parse_config(minimal(data={}))
    with pytest.raises(ConfigError, match="exactly one of train_file"):
        parse_config(minimal(data={"train_file": "a", "hf_dataset": {"path": "x"}}))


def test_overrides_parse_values_as_yaml():
    raw = apply_overrides(
        minimal(), ["training.max_steps=12", "checkpoint.save_interval_sec=2.5", "model.lora.r=4"]
    )
    assert raw["training"]["max_steps"] == 12
    assert raw["checkpoint"]["save_interval_sec"] == 2.5
    assert raw["model"]["lora"] == {"r": 4}
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(minimal(), ["training.max_steps"])
    with pytest.raises(ConfigError, match="section.key"):
        apply_overrides(minimal(), ["max_steps=3"])


def test_environment_expansion(monkeypatch):
    monkeypatch.setenv("AEGIS_TEST_BASE", "/data/ck")
    cfg = parse_config(minimal(training={"output_dir": "${AEGIS_TEST_BASE}/run"}))
    assert cfg.output_dir == Path("/data/ck/run")
    monkeypatch.delenv("AEGIS_TEST_BASE")
    cfg = parse_config(minimal(training={"output_dir": "${AEGIS_TEST_BASE:-/tmp/x}/run"}))
    assert cfg.output_dir == Path("/tmp/x/run")
    with pytest.raises(ConfigError, match="AEGIS_TEST_BASE is not set"):
        parse_config(minimal(training={"output_dir": "${AEGIS_TEST_BASE}/run"}))


def test_yaml11_exponent_strings_become_floats():
    cfg = parse_config(minimal(training={"output_dir": "o", "learning_rate": "5e-4"}))
    assert cfg.training["learning_rate"] == pytest.approx(5e-4)


def test_resume_settings_in_the_checkpoint_section_are_pointed_to_resume():
    with pytest.raises(ConfigError, match=r"checkpoint.verify belongs in the resume: section"):
        parse_config(minimal(checkpoint={"verify": "quick"}))
    with pytest.raises(ConfigError, match=r"resume.verify must be one of"):
        parse_config(minimal(resume={"verify": "paranoid"}))
