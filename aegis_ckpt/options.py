"""Option dataclasses and their validation.

The callback, the seed managers, the YAML config and the CLI all map onto these classes, so a value is
validated in exactly one place and every error message says why the value is refused.
"""

from __future__ import annotations

import math
import signal
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError
from .shardsize import shard_size_bytes

VERIFY_MODES = ("full", "quick")
AUDIT_DIGESTS = ("xxh3", "sha256")
WHEN_BUSY_MODES = ("skip", "wait")
WRITER_KINDS = ("thread", "process")


def _check_positive(name: str, value: float | None, why: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{name} must be a number > 0 (got {value!r}): {why}")


def options_from_mapping(cls, values: dict[str, Any], where: str):
    """Build an options dataclass from a plain mapping (a YAML section): unknown keys get a "did you mean",
    wrong types and refused values a one-line error naming ``where.key``."""
    from .configcheck import check_fields, prefixed

    checked = check_fields(cls, where, values)
    try:
        return cls(**checked)
    except ConfigError as e:
        raise prefixed(where, e) from e


def _signal_names(values: Any) -> tuple[str, ...]:
    """A list of signal names (``SIGUSR1``, ``USR1``) as upper-case ``SIG`` names; refuses unknown ones."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise ConfigError(
            f"preempt_signals must be a list of signal names such as [SIGUSR1] (got {values!r})."
        )
    names = []
    for value in values:
        name = str(value).strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        if not isinstance(getattr(signal, name, None), int) or name.startswith("SIG_"):
            raise ConfigError(f"preempt_signals: {value!r} is not a signal this platform has.")
        if name in ("SIGKILL", "SIGSTOP"):
            raise ConfigError(f"preempt_signals: {name} cannot be caught, so it cannot announce anything.")
        names.append(name)
    return tuple(names)


@dataclass(frozen=True, kw_only=True)
class CheckpointOptions:
    """When to save and how many committed checkpoints to keep."""

    save_interval_sec: float = 180.0
    """Wall-clock seconds between rolling saves, checked at every optimizer step end."""

    max_keep: int = 5
    """Committed rolling checkpoints to keep; older ones are deleted only after a newer one commits."""

    save_on_train_end: bool = True
    """Save (and commit) a checkpoint at the last step, so a finished run always ends on a committed state."""

    keep_milestone_every_sec: float | None = None
    """If set, also keep the first checkpoint committed in every window of this many seconds of training
    (e.g. 3600 keeps one per hour) on top of the rolling ``max_keep``."""

    keep_best: bool = True
    """Never prune the Trainer's ``best_model_checkpoint`` (``load_best_model_at_end``)."""

    keep_best_k: int = 0
    """Also keep the best k committed checkpoints by the Trainer's ``metric_for_best_model`` (in its
    ``greater_is_better`` direction) on top of the newest ``max_keep``, like Lightning's ``save_top_k``. Only
    checkpoints saved at a step that was evaluated carry the metric; 0 switches this off."""

    verify: str = "full"
    """How ``find_resume_checkpoint`` checks a candidate: ``"full"`` re-hashes every file, ``"quick"``
    compares sizes only."""

    allow_unverified: bool = False
    """Accept checkpoints without a manifest (saved by a plain Trainer) after structural checks."""

    # ---- adaptive interval and run record ----------------------------------------------------------
    adaptive: bool = False
    """Move the save interval with the measured save cost and this run's failure history (``AdaptivePolicy``):
    time spent saving stays under ``max_save_overhead``, and with failures on record the interval moves toward
    the Young/Daly optimum ``sqrt(2 x save cost x MTBF)``, always within ``min/max_interval_sec``."""

    min_interval_sec: float | None = None
    """Lower bound of the adaptive interval; None means ``save_interval_sec / 4``."""

    max_interval_sec: float | None = None
    """Upper bound of the adaptive interval (it bounds the work a failure can cost); None means
    ``save_interval_sec * 4``."""

    max_save_overhead: float = 0.05
    """Largest share of wall-clock time the adaptive policy lets saving take (0.05 = 5 %)."""

    audit_digest: str = "xxh3"
    """The digest of every committed file that ``.aegis/audit.jsonl`` records: ``xxh3`` (the manifest's own
    xxh3-128, free: computed anyway) or ``sha256`` (a cryptographic hash other tools can check with
    ``sha256sum``; computed in the same pass over the bytes as the xxh3, but it costs about 0.5 s of CPU per GB,
    which on a CPU-bound machine is most of what an asynchronous save costs training; docs/audit-log.md)."""

    audit_sha256: bool | None = None
    """Older spelling of ``audit_digest``: ``true`` means ``sha256``, ``false`` means ``xxh3``; null (default)
    leaves ``audit_digest`` as set."""

    heartbeat_every_sec: float = 30.0
    """How often the run lease (``.aegis/run.json``) records progress. After a power loss, the time between the
    last heartbeat and the last committed checkpoint is reported as lost work."""

    quarantine_max_age_days: float | None = 30.0
    """Delete folders set aside in ``.aegis/quarantine/`` once they are this many days old (checked at train
    begin; the newest one is always kept); null keeps them forever. ``aegis-ckpt clean`` empties it by hand."""

    quarantine_max_gb: float | None = None
    """Cap on the size of ``.aegis/quarantine/`` in GB: the oldest folders are deleted first at train begin (the
    newest one is always kept); null for no cap."""

    max_shard_bytes: int | str | None = None
    """Largest weight shard, in bytes or as ``"5GB"``/``"500MiB"``: the weights go into
    ``model-0000k-of-0000n.safetensors`` plus ``model.safetensors.index.json`` (the layout a plain Trainer resumes
    from), each shard written and hashed before the next is built, so a save holds about one shard beyond its
    snapshot. For asynchronous and direct synchronous saves and custom-loop managers; where the Trainer's own
    save runs it keeps its default. null: that default (``save_pretrained``'s ``max_shard_size``, 50 GB in
    transformers 5, 5 GB in 4.x)."""

    @property
    def interval_bounds(self) -> tuple[float, float]:
        """``(min_interval_sec, max_interval_sec)`` with the defaults filled in."""
        low = self.min_interval_sec if self.min_interval_sec is not None else self.save_interval_sec / 4
        high = self.max_interval_sec if self.max_interval_sec is not None else self.save_interval_sec * 4
        return float(low), float(high)

    def __post_init__(self) -> None:
        _check_positive(
            "save_interval_sec",
            self.save_interval_sec,
            "it is the wall-clock time between two rolling saves.",
        )
        if isinstance(self.max_keep, bool) or not isinstance(self.max_keep, int) or self.max_keep < 1:
            raise ConfigError(
                f"max_keep must be an integer >= 1 (got {self.max_keep!r}): "
                "the newest committed checkpoint is the resume point and is always kept."
            )
        _check_positive(
            "keep_milestone_every_sec",
            self.keep_milestone_every_sec,
            "it is the spacing of milestone checkpoints kept beside the rolling window; use null to disable.",
        )
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"verify must be one of {VERIFY_MODES} (got {self.verify!r}).")
        if (
            isinstance(self.keep_best_k, bool)
            or not isinstance(self.keep_best_k, int)
            or self.keep_best_k < 0
        ):
            raise ConfigError(
                f"keep_best_k must be an integer >= 0 (got {self.keep_best_k!r}): the number of best checkpoints "
                "by metric kept beside the newest max_keep; 0 switches it off."
            )
        for name in ("quarantine_max_age_days", "quarantine_max_gb"):
            _check_positive(name, getattr(self, name), "it bounds .aegis/quarantine/; use null for no limit.")
        if self.audit_digest not in AUDIT_DIGESTS:
            raise ConfigError(f"audit_digest must be one of {AUDIT_DIGESTS} (got {self.audit_digest!r}).")
        self._check_adaptive()
        object.__setattr__(self, "max_shard_bytes", shard_size_bytes(self.max_shard_bytes))

    @property
    def audit_uses_sha256(self) -> bool:
        """Whether saves compute sha256 for the audit log (``audit_digest``, or the older ``audit_sha256``)."""
        if self.audit_sha256 is not None:
            return bool(self.audit_sha256)
        return self.audit_digest == "sha256"

    def _check_adaptive(self) -> None:
        _check_positive(
            "min_interval_sec", self.min_interval_sec, "it is the shortest adaptive save interval."
        )
        _check_positive(
            "max_interval_sec", self.max_interval_sec, "it is the longest adaptive save interval."
        )
        low, high = self.interval_bounds
        if low > high:
            raise ConfigError(
                f"min_interval_sec ({low:g}) must not exceed max_interval_sec ({high:g}): the adaptive interval "
                "has to fit between them."
            )
        _check_positive("max_save_overhead", self.max_save_overhead, "it is a share of wall-clock time.")
        if self.max_save_overhead >= 1:
            raise ConfigError(
                f"max_save_overhead must be below 1 (got {self.max_save_overhead!r}): it is the share of "
                "wall-clock time spent saving, e.g. 0.05 for 5 %."
            )
        _check_positive(
            "heartbeat_every_sec", self.heartbeat_every_sec, "it is the period of the run lease heartbeat."
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "checkpoint") -> CheckpointOptions:
        return options_from_mapping(cls, values, where)


