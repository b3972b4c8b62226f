"""A model of a file system's page cache and of what a power cut leaves of it.

The model keeps, per inode, the data the running system sees (``data``) and the data that an ``fsync`` of that
file made durable (``durable``); per directory, the entries the system sees (``children``) and those an ``fsync``
of the directory made durable (``durable_children``). Renames move an entry, so a renamed file keeps its inode
and its durability, as on a real file system.

``crash_states`` then lists what a cut after the operations applied so far may leave, in four families that
bracket what real file systems do (the strict POSIX promise, ext4/xfs journalled metadata, Jepsen's LazyFS):

``durable``
    only what was flushed: entries made durable by an ``fsync`` of their directory, data by an ``fsync`` of the
    file. Everything else is lost.
``meta``
    every metadata operation so far reached the disk in order (creates, renames, deletions), but file data only
    where it was flushed: a file renamed into place before its data was flushed is empty under its new name
    (LazyFS; ext4 with ``data=writeback``; the classic zero-length file after a crash).
``torn``
    as ``meta``, but the unflushed writes of one file reached the disk partly: all but the last, and the first
    half of the last (one variant for each of the two files written most recently).
``reordered``
    after a metadata operation: only what was flushed, plus that one last change of a directory entry (POSIX
    does not order unflushed directory updates: a rename may reach the disk before the creations that came
    before it).
``full``
    everything reached the disk (what a killed process leaves).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

FILE = "file"
DIR = "dir"
MAX_TORN_FILES = 2
"""Torn variants per cut: one for each of this many files with unflushed writes (the most recent ones)."""


@dataclass
class Op:
    """One recorded file-system operation; ``path``/``dst`` are relative to the watched root (POSIX form)."""

    kind: str  # create, write, truncate, fsync, rename, unlink, rmdir, rmtree, mkdir, mark
    path: str
    dst: str = ""
    offset: int = 0
    data: bytes = b""
    size: int = 0
    site: str = ""

    def describe(self) -> str:
        extra = {
            "write": f" [{self.offset}:+{len(self.data)}]",
            "truncate": f" ->{self.size}",
            "rename": f" -> {self.dst}",
        }.get(self.kind, "")
        return f"{self.kind} {self.path or '.'}{extra}" + (f"  ({self.site})" if self.site else "")


@dataclass
class Inode:
    kind: str
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    pending: list = field(default_factory=list)  # unflushed ("write", offset, bytes) / ("truncate", size)
    last_write: int = -1  # index of the op that last wrote it (orders the torn variants)
    children: dict = field(default_factory=dict)
    durable_children: dict = field(default_factory=dict)
    _current: bytes | None = None

    def current(self) -> bytes:
        """``data`` as bytes, one object until the next change (keeps state digests cheap)."""
        if self._current is None:
            self._current = bytes(self.data)
        return self._current


class SimFS:
    """The page cache and the disk under one watched root, fed with ``Op`` records."""

    def __init__(self, files: dict[str, bytes | None]):
        """``files``: the durable starting point, relative path -> bytes (a file) or None (a directory)."""
        self.inodes: dict[int, Inode] = {0: Inode(DIR)}
        self._next = 1
        self.applied = 0
        self._last_entries: list[tuple[int, str, int | None]] = []  # directory entries the last op changed
        for rel in sorted(files, key=lambda r: r.count("/")):
            content = files[rel]
            parent = self._lookup_parent(rel)
            ino = self._new(FILE if content is not None else DIR)
            node = self.inodes[ino]
            if content is not None:
                node.data[:] = content
                node.durable = bytes(content)
            self.inodes[parent].children[_name(rel)] = ino
            self.inodes[parent].durable_children[_name(rel)] = ino

    # ---- lookups ------------------------------------------------------------------------------------------------
    def _new(self, kind: str) -> int:
        ino = self._next
        self._next += 1
        self.inodes[ino] = Inode(kind)
        return ino

    def lookup(self, rel: str) -> int | None:
        ino = 0
        for part in _parts(rel):
            node = self.inodes[ino]
            if node.kind != DIR or part not in node.children:
                return None
            ino = node.children[part]
        return ino

    def _lookup_parent(self, rel: str) -> int:
        parent = self.lookup(_parent(rel))
        if parent is None or self.inodes[parent].kind != DIR:
            raise KeyError(f"no directory for {rel!r}")
        return parent

    def content(self, rel: str) -> bytes | None:
        ino = self.lookup(rel)
        if ino is None or self.inodes[ino].kind != FILE:
            return None
        return bytes(self.inodes[ino].data)

    def exists(self, rel: str) -> bool:
        return self.lookup(rel) is not None

    # ---- operations ---------------------------------------------------------------------------------------------
    def apply(self, op: Op) -> None:
        index = self.applied
        self.applied += 1
        self._last_entries = []
        kind = op.kind
        if kind == "mark":
            return
        if kind in ("create", "mkdir"):
            parent_ino = self._lookup_parent(op.path)
            parent = self.inodes[parent_ino]
            if _name(op.path) not in parent.children:
                parent.children[_name(op.path)] = self._new(FILE if kind == "create" else DIR)
                self._last_entries = [(parent_ino, _name(op.path), parent.children[_name(op.path)])]
        elif kind == "write":
            node = self.inodes[self.lookup(op.path)]
            end = op.offset + len(op.data)
            if len(node.data) < op.offset:
                node.data.extend(bytes(op.offset - len(node.data)))
            node.data[op.offset : end] = op.data
            node.pending.append(("write", op.offset, op.data))
            node._current = None
            node.last_write = index
        elif kind == "truncate":
            node = self.inodes[self.lookup(op.path)]
            del node.data[op.size :]
            node.data.extend(bytes(op.size - len(node.data)))
            node.pending.append(("truncate", op.size))
            node._current = None
            node.last_write = index
        elif kind == "fsync":
            ino = self.lookup(op.path)
            if ino is None:
                return
            node = self.inodes[ino]
            if node.kind == FILE:
                node.durable = node.current()
                node.pending = []
            else:
                node.durable_children = dict(node.children)
        elif kind == "rename":
            ino = self.lookup(op.path)
            src_ino, dst_ino = self._lookup_parent(op.path), self._lookup_parent(op.dst)
            del self.inodes[src_ino].children[_name(op.path)]
            self.inodes[dst_ino].children[_name(op.dst)] = ino
            self._last_entries = [(src_ino, _name(op.path), None), (dst_ino, _name(op.dst), ino)]
        elif kind in ("unlink", "rmdir", "rmtree"):
            parent_ino = self._lookup_parent(op.path)
            if self.inodes[parent_ino].children.pop(_name(op.path), None) is not None:
                self._last_entries = [(parent_ino, _name(op.path), None)]
        else:
            raise ValueError(f"unknown operation {kind!r}")

    # ---- what a power cut leaves ----------------------------------------------------------------------------------
    def crash_states(self) -> Iterator[tuple[str, dict[str, bytes | None]]]:
        """(family, files) for every family of crash state after the operations applied so far."""
        yield "durable", self._tree(durable_entries=True, contents=lambda ino, node: node.durable)
        yield "meta", self._tree(durable_entries=False, contents=lambda ino, node: node.durable)
        if self._last_entries:
            overlay: dict[int, dict] = {}
            for parent, name, child in self._last_entries:
                entries = overlay.setdefault(parent, dict(self.inodes[parent].durable_children))
                if child is None:
                    entries.pop(name, None)
                else:
                    entries[name] = child
            yield (
                "reordered",
                self._tree(durable_entries=True, contents=lambda ino, node: node.durable, overlay=overlay),
            )
        reachable = self._tree_inodes()
        written = sorted(
            (ino for ino in reachable if self.inodes[ino].kind == FILE and self.inodes[ino].pending),
            key=lambda ino: self.inodes[ino].last_write,
            reverse=True,
        )
        for torn in written[:MAX_TORN_FILES]:
            yield (
                "torn",
                self._tree(
                    durable_entries=False,
                    contents=lambda ino, node, torn=torn: _torn(node) if ino == torn else node.durable,
                ),
            )
        yield "full", self._tree(durable_entries=False, contents=lambda ino, node: node.current())

    def _tree_inodes(self) -> set[int]:
        seen: set[int] = set()
        stack = [0]
        while stack:
            ino = stack.pop()
            if ino in seen:
                continue
            seen.add(ino)
            stack.extend(self.inodes[ino].children.values())
        return seen

    def _tree(self, *, durable_entries: bool, contents, overlay=None) -> dict[str, bytes | None]:
        out: dict[str, bytes | None] = {}
        stack: list[tuple[str, int, int]] = [("", 0, 0)]
        while stack:
            rel, ino, depth = stack.pop()
            node = self.inodes[ino]
            if node.kind == FILE:
                out[rel] = contents(ino, node)
                continue
            if rel:
                out[rel] = None
            if depth > 32:  # a directory reachable from itself through durable entries cannot happen; be safe
                continue
            entries = node.durable_children if durable_entries else node.children
            if overlay and ino in overlay:
                entries = overlay[ino]
            for name, child in entries.items():
                stack.append((f"{rel}/{name}" if rel else name, child, depth + 1))
        return out


def _torn(node: Inode) -> bytes:
    """The durable data plus the unflushed writes, the last one cut in half (a torn write)."""
    data = bytearray(node.durable)
    for n, entry in enumerate(node.pending):
        last = n == len(node.pending) - 1
        if entry[0] == "truncate":
            del data[entry[1] :]
            data.extend(bytes(entry[1] - len(data)))
            continue
        _, offset, chunk = entry
        if last:
            chunk = chunk[: len(chunk) // 2]
        if len(data) < offset:
            data.extend(bytes(offset - len(data)))
        data[offset : offset + len(chunk)] = chunk
    return bytes(data)


_DIGESTS: dict[int, tuple[bytes, bytes]] = {}


def _digest(content: bytes) -> bytes:
    """Content digests, remembered per object: most states share most of their files' bytes objects."""
    hit = _DIGESTS.get(id(content))
    if hit is not None and hit[0] is content:
        return hit[1]
    digest = hashlib.blake2b(content, digest_size=16).digest()
    if len(_DIGESTS) > 100_000:
        _DIGESTS.clear()
    _DIGESTS[id(content)] = (content, digest)
    return digest


def state_key(files: dict[str, bytes | None]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for rel in sorted(files):
        content = files[rel]
        h.update(rel.encode() + b"\0")
        h.update(b"D" if content is None else _digest(content))
    return h.hexdigest()


def _parts(rel: str) -> list[str]:
    return [p for p in rel.split("/") if p]


def _name(rel: str) -> str:
    return _parts(rel)[-1]


def _parent(rel: str) -> str:
    return "/".join(_parts(rel)[:-1])
