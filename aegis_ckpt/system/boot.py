"""Which boot of the machine this is, and when a process started: how a restart tells a crash (same boot) from
a power loss or reboot (new boot id), and a live lease holder from a recycled pid."""

from __future__ import annotations

from pathlib import Path

_BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
_BOOT_TIME_PREFIX = "boottime:"
_BOOT_TIME_SLACK_SEC = 5


def current_boot_id() -> str:
    """An id that changes on every boot: Linux ``boot_id``, elsewhere the boot time from psutil."""
    try:
        value = Path(_BOOT_ID_FILE).read_text(encoding="ascii").strip()
        if value:
            return value
    except OSError:
        pass
    import psutil

    return f"{_BOOT_TIME_PREFIX}{int(round(psutil.boot_time()))}"


def same_boot(a: str | None, b: str | None) -> bool:
    if not a or not b:
        return False
    if a.startswith(_BOOT_TIME_PREFIX) and b.startswith(_BOOT_TIME_PREFIX):
        # Boot time derived from uptime can wobble by a second; a reboot moves it by far more.
        try:
            return (
                abs(int(a[len(_BOOT_TIME_PREFIX) :]) - int(b[len(_BOOT_TIME_PREFIX) :]))
                <= _BOOT_TIME_SLACK_SEC
            )
        except ValueError:
            return a == b
    return a == b


def process_create_time(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # no such process, access denied, psutil missing: unknown
        return None
