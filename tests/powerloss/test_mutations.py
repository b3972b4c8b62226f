"""Each durability step of the commit path is needed: with any one of them switched off (``mutations``), the
power-loss check of a custom-loop save finds a crash state that breaks a promise.

A test that cannot fail proves nothing; this one shows, mutation by mutation, that ``crashcheck`` fails when the
protocol is broken. The mutations that only a Trainer save or ``aegis-ckpt train`` exercises are listed in
``docs/reliability.md`` with the test that catches them (run with ``AEGIS_POWERCUT_MUTATION=<name>``)."""

from __future__ import annotations

import pytest
from mutations import MUTATIONS, install
from scenarios import check_all, record_in_place_commit, record_loop_saves

LOOP_FIRST, LOOP_BOTH, IN_PLACE = "custom loop, first save", "custom loop, two saves", "in-place commit"
COMMIT_PATH = {
    "commit: no flush of model.safetensors": IN_PLACE,
    "commit: no flush of optimizer.pt": IN_PLACE,
    "commit: no flush of the folder before the manifest": LOOP_FIRST,
    "commit: no flush of the parent after the manifest": IN_PLACE,
    "commit: manifest before the data is flushed": IN_PLACE,
    "atomic write: no flush of the temp file": IN_PLACE,
    "atomic write: no flush of the folder after the rename": IN_PLACE,
    "atomic write: rename before flush": LOOP_FIRST,
    "publish: no flush of the output dir after the rename": LOOP_FIRST,
    "audit: no flush of the appended line": IN_PLACE,
}
"""Mutation -> the scenario whose crash states show it. Not listed: "audit: no flush of the folder after creating
the log" (in every recorded save a later flush of ``.aegis/`` for run.json or store.json makes the new log's name
durable too, so no crash state differs; docs/reliability.md says so)."""


def _record(scenario: str, out):
    if scenario == IN_PLACE:
        return record_in_place_commit(out)
    recordings = record_loop_saves(out)
    return recordings[:1] if scenario == LOOP_FIRST else recordings


@pytest.mark.parametrize("name", list(COMMIT_PATH))
def test_mutation_of_the_commit_path_is_caught(name, tmp_path, scratch, monkeypatch):
    assert name in MUTATIONS
    install(name, monkeypatch)
    recordings = _record(COMMIT_PATH[name], tmp_path / "out")
    monkeypatch.undo()  # the checks themselves run on the real functions
    problems = [p for report in check_all(recordings, scratch, max_problems=1) for p in report.problems]
    print(name, "->", problems[:1])
    assert problems, f"no crash state breaks a promise with '{name}': the check cannot see this step"


def test_the_unmutated_scenarios_pass(tmp_path, scratch):
    """The in-place scenario without a mutation keeps every promise (the custom-loop one is
    ``test_powerloss_loop``'s)."""
    for scenario in (IN_PLACE,):
        for report in check_all(_record(scenario, tmp_path / scenario), scratch / scenario):
            assert not report.problems, report.summary()
