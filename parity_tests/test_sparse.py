"""sparse=True: torch's row-sparse gradients and sparse optimizers (SGD, SparseAdam, Adagrad).

Every trajectory runs >= 10 steps with padding_idx, duplicate ids and one all-padding batch, and
is compared with torch's nn.Embedding(sparse=True) and torch.optim on the same gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import linen as nn
from flax import nnx
from jax.experimental import checkify

import jaxembed
import jaxembed.functional as F
from jaxembed import sparse
from jaxembed._src.core import sparse_optim
from conftest import TORCH_DEVICE
from tolerances import ON_CPU, SPARSE_ADAPTIVE_EPS, SPARSE_MOMENTUM_EPS

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")

V, D, PAD, STEPS = 13, 19, 2, 12
EPS32 = float(np.finfo(np.float32).eps)


def _batches(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, V, shape, generator=g) for _ in range(STEPS)]
    ids[4] = torch.full(shape, PAD)  # all padding: nnz = 0
    gouts = [torch.randn(*shape, D, generator=g) for _ in ids]
    w0 = torch.randn(V, D, generator=g)
    return w0, ids, gouts


def _torch_trajectory(make_opt, w0, ids, gouts, **embed_kw):
    e = torch.nn.Embedding(V, D, padding_idx=PAD, sparse=True, **embed_kw).to(TORCH_DEVICE)
    with torch.no_grad():
        e.weight.copy_(w0)
    opt = make_opt(e.parameters())
    out = []
    for b, g in zip(ids, gouts):
        opt.zero_grad()
        e(b.to(TORCH_DEVICE)).backward(g.to(TORCH_DEVICE))
        opt.step()
        out.append(e.weight.detach().cpu().numpy().copy())
    return out


def _jax_trajectory(tx, w0, ids, gouts):
    """Functional path: rows from embedding(sparse=True), their gradient, row_gradients."""

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(table, state, ids, gout):
        def loss(rows):
            return jnp.sum(rows * gout)

        rows = F.embedding(ids, table, padding_idx=PAD, sparse=True)
        row_grads = sparse.row_gradients(ids, jax.grad(loss)(rows), V, PAD)
        return tx.update(row_grads, state, table)

    table = jnp.asarray(w0.numpy())
    state = tx.init(table)
    out = []
    for b, g in zip(ids, gouts):
        table, state = step(table, state, jnp.asarray(b.numpy()), jnp.asarray(g.numpy()))
        out.append(np.asarray(table))
    return out


def _max_rel(a_traj, b_traj):
    """max |a - b| / (|a| + 1) over a trajectory, in float32 eps."""
    return max(float((np.abs(a - b) / (np.abs(a) + 1)).max()) for a, b in zip(a_traj, b_traj)) / EPS32


# ---------------------------------------------------------------------------------------------
# The gradient itself
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_row_gradients_match_torch_sparse_grad(id_dtype):
    ids = torch.tensor([[3, 1, 3], [2, 5, 1]], dtype=id_dtype)  # 2 = PAD below
    e = torch.nn.Embedding(7, 4, padding_idx=2, sparse=True)
    gout = torch.randn(2, 3, 4)
    e(ids).backward(gout)
    grad = e.weight.grad
    rows = sparse.row_gradients(jnp.asarray(ids.numpy()), jnp.asarray(gout.numpy()), 7, 2)
    keep = np.asarray(rows.ids) != 7
    np.testing.assert_array_equal(np.asarray(rows.ids)[keep], grad._indices()[0].numpy())
    np.testing.assert_array_equal(np.asarray(rows.values)[keep], grad._values().numpy())
    np.testing.assert_array_equal(np.asarray(rows.values)[~keep], 0)  # removed: zero rows
    assert rows.ids.shape == (6,) and np.asarray(rows.ids)[3] == 7  # the padding slot


def test_all_padding_gradient_is_empty():
    e = torch.nn.Embedding(5, 3, padding_idx=2, sparse=True)
    e(torch.tensor([2, 2])).sum().backward()
    assert e.weight.grad._nnz() == 0
    rows = sparse.row_gradients(jnp.array([2, 2]), jnp.ones((2, 3)), 5, 2)
    np.testing.assert_array_equal(rows.ids, [5, 5])
    np.testing.assert_array_equal(rows.values, 0)


def test_sparse_lookup_is_the_dense_lookup_without_table_gradient():
    w = jax.random.normal(jax.random.key(0), (V, D))
    ids = jnp.array([[0, 3, 3], [PAD, 7, 12]])
    np.testing.assert_array_equal(
        F.embedding(ids, w, padding_idx=PAD, sparse=True), F.embedding(ids, w, padding_idx=PAD)
    )
    g = jax.grad(lambda w: F.embedding(ids, w, padding_idx=PAD, sparse=True).sum())(w)
    np.testing.assert_array_equal(g, 0)


# ---------------------------------------------------------------------------------------------
# Trajectories against torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 8), (5, 20)])
def test_sgd_trajectory_bit_exact(shape):
    w0, ids, gouts = _batches(shape)
    ref = _torch_trajectory(lambda p: torch.optim.SGD(p, lr=0.1), w0, ids, gouts)
    got = _jax_trajectory(sparse.sgd(0.1), w0, ids, gouts)
    for step, (a, b) in enumerate(zip(ref, got)):
        if ON_CPU:  # per-entry FMAs in input order
            np.testing.assert_array_equal(b, a, err_msg=f"step {step}")
        else:
            np.testing.assert_allclose(b, a, rtol=0, atol=64 * EPS32 * (np.abs(a).max() + 1))


@pytest.mark.parametrize(
    "kw",
    [
        dict(momentum=0.9),
        dict(momentum=0.9, nesterov=True),
        dict(momentum=0.5, dampening=0.5),
        dict(momentum=0.9, maximize=True),
    ],
)
@pytest.mark.parametrize("shape", [(2, 8), (5, 20)])
def test_sgd_momentum_trajectory(kw, shape):
    w0, ids, gouts = _batches(shape, seed=1)
    ref = _torch_trajectory(lambda p: torch.optim.SGD(p, lr=0.1, **kw), w0, ids, gouts)
    got = _jax_trajectory(sparse.sgd(0.1, **kw), w0, ids, gouts)
    err = _max_rel(ref, got)
    print(f"SGD {kw} {shape}: max diff {err:.3g} eps*(|w|+1)")
    assert err <= SPARSE_MOMENTUM_EPS
    # Untouched rows move only through the buffer, as torch: same set of changed rows.
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a == w0.numpy(), b == w0.numpy())


ADAPTIVE = [
    ("SparseAdam", lambda p: torch.optim.SparseAdam(p, lr=0.05), sparse.sparse_adam(0.05)),
    (
        "SparseAdam betas",
        lambda p: torch.optim.SparseAdam(p, lr=0.01, betas=(0.5, 0.9), eps=1e-6, maximize=True),
        sparse.sparse_adam(0.01, betas=(0.5, 0.9), eps=1e-6, maximize=True),
    ),
    ("Adagrad", lambda p: torch.optim.Adagrad(p, lr=0.1), sparse.adagrad(0.1)),
    (
        "Adagrad decay",
        lambda p: torch.optim.Adagrad(p, lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1),
        sparse.adagrad(0.1, lr_decay=0.01, initial_accumulator_value=0.1),
    ),
]


@pytest.mark.parametrize("name,make_torch,tx", ADAPTIVE, ids=[a[0] for a in ADAPTIVE])
@pytest.mark.parametrize("shape", [(2, 8), (5, 20)])
def test_adaptive_trajectory(name, make_torch, tx, shape):
    w0, ids, gouts = _batches(shape, seed=2)
    ref = _torch_trajectory(make_torch, w0, ids, gouts)
    got = _jax_trajectory(tx, w0, ids, gouts)
    err = _max_rel(ref, got)
    print(f"{name} {shape}: max diff {err:.3g} eps*(|w|+1)")
    assert err <= SPARSE_ADAPTIVE_EPS
    for a, b in zip(ref, got):  # lazy: exactly the rows torch touched have moved
        np.testing.assert_array_equal(a == w0.numpy(), b == w0.numpy())


def _torch_sqrt(x):
    def host(a):
        return torch.sqrt(torch.from_numpy(np.ascontiguousarray(a))).numpy()

    return jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


@pytest.mark.skipif(not ON_CPU, reason="torch's MKL sqrt is a CPU kernel")
@pytest.mark.parametrize("name,make_torch,tx", ADAPTIVE, ids=[a[0] for a in ADAPTIVE])
def test_adaptive_bit_exact_with_torch_sqrt(name, make_torch, tx, monkeypatch, x64):
    """With torch's sqrt and double step sizes, every other bit is torch's (<= 16 ids a step,
    where torch's coalesce sums duplicates in input order)."""
    monkeypatch.setattr(sparse_optim, "_sqrt", _torch_sqrt)
    w0, ids, gouts = _batches((2, 8), seed=3)
    ref = _torch_trajectory(make_torch, w0, ids, gouts)
    got = _jax_trajectory(tx, w0, ids, gouts)
    for step, (a, b) in enumerate(zip(ref, got)):
        np.testing.assert_array_equal(b, a, err_msg=f"{name} step {step}")


def test_sparse_adam_step_counts_all_padding_batches():
    tx = sparse.sparse_adam(0.1)
    table = jnp.ones((4, 2))
    state = tx.init(table)
    empty = sparse.row_gradients(jnp.array([1, 1]), jnp.ones((2, 2)), 4, padding_idx=1)
    new_table, state = tx.update(empty, state, table)
    assert int(state.step) == 1  # torch increments before skipping the empty gradient
    np.testing.assert_array_equal(new_table, table)
    np.testing.assert_array_equal(state.exp_avg, 0)


# ---------------------------------------------------------------------------------------------
# Modules: NNX and Linen training steps against torch
# ---------------------------------------------------------------------------------------------


def test_nnx_train_step_matches_torch_sparse_embedding():
    """An NNX model (sparse Embed with max_norm, a dense scale trained by optax) under nnx.jit
    with donation, against torch (SGD on the dense scale, SparseAdam on the table)."""
    w0, ids, gouts = _batches((3, 5), seed=4)
    scale0 = np.linspace(0.5, 1.5, D).astype(np.float32)

    class Model(nnx.Module):
        def __init__(self):
            self.embed = jaxembed.Embed.from_pretrained(
                jnp.asarray(w0.numpy()), freeze=False, padding_idx=PAD, max_norm=4.0, sparse=True
            )
            self.scale = nnx.Param(jnp.asarray(scale0))

        def __call__(self, ids):
            return self.embed(ids) * self.scale

    model = Model()
    opt = nnx.Optimizer(model, optax.sgd(0.01), wrt=nnx.Param)
    sopt = sparse.Optimizer(model, sparse.sparse_adam(0.05))

    @nnx.jit(donate_argnums=(0, 1, 2))
    def step(model, opt, sopt, ids, gout):
        loss, grads, row_grads = sparse.value_and_grad(lambda m: jnp.sum(m(ids) * gout))(model)
        opt.update(model, grads)
        sopt.update(model, row_grads)
        return loss

    e = torch.nn.Embedding.from_pretrained(
        w0.clone(), freeze=False, padding_idx=PAD, max_norm=4.0, sparse=True
    )
    scale = torch.tensor(scale0, requires_grad=True)
    topt, tsopt = torch.optim.SGD([scale], lr=0.01), torch.optim.SparseAdam([e.weight], lr=0.05)
    for b, g in zip(ids, gouts):
        step(model, opt, sopt, jnp.asarray(b.numpy()), jnp.asarray(g.numpy()))
        topt.zero_grad(), tsopt.zero_grad()
        (e(b) * scale).mul(g).sum().backward()
        topt.step(), tsopt.step()
    table = np.asarray(model.embed.embedding.get_value())
    ref = e.weight.detach().numpy()
    err = float((np.abs(table - ref) / (np.abs(ref) + 1)).max()) / EPS32
    print(f"NNX sparse step vs torch: {err:.3g} eps*(|w|+1)")
    # The dense scale's gradient is a reduction (summation order differs from torch's), which
    # feeds every row's gradient: measured 1.18, twice the optimizer-only bound.
    assert err <= 2 * SPARSE_ADAPTIVE_EPS
    np.testing.assert_allclose(model.scale.get_value(), scale.detach().numpy(), rtol=1e-5)
    assert (table == w0.numpy()).all(1).sum() == (ref == w0.numpy()).all(1).sum()


def test_linen_train_step_matches_functional():
    """The Linen step (probes, row ids, jax.jit with donation) gives the functional path's
    table, which matches torch (test_sgd_trajectory_bit_exact)."""
    w0, ids, gouts = _batches((2, 6), seed=5)

    class Wrap(nn.Module):
        @nn.compact
        def __call__(self, ids):
            return jaxembed.linen.Embed(V, D, padding_idx=PAD, sparse=True, name="Embed")(ids)

    model = Wrap()
    variables = model.init(jax.random.key(0), jnp.asarray(ids[0].numpy()))
    assert set(variables) == {"sparse_params"}  # no "params": optax and jax.grad never see it
    tables = {"Embed": {"embedding": jnp.asarray(w0.numpy())}}
    tx = sparse.sgd(0.1)
    state = tx.init(tables)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(tables, state, ids, gout):
        probes = jaxembed.linen.row_probes(model, {"sparse_params": tables}, ids)

        def loss_fn(probes):
            out, upd = model.apply(
                {"sparse_params": tables, "row_probes": probes}, ids, mutable=["row_ids"]
            )
            return jnp.sum(out * gout), upd["row_ids"]

        probe_grads, row_ids = jax.grad(loss_fn, has_aux=True)(probes)
        row_grads = jaxembed.linen.row_gradients(row_ids, probe_grads, tables)
        return tx.update(row_grads, state, tables)

    for b, g in zip(ids, gouts):
        tables, state = step(tables, state, jnp.asarray(b.numpy()), jnp.asarray(g.numpy()))
    ref = _torch_trajectory(lambda p: torch.optim.SGD(p, lr=0.1), w0, ids, gouts)[-1]
    got = np.asarray(tables["Embed"]["embedding"])
    if ON_CPU:
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, atol=64 * EPS32 * (np.abs(ref).max() + 1))


