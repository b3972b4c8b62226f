"""Sending many files in one go on an asynchronous file system's own event loop, each file with its own retries.

s3fs (and gcsfs, adlfs) run every request on one asyncio event loop; ``fs.put(folder, recursive=True)`` hands
all files of a folder to that loop at once. Driving the same per-file coroutine (``_put_file``: one request, or a
multipart upload with its parts in parallel) from a pool of threads, each blocking in its own ``sync`` call,
reaches the same loop through extra threads and context switches. Here the files of one checkpoint go to the loop
as one batch, the way ``fs.put`` sends them (fsspec's own ``_run_coros_in_chunks``, at most ``workers`` files at
once), but each file keeps the retry rule of every other remote operation (``location.with_retries``: exponential
backoff with full jitter, permanent errors raised at once), so one failed file is sent again alone instead of the
whole batch.

When a file fails for good the batch stops: the files still in flight are cancelled and awaited before the error
is raised, so nothing of this checkpoint is still being written once the caller sees the error (the manifest can
never be uploaded beside a file that is still changing).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from .location import backoff_delay, describe_error, is_transient, logger


def is_async(fs) -> bool:
    """Whether ``fs`` runs its requests on an fsspec event loop (s3fs, gcsfs, adlfs; not the local disk)."""
    return bool(getattr(fs, "async_impl", False)) and getattr(fs, "loop", None) is not None


def put_batch(
    fs,
    pairs: Sequence[tuple[str, str]],
    *,
    workers: int,
    attempts: int,
    on_retry: Callable[[BaseException], None] | None,
) -> None:
    """Upload every ``(local path, remote path)`` of ``pairs`` on ``fs``'s event loop, at most ``workers`` at once,
    each file with up to ``attempts`` tries; returns when all arrived.

    Raises:
        FileNotFoundError: a local file is gone (not retried).
        Exception: the last error of a file that failed ``attempts`` times, or a permanent one.
    """
    from fsspec.asyn import _run_coros_in_chunks, sync

    async def put(local: str, remote: str) -> None:
        for attempt in range(1, attempts + 1):
            try:
                await fs._put_file(local, remote)
                return
            except Exception as e:
                if attempt >= attempts or not is_transient(e):
                    raise
                if on_retry is not None:
                    on_retry(e)
                delay = backoff_delay(attempt)
                logger.debug(
                    "upload %s failed (%s); try %d of %d in %.2f s",
                    remote,
                    describe_error(e),
                    attempt + 1,
                    attempts,
                    delay,
                )
                await asyncio.sleep(delay)

    if pairs:
        coros = [put(local, remote) for local, remote in pairs]
        sync(fs.loop, _run_coros_in_chunks, coros, batch_size=max(1, workers))