@dataclass(frozen=True, kw_only=True)
class EmergencyOptions:
    """What happens on a stop signal or an exception during training."""

    handle_signals: bool = True
    """Turn SIGTERM, SIGINT, SIGHUP, SIGUSR1 (and Windows console close/Ctrl+C/Ctrl+Break/logoff/shutdown) into
    a checkpoint at the next step end followed by exit code 128 + signal number."""

    grace_period_sec: float = 20.0
    """After a signal, exit anyway if the emergency checkpoint is not committed within this time (torchrun
    sends SIGKILL 30 s after SIGTERM)."""

    save_on_exception: bool = True
    """On an exception escaping training (single process), save the last completed step if the state is
    consistent, then re-raise."""

    allow_world_size_change: bool = False
    """Resume a checkpoint saved with a different number of processes. Off by default: the Trainer would
    continue with other RNG streams and data order, i.e. not where it stopped."""

    preempt_signals: tuple[str, ...] | None = None
    """Signals that announce the scheduler will end the job (e.g. ``["SIGUSR1"]``). Under Slurm, after the
    checkpoint of such a notice the job is requeued (``scontrol requeue``) and the process exits with 0, so the
    job runs again and resumes there. Default: SIGUSR1 and SIGTERM under Slurm, none elsewhere (outside Slurm
    every signal only stops). ``[]`` turns requeueing off."""

    def __post_init__(self) -> None:
        _check_positive(
            "grace_period_sec",
            self.grace_period_sec,
            "it bounds how long an emergency save may take after a signal.",
        )
        if self.preempt_signals is not None:
            object.__setattr__(self, "preempt_signals", _signal_names(self.preempt_signals))

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "emergency") -> EmergencyOptions:
        return options_from_mapping(cls, values, where)


