"""Confinement: nothing a checkpoint folder says can make the tool read outside it.

Names inside a checkpoint come from files that a bug, a damaged disk or a hostile copy may have written: the
manifest's ``files``, a weight index's ``weight_map``. Joined onto the folder unchecked, ``../secret`` or
``/etc/hostname`` would be read (and could even verify, if the manifest carries their sizes and checksums), and
``/dev/zero`` or a fifo would hang the scan before the supervisor's first heartbeat. So:

* a member name is a relative POSIX path of plain components: not empty, no NUL, no backslash, no leading ``/``,
  no drive letter, no ``.``/``..``/empty component (``check_member_name``);
* every component is examined with ``os.lstat`` (links are never followed): the folders on the way must be real
  directories and the member a regular file (``member_stat``);
* files are opened with ``O_NOFOLLOW | O_NONBLOCK`` and refused unless ``fstat`` shows a regular file
  (``open_no_follow``), so a link or fifo swapped in after the check still cannot be read or block;
* a checkpoint folder must itself be a real directory, and must hold only regular files and real directories
  (``check_folder``, ``foreign_entries``): the Trainer would load an unlisted ``optimizer.pt`` link as readily as
  a listed one.

A concurrent writer inside the output dir could still race a check and the open that follows; the output dir is
trusted to that extent (it is the tool's own working directory), what a folder *contains* is not.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from pathlib import Path

MAX_NAME_CHARS = 1024
"""Longer member names are refused: no checkpoint writer produces them, and a path limit is near anyway."""
MAX_FOREIGN_REPORTED = 5

_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_NO_FOLLOW_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


class ConfinementError(ValueError):
    """A name or file inside a checkpoint folder would lead outside it, or is not a regular file."""


def check_member_name(name: object) -> str | None:
    """Why ``name`` cannot name a file inside a checkpoint folder, or None when it can."""
    if not isinstance(name, str):
        return f"file name {name!r} is not a string"
    shown = repr(name[:80])
    if not name:
        return "empty file name"
    if len(name) > MAX_NAME_CHARS:
        return f"file name {shown}... is longer than {MAX_NAME_CHARS} characters"
    if "\x00" in name:
        return f"file name {shown} contains a NUL character"
    if "\\" in name:
        return f"file name {shown} contains a backslash"
    if name.startswith("/"):
        return f"file name {shown} is an absolute path"
    if _DRIVE_RE.match(name):
        return f"file name {shown} starts with a drive letter"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return f"file name {shown} has an empty, '.' or '..' component (it must stay inside its folder)"
    return None


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def member_stat(folder: str | os.PathLike, name: str) -> os.stat_result:
    """``lstat`` of the member ``name`` of ``folder``, walking each component without following links.

    Raises:
        ConfinementError: the name is not confined, a folder on the way is not a real directory, or the member
            is not a regular file.
        FileNotFoundError: the member (or a folder on the way) does not exist.
    """
    problem = check_member_name(name)
    if problem:
        raise ConfinementError(problem)
    path = Path(folder)
    parts = name.split("/")
    for i, part in enumerate(parts):
        path = path / part
        st = os.lstat(path)
        last = i == len(parts) - 1
        if last and stat.S_ISREG(st.st_mode):
            return st
        if not last and stat.S_ISDIR(st.st_mode):
            continue
        where = name if last else "/".join(parts[: i + 1])
        raise ConfinementError(f"{where} is {_kind(st.st_mode)}, not a regular file inside the folder")
    raise ConfinementError(f"file name {name!r} is empty")  # unreachable: names have at least one part


def open_no_follow(path: str | os.PathLike, flags: int = 0) -> int:
    """An ``opener`` for ``open()``: read-only, never through a final symbolic link, never blocking on a fifo,
    and only for a regular file. ``flags`` from ``open()`` are replaced (reading is all this is for)."""
    fd = os.open(path, _NO_FOLLOW_FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise OSError(errno.EINVAL, f"{os.fspath(path)} is {_kind(mode)}, not a regular file")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_member_bytes(folder: str | os.PathLike, name: str, *, max_bytes: int) -> bytes:
    """The bytes of a small member file (a manifest, an index, ``trainer_state.json``), confined and bounded.

    Raises:
        ConfinementError: as ``member_stat``, or the file is larger than ``max_bytes``.
        OSError: it cannot be read.
    """
    st = member_stat(folder, name)
    if st.st_size > max_bytes:
        raise ConfinementError(f"{name} has {st.st_size} bytes, more than the {max_bytes} allowed")
    with open(Path(folder) / name, "rb", opener=open_no_follow) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ConfinementError(f"{name} grew beyond the {max_bytes} bytes allowed while being read")
    return data


def read_member_json(folder: str | os.PathLike, name: str, *, max_bytes: int) -> object:
    """The JSON document in the member file ``name`` of ``folder``, read as ``read_member_bytes`` reads it. A
    document nested too deeply for the parser is a ``ValueError`` like any other malformed one (not the
    ``RecursionError`` the parser raises), so every reader of a hostile folder handles it the same way."""
    data = read_member_bytes(folder, name, max_bytes=max_bytes)
    try:
        return json.loads(data.decode("utf-8"))
    except RecursionError:
        raise ValueError(f"{name} nests too deeply to be read") from None


def check_folder(folder: str | os.PathLike) -> str | None:
    """Why ``folder`` cannot be a checkpoint folder (a symbolic link, a file...), or None when it is a real
    directory. A linked folder is never followed: its target may be anywhere."""
    try:
        st = os.lstat(folder)
    except FileNotFoundError:
        return "the folder does not exist"
    except OSError as e:
        return f"cannot examine the folder: {e.strerror or e}"
    if stat.S_ISDIR(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(folder)
        except OSError:
            target = "?"
        return f"the folder is a symbolic link (to {target!r}) and is never followed"
    return f"the folder is {_kind(st.st_mode)}, not a directory"


def foreign_entries(folder: str | os.PathLike) -> list[str]:
    """Everything under ``folder`` that is neither a regular file nor a real directory (links, fifos, devices,
    sockets), as ``"name is a ..."`` descriptions. Links are listed, never followed."""
    found: list[str] = []
    pending = [Path(folder)]
    root = Path(folder)
    while pending and len(found) < MAX_FOREIGN_REPORTED:
        current = pending.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as e:
            found.append(f"{current.relative_to(root).as_posix() or '.'} cannot be listed: {e.strerror or e}")
            continue
        for entry in entries:
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue  # vanished meanwhile
            if stat.S_ISDIR(mode):
                pending.append(Path(entry.path))
            elif not stat.S_ISREG(mode):
                found.append(f"{Path(entry.path).relative_to(root).as_posix()} is {_kind(mode)}")
    return found[:MAX_FOREIGN_REPORTED]
