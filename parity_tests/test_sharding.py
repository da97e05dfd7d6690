"""Vocab-parallel tables on an 8-device CPU mesh against torch and single-device JAX.

The sharded side runs in a subprocess (``sharding_worker.py``): the 8 host devices need
``XLA_FLAGS`` set before JAX starts, and this process runs single-device. It runs once per
session and saves its arrays; each test compares one of them here, for the meshes (8,), (2, 4)
and (4, 2) under Explicit axes and (2, 4) under Auto axes. The vocab axis is "model"; "data"
splits the batch.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as TF
from flax import nnx

import sharding_worker as W
import tolerances as tol
from conftest import from_torch, to_torch, ulp_distance
from jaxembed import functional as F
from test_functional import _assert_grad_close

import jaxembed

HERE = Path(__file__).parent
MESH_KEYS = [(W.mesh_key(shape, kind), shape, names) for shape, names, kind in W.MESHES]


def _data_shards(names, shape) -> int:
    return dict(zip(names, shape)).get("data", 1)


@pytest.fixture(autouse=True)
def _references_on_cpu():
    """The worker's 8 devices are CPU devices; the single-device references run on the CPU
    too, so the comparison is the same on a GPU or TPU host (torch keeps TORCH_DEVICE)."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharding") / "out.npz"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    proc = subprocess.run(
        [sys.executable, str(HERE / "sharding_worker.py"), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out, allow_pickle=False) as f:
        return dict(f)


# ---------------------------------------------------------------------------------------------
# References: torch, and the same functions on one device under jit
# ---------------------------------------------------------------------------------------------

TABLE, IDS, BAD_IDS, GOUT, QUERY = W.inputs()
RULES = dict(padding_idx=W.PADDING_IDX, scale_grad_by_freq=True)


def _torch_forward_backward(ids, **kw):
    wt = to_torch(TABLE, requires_grad=True)
    out = TF.embedding(to_torch(ids), wt, **kw)
    out.backward(to_torch(GOUT))
    return from_torch(out), from_torch(wt.grad), from_torch(wt)


@jax.jit
def _jax_rows(t, i):
    return F.embedding(i, t)


def _jax_grad(ids, **kw):
    f = jax.jit(jax.grad(lambda t: jnp.sum(F.embedding(jnp.asarray(ids), t, **kw) * GOUT)))
    return np.asarray(f(jnp.asarray(TABLE)))


def _jax_renorm():
    f = jax.jit(
        lambda t, i: F.embed_and_renorm(i, t, max_norm=W.MAX_NORM, **RULES)
    )
    return [np.asarray(x) for x in f(jnp.asarray(TABLE), jnp.asarray(IDS))]


def _nnx_trajectory():
    model = jaxembed.Embed(
        W.V, W.D, max_norm=W.MAX_NORM, embedding_init=jaxembed.Pretrained(TABLE),
        rngs=nnx.Rngs(0), **RULES,
    )
    opt = nnx.Optimizer(model, optax.sgd(W.LR), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        grads = nnx.grad(lambda m: jnp.sum(m(jnp.asarray(IDS)) * GOUT))(model)
        opt.update(model, grads)

    for _ in range(W.STEPS):
        step(model, opt)
    return np.asarray(model.embedding.get_value())


def _torch_trajectory():
    emb = torch.nn.Embedding.from_pretrained(
        to_torch(TABLE), freeze=False, max_norm=W.MAX_NORM, **RULES
    )
    opt = torch.optim.SGD(emb.parameters(), lr=W.LR)
    for _ in range(W.STEPS):
        opt.zero_grad()
        (emb(to_torch(IDS)) * to_torch(GOUT)).sum().backward()
        opt.step()
    return from_torch(emb.weight)


def _assert_reordered_grad_close(got, want, names, shape, scale_by_count=None):
    """Exact when the batch is not split; a split batch sums each row's gradient per data shard
    and then across shards, a different order from one device's (bound as on GPU)."""
    if _data_shards(names, shape) == 1:
        np.testing.assert_array_equal(got, want)
        return
    v = want.shape[0]
    g = np.abs(GOUT.astype(np.float64)).reshape(-1, W.D)
    flat = IDS.reshape(-1)
    if scale_by_count is not None:
        g = g / scale_by_count[flat][:, None]
    mag = np.zeros((v, W.D))
    np.add.at(mag, flat, g)
    bound = tol.SHARDED_GRAD_BOUND_EPS * np.finfo(np.float32).eps * mag
    assert np.all(np.abs(got.astype(np.float64) - want) <= bound)


# ---------------------------------------------------------------------------------------------
# Forward, gradients, out-of-range ids
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_forward_bit_exact(sharded, key, shape, names):
    want_torch = from_torch(TF.embedding(to_torch(IDS), to_torch(TABLE)))
    got = sharded[f"{key}/rows"]
    # Bit for bit, the -0.0 entry included (ulp_distance treats +-0 alike, so compare bits).
    np.testing.assert_array_equal(got.view(np.uint32), want_torch.view(np.uint32))
    assert np.signbit(got[0, 0, 2]) and got[0, 0, 2] == 0
    assert bool(sharded[f"{key}/rows_spec_ok"])
    want16 = from_torch(TF.embedding(to_torch(IDS), to_torch(TABLE).to(torch.bfloat16)))
    np.testing.assert_array_equal(sharded[f"{key}/rows_bf16_bits"], want16.view(np.uint16))


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_gradient_matches_torch_and_one_device(sharded, key, shape, names):
    counts = np.bincount(IDS.reshape(-1), minlength=W.V).astype(np.float64)
    _, t_grad, _ = _torch_forward_backward(IDS, **RULES)
    got = sharded[f"{key}/grad"]
    _assert_grad_close(got, t_grad, GOUT, IDS, "float32", scale_by_count=counts)
    _assert_reordered_grad_close(got, _jax_grad(IDS, **RULES), names, shape, counts)
    assert not np.any(got[W.PADDING_IDX])
    assert bool(sharded[f"{key}/grad_spec_ok"])  # the gradient stays row-sharded

    _, t_plain, _ = _torch_forward_backward(IDS)
    got = sharded[f"{key}/grad_plain"]
    _assert_reordered_grad_close(got, t_plain, names, shape)


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_out_of_range_ids_give_nan_rows_not_zero_rows(sharded, key, shape, names):
    got = sharded[f"{key}/oob_rows"]
    want = np.asarray(_jax_rows(jnp.asarray(TABLE), jnp.asarray(BAD_IDS)))
    assert np.isnan(got[1, 2]).all() and np.isnan(got[6, 0]).all()
    np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    # The gradient drops those positions, as on one device.
    got = sharded[f"{key}/oob_grad"]
    _assert_reordered_grad_close(
        got, _jax_grad(BAD_IDS, **RULES), names, shape,
        np.bincount(IDS.reshape(-1), minlength=W.V).astype(np.float64),
    )
    assert not np.isnan(got).any()


# ---------------------------------------------------------------------------------------------
# max_norm, training trajectories, the modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_max_norm_renorm_written_back_sharded(sharded, key, shape, names):
    got_rows, got_table = sharded[f"{key}/renorm_rows"], sharded[f"{key}/renorm_table"]
    # The rows returned are the rows written back, bit for bit; untouched rows are untouched.
    np.testing.assert_array_equal(got_table[IDS], got_rows)
    untouched = np.setdiff1d(np.arange(W.V), IDS)
    np.testing.assert_array_equal(got_table[untouched], TABLE[untouched])
    # One device computes the same norms in another compiled context (last-bit differences).
    rows, table = _jax_renorm()
    assert ulp_distance(got_rows, rows) <= tol.SHARDED_RENORM_ULP
    assert ulp_distance(got_table, table) <= tol.SHARDED_RENORM_ULP
    wt = to_torch(TABLE)
    t_rows = from_torch(TF.embedding(to_torch(IDS), wt, max_norm=W.MAX_NORM))
    assert ulp_distance(sharded[f"{key}/renorm_rows"], t_rows) <= tol.RENORM_ULP_F32[2.0]
    assert ulp_distance(sharded[f"{key}/renorm_table"], from_torch(wt)) <= tol.RENORM_ULP_F32[2.0]
    assert not np.array_equal(table, TABLE)  # some rows were above max_norm
    # The functional embedding_renorm counterpart writes the same table.
    np.testing.assert_array_equal(sharded[f"{key}/renorm_fn_table"], got_table)
    k = shape[names.index("model")]
    assert sharded[f"{key}/renorm_table_shard_rows"].tolist() == [W.V // k]


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_nnx_five_sgd_steps_match_one_device_and_torch(sharded, key, shape, names):
    got = sharded[f"{key}/nnx_traj"]
    assert ulp_distance(got, _nnx_trajectory()) <= tol.SHARDED_TRAJECTORY_ULP
    assert tol.relative_to_table(got, _torch_trajectory()) <= tol.TRAJECTORY_EPS["sgd"]
    k = shape[names.index("model")]
    assert sharded[f"{key}/nnx_shard_rows"].tolist() == [W.V // k]  # V/k rows per device
    assert sharded[f"{key}/nnx_traj_shard_rows"].tolist() == [W.V // k]


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_from_pretrained_sharded_table(sharded, key, shape, names):
    want = from_torch(torch.nn.Embedding.from_pretrained(to_torch(TABLE))(to_torch(IDS)))
    np.testing.assert_array_equal(sharded[f"{key}/pretrained_rows"].view(np.uint32),
                                  want.view(np.uint32))
    k = shape[names.index("model")]
    assert sharded[f"{key}/pretrained_shard_rows"].tolist() == [W.V // k]


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_linen_forward_renorm_and_gradient(sharded, key, shape, names):
    got_rows, got_table = sharded[f"{key}/linen_rows"], sharded[f"{key}/linen_table"]
    np.testing.assert_array_equal(got_table[IDS], got_rows)
    rows, table = _jax_renorm()
    assert ulp_distance(got_rows, rows) <= tol.SHARDED_RENORM_ULP
    assert ulp_distance(got_table, table) <= tol.SHARDED_RENORM_ULP
    one = np.asarray(
        jax.jit(jax.grad(lambda t: jnp.sum(
            F.embedding(jnp.asarray(IDS), t, max_norm=W.MAX_NORM, **RULES) * GOUT)))(
            jnp.asarray(TABLE))
    )
    counts = np.bincount(IDS.reshape(-1), minlength=W.V).astype(np.float64)
    _assert_reordered_grad_close(sharded[f"{key}/linen_grad"], one, names, shape, counts)


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_attend_gives_vocab_sharded_logits_without_collectives(sharded, key, shape, names):
    want = np.asarray(jax.jit(F.attend)(jnp.asarray(QUERY), jnp.asarray(TABLE)))
    # Each device multiplies its (N x D) @ (D x V/k) block: the dot kernel may block the D-sum
    # differently from one device's (N x D) @ (D x V). Bound: K * eps * sum_d |q_d w_d|.
    mag = np.abs(QUERY.astype(np.float64)) @ np.abs(TABLE.astype(np.float64)).T
    diff = np.abs(sharded[f"{key}/logits"].astype(np.float64) - want)
    assert np.all(diff <= tol.SHARDED_ATTEND_BOUND_EPS * np.finfo(np.float32).eps * mag)
    assert ast.literal_eval(str(sharded[f"{key}/logits_spec"]))[-1] == "model"
    assert ast.literal_eval(str(sharded[f"{key}/nnx_attend_spec"]))[-1] == "model"
    assert ast.literal_eval(str(sharded[f"{key}/hlo_attend"])) == []


# ---------------------------------------------------------------------------------------------
# Compiled collectives
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_lookup_compiles_to_one_all_reduce_and_no_all_gather(sharded, key, shape, names):
    colls = ast.literal_eval(str(sharded[f"{key}/hlo_fwd"]))
    assert [op for op, _ in colls] == ["all-reduce"], colls
    # ... of this device's output rows (the bits of N/dp x D floats), never of the table.
    rows = W.BATCH // _data_shards(names, shape)
    assert colls[0][1].startswith(f"u32[{rows},{W.SEQ},{W.D}]"), colls


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_gradient_collectives_never_touch_the_whole_table(sharded, key, shape, names):
    colls = ast.literal_eval(str(sharded[f"{key}/hlo_grad"]))
    assert "all-gather" not in [op for op, _ in colls], colls
    k = shape[names.index("model")]
    table_shapes = [s for _, s in colls if s.startswith(("f32[", "u32["))]
    assert all(not s.startswith(f"f32[{W.V},") for s in table_shapes), colls
    if _data_shards(names, shape) > 1:  # the data-parallel sum of the local V/k rows
        assert any(s.startswith(f"f32[{W.V // k},{W.D}]") for s in table_shapes), colls


# ---------------------------------------------------------------------------------------------
# Errors (one device suffices)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_rows_not_divisible_by_shards_is_an_error(sharded, key, shape, names):
    k = shape[names.index("model")]
    message = str(sharded[f"{key}/indivisible_error"])
    assert message == (
        f"num_embeddings (63) must be divisible by the number of vocab shards ({k} over mesh "
        "axes ('model',))"
    )


def test_unknown_axis_missing_mesh_and_column_sharding_are_errors():
    t = jnp.asarray(TABLE)
    with pytest.raises(ValueError, match="needs a mesh"):
        jaxembed.sharding.vocab_parallel_embedding(IDS, t, vocab_axis="model")
    mesh = jax.make_mesh((1,), ("model",))
    with jax.set_mesh(mesh):
        with pytest.raises(ValueError, match="vocab_axis 'vocab' is not an axis of the mesh"):
            jaxembed.sharding.vocab_parallel_embedding(IDS, t, vocab_axis="vocab")
        model = jaxembed.Embed(W.V, W.D, rngs=nnx.Rngs(0),
                               embedding_metadata={"out_sharding": (None, "model")})
        with pytest.raises(NotImplementedError, match="shard rows only"):
            model(IDS)
        # A one-device mesh is the plain lookup.
        got = jaxembed.sharding.vocab_parallel_embedding(IDS, t, vocab_axis="model", **RULES)
        np.testing.assert_array_equal(got, TABLE[IDS])


def test_concrete_ids_closed_over_in_jit():
    # Ids captured by a jitted closure are concrete: checked now, like torch (the modules under
    # nnx.jit meet them); this used to fail with a TracerBoolConversionError.
    t = jnp.asarray(TABLE)
    ids = jnp.asarray(IDS)
    got = jax.jit(lambda t: F.embedding(ids, t, **RULES))(t)
    np.testing.assert_array_equal(got, TABLE[IDS])
    bad = jnp.asarray(BAD_IDS)
    with pytest.raises(IndexError, match="index out of range in self"):
        jax.jit(lambda t: F.embedding(bad, t))(t)
