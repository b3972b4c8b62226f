"""Command line: argparse subcommands only; each one calls one function elsewhere."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from .. import __version__
from ..errors import AegisError, ConfigError, PreflightError, RunLockedError
from ..exitcodes import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, EXIT_SIGNAL_BASE, exit_code_for_signal
from ..system.interrupts import interrupts_raise_interrupted
from ..system.redact import RedactingFormatter, redact
from ..system.signals import exit_at_once_on_interrupt
from .launchers import add_launcher_command
from .maintenance import add_maintenance_commands
from .output import print_json
from .remote import add_remote_commands
from .unattended import add_unattended_commands


def _setup_logging(verbose: bool, timestamps: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "[aegis-ckpt] %(levelname)s %(message)s"
    if timestamps:  # the supervisor's decisions end up in a log file read hours later
        fmt = "%(asctime)s " + fmt
    # Webhook URLs and tokens never reach a log line (system.redact).
    handler.setFormatter(RedactingFormatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    pkg = logging.getLogger("aegis_ckpt")
    pkg.handlers[:] = [handler]
    pkg.setLevel(logging.DEBUG if verbose else logging.INFO)
    pkg.propagate = False


def cmd_train(ns: argparse.Namespace) -> int:
    from ..train.config import load_config

    cfg = load_config(ns.config, ns.set + (["resume.adopt_plain=true"] if ns.adopt_plain else []))
    from ..train.runner import run_training  # torch and transformers: only once the config is known good

    result = run_training(cfg)
    if result.status == "already_finished":
        print(
            f"aegis-ckpt: this run already finished at step {result.step}; nothing to do.\n"
            f"  output: {result.output_dir}\n"
            f"  final model: {result.final_model or '(none)'}\n"
            f"  (to train further, raise max_steps: --set training.max_steps=N with N > {result.step})"
        )
        return EXIT_OK
    from ..storage.store import CheckpointStore

    committed = CheckpointStore(result.output_dir).committed()
    print(
        f"aegis-ckpt: training finished at step {result.step} in {result.seconds:.0f} s.\n"
        f"  checkpoints: {result.output_dir} ({len(committed)} committed"
        + (f", newest {committed[-1].path.name})" if committed else ")")
        + f"\n  final model: {result.final_model}"
    )
    return EXIT_OK


def cmd_status(ns: argparse.Namespace) -> int:
    from .status import collect_status, format_status

    report = collect_status(ns.dir, full=ns.full)
    if ns.json:
        print_json(report)
    else:
        print(format_status(report))
    return EXIT_OK


def cmd_verify(ns: argparse.Namespace) -> int:
    from .status import check_checkpoints

    rows = check_checkpoints(ns.dir, full=ns.full)
    mode = "full" if ns.full else "quick"
    if ns.json:
        good = next((r["name"] for r in rows if r["verified"]), None)
        newest_ok = bool(rows) and bool(rows[0]["verified"])
        print_json(
            {
                "dir": str(ns.dir),
                "mode": mode,
                "newest_ok": newest_ok,
                "resume_from": good,
                "checkpoints": rows,
            }
        )
        return EXIT_OK if newest_ok else EXIT_FAILURE
    if not rows:
        print(f"aegis-ckpt: no checkpoint folders in {ns.dir}")
        return EXIT_FAILURE
    for r in rows:
        print(f"{r['name']}: {'ok' if r['verified'] else 'BAD: ' + '; '.join(r['problems'])}")
    good = next((r["name"] for r in rows if r["verified"]), None)
    if rows[0]["verified"]:
        print(f"aegis-ckpt: the newest checkpoint {rows[0]['name']} is good ({mode} verification)")
        return EXIT_OK
    print(
        f"aegis-ckpt: the newest checkpoint {rows[0]['name']} is NOT good ({mode} verification); "
        f"a resume would use {good or 'nothing (fresh start)'}. Nothing was moved (verify is read-only)."
    )
    return EXIT_FAILURE


def cmd_resume_path(ns: argparse.Namespace) -> int:
    from .status import resume_path

    mode = "quick" if ns.quick else "full"
    path = resume_path(ns.dir, verify=mode)
    if ns.json:
        print_json({"dir": str(ns.dir), "verify": mode, "resume_from": path})
        return EXIT_OK if path else EXIT_FAILURE
    if path is None:
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aegis-ckpt",
        description="Crash-safe, time-based rolling checkpoints for Hugging Face training.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train from a YAML config, resuming from the newest intact checkpoint")
    p.add_argument("config", help="path to the YAML config (e.g. configs/tiny.yaml)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.max_steps=100 (repeatable)",
    )
    p.add_argument(
        "--adopt-plain",
        action="store_true",
        help="take over checkpoints a plain Trainer left in the output dir (after structural checks; "
        "same as resume.adopt_plain: true)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "status", help="run state, checkpoints, power losses and save statistics of a run (read-only)"
    )
    p.add_argument("dir", help="the run's output directory")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--full", action="store_true", help="re-hash every file instead of comparing sizes")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "verify", help="check every checkpoint against its manifest; exit 0 if the newest is good"
    )
    p.add_argument("dir", help="the run's output directory")
    p.add_argument("--full", action="store_true", help="re-hash every file (default: compare sizes)")
    p.add_argument("--json", action="store_true", help="machine-readable output (same exit codes)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "resume-path",
        help="print the checkpoint a resume would use; empty output and exit 1 if there is none",
    )
    p.add_argument("dir", help="the run's output directory")
    p.add_argument("--quick", action="store_true", help="compare sizes instead of re-hashing")
    p.add_argument("--json", action="store_true", help='{"resume_from": PATH or null, ...} (same exit codes)')
    p.set_defaults(func=cmd_resume_path)
    add_unattended_commands(sub)
    add_maintenance_commands(sub)
    add_remote_commands(sub)
    add_launcher_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``aegis-ckpt`` entry point: one line on stderr for every error, never a traceback (``-v`` shows it).
    Ctrl+C at any moment exits 130 with one line: during training the emergency checkpoint path handles it;
    before or after, this does (as ``Interrupted``, see ``system.interrupts``)."""
    try:
        with interrupts_raise_interrupted():
            code = _run(argv)
        sys.stdout.flush()  # inside the try: a closed pipe shows up here at the latest
        return code
    except BrokenPipeError:
        # The reader went away (aegis-ckpt status | head -1): as the Python docs recommend, point stdout at devnull
        # so the interpreter's final flush does not fail again, and stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("aegis-ckpt: interrupted (SIGINT): exiting with code 130", file=sys.stderr)
        return EXIT_SIGNAL_BASE + int(signal.SIGINT)
    finally:
        if (
            argv is None
        ):  # Ctrl+C while the interpreter winds down after main returned: leave with 130 at once
            exit_at_once_on_interrupt(EXIT_SIGNAL_BASE + int(signal.SIGINT))


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    _setup_logging(ns.verbose, timestamps=getattr(ns, "timestamps", False))
    try:
        return ns.func(ns)
    except (ConfigError, PreflightError, RunLockedError) as e:
        # RunLockedError: restarting will not help while the other process runs; a supervisor must not loop.
        print(f"aegis-ckpt: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AegisError as e:
        print(f"aegis-ckpt: error: {redact(str(e))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("aegis-ckpt: interrupted", file=sys.stderr)
        return exit_code_for_signal(signal.SIGINT)
    except BrokenPipeError:
        raise
    except Exception as e:  # a bug or an environment problem: one line, the traceback kept in a file
        print(
            f"aegis-ckpt: error: {type(e).__name__}: {_first_line(e)}{_keep_traceback(ns.verbose)}",
            file=sys.stderr,
        )
        return EXIT_FAILURE


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "(no message)"


def _keep_traceback(verbose: bool) -> str:
    """Print the traceback with ``-v``; otherwise write it to a temporary file and say where."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    if verbose:
        print(text, file=sys.stderr, end="")
        return ""
    try:
        with tempfile.NamedTemporaryFile(
            "w", prefix="aegis-ckpt-error-", suffix=".txt", delete=False, encoding="utf-8"
        ) as f:
            f.write(text)
    except OSError:
        return " (run with -v for the traceback)"
    return f" (traceback in {f.name}; -v prints it)"


if __name__ == "__main__":
    sys.exit(main())
