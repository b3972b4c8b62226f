"""The documentation site builds in strict mode, and its generated pages match the code.

``mkdocs build --strict`` turns every warning into a failure: a link to a missing page, an anchor that does not
exist, a page left out of the nav. The configuration and CLI reference pages are generated from the option
dataclasses and the argparse parser; when an option or a command changes, the committed page must be
regenerated (the failure message says how).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
from testenv import REPO_ROOT, subprocess_env

pytest.importorskip("mkdocs", reason="the docs build needs mkdocs (pip install -e '.[dev]')")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", ["gen_config_reference", "gen_cli_reference"])
def test_generated_reference_page_is_up_to_date(script):
    module = load_script(script)
    committed = module.PAGE.read_text(encoding="utf-8") if module.PAGE.exists() else ""
    assert committed == module.render(), (
        f"{module.PAGE.relative_to(REPO_ROOT)} is out of date: run python scripts/{script}.py"
    )


def test_configuration_page_documents_every_option_field():
    """The generator reads per-field docstrings with ``ast``: a field without one would show an empty cell."""
    import dataclasses

    from aegis_ckpt.options import CheckpointOptions, EmergencyOptions

    module = load_script("gen_config_reference")
    page = module.PAGE.read_text(encoding="utf-8")
    for cls in (CheckpointOptions, EmergencyOptions):
        docs = module.field_docs(cls)
        for field in dataclasses.fields(cls):
            assert docs.get(field.name), f"{cls.__name__}.{field.name} has no docstring"
            assert f"| `{field.name}` |" in page


def test_site_builds_in_strict_mode(tmp_path):
    site = tmp_path / "site"
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO_ROOT,
        env=subprocess_env({"NO_MKDOCS_2_WARNING": "1"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for page in (
        "index.html",
        "quickstart/index.html",
        "integrations/index.html",
        "configuration/index.html",
    ):
        assert (site / page).is_file(), page


def test_paths_named_in_the_docs_and_readme_exist():
    """mkdocs checks links between pages; this checks the repository paths the pages and the README name in
    code spans (examples, scripts, configs, tests), which no link checker sees."""
    texts = {
        p: p.read_text(encoding="utf-8")
        for p in [REPO_ROOT / "README.md", *(REPO_ROOT / "docs").glob("*.md")]
    }
    pattern = re.compile(r"`((?:examples|scripts|configs|tests|launch)/[\w./-]+\.(?:py|yaml|sh|bat))")
    missing = {
        f"{path.name}: {m}"
        for path, text in texts.items()
        for m in pattern.findall(text)
        if not (REPO_ROOT / m).exists()
    }
    assert not missing, sorted(missing)
