"""Record every file-system operation a process makes under one folder, at the ``os``/``open`` level.

While ``Recorder`` is active it replaces, process-wide, the ``os`` functions that change a file system (``open``
with ``O_CREAT``/``O_TRUNC``, ``write``, ``ftruncate``, ``fsync``/``fdatasync``, ``replace``/``rename``,
``unlink``/``remove``, ``mkdir``, ``rmdir``), ``shutil.rmtree`` (recorded as one operation) and the builtin
``open`` (creation and truncation of files opened for writing). So the package's own writes (through
``storage.fsio``), the Trainer's ``json`` files, the writer thread of an asynchronous save and the test's own code
are all seen, in the order they happen, from every thread.

Writers that do not go through Python's ``os``/``open`` are seen too, one step later. ``safetensors.save_file``
writes from Rust (``std::fs::File``), ``torch.save(obj, path)`` from C++ (``PyTorchFileWriter`` opens the path
itself), the ``tokenizers`` library saves ``tokenizer.json`` from Rust, and a file object returned by ``open``
writes through C code, never through ``os.write``. Before each ordering operation (an ``fsync``, a rename, a
deletion, a mark) and at the end, the recorder compares the folder on disk with its own model of it
(``SimFS``) and records what changed as ``create``/``write``/``truncate`` operations: a file written natively is
thus recorded as written, not flushed, until the ``fsync`` that follows it, which is exactly what a power cut
can take from it. The write boundaries inside such a file are not known, so ``SimFS`` tears the recorded
change (cut in half) instead.

Not seen: writes by other processes (the optional writer process of asynchronous saves: the tests use the
writer thread) and ``mmap`` writes (the package does not write files through maps).
"""

from __future__ import annotations

import builtins
import io
import os
import shutil
import sys
import threading
from pathlib import Path

from simfs import Op, SimFS

