"""Housekeeping commands of the ``aegis-ckpt`` CLI: ``clean`` (empty the quarantine of a run)."""

from __future__ import annotations

import argparse

from ..exitcodes import EXIT_OK


def cmd_clean(ns: argparse.Namespace) -> int:
    from ..storage.quarantine import empty_quarantine
    from ..storage.store import CheckpointStore
    from .status import _require_dir as require_dir

    store = CheckpointStore(require_dir(ns.dir))
    folders = empty_quarantine(store.quarantine_dir, dry_run=ns.dry_run)
    if not ns.dry_run:
        store.empty_trash()
    verb = "would delete" if ns.dry_run else "deleted"
    for f in folders:
        print(f"  {verb} {f.path.name} ({f.size_bytes / 1e6:.1f} MB)")
    total = sum(f.size_bytes for f in folders) / 1e6
    print(
        f"aegis-ckpt: {verb} {len(folders)} quarantined folder(s), {total:.1f} MB, in {store.quarantine_dir}"
    )
    return EXIT_OK


def add_maintenance_commands(sub) -> None:
    p = sub.add_parser(
        "clean",
        help="empty the run's quarantine (.aegis/quarantine/: folders set aside as damaged or superseded)",
        description="Delete every folder in DIR/.aegis/quarantine/ and the leftovers of pruning. Committed "
        "checkpoints are never touched.",
    )
    p.add_argument("dir", help="the run's output directory")
    p.add_argument("--dry-run", action="store_true", help="list what would be deleted; delete nothing")
    p.set_defaults(func=cmd_clean)
