#!/usr/bin/env bash
# The packaging check (run by .ci/run): build the sdist and the wheel, check what they hold,
# install the wheel into a fresh virtual environment (no system site-packages, no torch) and
# smoke-test it: import, one lookup and its gradient with padding_idx checked by value,
# `jaxembed --help`, `jaxembed --version`.
#
#   .ci/smoke_wheel.sh [PYTHON]
#
# PYTHON (default .venv/bin/python) needs the lint extra (build, setuptools>=77): the build runs
# without isolation, so no build environment is downloaded and set up each time. The runtime
# dependencies are installed at the versions PYTHON's environment has (the ones CI tests).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=$(realpath -s "${1:-.venv/bin/python}")  # -s: a venv's python is a symlink; keep it
ROOT=$PWD
start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

"$PY" -m build --no-isolation --outdir "$tmp/dist" . >"$tmp/build.log" 2>&1 \
    || { cat "$tmp/build.log"; exit 1; }
wheel=$(echo "$tmp"/dist/jaxembed-*.whl)
sdist=$(echo "$tmp"/dist/jaxembed-*.tar.gz)
version=$(cd "$tmp" && "$PY" -c 'import ast, sys
tree = ast.parse(open(sys.argv[1]).read())
print(next(n.value.value for n in tree.body if isinstance(n, ast.Assign)
           and any(getattr(t, "id", "") == "__version__" for t in n.targets)))' \
    "$ROOT/jaxembed/__init__.py")

built=$SECONDS

# What the archives hold.
"$PY" - "$wheel" "$sdist" "$version" <<'EOF'
import sys, tarfile, zipfile

wheel, sdist, version = sys.argv[1:]
names = set(zipfile.ZipFile(wheel).namelist())
dist_info = f"jaxembed-{version}.dist-info"
for need in ("jaxembed/__init__.py", "jaxembed/py.typed", "jaxembed/_src/tools/cli.py",
             f"{dist_info}/METADATA", f"{dist_info}/licenses/LICENSE"):
    assert need in names, f"wheel lacks {need}"
assert not any(n.startswith(("parity_tests/", "benchmarks/", "docs/")) for n in names), names
entry_points = zipfile.ZipFile(wheel).read(f"{dist_info}/entry_points.txt").decode()
assert "jaxembed = jaxembed._src.tools.cli:main" in entry_points, entry_points
metadata = zipfile.ZipFile(wheel).read(f"{dist_info}/METADATA").decode()
assert f"\nVersion: {version}\n" in metadata
members = set(tarfile.open(sdist).getnames())
root = f"jaxembed-{version}"
for need in ("jaxembed/__init__.py", "jaxembed/py.typed", "jaxembed/_src/tools/cli.py",
             "pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
    assert f"{root}/{need}" in members, f"sdist lacks {need}"
print(f"wheel: {len(names)} files; sdist: {len(members)} entries")
EOF

# A fresh environment: only the wheel and its runtime dependencies, at CI's tested versions.
"$PY" -m venv "$tmp/venv"
"$PY" -m pip freeze | grep -iE '^(jax|jaxlib|flax|optax|numpy)==' >"$tmp/constraints.txt"
# --no-compile: byte-compiling all of jax and flax costs more than the whole smoke test.
"$tmp/venv/bin/python" -m pip install -qq --no-compile --disable-pip-version-check \
    -c "$tmp/constraints.txt" \
    "$wheel"
installed=$SECONDS

cd "$tmp"  # not the checkout: `import jaxembed` must find the installed wheel
"$tmp/venv/bin/python" - <<'EOF'
import importlib.metadata
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import jaxembed
from jaxembed import functional as F

assert "site-packages" in jaxembed.__file__, jaxembed.__file__
assert importlib.metadata.version("jaxembed") == jaxembed.__version__
assert importlib.util.find_spec("torch") is None, "torch was installed with the wheel"

# torch.nn.Embedding(4, 3, padding_idx=1): the padding row starts at zero, is looked up as it
# is, and gets no gradient.
emb = jaxembed.Embed(4, 3, padding_idx=1, rngs=nnx.Rngs(0))
table = np.asarray(emb.embedding.get_value())
ids = jnp.array([[2, 1], [1, 3]])
np.testing.assert_array_equal(table[1], np.zeros(3, np.float32))
np.testing.assert_array_equal(np.asarray(emb(ids)), table[np.asarray(ids)])
grad = jax.grad(lambda w: F.embedding(ids, w, padding_idx=1).sum())(jnp.asarray(table))
np.testing.assert_array_equal(np.asarray(grad), np.array([[0] * 3, [0] * 3, [1] * 3, [1] * 3]))
print(f"installed jaxembed {jaxembed.__version__}: lookup and padding gradient ok")
EOF
# The console script, twice at once (each start imports jax, from the bytecode written above).
"$tmp/venv/bin/jaxembed" --help >"$tmp/help.txt" 2>&1 &
help_pid=$!
"$tmp/venv/bin/jaxembed" --version >"$tmp/version.txt" 2>&1 &
version_pid=$!
wait "$help_pid" && grep -q "^  parity " "$tmp/help.txt" \
    || { echo "jaxembed --help:"; cat "$tmp/help.txt"; exit 1; }
wait "$version_pid" && [ "$(cat "$tmp/version.txt")" = "jaxembed $version" ] \
    || { echo "jaxembed --version:"; cat "$tmp/version.txt"; exit 1; }
echo "wheel smoke test passed: $(basename "$wheel"), $(basename "$sdist") in $((SECONDS - start)) s" \
    "(build $((built - start)) s, install $((installed - built)) s, smoke $((SECONDS - installed)) s)"