@dataclass(frozen=True, kw_only=True)
class AsyncOptions:
    """Two-phase saves: training stalls only for a copy into CPU memory; writing and committing happen in the
    background."""

    enabled: bool = True
    """Save asynchronously where the setup allows it (plain, DDP; not DeepSpeed, FSDP, adapters, quantized or
    offloaded models, or a Trainer subclass that overrides a save method: those keep the Trainer's synchronous
    save, as logged once)."""

    when_busy: str = "skip"
    """A save that comes due while the previous one is still being written: ``skip`` (training goes on; the
    save is taken at the first step end after the writer is free) or ``wait`` (block until it is free)."""

    min_free_ram_fraction: float = 0.1
    """Fall back to a synchronous save when the snapshot would leave less than this fraction of RAM free."""

    writer: str = "thread"
    """Who writes in the background: ``thread`` (a thread of the training process, with pinned buffers for a GPU
    model) or ``process`` (a child process at low CPU priority that maps the snapshot from shared memory, so it
    shares no GIL with training; Linux, CPU models). On the 2-core benchmark machine the thread stalled training
    less (docs/benchmarks.md), so it is the default."""

    direct_sync_saves: bool = True
    """Write synchronous saves (final, signal and emergency saves; ``enabled=False``) through the same direct
    writer, hashed in the same pass, where the setup allows it (``trainer.directsave``); ``false`` keeps the
    Trainer's own ``_save_checkpoint``, whose files the commit then reads back to hash."""

    writer_niceness: int = 19
    """``nice`` increment of the writer process (0-19): 19 lets it use only CPU time that training leaves idle."""

    thread_niceness: int = 5
    """``nice`` increment of the writer thread and the threads it starts (0-19; its I/O priority drops to the
    lowest best-effort level with it). Per thread on Linux; elsewhere the thread keeps the training's priority.
    5 gives it about a third of the CPU weight of a training thread when both want a core; 19 starves it while
    training keeps every core busy, and saves are then deferred (docs/async-saves.md)."""

    def __post_init__(self) -> None:
        if self.when_busy not in WHEN_BUSY_MODES:
            raise ConfigError(f"when_busy must be one of {WHEN_BUSY_MODES} (got {self.when_busy!r}).")
        if self.writer not in WRITER_KINDS:
            raise ConfigError(f"writer must be one of {WRITER_KINDS} (got {self.writer!r}).")
        for name in ("writer_niceness", "thread_niceness"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 19:
                raise ConfigError(f"{name} must be an integer from 0 to 19 (got {value!r}).")
        if not 0 <= self.min_free_ram_fraction < 1:
            raise ConfigError(
                f"min_free_ram_fraction must be in [0, 1) (got {self.min_free_ram_fraction!r}): it is the share of "
                "RAM an asynchronous snapshot must leave free."
            )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "async_save") -> AsyncOptions:
        return options_from_mapping(cls, values, where)


