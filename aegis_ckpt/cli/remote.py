"""``aegis-ckpt pull URL DIR`` and ``aegis-ckpt push DIR URL``: the remote copies by hand.

``pull`` brings the newest remote checkpoint whose files verify into ``DIR`` (staged, verified, committed), the
same path ``find_resume_checkpoint(..., remote_url=...)`` takes on a fresh machine, and with it the remote
``final_model/`` when the run finished at that step. ``push`` uploads the newest
(or every) committed local checkpoint that the remote lacks, manifest last, after checking it against its own
manifest. Credentials come from the backend's environment variables or profiles, never from the command line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..errors import ConfigError
from ..exitcodes import EXIT_FAILURE, EXIT_OK
from ..options import RemoteOptions
from ..remote.catalog import list_remote, prune_remote
from ..remote.download import download_checkpoint, pull_newest
from ..remote.location import RemoteError, RemoteLocation, describe_error
from ..remote.upload import upload_checkpoint
from ..runstate.lease import ensure_not_locked
from ..storage.commit import is_committed, read_manifest, verify_checkpoint
from ..storage.layout import FINAL_MODEL_DIR, parse_checkpoint_step
from ..storage.store import CheckpointStore


def _remote_options(ns: argparse.Namespace) -> RemoteOptions:
    extra = {}
    for item in ns.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--option wants KEY=VALUE (got {item!r})")
        extra[key] = yaml.safe_load(value)
    return RemoteOptions(url=ns.url, options=extra, max_keep=getattr(ns, "max_keep", None))


def cmd_pull(ns: argparse.Namespace) -> int:
    remote = _remote_options(ns)
    out = Path(ns.dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_not_locked(out)  # a live run owns the directory
    store = CheckpointStore(out)
    location = RemoteLocation(remote.url, remote.options)
    if ns.step is not None:
        entry = next((e for e in list_remote(location) if e.step == ns.step), None)
        if entry is None or not entry.committed:
            print(f"aegis-ckpt: {remote.url} has no committed checkpoint-{ns.step}")
            return EXIT_FAILURE
        folder = download_checkpoint(location, entry, store, workers=remote.upload_workers)
    else:
        folder, skipped = pull_newest(location, store, workers=remote.upload_workers)
        for step, reason in skipped:
            print(f"skipped remote checkpoint-{step}: {reason}")
        if folder is None:
            print(f"aegis-ckpt: no remote checkpoint in {remote.url} verifies")
            return EXIT_FAILURE
    store.mark_managed()
    print(folder)
    final = out / FINAL_MODEL_DIR
    if is_committed(final) and read_manifest(final).step == parse_checkpoint_step(folder.name):
        print(final)  # the run finished at this step: its final model came with it (remote.finalmodel)
    return EXIT_OK


def cmd_push(ns: argparse.Namespace) -> int:
    remote = _remote_options(ns)
    store = CheckpointStore(ns.dir)
    committed = store.committed()
    if not committed:
        print(f"aegis-ckpt: no committed checkpoint in {ns.dir}")
        return EXIT_FAILURE
    location = RemoteLocation(remote.url, remote.options)
    there = {e.step for e in list_remote(location) if e.committed}
    chosen = committed if ns.all else committed[-1:]
    failures = 0
    for entry in chosen:
        if entry.step in there and not ns.force:
            print(f"{entry.path.name}: already in {remote.url}")
            continue
        result = verify_checkpoint(entry.path, full=True)
        if not result.ok:
            print(f"{entry.path.name}: NOT uploaded, it does not verify locally: {result.summary()}")
            failures += 1
            continue
        try:
            done = upload_checkpoint(
                location, entry.path, workers=remote.upload_workers, attempts=remote.attempts
            )
        except (RemoteError, OSError) as e:
            print(f"{entry.path.name}: upload failed: {describe_error(e)}")
            failures += 1
            continue
        print(f"{entry.path.name}: uploaded ({done.size_bytes / 1e6:.1f} MB in {done.seconds:.1f} s)")
    if remote.max_keep is not None:
        for step in prune_remote(location, remote.max_keep):
            print(f"checkpoint-{step}: pruned from {remote.url}")
    return EXIT_FAILURE if failures else EXIT_OK


def add_remote_commands(sub) -> None:
    option_help = "fsspec file system option, VALUE parsed as YAML (repeatable; never credentials)"
    p = sub.add_parser("pull", help="download the newest remote checkpoint that verifies into DIR")
    p.add_argument("url", help="the remote, e.g. s3://bucket/prefix")
    p.add_argument("dir", help="the output directory to put it in")
    p.add_argument("--step", type=int, help="this step instead of the newest")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help=option_help)
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("push", help="upload the newest committed checkpoint of DIR that the remote lacks")
    p.add_argument("dir", help="the run's output directory")
    p.add_argument("url", help="the remote, e.g. s3://bucket/prefix")
    p.add_argument("--all", action="store_true", help="every committed checkpoint, not only the newest")
    p.add_argument("--force", action="store_true", help="upload again what the remote already has")
    p.add_argument("--max-keep", type=int, help="then keep only this many remote copies (the newest always)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help=option_help)
    p.set_defaults(func=cmd_push)
