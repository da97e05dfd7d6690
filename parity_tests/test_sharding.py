"""Vocab-parallel tables on an 8-device CPU mesh against torch and single-device JAX.

The sharded side runs in a subprocess (``sharding_worker.py``, the ``sharded`` fixture of
``conftest.py``): the 8 host devices need ``XLA_FLAGS`` set before JAX starts, and this process
runs single-device. It runs once per session and saves its arrays; each test compares one of them here, for the meshes (8,), (2, 4)
and (4, 2) under Explicit axes and (2, 4) under Auto axes. The vocab axis is "model"; "data"
splits the batch.
"""

from __future__ import annotations

import ast
import functools

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

MESH_KEYS = [(W.mesh_key(shape, kind), shape, names) for shape, names, kind in W.MESHES]


def _data_shards(names, shape) -> int:
    return dict(zip(names, shape)).get("data", 1)


@pytest.fixture(autouse=True)
def _references_on_cpu():
    """The worker's 8 devices are CPU devices; the single-device references run on the CPU
    too, so the comparison is the same on a GPU or TPU host (torch keeps TORCH_DEVICE)."""
    with jax.default_device(jax.devices("cpu")[0]):
        yield


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


# ---------------------------------------------------------------------------------------------
# sparse=True on the sharded table (issue 13): each device updates its own rows
# ---------------------------------------------------------------------------------------------

SPARSE_IDS, SPARSE_GOUTS = W.sparse_inputs()
EPS32 = float(np.finfo(np.float32).eps)


@functools.cache
def _torch_sparse_trajectory(name):
    e = torch.nn.Embedding.from_pretrained(
        to_torch(TABLE), freeze=False, padding_idx=W.PADDING_IDX, sparse=True
    )
    opt = W.sparse_optimizer(name, e.parameters())
    for b, g in zip(SPARSE_IDS, SPARSE_GOUTS):
        opt.zero_grad()
        e(to_torch(b)).backward(to_torch(g))
        opt.step()
    return from_torch(e.weight)


@functools.cache
def _jax_sparse_trajectory(name):
    """The same steps on one device (jaxembed's unsharded sparse path)."""
    tx = W.sparse_optimizer(name)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(t, state, i, g):
        rows = F.embedding(i, t, padding_idx=W.PADDING_IDX, sparse=True)
        rows_grad = jax.grad(lambda r: jnp.sum(r * g))(rows)
        return tx.update(jaxembed.sparse.row_gradients(i, rows_grad, W.V, W.PADDING_IDX), state, t)

    t = jnp.asarray(TABLE)
    state = tx.init(t)
    for b, g in zip(SPARSE_IDS, SPARSE_GOUTS):
        t, state = step(t, state, jnp.asarray(b), jnp.asarray(g))
    return np.asarray(t)


def _rel_to_torch(got, want):
    """max |got - want| / (|want| + 1), in float32 eps (test_sparse.py's measure)."""
    return float((np.abs(got - want) / (np.abs(want) + 1)).max()) / EPS32


SPARSE_KEYS = [(k, s, n, name) for k, s, n in MESH_KEYS for name in W.sparse_optimizers(k)]


