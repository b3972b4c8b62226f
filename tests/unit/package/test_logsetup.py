"""The package logger's default handler and level rules (logsetup): replicas, configured root logging, the
Trainer's log_level / log_level_replica and transformers' verbosity."""

from __future__ import annotations

import io
import logging

import pytest
import transformers

from aegis_ckpt import logsetup


@pytest.fixture
def pkg_logger(monkeypatch):
    """The aegis_ckpt logger with only the default handler and a private stderr, restored afterwards."""
    pkg = logging.getLogger(logsetup.PACKAGE_LOGGER)
    saved = (pkg.handlers[:], pkg.propagate, pkg.level)
    pkg.handlers[:], pkg.propagate = [], True
    pkg.setLevel(logging.NOTSET)
    logsetup.install_default_handler()
    yield pkg
    pkg.handlers[:], pkg.propagate, pkg.level = saved


def bare_process(monkeypatch) -> io.StringIO:
    """Inside the test body (pytest sets its own stderr and root handlers per phase): no root handlers, and a
    private stderr, returned."""
    monkeypatch.setattr(logging.root, "handlers", [])
    stderr = io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    return stderr


def test_default_handler_prints_info_once_and_formatted(pkg_logger, monkeypatch):
    stderr = bare_process(monkeypatch)
    logsetup.install_default_handler()  # idempotent: no second handler, no duplicate line
    logging.getLogger("aegis_ckpt.runstate.saves").info("Committed %s", "checkpoint-3")
    assert stderr.getvalue() == "[aegis-ckpt] INFO Committed checkpoint-3\n"


def test_default_handler_stands_down_when_root_logging_is_configured(pkg_logger, monkeypatch):
    stderr = bare_process(monkeypatch)
    user = io.StringIO()
    root_handler = logging.StreamHandler(user)
    monkeypatch.setattr(logging.root, "handlers", [root_handler])
    logging.getLogger("aegis_ckpt.resume").info("Resuming from x")
    assert stderr.getvalue() == ""
    assert user.getvalue() == "Resuming from x\n"


def test_replica_rank_passes_warnings_only(pkg_logger, monkeypatch):
    stderr = bare_process(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "1")
    log = logging.getLogger("aegis_ckpt.x")
    log.info("info line")
    log.warning("warning line")
    assert stderr.getvalue() == "[aegis-ckpt] WARNING warning line\n"


def test_application_level_is_kept_at_install(monkeypatch):
    pkg = logging.getLogger(logsetup.PACKAGE_LOGGER)
    saved = (pkg.handlers[:], pkg.level)
    try:
        pkg.handlers[:] = []
        pkg.setLevel(logging.ERROR)
        logsetup.install_default_handler()
        assert pkg.level == logging.ERROR
    finally:
        pkg.handlers[:], pkg.level = saved


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, logging.INFO),  # passive: our default stays
        ({"log_level": "error"}, logging.ERROR),
        ({"log_level": "debug"}, logging.DEBUG),
    ],
)
def test_training_log_level_applies_on_the_main_process(pkg_logger, tmp_path, kwargs, expected):
    pkg = pkg_logger
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)
    logsetup.apply_training_log_level(args)
    assert pkg.level == expected


def test_transformers_verbosity_is_followed_when_set(pkg_logger, tmp_path, monkeypatch):
    pkg = pkg_logger
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    before = transformers.logging.get_verbosity()
    try:
        transformers.logging.set_verbosity_error()
        logsetup.follow_transformers_verbosity()
        assert pkg.level == logging.ERROR
        transformers.logging.set_verbosity_debug()
        args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
        logsetup.apply_training_log_level(args)
        assert pkg.level == logging.DEBUG
    finally:
        transformers.logging.set_verbosity(before)