# Option names that would carry a secret: credentials come from each backend's usual places (for S3 the
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY environment variables or a profile), never from a config file.
_SECRET_OPTION_WORDS = ("key", "secret", "token", "password", "credential", "sas", "connection_string")


def _secret_option_names(options: dict[str, Any], prefix: str = "") -> list[str]:
    """Keys (also nested, e.g. in ``client_kwargs``) whose name says they hold a secret."""
    found = []
    for key, value in options.items():
        name = f"{prefix}{key}"
        if any(word in str(key).lower() for word in _SECRET_OPTION_WORDS):
            found.append(name)
        elif isinstance(value, dict):
            found += _secret_option_names(value, f"{name}.")
    return found


@dataclass(frozen=True, kw_only=True)
class RemoteOptions:
    """Off-machine copies: every committed checkpoint is mirrored to object storage in the background, and a
    fresh machine resumes from the newest verified remote copy (``docs/remote.md``)."""

    url: str | None = None
    """Where the copies go: ``s3://bucket/prefix`` or any fsspec URL (``gs://``, ``az://``, ``file://`` for a
    mounted NAS). Credentials and endpoint come from the backend's usual places (for S3: the
    ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` environment variables or a profile).
    None: no remote copies."""

    max_keep: int | None = None
    """Remote checkpoints to keep (the newest verified one is never deleted); None keeps as many as the local
    ``max_keep``."""

    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the fsspec file system (e.g. ``{"profile": "backup"}`` or
    ``{"client_kwargs": {"region_name": "eu-west-1"}}``). Secrets are refused here."""

    upload_workers: int = 4
    """Files of one checkpoint uploaded at the same time (large files are sent as multipart uploads)."""

    attempts: int = 5
    """Tries per file on a transient error (exponential backoff with jitter) before the upload is set back and
    tried again later as a whole."""

    flush_timeout_sec: float = 300.0
    """At the end of training, wait at most this long for the last upload (training is over by then)."""

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    def __post_init__(self) -> None:
        if self.url is not None and (not isinstance(self.url, str) or "://" not in self.url):
            raise ConfigError(
                f"remote url must be a URL such as s3://bucket/prefix or file:///mnt/nas/run (got {self.url!r})."
            )
        if self.url and ":" in self.url.split("://", 1)[1].partition("@")[0] and "@" in self.url:
            raise ConfigError(
                "remote url must not carry credentials (user:secret@...): they would end up in logs and "
                "configs. Use the backend's environment variables or profiles instead."
            )
        if self.max_keep is not None and (
            isinstance(self.max_keep, bool) or not isinstance(self.max_keep, int) or self.max_keep < 1
        ):
            raise ConfigError(
                f"remote max_keep must be an integer >= 1 or null (got {self.max_keep!r}): the newest "
                "verified remote checkpoint is always kept."
            )
        if not isinstance(self.options, dict):
            raise ConfigError(f"remote options must be a mapping (got {type(self.options).__name__}).")
        secret = sorted(_secret_option_names(self.options))
        if secret:
            raise ConfigError(
                f"remote options must not hold credentials ({', '.join(secret)}): they come from the "
                "environment (for S3 AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a profile, never from a config."
            )
        for name in ("upload_workers", "attempts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"remote {name} must be an integer >= 1 (got {value!r}).")
        _check_positive(
            "flush_timeout_sec", self.flush_timeout_sec, "it bounds the wait for the last upload."
        )

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, where: str = "remote") -> RemoteOptions:
        return options_from_mapping(cls, values, where)
