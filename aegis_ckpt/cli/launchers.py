"""``aegis-ckpt launcher``: the launchers for a project that installed aegis-ckpt with pip.

A checkout has them in ``launch/``; a pip install has them only inside the package (package data), so this
command writes them into a folder of the user's project, byte for byte: ``auto_train.sh`` (Linux, macOS),
``auto_train.bat`` (Windows, CRLF line endings kept) and ``train.sbatch`` (Slurm). The launchers treat the folder
above the one they sit in as the project folder (where they look for ``venv/`` or ``.venv/``, and where
``install-autostart`` looks for ``launch/auto_train.*``), so ``aegis-ckpt launcher --write launch`` in the project
folder gives the layout of a checkout.

``--log-dir CONFIG`` is the launchers' own question: the folder their log files go to by default, ``logs/`` in
the run's output dir (``storage.layout.LAUNCHER_LOGS_DIR``), so that the story of a run lies next to its
checkpoints.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..exitcodes import EXIT_BAD_INPUT, EXIT_OK


@dataclass(frozen=True)
class Launcher:
    name: str
    package: str
    """The package that ships it (``[tool.setuptools.package-data]`` in pyproject.toml)."""
    executable: bool
    purpose: str

    def data(self) -> bytes:
        return resources.files(self.package).joinpath(self.name).read_bytes()


LAUNCHERS = (
    Launcher(
        "auto_train.sh",
        "aegis_ckpt.unattended",
        True,
        "Linux/macOS: preflight, supervised training with restarts, log file, notification",
    ),
    Launcher("auto_train.bat", "aegis_ckpt.unattended", False, "Windows: the same as auto_train.sh"),
    Launcher("train.sbatch", "aegis_ckpt.cluster", True, "Slurm: train, checkpoint on preemption, requeue"),
)


def default_log_dir(config: str, overrides: list[str] | None = None) -> Path:
    """``logs/`` in the output dir of ``config`` after the ``--set`` ``overrides`` (absolute; raises
    ``ConfigError`` when it cannot be read). Only that one value is read: a full validation would import
    transformers on every start of a launcher."""
    from ..storage.layout import LAUNCHER_LOGS_DIR
    from ..train.config import read_output_dir

    return read_output_dir(config, overrides).resolve() / LAUNCHER_LOGS_DIR


def write_launchers(folder: Path, *, force: bool) -> list[Path] | str:
    """Write every launcher into ``folder`` (created if needed); the one-line refusal instead when one exists
    already and ``force`` is not given (then nothing is written)."""
    from ..storage import fsio

    targets = [(launcher, folder / launcher.name) for launcher in LAUNCHERS]
    if folder.exists() and not folder.is_dir():
        return f"{folder} exists and is not a folder"
    existing = [str(path) for _, path in targets if path.exists()]
    if existing and not force:
        return f"{', '.join(existing)} already exist(s): pass --force to overwrite"
    fsio.makedirs_durable(folder)
    for launcher, path in targets:
        fsio.atomic_write_bytes(path, launcher.data(), mode=0o755 if launcher.executable else 0o644)
    return [path for _, path in targets]


def cmd_launcher(ns: argparse.Namespace) -> int:
    if ns.log_dir is not None:
        print(default_log_dir(ns.log_dir, ns.set))
        return EXIT_OK
    if ns.write is None:
        print("aegis-ckpt launchers (write them into a folder of your project with --write DIR):")
        for launcher in LAUNCHERS:
            print(f"  {launcher.name:<15} {launcher.purpose}")
        print("Example, in your project folder: aegis-ckpt launcher --write launch")
        return EXIT_OK
    folder = Path(ns.write).absolute()
    written = write_launchers(folder, force=ns.force)
    if isinstance(written, str):
        print(f"aegis-ckpt: error: {written}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for path in written:
        print(f"wrote {path}")
    print(f"The launchers treat {folder.parent} as the project folder (its venv/ or .venv/ is used).")
    print("Next, with your config:")
    print(
        f"  {folder / 'auto_train.sh'} CONFIG.yaml        (Windows: {folder / 'auto_train.bat'} CONFIG.yaml)"
    )
    print(f"  sbatch {folder / 'train.sbatch'} CONFIG.yaml    (on a Slurm cluster)")
    return EXIT_OK


def add_launcher_command(sub) -> None:
    p = sub.add_parser(
        "launcher",
        help="write the unattended-training launchers (auto_train.sh/.bat, train.sbatch) into your project",
        description="Without options: list the launchers. --write DIR writes them into DIR (the folder above "
        "DIR is the project folder they run from; 'launch' in your project folder is the usual choice).",
    )
    p.add_argument("--write", metavar="DIR", help="write every launcher into DIR (created if needed)")
    p.add_argument("--force", action="store_true", help="with --write: overwrite launchers already in DIR")
    p.add_argument("--list", action="store_true", help="list the launchers (the default)")
    p.add_argument(
        "--log-dir",
        metavar="CONFIG",
        help="print the folder the launchers write their log files to by default: logs/ in CONFIG's output dir",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="with --log-dir: an override as aegis-ckpt train takes it (training.output_dir=... counts)",
    )
    p.set_defaults(func=cmd_launcher)