# ---------------------------------------------------------------------------------------------
# torch's restrictions, as errors
# ---------------------------------------------------------------------------------------------

SGBF = "embedding_backward: scale_grad_by_freq not supported with sparse gradients"


def test_scale_grad_by_freq_with_sparse_raises_torchs_error():
    e = torch.nn.Embedding(5, 3, sparse=True, scale_grad_by_freq=True)
    with pytest.raises(RuntimeError, match=SGBF):
        e(torch.tensor([1, 1])).sum().backward()
    with pytest.raises(RuntimeError, match=SGBF):
        F.embedding(jnp.array([1, 1]), jnp.ones((5, 3)), scale_grad_by_freq=True, sparse=True)
    with pytest.raises(RuntimeError, match=SGBF):
        jaxembed.Embed(5, 3, scale_grad_by_freq=True, sparse=True, rngs=nnx.Rngs(0))
    with pytest.raises(RuntimeError, match=SGBF):
        jaxembed.linen.Embed(5, 3, scale_grad_by_freq=True, sparse=True)


def test_max_norm_with_sparse_is_allowed_as_torch():
    e = torch.nn.Embedding(5, 3, sparse=True, max_norm=1.0, norm_type=1.0)
    e(torch.tensor([1, 1])).sum().backward()  # torch allows it
    m = jaxembed.Embed(5, 3, sparse=True, max_norm=1.0, norm_type=1.0, rngs=nnx.Rngs(0))
    out = m(jnp.array([1, 1]))
    assert float(jnp.abs(out).sum(-1).max()) <= 1.0 + 1e-6