_REAL = {
    name: getattr(os, name)
    for name in (
        "open",
        "write",
        "ftruncate",
        "fsync",
        "fdatasync",
        "close",
        "replace",
        "rename",
        "unlink",
        "remove",
        "mkdir",
        "rmdir",
    )
}
_REAL_OPEN = builtins.open
_REAL_RMTREE = shutil.rmtree
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def snapshot_tree(root: Path) -> dict[str, bytes | None]:
    """Relative path -> bytes (files) or None (folders) of everything under ``root``."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        for d in dirnames:
            out[f"{rel_dir}/{d}" if rel_dir else d] = None
        for f in filenames:
            with _REAL_OPEN(Path(dirpath) / f, "rb") as fh:
                out[f"{rel_dir}/{f}" if rel_dir else f] = fh.read()
    return out


class Recorder:
    """``with Recorder(root) as rec: ...`` records the operations under ``root`` into ``rec.ops``; ``rec.initial``
    is the tree as it was (taken as durable), ``rec.mark(label)`` adds a marker the checks can refer to."""

    def __init__(self, root: str | os.PathLike):
        self.root = os.path.realpath(root)
        self.initial: dict[str, bytes | None] = {}
        self.ops: list[Op] = []
        self.model: SimFS | None = None
        self._fds: dict[int, str] = {}
        self._seen: dict[str, tuple[int, int, int]] = {}
        self._lock = threading.RLock()
        self._local = threading.local()

    # ---- public ---------------------------------------------------------------------------------------------------
    def __enter__(self) -> Recorder:
        # Signatures first, contents second: a file that a writer on another thread changes in between then
        # differs from its signature at the next look, and that change is recorded instead of taken as seen.
        self._seen = self._stat_tree()
        self.initial = snapshot_tree(Path(self.root))
        self.model = SimFS(self.initial)
        self._install()
        return self

    def __exit__(self, *exc) -> None:
        try:
            with self._lock:
                self._reconcile()
        finally:
            self._uninstall()

    def mark(self, label: str) -> int:
        """Record a marker (e.g. "the save returned"); returns its index in ``ops``."""
        with self._lock:
            self._reconcile()
            self._add(Op("mark", label))
            return len(self.ops) - 1

    def index_of_mark(self, label: str) -> int:
        return next(i for i, op in enumerate(self.ops) if op.kind == "mark" and op.path == label)

    # ---- bookkeeping ----------------------------------------------------------------------------------------------
    def _rel(self, path, dir_fd: int | None = None) -> str | None:
        if isinstance(path, int):
            return None
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        path = os.fspath(path)
        if dir_fd is not None and not os.path.isabs(path):
            base = self._fds.get(dir_fd)
            if base is None:
                return None
            path = os.path.join(self.root, base, path)
        full = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))), os.path.basename(path))
        if full == self.root:
            return ""
        if not full.startswith(self.root + os.sep):
            return None
        return Path(os.path.relpath(full, self.root)).as_posix()

    def _site(self) -> str:
        frame = sys._getframe(3)
        while frame is not None:
            name = frame.f_code.co_filename
            if "aegis_ckpt" in name or "transformers" in name:
                return f"{Path(name).stem}.{frame.f_code.co_qualname}"
            frame = frame.f_back
        return ""

    def _add(self, op: Op) -> None:
        if not op.site and op.kind != "mark":
            op.site = self._site()
        self.model.apply(op)
        self.ops.append(op)

    def _busy(self) -> bool:
        return getattr(self._local, "busy", False)

    def _stat_tree(self) -> dict[str, tuple[int, int, int]]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            for f in filenames:
                rel = f if rel_dir == "." else Path(rel_dir, f).as_posix()
                try:
                    st = os.lstat(os.path.join(dirpath, f))
                except FileNotFoundError:
                    continue
                out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
            for d in dirnames:
                out[d if rel_dir == "." else Path(rel_dir, d).as_posix()] = (-1, 0, 0)
        return out

    # A rename or a deletion changes only the signatures under its own paths. Taking a fresh look at the whole
    # tree instead would mark as seen what a native writer on another thread changed meanwhile, and that change
    # would never be recorded (a file written after the last reconcile would stay empty in the model).
    def _forget_seen(self, rel: str) -> None:
        for key in [k for k in self._seen if k == rel or k.startswith(rel + "/")]:
            del self._seen[key]

    def _move_seen(self, src: str, dst: str) -> None:
        moved = {k: v for k, v in self._seen.items() if k == src or k.startswith(src + "/")}
        self._forget_seen(src)
        self._forget_seen(dst)
        for key, sig in moved.items():
            self._seen[dst + key[len(src) :]] = sig

    def _reconcile(self) -> None:
        """Record what native writers changed since the last look (see the module docstring)."""
        now = self._stat_tree()
        for rel in sorted(now, key=lambda r: r.count("/")):
            sig = now[rel]
            if sig[0] == -1:
                if not self.model.exists(rel) and self.model.exists(_parent(rel)):
                    self._add(Op("mkdir", rel, site="(native)"))
                continue
            if self._seen.get(rel) == sig and self.model.exists(rel):
                continue
            if not self.model.exists(_parent(rel)):
                continue
            try:
                with _REAL_OPEN(os.path.join(self.root, rel), "rb") as fh:
                    real = fh.read()
            except OSError:
                continue
            known = self.model.content(rel)
            if known is None:
                self._add(Op("create", rel, site="(native)"))
                known = b""
            if real == known:
                continue
            first = _first_difference(real, known)
            if len(real) < len(known):
                self._add(Op("truncate", rel, size=first, site="(native)"))
            if len(real) > first:
                self._add(Op("write", rel, offset=first, data=real[first:], site="(native)"))
        self._seen = now

    # ---- the replacements -----------------------------------------------------------------------------------------
    def _install(self) -> None:
        rec = self

        def wrap(real):
            """Record through ``fn``, unless this thread is already inside a recorded call: then ``real``."""
            return lambda fn: _guarded(fn, real)

        def _guarded(fn, real):
            def inner(*args, **kwargs):
                if rec._busy():
                    return real(*args, **kwargs)
                rec._local.busy = True
                try:
                    with rec._lock:
                        return fn(*args, **kwargs)
                finally:
                    rec._local.busy = False

            return inner

        @wrap(_REAL["open"])
        def os_open(path, flags, mode=0o777, *, dir_fd=None):
            rel = rec._rel(path, dir_fd)
            existed = rel is not None and os.path.lexists(os.path.join(rec.root, rel))
            fd = _REAL["open"](path, flags, mode, dir_fd=dir_fd)
            if rel is not None:
                rec._fds[fd] = rel
                if flags & _WRITE_FLAGS:
                    rec._opened_for_write(rel, existed, truncate=bool(flags & os.O_TRUNC))
            return fd

        @wrap(_REAL["write"])
        def os_write(fd, data):
            rel = rec._fds.get(fd)
            if rel is not None:
                rec._reconcile()  # data written earlier through a file object of the same file comes first
            n = _REAL["write"](fd, data)
            if rel is not None and n:
                end = os.lseek(fd, 0, os.SEEK_CUR)
                rec._add(Op("write", rel, offset=end - n, data=bytes(memoryview(data).cast("B")[:n])))
                st = os.fstat(fd)
                rec._seen[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
            return n

        @wrap(_REAL["ftruncate"])
        def os_ftruncate(fd, size):
            _REAL["ftruncate"](fd, size)
            rel = rec._fds.get(fd)
            if rel is not None:
                rec._reconcile()

        def make_sync(name):
            @wrap(_REAL[name])
            def os_sync(fd):
                rel = rec._fds.get(fd)
                if rel is None:
                    _REAL[name](fd)
                    return
                # Under the lock: another thread's reconcile must not fall between this file's pending writes and
                # its flush (the commit flushes files on several threads at once), or the log would order a
                # write after the flush that made it durable.
                with rec._lock:
                    rec._reconcile()
                    _REAL[name](fd)
                    rec._add(Op("fsync", rel))

            return os_sync

        @wrap(_REAL["close"])
        def os_close(fd):
            rec._fds.pop(fd, None)
            _REAL["close"](fd)

        def make_rename(name):
            @wrap(_REAL[name])
            def os_rename(src, dst, *, src_dir_fd=None, dst_dir_fd=None):
                s, d = rec._rel(src, src_dir_fd), rec._rel(dst, dst_dir_fd)
                if s is not None or d is not None:
                    rec._reconcile()
                _REAL[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                if s is not None and d is not None:
                    rec._add(Op("rename", s, dst=d))
                    rec._move_seen(s, d)
                elif s is not None or d is not None:
                    rec._reconcile()  # a move across the watched folder's edge: seen as create/delete

            return os_rename

        def make_remove(name, kind):
            @wrap(_REAL[name])
            def os_remove(path, *, dir_fd=None):
                rel = rec._rel(path, dir_fd)
                if rel is not None:
                    rec._reconcile()
                _REAL[name](path, dir_fd=dir_fd)
                if rel is not None:
                    rec._add(Op(kind, rel))
                    rec._seen.pop(rel, None)

            return os_remove

        @wrap(_REAL["mkdir"])
        def os_mkdir(path, mode=0o777, *, dir_fd=None):
            rel = rec._rel(path, dir_fd)
            _REAL["mkdir"](path, mode, dir_fd=dir_fd)
            if rel and rec.model.exists(_parent(rel)):
                rec._add(Op("mkdir", rel))
                rec._seen[rel] = (-1, 0, 0)

        @wrap(_REAL_RMTREE)
        def rmtree(path, *args, **kwargs):
            rel = rec._rel(path) if not isinstance(path, int) else None
            if rel is not None:
                rec._reconcile()
            try:
                return _REAL_RMTREE(path, *args, **kwargs)
            finally:
                if rel is not None and rec.model.exists(rel) and not os.path.lexists(path):
                    rec._add(Op("rmtree", rel))
                    rec._forget_seen(rel)

        @wrap(_REAL_OPEN)
        def builtin_open(file, mode="r", *args, **kwargs):
            writing = isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+")
            rel = rec._rel(file) if writing else None
            existed = rel is not None and os.path.lexists(os.path.join(rec.root, rel))
            f = _REAL_OPEN(file, mode, *args, **kwargs)
            if rel is not None:
                rec._fds[f.fileno()] = rel
                rec._opened_for_write(rel, existed, truncate="w" in mode)
            return f

        patches = [
            (os, "open", os_open),
            (os, "write", os_write),
            (os, "ftruncate", os_ftruncate),
            (os, "fsync", make_sync("fsync")),
            (os, "fdatasync", make_sync("fdatasync")),
            (os, "close", os_close),
            (os, "replace", make_rename("replace")),
            (os, "rename", make_rename("rename")),
            (os, "unlink", make_remove("unlink", "unlink")),
            (os, "remove", make_remove("remove", "unlink")),
            (os, "rmdir", make_remove("rmdir", "rmdir")),
            (os, "mkdir", os_mkdir),
            (shutil, "rmtree", rmtree),
            (builtins, "open", builtin_open),
            (io, "open", builtin_open),
        ]
        self._restore = [(module, name, getattr(module, name)) for module, name, _ in patches]
        for module, name, fn in patches:
            setattr(module, name, fn)

    def _uninstall(self) -> None:
        for module, name, original in self._restore:
            setattr(module, name, original)

    def _opened_for_write(self, rel: str, existed: bool, *, truncate: bool) -> None:
        if not self.model.exists(_parent(rel)):
            return
        if not self.model.exists(rel):
            if existed:
                self._reconcile()
            else:
                self._add(Op("create", rel))
        if truncate and self.model.content(rel):
            self._add(Op("truncate", rel, size=0))
        try:
            st = os.lstat(os.path.join(self.root, rel))
            self._seen[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
        except OSError:
            pass


def _first_difference(a: bytes, b: bytes) -> int:
    """The first offset at which ``a`` and ``b`` differ (the shorter length when one is a prefix)."""
    n = min(len(a), len(b))
    chunk = 4096
    for start in range(0, n, chunk):
        end = min(start + chunk, n)
        if a[start:end] != b[start:end]:
            return next(i for i in range(start, end) if a[i] != b[i])
    return n


def _parent(rel: str) -> str:
    return "/".join(rel.split("/")[:-1])
