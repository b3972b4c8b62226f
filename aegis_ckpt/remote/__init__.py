"""Off-machine copies of committed checkpoints in object storage (S3 and any other fsspec file system).

``location`` opens the remote URL through fsspec (credentials from the backend's usual places, never logged),
``upload`` sends one committed checkpoint with its manifest last, ``catalog`` lists and prunes the remote
copies, ``mirror`` runs uploads in the background after each local commit, and ``download`` brings the newest
remote copy whose files verify back into a local output directory (staged, verified, then published).

A remote ``checkpoint-<step>/`` counts only once its ``aegis_manifest.json`` is there: the manifest is uploaded
after every other file, so an upload cut short leaves a folder that nothing ever resumes from.
"""

from .catalog import RemoteEntry, list_remote, prune_remote
from .download import download_checkpoint, pull_newest
from .location import RemoteError, RemoteLocation, open_remote
from .mirror import RemoteMirror, read_remote_status
from .upload import upload_checkpoint

__all__ = [
    "RemoteEntry",
    "RemoteError",
    "RemoteLocation",
    "RemoteMirror",
    "download_checkpoint",
    "list_remote",
    "open_remote",
    "prune_remote",
    "pull_newest",
    "read_remote_status",
    "upload_checkpoint",
]