def _torch_error(make):
    e = torch.nn.Embedding(5, 3, sparse=True)
    e(torch.tensor([1, 2])).sum().backward()
    with pytest.raises((RuntimeError, ValueError)) as info:
        make(e.parameters()).step()
    return type(info.value), str(info.value).splitlines()[0]


@pytest.mark.parametrize(
    "make_torch,make_jax",
    [
        (lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.1), lambda: sparse.sgd(0.1, weight_decay=0.1)),
        (lambda p: torch.optim.Adagrad(p, lr=0.1, weight_decay=0.1), lambda: sparse.adagrad(0.1, weight_decay=0.1)),
        (lambda p: torch.optim.SGD(p, lr=-1.0), lambda: sparse.sgd(-1.0)),
        (lambda p: torch.optim.SGD(p, lr=0.1, nesterov=True), lambda: sparse.sgd(0.1, nesterov=True)),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=-1.0), lambda: sparse.sgd(0.1, momentum=-1.0)),
        (lambda p: torch.optim.SparseAdam(p, lr=0.0), lambda: sparse.sparse_adam(0.0)),
        (lambda p: torch.optim.SparseAdam(p, eps=0.0), lambda: sparse.sparse_adam(eps=0.0)),
        (lambda p: torch.optim.SparseAdam(p, betas=(1.0, 0.9)), lambda: sparse.sparse_adam(betas=(1.0, 0.9))),
        (lambda p: torch.optim.SparseAdam(p, betas=(0.9, -0.1)), lambda: sparse.sparse_adam(betas=(0.9, -0.1))),
        (lambda p: torch.optim.Adagrad(p, lr_decay=-1.0), lambda: sparse.adagrad(lr_decay=-1.0)),
        (lambda p: torch.optim.Adagrad(p, initial_accumulator_value=-1.0), lambda: sparse.adagrad(initial_accumulator_value=-1.0)),
        (lambda p: torch.optim.Adagrad(p, eps=-1.0), lambda: sparse.adagrad(eps=-1.0)),
    ],
)
def test_optimizer_errors_match_torch(make_torch, make_jax):
    kind, message = _torch_error(make_torch)
    with pytest.raises(kind) as info:
        make_jax()
    assert str(info.value).startswith(message)


