"""Every code example of README.md and docs/**/*.md runs, so no example can rot.

* ``python`` blocks: the blocks of one page run in order in one namespace (a later block uses an
  earlier one's names). A page asks for more with an HTML comment, invisible when rendered:
  ``<!-- docs-test: devices=8 -->`` runs it in a subprocess with 8 XLA host devices;
  ``<!-- docs-test: requires=MODULE -->`` skips it when MODULE is not installed;
  ``<!-- docs-test: skip "why" -->`` right before a block skips that block. Each skipped block is
  its own skipped test here, with its page, line and reason, so the ``-ra`` summary lists them.
* ``bash`` blocks are not run; each ``jaxembed <command>`` they name must exist with the options
  they pass (checked against ``jaxembed <command> --help``), each ``benchmarks/`` or
  ``parity_tests/`` path they name must exist, and each ``.[extra]`` must be in pyproject.toml.
* The API reference (docs/api/) documents every name of every public module's ``__all__``.

``python parity_tests/test_docs_examples.py PAGE`` runs one page's blocks (the subprocess of a
``devices=`` page).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted(
    p for p in (ROOT / "docs").rglob("*.md") if "_build" not in p.relative_to(ROOT).parts
)

_MARK = re.compile(r"^[ \t]*<!--\s*docs-test:\s*(.*?)\s*-->", re.M)  # on a line of its own
_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.S | re.M,
)
_SKIP = re.compile(r'skip\s+"([^"]+)"$')


@dataclasses.dataclass
class Block:
    page: str  # relative to the repository root
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    skip: str | None  # the reason of a `<!-- docs-test: skip "..." -->` right before it


@dataclasses.dataclass
class Page:
    path: str
    blocks: list[Block]
    devices: int | None = None
    requires: list[str] = dataclasses.field(default_factory=list)


def parse(path: Path) -> Page:
    text = path.read_text()
    rel = str(path.relative_to(ROOT))
    page = Page(rel, [])
    block_marks = {}  # end offset of a skip mark -> reason
    for m in _MARK.finditer(text):
        body = m.group(1)
        skip = _SKIP.fullmatch(body)
        if skip:
            block_marks[m.end()] = skip.group(1)
            continue
        for item in body.split():
            key, _, value = item.partition("=")
            if key == "devices" and value.isdigit():
                page.devices = int(value)
            elif key == "requires" and value:
                page.requires.append(value)
            else:
                raise ValueError(f"{rel}: unknown docs-test option {item!r} in {m.group(0)!r}")
    used = set()
    for m in _FENCE.finditer(text):
        # A skip mark applies to the block that follows it with only blank space between.
        reason = None
        for end, why in block_marks.items():
            if end <= m.start() and not text[end:m.start()].strip():
                reason = why
                used.add(end)
        indent = m.group("indent")
        code = textwrap.dedent("".join(
            line[len(indent):] if line.startswith(indent) else line
            for line in m.group("body").splitlines(keepends=True)
        ))
        line = text.count("\n", 0, m.start()) + 2
        page.blocks.append(Block(rel, line, m.group("lang"), code, reason))
    if used != set(block_marks):
        raise ValueError(f"{rel}: a docs-test skip mark is not right before a code block")
    return page


ALL = [parse(p) for p in PAGES]
RUN = [p for p in ALL if any(b.lang == "python" and b.skip is None for b in p.blocks)]
SKIPPED = [b for p in ALL for b in p.blocks if b.lang == "python" and b.skip is not None]


def run_page(page: Page) -> int:
    """Exec the page's python blocks in order in one namespace; returns how many ran."""
    namespace = {"__name__": "__docs__"}
    ran = 0
    for block in page.blocks:
        if block.lang != "python" or block.skip is not None:
            continue
        # Leading newlines: a traceback names the block's real line in the page.
        code = compile("\n" * (block.line - 1) + block.code, block.page, "exec")
        exec(code, namespace)
        ran += 1
    return ran


def _missing(page: Page) -> str | None:
    for module in page.requires:
        if importlib.util.find_spec(module) is None:
            return f"{page.path}: needs {module}"
    return None


@pytest.fixture(scope="module")
def subprocess_pages(tmp_path_factory):
    """The devices= pages, started when the module starts: each runs on one core while the
    in-process pages run on the other (their test waits for it)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    started = {}
    for page in RUN:
        if page.devices is None or _missing(page):
            continue
        log = tmp_path_factory.mktemp("docs") / "output.txt"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [sys.executable, __file__, page.path], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                env=dict(env, XLA_FLAGS=f"--xla_force_host_platform_device_count={page.devices}"),
            )
        started[page.path] = (proc, log)
    yield started
    for proc, _ in started.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# In-process pages first, so that they run while the subprocess pages do.
ORDERED = sorted(RUN, key=lambda p: p.devices is not None)


@pytest.mark.parametrize("page", ORDERED, ids=[p.path for p in ORDERED])
def test_examples_run(page, subprocess_pages):
    if reason := _missing(page):
        pytest.skip(reason)
    if page.devices is None:
        assert run_page(page) > 0
        return
    proc, log = subprocess_pages[page.path]
    try:
        status = proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert status == 0, log.read_text()[-8000:]


@pytest.mark.parametrize("block", SKIPPED, ids=[f"{b.page}:{b.line}" for b in SKIPPED])
def test_marked_blocks_are_skipped(block):
    """Listed in pytest's summary: a skipped example stays visible."""
    pytest.skip(f"{block.page}:{block.line} not run: {block.skip}")


