"""Page-aligned memory and an ordered I/O thread: what ``directfile`` and ``readback`` share for large, direct I/O.

Why: ``O_DIRECT`` reads and writes need their memory on a block boundary, and a write that waits for the disk is
time the hashing could use. ``AlignedBuffer`` holds two page-aligned slots (one is filled and hashed while the
other is on its way to the disk); ``IOWorker`` runs the reads and writes in order on one thread, so the disk works
on chunk k while the caller hashes chunk k+1. Both sides spend their time in calls that release the GIL
(``os.write``/``os.preadv``, ``numpy.copyto``, ``xxhash``/``hashlib`` updates), so neither holds up the training
thread. The I/O thread is started by the thread that uses it and so inherits its CPU and I/O priority
(``system.priority``).
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Callable

import numpy as np

ALIGNMENT = 4096  # covers 512-byte and 4 KiB logical blocks
CHUNK_BYTES = 4 * 1024 * 1024  # one slot: big sequential writes, a small fixed memory cost
HASH_PIECE_BYTES = 1024 * 1024  # hashed, then copied while still in the CPU cache: one read from memory


class AlignedBuffer:
    """Two page-aligned slots of ``size`` bytes, reused by every file a writer writes (touched once, never
    reallocated). ``view``/``array`` are slot 0 (the single-buffer interface)."""

    def __init__(self, size: int = CHUNK_BYTES) -> None:
        if size <= 0 or size % ALIGNMENT:
            raise ValueError(f"buffer size must be a positive multiple of {ALIGNMENT}, got {size}")
        self.size = size
        self._map = mmap.mmap(-1, 2 * size)  # anonymous maps are page-aligned
        whole = memoryview(self._map)
        self.views = [whole[:size], whole[size:]]
        self._whole = whole
        # Copies go through numpy because it lets go of the GIL while it copies; a memoryview slice assignment
        # holds it, and the training thread would then wait for every chunk the writer copies.
        everything = np.frombuffer(self._map, dtype=np.uint8)
        self.arrays = [everything[:size], everything[size:]]
        self._everything = everything

    @property
    def view(self) -> memoryview:
        return self.views[0]

    @property
    def array(self):
        return self.arrays[0]

    def close(self) -> None:
        del self.arrays, self._everything  # the mmap cannot close while an array still exports it
        for v in self.views:
            v.release()
        self._whole.release()
        self._map.close()


class IOWorker:
    """Runs submitted calls one after the other on its own thread. ``submit`` returns a ticket; ``wait(ticket)``
    returns once that call (and every one before it) finished. The first ``OSError`` is kept: later calls are
    skipped and ``wait``/``drain`` raise it, so the caller sees a failed write at its next chance."""

    def __init__(self, name: str = "aegis-io") -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = threading.Condition()
        self._submitted = 0
        self._finished = 0
        self.error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            try:
                if self.error is None:
                    call()
            except OSError as e:
                self.error = e
            except BaseException as e:  # noqa: BLE001 - handed to the caller like an I/O error
                self.error = OSError(f"I/O thread failed: {e!r}")
            finally:
                with self._done:
                    self._finished += 1
                    self._done.notify_all()

    def submit(self, call: Callable[[], object]) -> int:
        if self.error is not None:
            raise self.error
        self._submitted += 1
        self._queue.put(call)
        return self._submitted

    def wait(self, ticket: int) -> None:
        with self._done:
            while self._finished < ticket:
                self._done.wait()
        if self.error is not None:
            raise self.error

    def drain(self) -> None:
        self.wait(self._submitted)

    def drain_quietly(self) -> None:
        """Wait for every queued call without raising (cleanup after an error the caller already handles)."""
        with self._done:
            while self._finished < self._submitted:
                self._done.wait()

    def close(self) -> None:
        """Let the queued calls finish, then end the thread (errors are left for the caller to read)."""
        self._queue.put(None)
        self._thread.join()