def test_sparse_adam_refuses_dense_gradients_as_torch():
    tx = sparse.sparse_adam()
    table = jnp.ones((4, 2))
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        tx.update(jnp.ones((4, 2)), tx.init(table), table)


# ---------------------------------------------------------------------------------------------
# jit behaviour: checkify, in-place updates
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tx", [sparse.sgd(0.1), sparse.sparse_adam(0.1), sparse.adagrad(0.1)])
def test_removed_positions_do_not_trip_checkify(tx):
    table = jnp.ones((V, 3))
    state = tx.init(table)

    def step(table, state, ids):
        rows = F.embedding(ids, table, padding_idx=PAD, sparse=True)
        return tx.update(sparse.row_gradients(ids, rows, V, PAD), state, table)

    checked = jax.jit(checkify.checkify(step, errors=checkify.index_checks))
    for ids in (jnp.array([PAD, PAD]), jnp.array([1, PAD, 1, V - 1])):
        err, _ = checked(table, state, ids)
        err.throw()  # no error
    err, _ = checked(table, state, jnp.array([1, V]))  # a real out-of-range id is reported
    with pytest.raises(checkify.JaxRuntimeError):
        err.throw()


@pytest.mark.parametrize(
    "tx",
    [
        sparse.sgd(0.1),
        sparse.sgd(0.1, momentum=0.9, nesterov=True),
        sparse.sgd(0.1, momentum=0.9, dampening=0.1),
        sparse.sparse_adam(0.1),
        sparse.adagrad(0.1),
    ],
    ids=["sgd", "nesterov", "dampening", "adam", "adagrad"],
)
def test_donated_step_allocates_no_table_sized_temporary(tx):
    """The compiled step updates table and state in place: its temporaries are O(n * D)."""
    big_v, d, n = 200_000, 64, 512
    table = jax.ShapeDtypeStruct((big_v, d), jnp.float32)
    state = jax.eval_shape(tx.init, table)
    ids = jax.ShapeDtypeStruct((n,), jnp.int32)
    values = jax.ShapeDtypeStruct((n, d), jnp.float32)

    def step(table, state, ids, values):
        return tx.update(sparse.SparseRows(ids, values), state, table)

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(table, state, ids, values).compile()
    mem = compiled.memory_analysis()
    table_bytes = big_v * d * 4
    print(f"temp {mem.temp_size_in_bytes} B, output {mem.output_size_in_bytes} B, alias {mem.alias_size_in_bytes} B")
    assert mem.temp_size_in_bytes < table_bytes // 10
    assert mem.alias_size_in_bytes >= table_bytes  # the table (and state) are updated in place


