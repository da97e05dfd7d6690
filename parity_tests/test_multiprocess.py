"""2 processes x 4 CPU devices against 1 process x 8 devices: the same computations, bit for bit.

Two copies of ``sharding_worker.py`` join one 8-device system with ``jax.distributed`` (the
coordinator on a free loopback port, gloo CPU collectives), build the same Explicit meshes
(8,), (2, 4) and (4, 2), and run its quick subset: vocab-parallel forward, gradients
(padding_idx, scale_grad_by_freq), max_norm write-back, 5 optax SGD steps of an NNX model,
sparse=True trajectories of every sparse optimizer and an NNX sparse step, EmbeddingBag
cases, the out-of-range count, and an orbax round trip (each process writes its own shards).
Process 0 saves the arrays (gathered across processes); each must equal the one-process
result (``conftest.sharded``) bit for bit. Only loopback addresses are used; both processes
are killed if they outlive the time limit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import sharding_worker as W
import test_sharding as T

HERE = Path(__file__).parent
TIMEOUT_S = 300


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multiprocess")
    out, ckpt = tmp / "out.npz", tmp / "ckpt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    env.pop("XLA_FLAGS", None)  # the worker sets 4 devices per process
    port = str(_free_loopback_port())
    worker = str(HERE / "sharding_worker.py")
    logs = [open(tmp / f"process{i}.log", "w+") for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, worker, str(out), str(ckpt), port, str(i)],
                         env=env, stdout=logs[i], stderr=subprocess.STDOUT)
        for i in range(2)
    ]
    deadline = time.monotonic() + TIMEOUT_S
    try:
        # Until both exit, the time runs out, or one fails (its peer would wait for it).
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes) or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.5)
    finally:
        for p in procs:  # never leave a process behind
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    text = []
    for f in logs:
        f.seek(0)
        text.append(f.read()[-3000:])
        f.close()
    assert codes == [0, 0], f"exit codes {codes}\n" + "\n----\n".join(text)
    with np.load(out, allow_pickle=False) as f:
        return dict(f)


# Float all-reduces over more than two participants add in an order that is the collective
# implementation's (XLA's in-process CPU all-reduce, gloo across processes): these results
# differ from one process's in the last bits, within the bounds that test_sharding.py checks
# against one device and torch. Everything else is bit for bit.
SUMMED_OVER_VOCAB_SHARDS = ("bag_sum", "bag_sum_psw", "bag_sum_sgbf", "bag_mean_1d_pad", "oob_bag")
SUMMED_OVER_DATA_SHARDS = ("grad", "grad_plain", "oob_grad", "nnx_traj")


def _shards(key, axis):
    shape, names = {W.mesh_key(s, k): (s, n) for s, n, k in W.MESHES}[key]
    return dict(zip(names, shape)).get(axis, 1)


def _reduction_order_may_differ(key):
    mesh, feature = key.split("/", 1)
    return (feature in SUMMED_OVER_VOCAB_SHARDS and _shards(mesh, "model") > 2) or (
        feature in SUMMED_OVER_DATA_SHARDS and _shards(mesh, "data") > 2
    )


def test_two_processes_match_one_process(two_processes, sharded):
    keys = sorted(two_processes)
    assert {k.split("/")[0] for k in keys} == {"explicit8", "explicit2x4", "explicit4x2"}
    for feature in ("rows", "grad", "renorm_table", "nnx_traj", "sparse_sgd",
                    "sparse_sparse_adam", "nnx_sparse", "bag_sum", "bag_max_1d_pad",
                    "oob_count_bad", "ckpt_table"):
        assert any(k.endswith("/" + feature) for k in keys), feature
    differ = [
        k for k in keys
        if not (two_processes[k].shape == sharded[k].shape
                and two_processes[k].dtype == sharded[k].dtype
                and two_processes[k].tobytes() == sharded[k].tobytes())
    ]
    unexpected = [k for k in differ if not _reduction_order_may_differ(k)]
    assert not unexpected, unexpected
    print(f"{len(keys) - len(differ)} of {len(keys)} results bit-identical; last bits differ "
          f"(float all-reduce over > 2 devices): {differ}")


MESH_KEYS = [k for k in T.MESH_KEYS if k[0].startswith("explicit")]


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_two_processes_pass_the_parity_tests(two_processes, key, shape, names):
    """The two-process results against torch and one device, with test_sharding.py's bounds."""
    want = T.from_torch(T.TF.embedding(T.to_torch(T.IDS), T.to_torch(T.TABLE)))
    np.testing.assert_array_equal(two_processes[f"{key}/rows"].view(np.uint32),
                                  want.view(np.uint32))
    T.test_gradient_matches_torch_and_one_device(two_processes, key, shape, names)
    T.test_max_norm_renorm_written_back_sharded(two_processes, key, shape, names)
    T.test_nnx_five_sgd_steps_match_one_device_and_torch(two_processes, key, shape, names)
    for name in W.SPARSE_QUICK:
        T.test_sparse_optimizers_on_sharded_table(two_processes, key, shape, names, name)
    T.test_nnx_sparse_training_step_on_sharded_table(two_processes, key, shape, names)
    for name in W.BAG_FEW:
        T.test_bag_forward_on_sharded_table(two_processes, key, shape, names, name)
        T.test_bag_gradients_on_sharded_table(two_processes, key, shape, names, name)
    T.test_out_of_range_count_reports_bad_ids_only(two_processes, key, shape, names)
    if key == "explicit2x4":
        T.test_orbax_round_trip_of_a_sharded_table(two_processes)
