"""Small helpers the remote tests share: what a bucket holds, and where a secret could have leaked to."""

from __future__ import annotations

from pathlib import Path

from aegis_ckpt.storage.audit import read_audit
from aegis_ckpt.storage.layout import AEGIS_DIR, AUDIT_NAME, MANIFEST_NAME

# Fake credentials, recognisable in any text they might leak into.
ACCESS_KEY = "AKIAAEGISTESTKEY0001"
SECRET_KEY = "aegisTestSecret/doNotLog+1234567890abcdef"


def remote_steps(s3, url: str) -> dict[int, bool]:
    """``{step: committed}`` of the ``checkpoint-<step>`` folders under ``url`` (committed: manifest present)."""
    root = url.removeprefix("s3://")
    s3.invalidate_cache()
    try:
        names = s3.ls(root, detail=False)
    except FileNotFoundError:
        return {}
    out = {}
    for name in names:
        base = name.rstrip("/").rsplit("/", 1)[-1]
        if base.startswith("checkpoint-"):
            out[int(base.split("-", 1)[1])] = s3.exists(f"{name}/{MANIFEST_NAME}")
    return out


def committed_steps(output_dir: Path) -> list[int]:
    """Every step committed in ``output_dir`` by any run, from its audit log."""
    events = read_audit(Path(output_dir) / AEGIS_DIR / AUDIT_NAME).events
    return sorted({e["step"] for e in events if e["event"] == "commit"})


def assert_no_secret(*texts: str, folders: tuple[Path, ...] = ()) -> None:
    """Neither credential appears in the texts, nor in any file under ``folders`` (logs, records, audit)."""
    for text in texts:
        assert SECRET_KEY not in text and ACCESS_KEY not in text
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file() and path.suffix in (".json", ".jsonl", ".log", ".txt", ""):
                data = path.read_bytes()
                assert SECRET_KEY.encode() not in data and ACCESS_KEY.encode() not in data, path
