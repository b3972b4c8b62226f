"""The finished model off the machine: ``final_model/`` uploaded after the final export, with a completion
marker last.

``<remote>/final_model/`` gets the export's files, then its manifest (as for a checkpoint), then
``aegis_completed.json`` (the step the run finished at). Only a folder with that marker counts: an upload cut
short, or one being replaced (the marker is withdrawn first), is never fetched. ``download.pull_newest`` fetches
it beside the checkpoint of the same step (``aegis-ckpt pull``, a fresh machine's resume).
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..options import RemoteOptions
from ..storage.commit import read_manifest
from ..storage.layout import FINAL_MODEL_DIR
from .location import RemoteLocation, describe_error, with_retries
from .upload import UploadResult, upload_checkpoint

logger = logging.getLogger(__name__)

FINAL_MARKER_NAME = "aegis_completed.json"


def final_model_path(location: RemoteLocation) -> str:
    return location.path(FINAL_MODEL_DIR)


def read_final_marker(location: RemoteLocation) -> dict | None:
    """The completion marker of the remote final model (None: there is no complete one)."""
    location.refresh()
    try:
        body = json.loads(location.fs.cat_file(f"{final_model_path(location)}/{FINAL_MARKER_NAME}"))
    except FileNotFoundError:
        return None
    except ValueError:
        logger.warning("The completion marker of %s is damaged; ignoring that final model", location.url)
        return None
    return body if isinstance(body, dict) and isinstance(body.get("step"), int) else None


def upload_final_model(
    location: RemoteLocation, folder: str | os.PathLike, *, workers: int = 4, attempts: int = 5
) -> UploadResult:
    """Upload the committed ``final_model/`` folder: marker withdrawn, files, manifest, then the marker."""
    folder = Path(folder)
    marker = f"{final_model_path(location)}/{FINAL_MARKER_NAME}"
    location.refresh()
    if location.fs.exists(marker):
        with_retries(lambda: location.fs.rm_file(marker), attempts=attempts, what=f"withdraw {marker}")
    result = upload_checkpoint(location, folder, workers=workers, attempts=attempts)
    body = json.dumps({"step": result.step, "finished_unix": time.time()}).encode("utf-8")
    with_retries(lambda: location.fs.pipe_file(marker, body), attempts=attempts, what=f"upload {marker}")
    logger.info(
        "Uploaded %s to %s (%.1f MB in %.1f s)",
        folder.name,
        location.url,
        result.size_bytes / 1e6,
        result.seconds,
    )
    return result


def mirror_final_model(
    remote: RemoteOptions, folder: str | os.PathLike, *, only_if_missing: bool = False
) -> bool:
    """Upload the run's ``final_model/`` if a remote is configured (``only_if_missing``: unless the remote's
    complete final model is of the same step already, e.g. a rerun of a finished run). Best effort: a failure is
    logged once (the run is finished and its local final model durable either way); True when it is there."""
    if not remote.enabled or not Path(folder).is_dir():
        return False
    try:
        location = RemoteLocation(remote.url, remote.options)
        if only_if_missing:
            marker = read_final_marker(location)
            if marker is not None and marker["step"] == read_manifest(folder).step:
                return True
        upload_final_model(location, folder, workers=remote.upload_workers, attempts=remote.attempts)
        return True
    except Exception as e:  # noqa: BLE001 - never fail a finished run over its remote copy
        logger.warning(
            "Could not upload the final model to %s (%s); a rerun of the finished run tries again",
            remote.url,
            describe_error(e),
        )
        return False
