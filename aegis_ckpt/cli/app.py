"""Command line: argparse subcommands only; each one calls one function elsewhere."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .. import __version__
from ..errors import AegisError, ConfigError, PreflightError, RunLockedError
from ..exitcodes import EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK
from .remote import add_remote_commands


def _setup_logging(verbose: bool, timestamps: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    fmt = "[aegis-ckpt] %(levelname)s %(message)s"
    if timestamps:  # the supervisor's decisions end up in a log file read hours later
        fmt = "%(asctime)s " + fmt
    handler.setFormatter(logging.Formatter(fmt, datefmt="%Y-%m-%d %H:%M:%S"))
    pkg = logging.getLogger("aegis_ckpt")
    pkg.handlers[:] = [handler]
    pkg.setLevel(logging.DEBUG if verbose else logging.INFO)
    pkg.propagate = False


def cmd_train(ns: argparse.Namespace) -> int:
    from ..train.config import load_config
    from ..train.runner import run_training

    cfg = load_config(ns.config, ns.set)
    result = run_training(cfg)
    if result.status == "already_finished":
        print(
            f"aegis-ckpt: this run already finished at step {result.step}; nothing to do.\n"
            f"  output: {result.output_dir}\n"
            f"  final model: {result.final_model or '(none)'}\n"
            f"  (delete {result.output_dir}/.aegis/completed.json to train again)"
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
    import json

    from .status import collect_status, format_status

    report = collect_status(ns.dir, full=ns.full)
    print(json.dumps(report, indent=2, sort_keys=True) if ns.json else format_status(report))
    return EXIT_OK


def cmd_verify(ns: argparse.Namespace) -> int:
    from .status import check_checkpoints

    rows = check_checkpoints(ns.dir, full=ns.full)
    if not rows:
        print(f"aegis-ckpt: no checkpoint folders in {ns.dir}")
        return EXIT_FAILURE
    mode = "full" if ns.full else "quick"
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

    path = resume_path(ns.dir, verify="quick" if ns.quick else "full")
    if path is None:
        return EXIT_FAILURE
    print(path)
    return EXIT_OK


# ---- issue 6: unattended operation (preflight, run, notify, install-/uninstall-autostart) ----------------------
def cmd_preflight(ns: argparse.Namespace) -> int:
    from ..exitcodes import EXIT_ALREADY_FINISHED
    from ..train.config import load_config
    from ..train.preflight import run_preflight

    report = run_preflight(load_config(ns.config, ns.set))
    for check in report.checks:
        print(check.line(), flush=True)
    print(report.summary(), flush=True)
    if report.already_finished is not None:
        return EXIT_ALREADY_FINISHED
    return EXIT_BAD_INPUT if report.refused else EXIT_OK


def cmd_run(ns: argparse.Namespace) -> int:
    from ..unattended.supervise import SuperviseOptions, run_supervised

    cmd = list(ns.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise ConfigError("no command to run: aegis-ckpt run [options] -- CMD ...")
    inject_checkpoint = {}
    if ns.save_interval is not None:
        inject_checkpoint["save_interval_sec"] = ns.save_interval
    if ns.max_keep is not None:
        inject_checkpoint["max_keep"] = ns.max_keep
    if inject_checkpoint and not ns.inject:
        raise ConfigError("--save-interval and --max-keep configure the injected callback: add --inject")
    options = SuperviseOptions(
        max_restarts=ns.max_restarts,
        backoff_sec=ns.backoff,
        backoff_max_sec=max(ns.backoff_max, ns.backoff),
        hang_timeout_sec=ns.hang_timeout or None,
        startup_grace_sec=ns.startup_grace or None,
        kill_grace_sec=ns.kill_grace,
        inject=ns.inject,
        inject_checkpoint=inject_checkpoint,
    )
    return run_supervised(cmd, options)


def cmd_notify(ns: argparse.Namespace) -> int:
    from ..runstate.completion import read_completion
    from ..unattended.notify import notify

    sound, webhook, timeout = True, os.environ.get("AEGIS_WEBHOOK_URL") or None, 10.0
    details: dict = {"message": ns.message}
    if ns.config:
        from ..train.config import load_config

        cfg = load_config(ns.config, ns.set)
        sound, timeout = cfg.notify.sound, cfg.notify.webhook_timeout_sec
        webhook = cfg.notify.webhook_url or webhook
        done = read_completion(cfg.output_dir)
        details.update(config=str(ns.config), output_dir=str(cfg.output_dir), step=(done or {}).get("step"))
    notify(
        ns.event,
        sound=sound and not ns.no_sound,
        webhook_url=webhook,
        webhook_timeout_sec=timeout,
        details=details,
    )
    return EXIT_OK


def _autostart_target(ns: argparse.Namespace):
    from pathlib import Path

    from ..unattended import autostart

    host = autostart.detect_host()
    ops = autostart.DryRunOps() if ns.dry_run else autostart.SystemOps()
    config = Path(ns.config).resolve() if getattr(ns, "config", None) else None
    return autostart, host, ops, config


def cmd_install_autostart(ns: argparse.Namespace) -> int:
    from pathlib import Path

    from ..train.config import load_config

    autostart, host, ops, config = _autostart_target(ns)
    load_config(config)  # refuse to install a boot-time start of a config that cannot train
    options = autostart.AutostartOptions(
        config=config,
        project_dir=Path(ns.project).resolve() if ns.project else autostart.find_project_dir(config),
        method=ns.method or autostart.default_method(host),
        name=autostart.check_name(ns.name or autostart.default_name(config)),
    )
    plan = autostart.plan_install(options, host, ops)
    autostart.apply_install(plan, host, ops)
    verb = "would install" if ns.dry_run else "installed"
    print(f"aegis-ckpt: {verb} autostart {plan.name} ({plan.method}) for {config}")
    for f in plan.files:
        print(f"  file: {f.path}")
    for note in plan.notes:
        print(f"  {note}")
    print(f"  undo with: aegis-ckpt uninstall-autostart --name {plan.name}")
    return EXIT_OK


def cmd_uninstall_autostart(ns: argparse.Namespace) -> int:
    autostart, host, ops, config = _autostart_target(ns)
    if not ns.name and config is None:
        raise ConfigError("say which autostart to remove: uninstall-autostart CONFIG or --name NAME")
    name = autostart.check_name(ns.name or autostart.default_name(config))
    plan = autostart.plan_uninstall(name, host, ops)
    done = autostart.apply_uninstall(plan, host, ops)
    print(f"aegis-ckpt: {'would remove' if ns.dry_run else 'removed'} autostart {name} ({plan.method})")
    for item in done:
        print(f"  {item}")
    for note in plan.notes:
        print(f"  {note}")
    return EXIT_OK


def _add_unattended_commands(sub) -> None:
    p = sub.add_parser("preflight", help="check disk space, GPU and output dir before an unattended start")
    p.add_argument("config", help="path to the YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=cmd_preflight)

    p = sub.add_parser(
        "run",
        help="supervise a training command: restart on failure, forward signals, kill hangs",
        description="Run CMD until it finishes: restart it on failure with exponential backoff, forward "
        "Ctrl+C/SIGTERM/SIGHUP to it (then never restart), kill it when its heartbeat stops.",
    )
    p.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        metavar="N",
        help="restarts in a row without progress (default 5)",
    )
    p.add_argument(
        "--backoff",
        type=float,
        default=10.0,
        metavar="SEC",
        help="first restart delay, doubled each time (default 10)",
    )
    p.add_argument(
        "--backoff-max", type=float, default=300.0, metavar="SEC", help="longest restart delay (default 300)"
    )
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=1800.0,
        metavar="SEC",
        help="no heartbeat for SEC after the first one means hung (default 1800; 0 disables)",
    )
    p.add_argument(
        "--startup-grace",
        type=float,
        default=0.0,
        metavar="SEC",
        help="also kill a run that wrote no first heartbeat after SEC (default 0: never)",
    )
    p.add_argument(
        "--kill-grace",
        type=float,
        default=30.0,
        metavar="SEC",
        help="SIGTERM to SIGKILL for a hung run (default 30)",
    )
    p.add_argument(
        "--inject",
        action="store_true",
        help="give an unmodified Trainer script the aegis callback and resume-from-newest-intact",
    )
    p.add_argument("--save-interval", type=float, metavar="SEC", help="with --inject: seconds between saves")
    p.add_argument("--max-keep", type=int, metavar="N", help="with --inject: committed checkpoints to keep")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...", help="the command to supervise")
    p.set_defaults(func=cmd_run, timestamps=True)

    p = sub.add_parser("notify", help="play the end sound and call the webhook (used by the launchers)")
    p.add_argument("event", choices=("finished", "failed"))
    p.add_argument(
        "--config", help="read notify settings (sound, webhook_url) and the run's state from CONFIG"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--message", help="extra text for the webhook message")
    p.add_argument("--no-sound", action="store_true", help="webhook only")
    p.set_defaults(func=cmd_notify, timestamps=True)

    p = sub.add_parser("install-autostart", help="start the launcher for CONFIG at logon/boot")
    p.add_argument("config", help="path to the YAML config the launcher trains")
    p.add_argument(
        "--method",
        choices=("schtasks", "startup", "systemd", "cron"),
        help="default: schtasks on Windows, systemd (else cron) on Linux",
    )
    p.add_argument("--name", help="name of the task/unit (default: from the config path)")
    p.add_argument(
        "--project", help="folder holding launch/ (default: found from the current dir or the config)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="print what would be created and run; change nothing"
    )
    p.set_defaults(func=cmd_install_autostart)

    p = sub.add_parser("uninstall-autostart", help="remove exactly what install-autostart created")
    p.add_argument("config", nargs="?", help="the config given to install-autostart")
    p.add_argument("--name", help="the autostart name (printed by install-autostart)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; change nothing")
    p.set_defaults(func=cmd_uninstall_autostart)


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
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser(
        "resume-path",
        help="print the checkpoint a resume would use; empty output and exit 1 if there is none",
    )
    p.add_argument("dir", help="the run's output directory")
    p.add_argument("--quick", action="store_true", help="compare sizes instead of re-hashing")
    p.set_defaults(func=cmd_resume_path)
    _add_unattended_commands(sub)
    add_remote_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    _setup_logging(ns.verbose, timestamps=getattr(ns, "timestamps", False))
    try:
        return ns.func(ns)
    except (ConfigError, PreflightError, RunLockedError) as e:
        # RunLockedError: restarting will not help while the other process runs; a supervisor must not loop.
        print(f"aegis-ckpt: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except AegisError as e:
        print(f"aegis-ckpt: error: {e}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
