"""docs/migrating-from-flax.md and docs/migrating-from-torch.md cannot rot: every Python example
runs, and every test a difference table names as pinning a row exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = ["migrating-from-flax.md", "migrating-from-torch.md"]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def _pinned_tests(text: str) -> list[tuple[str, str | None]]:
    """``(file, test or None)`` for each backticked reference in a table's last column."""
    refs = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        last = line.rstrip().rstrip("|").rsplit("|", 1)[-1]
        current = None
        for token in re.findall(r"`([^`]+)`", last):
            m = re.fullmatch(r"(test_\w+\.py)?(?:::(test_\w+))?", token)
            if not m or not (m.group(1) or m.group(2)):
                continue
            current = m.group(1) or current
            refs.append((current, m.group(2)))
    return refs


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page):
    blocks = _python_blocks((ROOT / "docs" / page).read_text())
    assert blocks
    for block in blocks:
        exec(compile(block, f"{page} example", "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("page", PAGES)
def test_pinned_tests_exist(page):
    refs = _pinned_tests((ROOT / "docs" / page).read_text())
    assert len(refs) >= 15, refs
    for file, test in refs:
        assert file is not None, (page, test)
        source = (ROOT / "parity_tests" / file).read_text()
        if test is not None:
            names = {n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.FunctionDef)}
            assert test in names, f"{page}: {file}::{test} does not exist"
