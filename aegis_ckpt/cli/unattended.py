"""The ``aegis-ckpt`` commands for unattended operation: ``preflight``, ``run`` (the supervisor), ``notify`` and
``install-``/``uninstall-autostart``."""

from __future__ import annotations

import argparse
import os

from ..errors import ConfigError
from ..exitcodes import EXIT_BAD_INPUT, EXIT_OK
from .output import print_json


def cmd_preflight(ns: argparse.Namespace) -> int:
    from ..exitcodes import EXIT_ALREADY_FINISHED
    from ..train.config import load_config
    from ..train.preflight import run_preflight

    report = run_preflight(load_config(ns.config, ns.set))
    if ns.json:
        print_json(
            {
                "config": str(ns.config),
                "passed": not report.refused and report.already_finished is None,
                "refused": [c.name for c in report.refused],
                "already_finished": report.already_finished,
                "checks": [{"name": c.name, "status": c.status, "message": c.message} for c in report.checks],
                "summary": report.summary(),
            }
        )
    else:
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
    method, missing = ns.method, None
    if method is None:
        try:
            method = autostart.default_method(host)
        except ConfigError as e:
            if not ns.dry_run:
                raise
            # A dry run shows the plan on any machine: the systemd one when this host has no method to use.
            method, missing = "systemd", str(e)
    options = autostart.AutostartOptions(
        config=config,
        project_dir=Path(ns.project).resolve() if ns.project else autostart.find_project_dir(config),
        method=method,
        name=autostart.check_name(ns.name or autostart.default_name(config)),
    )
    plan = autostart.plan_install(options, host, ops)
    if missing:
        plan.notes.append(f"this machine could not use it as it is: {missing}")
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


def add_unattended_commands(sub) -> None:
    """The subcommands for running without anyone watching, one parser each."""
    _add_preflight(sub)
    _add_run(sub)
    _add_notify(sub)
    _add_install_autostart(sub)
    _add_uninstall_autostart(sub)


def _add_preflight(sub) -> None:
    """``preflight``: the checks before an unattended start."""
    p = sub.add_parser("preflight", help="check disk space, GPU and output dir before an unattended start")
    p.add_argument("config", help="path to the YAML config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--json", action="store_true", help="machine-readable output (same exit codes)")
    p.set_defaults(func=cmd_preflight)


def _add_run(sub) -> None:
    """``run``: the supervisor's options (restarts, backoff, hang detection, injection)."""
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


def _add_notify(sub) -> None:
    """``notify``: the end-of-run sound and webhook the launchers call."""
    p = sub.add_parser("notify", help="play the end sound and call the webhook (used by the launchers)")
    p.add_argument("event", choices=("finished", "failed"))
    p.add_argument(
        "--config", help="read notify settings (sound, webhook_url) and the run's state from CONFIG"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--message", help="extra text for the webhook message")
    p.add_argument("--no-sound", action="store_true", help="webhook only")
    p.set_defaults(func=cmd_notify, timestamps=True)


def _add_install_autostart(sub) -> None:
    """``install-autostart``: start the launcher at logon or boot."""
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


def _add_uninstall_autostart(sub) -> None:
    """``uninstall-autostart``: remove what ``install-autostart`` created."""
    p = sub.add_parser("uninstall-autostart", help="remove exactly what install-autostart created")
    p.add_argument("config", nargs="?", help="the config given to install-autostart")
    p.add_argument("--name", help="the autostart name (printed by install-autostart)")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed; change nothing")
    p.set_defaults(func=cmd_uninstall_autostart)