def test_attend_on_a_sparse_table_is_refused():
    m = jaxembed.Embed(5, 3, sparse=True, rngs=nnx.Rngs(0))
    with pytest.raises(NotImplementedError, match="sparse=True"):
        m.attend(jnp.ones((2, 3)))

    class Tied(nn.Module):
        @nn.compact
        def __call__(self, ids):
            e = jaxembed.linen.Embed(5, 3, sparse=True)
            return e.attend(e(ids))

    with pytest.raises(NotImplementedError, match="sparse=True"):
        Tied().init(jax.random.key(0), jnp.array([1]))


@pytest.mark.parametrize("shape", [(), (0,), (3, 0)])
def test_scalar_and_empty_inputs_match_torch(shape):
    # torch 2.13's sparse backward raises IndexError for a 0-d input with a padding_idx (it
    # indexes the 0-d ids with a mask); compare 0-d without padding. We return the gradient.
    pad = None if shape == () else 0
    w0 = torch.randn(6, 4)
    ids = torch.randint(1, 6, shape)
    gout = torch.randn(*shape, 4)
    e = torch.nn.Embedding.from_pretrained(w0.clone(), freeze=False, padding_idx=pad, sparse=True)
    opt = torch.optim.SGD(e.parameters(), lr=0.5)
    e(ids).backward(gout)
    opt.step()
    for tx in (sparse.sgd(0.5), sparse.sparse_adam(0.5), sparse.adagrad(0.5)):
        table = jnp.asarray(w0.numpy())
        rows = sparse.row_gradients(jnp.asarray(ids.numpy()), jnp.asarray(gout.numpy()), 6, pad)
        new, _ = jax.jit(tx.update)(rows, tx.init(table), table)
        changed = np.asarray(new != table).any(1)
        np.testing.assert_array_equal(changed, (e.weight.detach() != w0).any(1).numpy())
    new, _ = jax.jit(sparse.sgd(0.5).update)(rows, (), table)
    np.testing.assert_array_equal(np.asarray(new), e.weight.detach().numpy())


