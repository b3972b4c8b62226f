"""Lower the CPU and I/O priority of the calling thread, so background saves take only what training leaves.

Why: a background save competes with training for the cores and the disk. On Linux both priorities are
per thread: ``setpriority(PRIO_PROCESS, tid, nice)`` changes the nice value of one thread (the kernel schedules
threads, and a thread id is a valid ``who``), and ``ioprio_set(IOPRIO_WHO_PROCESS, tid, ...)`` (through psutil,
which calls that system call) its I/O priority. Threads the lowered thread starts afterwards inherit both (clone
copies them), so the writer's I/O thread and the commit's flush threads are lowered with it. A thread cannot
raise its priority again without privileges, so only threads made for background work may call this.

Other platforms: unchanged, and ``lower_current_thread`` says so. Windows has per-thread priorities
(``SetThreadPriority`` with ``THREAD_MODE_BACKGROUND_BEGIN``) and macOS a per-thread background policy
(``setpriority(PRIO_DARWIN_THREAD, 0, PRIO_DARWIN_BG)``); neither is reachable from the standard library, and
neither is used here yet. The I/O priority only takes effect with an I/O scheduler that honours it (BFQ; CFQ on
old kernels; mq-deadline for the idle and real-time classes); with ``none`` it is recorded but changes nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading

logger = logging.getLogger(__name__)

MAX_NICE = 19
IO_BEST_EFFORT_LOWEST = 7  # level 0 (highest) to 7 (lowest) within the best-effort class


def thread_nice(tid: int | None = None) -> int | None:
    """The nice value of thread ``tid`` (the calling thread by default), or None where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    tid = threading.get_native_id() if tid is None else tid
    return os.getpriority(os.PRIO_PROCESS, tid)


def lower_current_thread(niceness: int) -> str:
    """Add ``niceness`` (0-19) to the calling thread's nice value (capped at 19) and, when it is above 0, put its
    I/O in the lowest best-effort level. Returns what was done, for the log. Never raises: a thread that keeps
    its priority still writes correctly."""
    if niceness <= 0:
        return "priority unchanged (niceness 0)"
    if not sys.platform.startswith("linux"):
        return f"priority unchanged (no per-thread priority on {sys.platform})"
    tid = threading.get_native_id()
    done = []
    try:
        target = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, tid) + niceness)
        os.setpriority(os.PRIO_PROCESS, tid, target)
        done.append(f"nice {target}")
    except OSError as e:
        logger.debug("could not lower the CPU priority of thread %d: %s", tid, e)
    import psutil

    try:
        psutil.Process(tid).ionice(psutil.IOPRIO_CLASS_BE, IO_BEST_EFFORT_LOWEST)
        done.append(f"I/O best-effort {IO_BEST_EFFORT_LOWEST}")
    except (OSError, AttributeError, ValueError, psutil.Error) as e:
        logger.debug("could not lower the I/O priority of thread %d: %s", tid, e)
    return ", ".join(done) if done else "priority unchanged (refused)"
