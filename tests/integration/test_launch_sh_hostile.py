"""launch/auto_train.sh under bash in a project folder whose path holds spaces, quotes, ``$``, ``!``, ``%``,
``&``, ``;`` and non-ASCII letters, and with numbers that try to smuggle in a command."""

from __future__ import annotations

import shlex

import pytest
from test_launch_sh import ShProject

HOSTILE = 'it\'s "a" $HOME !x 100% & ; é ü'


@pytest.fixture
def hostile(tmp_path) -> ShProject:
    project = ShProject(tmp_path / HOSTILE / "proj")
    project.make_fake_venv()
    venv = project.root / ".venv"  # the fixture's activate does not quote for such a path; a real venv's does
    (venv / "bin" / "activate").write_text(
        f'export VIRTUAL_ENV={shlex.quote(str(venv))}\nexport PATH={shlex.quote(str(venv / "bin"))}:"$PATH"\n'
    )
    return project


def test_a_hostile_project_path_reaches_python_unchanged(hostile):
    config = hostile.root / "configs" / "run $x `id` é.yaml"
    config.write_text("# placeholder\n")
    code, out = hostile.run(str(config))
    assert code == 0, out
    (preflight,) = hostile.calls("preflight")
    assert preflight.startswith(f"argv=-m aegis_ckpt preflight {config}"), preflight
    (log,) = hostile.logs()
    assert f"project: {hostile.root}" in log.read_text()


@pytest.mark.parametrize(
    "env",
    [
        {"AEGIS_RETRIES": "5; touch {marker}"},
        {"AEGIS_BACKOFF": "$(touch {marker})"},
        {"AEGIS_HANG_TIMEOUT": "-1"},
    ],
)
def test_numbers_that_are_not_plain_numbers_are_refused(hostile, tmp_path, env):
    marker = tmp_path / "injected"
    code, out = hostile.run(**{k: v.format(marker=marker) for k, v in env.items()})
    assert code == 2, out
    assert "must be whole numbers of digits only" in out + "".join(p.read_text() for p in hostile.logs())
    assert not marker.exists() and not hostile.calls("run")