def test_block_count():
    """The pages have examples, and most of them run (a guard against a parser that finds
    nothing or a mark that skips everything)."""
    python = [b for p in ALL for b in p.blocks if b.lang == "python"]
    assert len(python) >= 25, len(python)
    assert len(SKIPPED) <= len(python) // 10, [f"{b.page}:{b.line}" for b in SKIPPED]


# ---------------------------------------------------------------------------------------------
# bash blocks: the commands they name exist
# ---------------------------------------------------------------------------------------------


def _commands(code: str):
    """Each simple command of a bash block, as a token list (comments and continuations gone)."""
    code = code.replace("\\\n", " ")
    for line in code.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:
            continue
        command = []
        for token in tokens + [";"]:
            if token in (";", "&&", "||", "|", "&"):
                if command:
                    yield command
                command = []
            else:
                command.append(token.rstrip(";&"))


BASH = [b for p in ALL for b in p.blocks if b.lang in ("bash", "sh", "shell")]
JAXEMBED_LINES = [
    (b, cmd) for b in BASH for cmd in _commands(b.code)
    if cmd and Path(cmd[0]).name == "jaxembed"
]


def _help(sub: str) -> str:
    from jaxembed._src.tools import cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            status = cli.main([sub, "--help"])
        except SystemExit as e:
            status = e.code
    assert status in (0, None), f"jaxembed {sub} --help exited {status}"
    return out.getvalue()


def test_jaxembed_commands_in_docs_exist():
    from jaxembed._src.tools import cli

    assert len(JAXEMBED_LINES) >= 15
    helps = {}
    for block, cmd in JAXEMBED_LINES:
        where = f"{block.page}:{block.line}: {shlex.join(cmd)}"
        if len(cmd) == 1:
            continue  # bare `jaxembed`
        sub = cmd[1]
        assert sub in cli.SUBCOMMANDS, where
        if sub not in helps:
            helps[sub] = _help(sub)
        for token in cmd[2:]:
            if re.fullmatch(r"--?[A-Za-z][\w-]*(=.*)?", token):
                option = token.split("=", 1)[0]
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", helps[sub]), (
                    f"{where}: jaxembed {sub} has no option {option}")


def test_paths_and_extras_in_docs_exist():
    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"])
    for block in BASH:
        for cmd in _commands(block.code):
            for token in cmd:
                where = f"{block.page}:{block.line}: {shlex.join(cmd)}"
                if re.match(r"(benchmarks|parity_tests)/\S+\.(py|sh)$", token):
                    assert (ROOT / token).exists(), where
                m = re.fullmatch(r"(?:-e\s*)?\.\[([\w,-]+)\]", token)
                if m:
                    assert set(m.group(1).split(",")) <= extras, where
            if cmd[:2] == ["python", "-m"] or cmd[1:3] == ["python", "-m"]:
                module = cmd[cmd.index("-m") + 1]
                if module not in ("pip", "pytest", "venv"):
                    spec = importlib.util.find_spec(module) if module != "benchmarks" else None
                    assert spec is not None or (ROOT / module / "__main__.py").exists(), where


# ---------------------------------------------------------------------------------------------
# API reference: every public name is documented
# ---------------------------------------------------------------------------------------------

PUBLIC_MODULES = ["jaxembed", "jaxembed.functional", "jaxembed.linen", "jaxembed.sparse",
                  "jaxembed.sharding", "jaxembed.interop", "jaxembed.models"]
if importlib.util.find_spec("jaxembed.testing") is not None:
    PUBLIC_MODULES.append("jaxembed.testing")


def test_api_reference_documents_every_public_name():
    api = "".join(p.read_text() for p in sorted((ROOT / "docs" / "api").glob("*.md")))
    documented = set(re.findall(r"\.\. (?:auto\w+|py:\w+):: (jaxembed[\w.]*)", api))
    missing = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        assert f"{name}`" in api, f"docs/api/ has no page for {name}"
        for attr in module.__all__:
            if type(getattr(module, attr)).__name__ == "module":
                continue
            if f"{name}.{attr}" not in documented:
                missing.append(f"{name}.{attr}")
    assert not missing, f"public names missing from docs/api/: {missing}"


if __name__ == "__main__":
    # The subprocess of a devices= page: several 8-device programs in flight can deadlock
    # XLA:CPU's collective rendezvous, so each computation finishes before the next starts.
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)
    print(run_page(parse(ROOT / sys.argv[1])), "blocks ran")