def test_nnx_step_updates_in_place():
    """The NNX step of docs/guides/sparse.md (value_and_grad, nnx.Optimizer + sparse.Optimizer), donated:
    table, moments and probe are aliased, temporaries are O(n * D)."""
    big_v, d, n = 200_000, 64, 512

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = jaxembed.Embed(big_v, d, padding_idx=0, sparse=True, rngs=rngs)
            self.w = nnx.Param(jnp.ones((d,)))

        def __call__(self, ids):
            return self.embed(ids) * self.w

    model = Model(nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
    sopt = sparse.Optimizer(model, sparse.sparse_adam(1e-3))
    ids = jnp.arange(n, dtype=jnp.int32)
    model(ids)  # sizes the probe: the state then has every step's shapes
    graphdef, state = nnx.split((model, opt, sopt))

    def step(state, ids):
        model, opt, sopt = nnx.merge(graphdef, state)
        loss, grads, row_grads = sparse.value_and_grad(lambda m: jnp.sum(m(ids) ** 2))(model)
        opt.update(model, grads)
        sopt.update(model, row_grads)
        return nnx.state((model, opt, sopt)), loss

    mem = jax.jit(step, donate_argnums=0).lower(state, ids).compile().memory_analysis()
    table_bytes = big_v * d * 4
    assert mem.temp_size_in_bytes < table_bytes // 10
    assert mem.alias_size_in_bytes >= 3 * table_bytes  # table, exp_avg, exp_avg_sq
