"""Secrets stay secret: a webhook URL (its token is in the path) or a token never appears in a log line, an error
message or a supervised command line that the project prints, including YAML and ``--set`` errors.

Real CLI processes, their whole output searched for the secret. The commands that fail before transformers is
imported run as subprocesses; the config checks that need it run through the same entry point in this process.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from testenv import REPO_ROOT, subprocess_env

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.system.redact import redact, redact_argv

TOKEN = "T0AEGIS/B0SECRET/xoxbSuperSecretToken42"
# A closed port on loopback: the webhook fails at once, and its failure is logged.
URL = f"http://127.0.0.1:9/services/{TOKEN}?key=QuerySecret99"
SECRETS = ("SuperSecretToken42", "QuerySecret99", "B0SECRET", "hf_HubTokenSecret77")
TINY = REPO_ROOT / "configs" / "tiny.yaml"


def cli(*args: str, env: dict[str, str] | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "aegis_ckpt", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(env),
        timeout=120,
    )
    return f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} leaked:\n{text}"


def config_with_webhook(tmp_path: Path, url: str = URL, extra: str = "") -> Path:
    cfg = tmp_path / "cfg.yaml"
    text = TINY.read_text(encoding="utf-8").replace("../data/", f"{REPO_ROOT / 'data'}/")
    cfg.write_text(text + f"notify:\n  webhook_url: {url}\n{extra}", encoding="utf-8")
    return cfg


@pytest.mark.parametrize(
    "override, message",
    [
        # not valid YAML: PyYAML's own message quotes the text around the problem
        (f"notify.webhook_url=[{URL}", "not valid YAML"),
        (f"notify.webhook_url={{{URL}", "not valid YAML"),
        (f"notify.webhook_url='{URL}", "not valid YAML"),
        (f"notify.webhook_url=- a\n- {URL}\n  : [", "not valid YAML"),
        (
            f"data.block_size={URL}",
            "data.block_size: expected an integer",
        ),  # a type error that shows what it got
        (f"notify.{URL}=1", "unknown key"),  # the secret in the key
    ],
)
def test_set_errors_never_show_the_secret(tmp_path, override, message):
    # The output dir is a file: should an override ever parse, the run still stops before training.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    text = cli("train", str(TINY), "--set", f"training.output_dir={blocker}", "--set", override)
    assert "exit 2" in text and "aegis-ckpt: error:" in text and message in text, text
    assert_no_secret(text)


def test_yaml_errors_never_show_the_secret(tmp_path):
    cfg = config_with_webhook(tmp_path, extra="  sound: [unclosed\n")
    text = cli("train", str(cfg))
    assert "exit 2" in text and "not valid YAML at line" in text, text
    assert_no_secret(text)
    cfg.write_text(f"notify:\n  webhook_url: {URL}\n\tbad: tab\n", encoding="utf-8")
    text = cli("preflight", str(cfg))
    assert "exit 2" in text and "not valid YAML" in text, text
    assert_no_secret(text)


def test_failed_webhook_logs_only_scheme_and_host(tmp_path):
    text = cli("notify", "failed", "--no-sound", env={"AEGIS_WEBHOOK_URL": URL})
    assert "webhook http://127.0.0.1/***" in text and "not delivered" in text, text
    assert_no_secret(text)
    cfg = config_with_webhook(tmp_path, url="${AEGIS_WEBHOOK_URL}")
    text = cli("-v", "notify", "finished", "--no-sound", "--config", str(cfg), env={"AEGIS_WEBHOOK_URL": URL})
    assert "not delivered" in text, text
    assert_no_secret(text)


def test_supervised_command_line_is_logged_without_secrets():
    text = cli(
        "run",
        "--max-restarts",
        "0",
        "--",
        sys.executable,
        "-c",
        "import sys; sys.exit(3)",
        "--webhook-url",
        URL,
        "--hf-token=hf_HubTokenSecret77",
        f"--notify={URL}",
    )
    assert "attempt 1: started pid" in text and "exit code 3" in text, text
    assert_no_secret(text)


def test_config_errors_after_the_training_section_never_show_the_secret(tmp_path, capsys):
    """Checks that need the TrainingArguments fields (transformers is already imported here)."""
    bad_scheme = config_with_webhook(tmp_path, url=URL.replace("http://", "ftp://"))
    assert cli_main(["train", str(bad_scheme)]) == 2
    cfg = config_with_webhook(tmp_path)
    assert cli_main(["train", str(cfg), "--set", f"checkpoint.save_interval_sec={URL}"]) == 2
    assert cli_main(["train", str(cfg), "--set", f"notify.webhook_timeout_sec={URL}"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("aegis-ckpt: error:") == 3, captured.err
    assert_no_secret(captured.out + captured.err)


def test_redaction_rules():
    assert redact(f"see {URL} now") == "see http://127.0.0.1:9/*** now"
    assert redact("https://user:pw@example.com") == "https://example.com/***"
    assert redact("https://example.com") == "https://example.com"  # nothing secret in a bare host
    assert redact("token abc123xyz here", {"MY_API_TOKEN": "abc123xyz"}) == "token *** here"
    assert redact("value 1", {"SOME_TOKEN": "1"}) == "value 1"  # too short to mask safely
    assert redact_argv(
        ["python", "t.py", "--token", "s3cr3t-value", "--api-key=k3y-value", "--lr", "1e-3"]
    ) == [
        "python",
        "t.py",
        "--token",
        "***",
        "--api-key=***",
        "--lr",
        "1e-3",
    ]
