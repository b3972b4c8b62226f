"""End-of-run notifications: a sound the user hears from the next room, and an optional webhook.

``aegis-ckpt notify finished|failed`` is what the launchers call when the supervisor returns. Nothing here may
delay or fail the end of a run: the sound is played on a daemon thread that is waited for at most
``SOUND_WAIT_SEC`` (a machine without audio, a service without a terminal, a missing sound file: all silent),
and a webhook failure is one log line.

* Windows: ``winsound`` with two different system sounds (finished: "SystemAsterisk", failed: "SystemHand"),
  falling back to ``MessageBeep`` with the matching icon sound.
* Elsewhere: the terminal bell (once when finished, three times on failure) on the controlling terminal, plus
  the freedesktop sound through ``canberra-gtk-play`` when a desktop session provides it (started detached).
* Webhook: a JSON POST with ``text`` (Slack, Mattermost) and ``content`` (Discord) and the details as fields. The
  URL carries a secret, so only its scheme and host are ever logged.

``winsound_play``, ``open_tty`` and ``spawn_detached`` are the seams the tests replace.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

logger = logging.getLogger(__name__)

RUN_END_EVENTS = ("finished", "failed")
"""How a run ended, as a notification announces it (each has its own sound)."""
SOUND_WAIT_SEC = 4.0
"""The longest the sound may hold up the end of a run (long enough to hear a system sound)."""
WINDOWS_SOUNDS = {"finished": ("SystemAsterisk", 0x40), "failed": ("SystemHand", 0x10)}
"""PlaySound alias and MessageBeep type (MB_ICONASTERISK, MB_ICONHAND) per event: two different sounds."""
BELLS = {"finished": 1, "failed": 3}
DESKTOP_SOUNDS = {"finished": "complete", "failed": "dialog-error"}
"""freedesktop sound-theme ids for ``canberra-gtk-play -i``."""


def mask_url(url: str) -> str:
    """``https://hooks.example.com/***``: enough to tell which service, never the token in the path or query."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
    except ValueError:
        return "<invalid url>"
    return f"{parts.scheme}://{host}/***"


# ---- seams -----------------------------------------------------------------------------------------------------
def winsound_play(alias: str, beep_type: int) -> None:
    """Play a Windows system sound synchronously (on the sound thread); fall back to MessageBeep."""
    import winsound

    try:
        winsound.PlaySound(alias, winsound.SND_ALIAS | winsound.SND_NODEFAULT)
    except RuntimeError:
        winsound.MessageBeep(beep_type)


def open_tty():
    """The controlling terminal for the bell, or None (a service, cron, a redirected launcher)."""
    try:
        return open("/dev/tty", "w")  # noqa: SIM115 - closed by the caller
    except OSError:
        pass
    return sys.stdout if sys.stdout is not None and sys.stdout.isatty() else None


def spawn_detached(cmd: list[str]) -> None:
    subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


# ---- sound -----------------------------------------------------------------------------------------------------
def _ring_bell(event: str) -> str:
    tty = open_tty()
    if tty is None:
        return "no terminal for the bell"
    try:
        for i in range(BELLS[event]):
            tty.write("\a")
            tty.flush()
            if i + 1 < BELLS[event]:
                time.sleep(0.3)  # separate rings: terminals merge bells that arrive together
        return f"terminal bell x{BELLS[event]}"
    finally:
        if tty is not sys.stdout:
            tty.close()


def _sound_worker(event: str, platform: str, done: list[str]) -> None:
    try:
        if platform == "win32":
            alias, beep = WINDOWS_SOUNDS[event]
            winsound_play(alias, beep)
            done.append(f"Windows sound {alias}")
            return
        did = [_ring_bell(event)]
        if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
            player = shutil.which("canberra-gtk-play")
            if player:
                spawn_detached([player, "-i", DESKTOP_SOUNDS[event]])
                did.append(f"desktop sound {DESKTOP_SOUNDS[event]}")
        done.append(", ".join(did))
    except Exception as e:  # no audio device, no driver: silence, never a failure
        done.append(f"no sound ({type(e).__name__}: {e})")


def play_sound(event: str, *, platform: str = sys.platform, wait_sec: float = SOUND_WAIT_SEC) -> str:
    """Play the event's sound; returns what happened. Waits at most ``wait_sec`` (the sound thread is a daemon,
    so a stuck audio stack cannot keep the process alive)."""
    if event not in RUN_END_EVENTS:
        raise ValueError(f"event must be one of {RUN_END_EVENTS} (got {event!r})")
    done: list[str] = []
    thread = threading.Thread(
        target=_sound_worker, args=(event, platform, done), daemon=True, name="aegis-sound"
    )
    thread.start()
    thread.join(wait_sec)
    return done[0] if done else f"sound still playing after {wait_sec:g} s: not waiting for it"


# ---- webhook ---------------------------------------------------------------------------------------------------
def post_webhook(url: str, payload: dict[str, Any], *, timeout_sec: float) -> bool:
    """POST ``payload`` as JSON; True on a 2xx answer. Failures are logged (with the URL masked), never raised."""
    masked = mask_url(url)
    body = json.dumps(payload).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "aegis-ckpt"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_sec) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        logger.warning("webhook %s answered HTTP %s: notification not delivered", masked, e.code)
        return False
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = str(getattr(e, "reason", e)).replace(url, masked)
        logger.warning("webhook %s failed (%s): notification not delivered", masked, reason)
        return False
    if 200 <= status < 300:
        logger.info("webhook %s: delivered (HTTP %d)", masked, status)
        return True
    logger.warning("webhook %s answered HTTP %d: notification not delivered", masked, status)
    return False


# ---- the whole notification ------------------------------------------------------------------------------------
@dataclass
class NotifyResult:
    sound: str | None = None
    webhook_delivered: bool | None = None
    payload: dict[str, Any] = field(default_factory=dict)


def build_payload(event: str, details: dict[str, Any]) -> dict[str, Any]:
    host = socket.gethostname()
    what = "training finished" if event == "finished" else "training FAILED (gave up)"
    extra = ", ".join(f"{k} {v}" for k, v in details.items() if v is not None and k in ("step", "output_dir"))
    message = details.get("message")
    text = (
        f"aegis-ckpt on {host}: {what}"
        + (f" ({extra})" if extra else "")
        + (f": {message}" if message else "")
    )
    return {
        "event": event,
        "text": text,
        "content": text,
        "host": host,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **{k: v for k, v in details.items() if v is not None},
    }


def notify(
    event: str,
    *,
    sound: bool = True,
    webhook_url: str | None = None,
    webhook_timeout_sec: float = 10.0,
    details: dict[str, Any] | None = None,
) -> NotifyResult:
    """Tell the user that a run ``finished`` or ``failed``: sound, then webhook. Never raises for either."""
    if event not in RUN_END_EVENTS:
        raise ValueError(f"event must be one of {RUN_END_EVENTS} (got {event!r})")
    result = NotifyResult(payload=build_payload(event, details or {}))
    if sound:
        result.sound = play_sound(event)
        logger.info("sound: %s", result.sound)
    if webhook_url:
        result.webhook_delivered = post_webhook(webhook_url, result.payload, timeout_sec=webhook_timeout_sec)
    return result