@pytest.mark.parametrize("key,shape,names,name", SPARSE_KEYS)
def test_sparse_optimizers_on_sharded_table(sharded, key, shape, names, name):
    got = sharded[f"{key}/sparse_{name}"]
    # Every device applies its own rows' entries in input order: the unsharded step, bit for
    # bit, on every mesh (the batch split over "data" included: the entries are gathered).
    np.testing.assert_array_equal(got, _jax_sparse_trajectory(name))
    want = _torch_sparse_trajectory(name)
    if name == "sgd" and tol.ON_CPU:  # per-entry FMAs in input order, as torch
        np.testing.assert_array_equal(got, want)
    else:  # the unsharded path's bounds (test_sparse.py)
        bound = tol.SPARSE_MOMENTUM_EPS if name in ("sgd", "nesterov") else tol.SPARSE_ADAPTIVE_EPS
        assert _rel_to_torch(got, want) <= bound
    # The optimizer state is split like the table: V/k rows per device, never V.
    k = shape[names.index("model")]
    rows = [] if name == "sgd" else [W.V // k]
    assert sharded[f"{key}/sparse_{name}_state_rows"].tolist() == rows


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_sparse_step_communicates_only_looked_up_rows(sharded, key, shape, names):
    k = shape[names.index("model")]
    n = W.BATCH * W.SEQ
    for name in ("sgd", "sparse_adam"):
        colls = ast.literal_eval(str(sharded[f"{key}/hlo_sparse_{name}"]))
        # No collective carries table rows (V or V/k of them): only the n looked-up rows,
        # their gradients and ids (O(n * D) bytes).
        for _, s in colls:
            dims = [int(x) for x in s[s.index("[") + 1 : s.index("]")].split(",") if x]
            assert dims[:1] not in ([W.V], [W.V // k]), colls
            assert int(np.prod(dims)) <= n * W.D, colls
        if _data_shards(names, shape) > 1:  # the row gradients of every batch shard
            assert any(op == "all-gather" for op, _ in colls), colls


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_nnx_sparse_training_step_on_sharded_table(sharded, key, shape, names):
    """jaxembed.Embed(sparse=True, max_norm) row-sharded + a dense scale: SparseAdam on the
    table, optax SGD on the scale, against torch (test_sparse.py's NNX step, on the mesh)."""
    scale0 = np.linspace(0.5, 1.5, W.D).astype(np.float32)
    e = torch.nn.Embedding.from_pretrained(
        to_torch(TABLE), freeze=False, padding_idx=W.PADDING_IDX, max_norm=W.MAX_NORM,
        sparse=True,
    )
    scale = torch.tensor(scale0, requires_grad=True)
    topt, tsopt = torch.optim.SGD([scale], lr=0.01), torch.optim.SparseAdam([e.weight], lr=0.05)
    for b, g in zip(SPARSE_IDS[: W.NNX_SPARSE_STEPS], SPARSE_GOUTS):
        topt.zero_grad(), tsopt.zero_grad()
        (e(to_torch(b)) * scale).mul(to_torch(g)).sum().backward()
        topt.step(), tsopt.step()
    err = _rel_to_torch(sharded[f"{key}/nnx_sparse"], from_torch(e.weight))
    # test_sparse.py's bound for this step (the dense scale's gradient is a reduction whose
    # order differs from torch's): 2 * SPARSE_ADAPTIVE_EPS.
    assert err <= 2 * tol.SPARSE_ADAPTIVE_EPS, err
    k = shape[names.index("model")]
    assert sharded[f"{key}/nnx_sparse_rows"].tolist() == [W.V // k]


# ---------------------------------------------------------------------------------------------
# EmbeddingBag on the sharded table (issue 13): per-device partial bags, one reduction
# ---------------------------------------------------------------------------------------------


def _bag_call(name, table, psw=None, gout=None):
    mode, kw, one_d, use_psw = W.BAG_CASES[name]
    ids, offsets, psw0, gout0 = W.bag_case_inputs(one_d, kw)
    psw = (psw0 if psw is None else psw) if use_psw else None
    return ids, offsets, psw, (gout0 if gout is None else gout), mode, kw


@functools.cache
def _bag_reference(name):
    """The unsharded bag (jaxembed, one device): output, gradients, and the magnitudes that
    bound a change of summation order (sum of |terms| per output and per gradient entry)."""
    ids, offsets, psw, gout, mode, kw = _bag_call(name, TABLE)
    o = None if offsets is None else jnp.asarray(offsets)

    def bag(t, p):
        return F.embedding_bag(jnp.asarray(ids), t, o, mode=mode, per_sample_weights=p, **kw)

    t = jnp.asarray(TABLE)
    p = None if psw is None else jnp.asarray(psw)
    out = np.asarray(jax.jit(bag)(t, p))
    argnums = (0, 1) if p is not None else 0
    grads = jax.jit(jax.grad(lambda t, p, g: jnp.sum(bag(t, p) * g), argnums=argnums))(t, p, gout)
    gt, gp = grads if p is not None else (grads, None)
    mag_out = np.asarray(jax.jit(bag)(jnp.abs(t), None if p is None else jnp.abs(p)))
    absp = None if p is None else jnp.abs(p)
    mag_grad = jax.jit(jax.grad(lambda t: jnp.sum(bag(t, absp) * jnp.abs(gout))))(t)
    return out, np.asarray(gt), None if gp is None else np.asarray(gp), mag_out, np.asarray(mag_grad)


def _torch_bag(name):
    ids, offsets, psw, _, mode, kw = _bag_call(name, TABLE)
    out = TF.embedding_bag(
        to_torch(ids), to_torch(TABLE), None if offsets is None else to_torch(offsets),
        mode=mode, per_sample_weights=None if psw is None else to_torch(psw), **kw,
    )
    return from_torch(out)


BAG_KEYS = [(k, s, n, name) for k, s, n in MESH_KEYS for name in W.bag_cases(k)]


@pytest.mark.parametrize("key,shape,names,name", BAG_KEYS)
def test_bag_forward_on_sharded_table(sharded, key, shape, names, name):
    mode, kw, one_d, _ = W.BAG_CASES[name]
    got = sharded[f"{key}/bag_{name}"]
    want, _, _, mag, _ = _bag_reference(name)
    renormed = "max_norm" in kw
    if mode == "max" and not renormed:  # one owner's row, copied bit for bit
        np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32))
    elif mode == "max":  # the renorm factors compile in another context (SHARDED_RENORM_ULP)
        assert ulp_distance(got, want) <= tol.SHARDED_RENORM_ULP
    else:  # partial sums per device, then across devices: another order than one device's
        bound = tol.SHARDED_BAG_SUM_BOUND_EPS * EPS32 * mag
        assert np.all(np.abs(got.astype(np.float64) - want) <= bound), name
    if not renormed and not (mode == "max" and kw.get("include_last_offset")):
        # torch agrees with the unsharded bag here (test_embedding_bag.py); check it directly.
        t = _torch_bag(name)
        if mode == "max":
            np.testing.assert_array_equal(got.view(np.uint32), t.view(np.uint32))
        else:
            bound = tol.SHARDED_BAG_SUM_BOUND_EPS * EPS32 * mag
            assert np.all(np.abs(got.astype(np.float64) - t) <= bound), name


@pytest.mark.parametrize("key,shape,names,name", BAG_KEYS)
def test_bag_gradients_on_sharded_table(sharded, key, shape, names, name):
    _, kw, one_d, use_psw = W.BAG_CASES[name]
    _, want, want_psw, _, mag = _bag_reference(name)
    got = sharded[f"{key}/bag_{name}_grad"]
    if one_d or _data_shards(names, shape) == 1:
        # Each row's gradient is scattered by its owner in input order: the unsharded one.
        np.testing.assert_array_equal(got, want)
    else:  # 2-D bags split over "data": per-shard sums, then across shards (as Embed)
        bound = tol.SHARDED_GRAD_BOUND_EPS * EPS32 * mag
        assert np.all(np.abs(got.astype(np.float64) - want) <= bound)
    if use_psw:  # one owner's row times the bag's gradient
        np.testing.assert_array_equal(sharded[f"{key}/bag_{name}_psw_grad"], want_psw)


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_bag_collectives_are_bag_sized(sharded, key, shape, names):
    rows = W.BATCH // _data_shards(names, shape)
    colls = ast.literal_eval(str(sharded[f"{key}/hlo_bag_sum"]))
    # One all-reduce of this device's B x D partial sums (not of N looked-up rows, not of V).
    assert [op for op, _ in colls] == ["all-reduce"] and colls[0][1].startswith(
        f"f32[{rows},{W.D}]"), colls
    if f"{key}/hlo_bag_max" in sharded:
        colls = ast.literal_eval(str(sharded[f"{key}/hlo_bag_max"]))
        # max-reduce of the keys, min-reduce of the positions, all-reduce of the rows' bits.
        assert [op for op, _ in colls] == ["all-reduce"] * 3, colls
        assert all(s.startswith(("s32[", "u32[")) and f"[{rows},{W.D}]" in s for _, s in colls)


@pytest.mark.parametrize("key,shape,names", [k for k in MESH_KEYS if k[0] in ("explicit8", "explicit2x4")])
def test_bag_max_ties_nan_and_signed_zeros_across_shards(sharded, key, shape, names):
    # Equal maxima in rows of different devices go to the first position, as torch; a NaN in a
    # bag's first position wins, a later one is skipped; -0.0 and +0.0 tie (first one kept).
    ties = W.ties_table()
    ids2, ids1, _, _, _, _ = W.bag_inputs()
    want2 = from_torch(TF.embedding_bag(to_torch(ids2), to_torch(ties), mode="max"))
    want1 = from_torch(TF.embedding_bag(to_torch(ids1), to_torch(ties), to_torch(W.BAG_OFFSETS),
                                        mode="max", padding_idx=W.PADDING_IDX))
    assert np.isnan(want2[1, 3]) and (want2 == 0).any() and np.signbit(want2[want2 == 0]).any()
    np.testing.assert_array_equal(sharded[f"{key}/bag_max_ties"].view(np.uint32),
                                  want2.view(np.uint32))
    np.testing.assert_array_equal(sharded[f"{key}/bag_max_1d_ties"].view(np.uint32),
                                  want1.view(np.uint32))


@pytest.mark.parametrize("key,shape,names", [k for k in MESH_KEYS if k[0] in W.BAG_FULL_MESHES])
def test_bag_modules_on_sharded_table(sharded, key, shape, names):
    # jaxembed.EmbeddingBag (NNX, embedding_metadata) and jaxembed.linen.EmbeddingBag
    # (nn.with_partitioning) take the vocab-parallel path: the functions' numbers, bit for bit.
    np.testing.assert_array_equal(sharded[f"{key}/nnx_bag_sum"], sharded[f"{key}/bag_sum"])
    k = shape[names.index("model")]
    assert sharded[f"{key}/nnx_bag_rows"].tolist() == [W.V // k]
    np.testing.assert_array_equal(
        sharded[f"{key}/linen_bag_max_1d_pad"], sharded[f"{key}/bag_max_1d_pad"]
    )


# ---------------------------------------------------------------------------------------------
# Out-of-range ids on the sharded table (issue 13): the count, NaN bags and rows
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key,shape,names", MESH_KEYS)
def test_out_of_range_count_reports_bad_ids_only(sharded, key, shape, names):
    assert int(sharded[f"{key}/oob_count_valid"]) == 0  # the padding id included
    assert W.PADDING_IDX in IDS
    assert int(sharded[f"{key}/oob_count_bad"]) == 2  # V and -1
    bag = sharded[f"{key}/oob_bag"]
    bad_bags = np.unique(np.argwhere((BAD_IDS < 0) | (BAD_IDS >= W.V))[:, 0])
    assert np.isnan(bag[bad_bags]).all()
    assert not np.isnan(np.delete(bag, bad_bags, axis=0)).any()
    rows = sharded[f"{key}/oob_sparse_rows"]
    assert np.isnan(rows[1, 2]).all() and np.isnan(rows[6, 0]).all()
    assert np.isnan(rows).sum() == 2 * W.D


def test_count_out_of_range_one_device():
    assert int(jax.jit(lambda i: jaxembed.sharding.count_out_of_range(i, W.V))(IDS)) == 0
    assert int(jaxembed.sharding.count_out_of_range(BAD_IDS, W.V)) == 2
    assert int(jaxembed.sharding.count_out_of_range(np.array([0, 255], np.uint8), 256)) == 0


def test_orbax_round_trip_of_a_sharded_table(sharded):
    key = "explicit2x4"
    np.testing.assert_array_equal(sharded[f"{key}/ckpt_table"], TABLE * 2)
    assert ast.literal_eval(str(sharded[f"{key}/ckpt_spec"])) == ("model", None)
    assert sharded[f"{key}/ckpt_shard_rows"].tolist() == [W.V // 4]
