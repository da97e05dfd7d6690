"""The ``jaxembed`` console command: one subcommand per job.

Each subcommand lives in its own module and is imported only when it runs, so ``jaxembed --help``
stays fast and torch is imported only by the jobs that compare against it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

import jaxembed


class ArgumentParser(argparse.ArgumentParser):
    """argparse for the subcommands: a usage mistake is one line, ``prog: error: message``
    (naming the argument), and exit status 2, without the usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


# name -> ("module:function", one-line help). The function takes argv (a list) and returns an
# exit status.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "parity": ("jaxembed._src.tools.parity:main", "compare jaxembed with torch and print a table"),
    "demo": (
        "jaxembed._src.tools.demo:main",
        "the tutorial's examples, step by step, next to torch",
    ),
    "visualize": (
        "jaxembed._src.tools.visualize:main",
        "pretrained word vectors: t-SNE plot and neighbours",
    ),
    "bench": (
        "jaxembed._src.tools.bench.main:main",
        "time jaxembed against flax, torch and memory ceilings",
    ),
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-V", "--version"):
        # The one version (pyproject reads it too); the package is imported already, as the
        # parent of this module.
        print(f"jaxembed {jaxembed.__version__}")
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: jaxembed <command> [options]\n       jaxembed --version\n\ncommands:")
        for name, (_, help_text) in SUBCOMMANDS.items():
            print(f"  {name:<10} {help_text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\njaxembed: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    target, _ = SUBCOMMANDS[argv[0]]
    module_name, func_name = target.split(":")
    func = getattr(importlib.import_module(module_name), func_name)
    return int(func(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
