"""``read_output_dir``: the launchers' quick read of ``training.output_dir`` gives what the full config load gives
(relative to the file, ``${VAR}`` and ``${VAR:-default}``, ``~``, ``--set`` overrides), and a one-line ``ConfigError`` otherwise."""

from __future__ import annotations

import pytest

from aegis_ckpt.errors import ConfigError
from aegis_ckpt.train.config import load_config, read_output_dir


@pytest.mark.parametrize(
    "value", ["../runs/x", "runs/a b", "${AEGIS_TEST_OUT}/y", "${AEGIS_TEST_UNSET:-rel}", "~/r"]
)
def test_same_answer_as_the_full_config(tmp_path, monkeypatch, value):
    monkeypatch.setenv("AEGIS_TEST_OUT", str(tmp_path / "env out"))
    monkeypatch.delenv("AEGIS_TEST_UNSET", raising=False)
    config = tmp_path / "configs" / "c.yaml"
    config.parent.mkdir()
    config.write_text(
        f'model: {{arch: gpt2}}\ndata: {{train_file: a.txt}}\ntraining: {{output_dir: "{value}"}}\n'
    )
    assert read_output_dir(config) == load_config(config).output_dir


@pytest.mark.parametrize("text", ["training: {}\n", "- a list\n", "training: {output_dir: [1]}\n", "a: [\n"])
def test_unreadable_is_a_config_error(tmp_path, text):
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError):
        read_output_dir(config)
    with pytest.raises(ConfigError, match="not found|FileNotFoundError"):
        read_output_dir(tmp_path / "missing.yaml")


@pytest.mark.parametrize("override", ["training.output_dir=elsewhere", "training.output_dir=/abs/run"])
def test_set_overrides_count_as_in_the_full_config(tmp_path, override):
    """``aegis-ckpt launcher --log-dir CONFIG --set ...`` (train.sbatch passes the job's overrides)."""
    config = tmp_path / "c.yaml"
    config.write_text("model: {arch: gpt2}\ndata: {train_file: a.txt}\ntraining: {output_dir: runs/x}\n")
    assert (
        read_output_dir(config, [override, "training.max_steps=5"])
        == load_config(config, [override]).output_dir
    )
    assert read_output_dir(config, ["training.max_steps=5"]) == tmp_path / "runs" / "x"
