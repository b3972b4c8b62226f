"""One-line config errors (configcheck) through ``cli.main`` in-process: key, value, expectation; "did you
mean"; secret values never shown; exit code 2."""

from __future__ import annotations

import pytest
from testenv import REPO_ROOT

from aegis_ckpt.cli import main
from aegis_ckpt.configcheck import check_known_keys, describe, is_secret_key
from aegis_ckpt.errors import ConfigError

TINY = str(REPO_ROOT / "configs" / "tiny.yaml")


def error_of(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aegis-ckpt: error: "), err
    return err[0]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("checkpoint.max_keep=many", "checkpoint.max_keep: expected an integer, got 'many'"),
        ("checkpoint.max_keep=0", "checkpoint.max_keep must be an integer >= 1 (got 0)"),
        ("checkpoint.save_interval_sec=[1]", "checkpoint.save_interval_sec: expected a number, got [1]"),
        ("training.save_strategy=no", "got False (YAML reads no/yes/off/on as false/true"),
        ("training.save_strategy=stpes", "expected one of 'no', 'steps', 'epoch', 'best', got 'stpes'"),
        (
            "emergency.grace_perid_sec=3",
            "unknown key emergency.grace_perid_sec (did you mean 'grace_period_sec'?)",
        ),
        ("resume.verify=ful", "resume.verify must be one of"),
        ("traning.max_steps=3", "unknown section traning (did you mean 'training'?)"),
    ],
)
def test_bad_value_names_key_value_and_expectation(capsys, tmp_path, override, expected):
    line = error_of(capsys, "preflight", TINY, "--set", f"training.output_dir={tmp_path}", "--set", override)
    assert expected in line


def test_secret_values_are_never_shown(capsys, tmp_path):
    token = "hooks.example/T0KEN-s3cret"
    for override in (
        f"notify.webhook_url={token}",
        "notify.webhook_url=[1234567]",
        f"training.hub_token=[{token}]",
    ):
        line = error_of(
            capsys, "preflight", TINY, "--set", f"training.output_dir={tmp_path}", "--set", override
        )
        assert "s3cret" not in line and "1234567" not in line, line


def test_unknown_key_without_close_match_points_to_the_reference():
    with pytest.raises(
        ConfigError, match=r"unknown key training.zzz \(\d+ keys; see docs/configuration.md\)"
    ):
        check_known_keys("training", {"zzz": 1}, [f"key_{i}" for i in range(40)])


def test_secret_key_names_and_descriptions():
    assert is_secret_key("webhook_url") and is_secret_key("notify.hub_token") and is_secret_key("api_key")
    assert not is_secret_key("max_keep") and not is_secret_key("webhook_timeout_sec")
    assert describe(float | None) == "a number or null"
