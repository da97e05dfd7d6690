"""One version: ``jaxembed.__version__`` is what ``jaxembed --version`` prints, what the package
metadata is built from (pyproject reads it), and a released section of CHANGELOG.md."""

import contextlib
import io
import re
import tomllib
from pathlib import Path

import jaxembed
from jaxembed._src.tools import cli

ROOT = Path(__file__).resolve().parents[1]


def test_cli_version_prints_jaxembed_version():
    for flag in ("--version", "-V"):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            status = cli.main([flag])
        assert status == 0
        assert out.getvalue() == f"jaxembed {jaxembed.__version__}\n"


def test_pyproject_reads_the_version_from_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "a second, static version in pyproject.toml"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "jaxembed.__version__"}


def test_changelog_has_a_section_for_the_version():
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    headings = re.findall(r"^## \[([^\]]+)\]", text, flags=re.M)
    assert headings[0] == "Unreleased", headings
    assert jaxembed.__version__ in headings, (jaxembed.__version__, headings)
    # Keep a Changelog: a release heading carries its date.
    assert re.search(rf"^## \[{re.escape(jaxembed.__version__)}\] - \d{{4}}-\d\d-\d\d$", text,
                     flags=re.M)
