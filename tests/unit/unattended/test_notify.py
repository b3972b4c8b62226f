"""notify: webhook against a real local HTTP server (secret never logged), sounds through the Windows seam and a
real pseudo-terminal, and nothing ever blocks or raises."""

from __future__ import annotations

import json
import logging
import os
import select
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aegis_ckpt.cli import main as cli_main
from aegis_ckpt.runstate.completion import mark_completed
from aegis_ckpt.unattended import notify

REPO = Path(__file__).resolve().parents[3]
SECRET = "T0SECRET/B1SECRET/xyzSECRETtoken"


class Hook:
    """A local webhook receiver: records POST bodies; answers `status`, or never answers when `hang` is set."""

    def __init__(self, status: int = 200, hang: threading.Event | None = None):
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.bodies.append(
                    {"path": self.path, "json": json.loads(body), "type": self.headers["Content-Type"]}
                )
                if hang is not None:
                    hang.wait(30)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/services/{SECRET}?token={SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_mask_url_keeps_only_scheme_and_host():
    assert notify.mask_url(f"https://hooks.slack.com/services/{SECRET}") == "https://hooks.slack.com/***"
    assert SECRET not in notify.mask_url(f"http://user:{SECRET}@example.com:8080/x?{SECRET}")


def test_webhook_is_posted_and_the_url_never_logged(hook, caplog):
    caplog.set_level(logging.DEBUG, logger="aegis_ckpt")
    result = notify.notify(
        "finished", sound=False, webhook_url=hook.url, details={"step": 360, "output_dir": "/runs/tiny"}
    )
    assert result.webhook_delivered is True
    (posted,) = hook.bodies
    assert posted["type"] == "application/json"
    body = posted["json"]
    assert body["event"] == "finished" and body["step"] == 360 and body["host"] == socket.gethostname()
    assert (
        body["text"] == body["content"] and "training finished" in body["text"] and "step 360" in body["text"]
    )
    assert "webhook http://127.0.0.1/***: delivered (HTTP 200)" in caplog.text
    assert SECRET not in caplog.text and str(hook.server.server_port) not in caplog.text


@pytest.mark.parametrize("status", [404, 500])
def test_webhook_http_errors_are_logged_not_raised(caplog, status):
    h = Hook(status=status)
    try:
        assert notify.post_webhook(h.url, {"x": 1}, timeout_sec=10) is False
    finally:
        h.close()
    assert f"answered HTTP {status}" in caplog.text and SECRET not in caplog.text


def test_webhook_timeout_and_refused_connection(caplog):
    release = threading.Event()
    h = Hook(hang=release)
    try:
        assert notify.post_webhook(h.url, {"x": 1}, timeout_sec=0.3) is False
    finally:
        release.set()
        h.close()
    assert "timed out" in caplog.text
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again at once: nothing listens there
    assert notify.post_webhook(f"http://127.0.0.1:{port}/{SECRET}", {"x": 1}, timeout_sec=5) is False
    assert "failed" in caplog.text and SECRET not in caplog.text


def test_windows_plays_two_different_sounds(monkeypatch):
    played = []
    monkeypatch.setattr(notify, "winsound_play", lambda alias, beep: played.append((alias, beep)))
    assert notify.play_sound("finished", platform="win32") == "Windows sound SystemAsterisk"
    assert notify.play_sound("failed", platform="win32") == "Windows sound SystemHand"
    assert played[0] != played[1] and played[0][1] != played[1][1]


def test_a_stuck_audio_stack_does_not_block(monkeypatch):
    release = threading.Event()
    monkeypatch.setattr(notify, "winsound_play", lambda alias, beep: release.wait(30))
    try:
        result = notify.play_sound("finished", platform="win32", wait_sec=0.2)
        assert not release.is_set() and result == "sound still playing after 0.2 s: not waiting for it"
    finally:
        release.set()


def test_no_audio_device_is_silence_not_an_error(monkeypatch):
    def no_device(alias, beep):
        raise RuntimeError("Failed to play sound")

    monkeypatch.setattr(notify, "winsound_play", no_device)
    assert notify.play_sound("failed", platform="win32") == "no sound (RuntimeError: Failed to play sound)"
    monkeypatch.setattr(notify, "open_tty", lambda: None)
    assert notify.play_sound("finished", platform="linux") == "no terminal for the bell"


def read_all(fd: int) -> bytes:
    """What the terminal received (a pty hands it over in pieces)."""
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        data += os.read(fd, 100)
    return data


def test_terminal_bell_once_on_success_three_times_on_failure(monkeypatch):
    master, slave = os.openpty()
    try:
        for event, rings in (("finished", 1), ("failed", 3)):
            monkeypatch.setattr(notify, "open_tty", lambda: open(os.dup(slave), "w"))
            assert notify.play_sound(event, platform="linux").startswith(f"terminal bell x{rings}")
            assert read_all(master) == b"\a" * rings
    finally:
        os.close(master)
        os.close(slave)


def test_notify_command_reads_config_and_completion(tmp_path, hook, capsys, monkeypatch):
    out = tmp_path / "run"
    mark_completed(out, step=42, checkpoint=None)
    monkeypatch.setenv("AEGIS_WEBHOOK_URL", hook.url)
    monkeypatch.setattr(notify, "open_tty", lambda: None)
    code = cli_main(
        [
            "notify",
            "finished",
            "--config",
            str(REPO / "configs" / "tiny.yaml"),
            "--set",
            f"training.output_dir={out}",
            "--set",
            "notify.webhook_url=${AEGIS_WEBHOOK_URL:-}",
            "--message",
            "all good",
        ]
    )
    assert code == 0
    (posted,) = hook.bodies
    assert posted["json"]["step"] == 42 and posted["json"]["message"] == "all good"
    assert posted["json"]["output_dir"] == str(out)
    err = capsys.readouterr().err
    assert "sound: no terminal for the bell" in err and "delivered" in err and SECRET not in err
