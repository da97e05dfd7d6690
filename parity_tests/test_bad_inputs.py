"""Bad and edge inputs, by every door: never a silently wrong row, gradient, table or checkpoint.

One regression test (or a few) per defect of issue 11, each seen failing on the code before the
fix. torch's exception type and message where torch defines the behaviour; under ``jit`` the
NaN-row policy (NaN output, no gradient, a ``checkify`` report). The property-based version of
the id contract is ``test_adversarial_ids.py``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as TF
from flax import linen as nn
from flax import nnx
from jax.experimental import checkify
from jax.sharding import AxisType, PartitionSpec as P

import jaxembed
import jaxembed.functional as F
from jaxembed import interop, sparse
from measure_tolerances import relative_to_weights, schedule_lr, sparse_trajectories
from tolerances import ON_CPU, SPARSE_MOMENTUM_EPS, SPARSE_SCHEDULE_SGD_EPS

pytestmark = pytest.mark.filterwarnings("ignore:Sparse invariant checks")

W = np.arange(18.0, dtype=np.float32).reshape(6, 3)
EPS32 = float(np.finfo(np.float32).eps)


def _torch_error(f):
    with pytest.raises(Exception) as info:
        f()
    return type(info.value), str(info.value).splitlines()[0]


def _raises_like_torch(torch_call, jax_call):
    """jax_call raises torch_call's exception type with torch's message (ours may add a
    parenthesised note after it)."""
    kind, message = _torch_error(torch_call)
    with pytest.raises(kind) as info:
        jax_call()
    assert str(info.value).startswith(message), (str(info.value), message)


def _reported(f, *args):
    """Whether checkify's index checks report f(*args) under jit; and its output."""
    err, out = jax.jit(checkify.checkify(f, errors=checkify.index_checks))(*args)
    return err.get() is not None, out


# ---------------------------------------------------------------------------------------------
# 1. ids at or beyond 2**32 (and other 64-bit ids) never read, renorm or train another row
# ---------------------------------------------------------------------------------------------

BIG_IDS = [2**32 + 1, -(2**32) + 1, 2**31, 2**63 - 1, -(2**63)]


@pytest.mark.parametrize("big", BIG_IDS)
def test_64bit_ids_raise_torchs_error_eagerly_without_x64(big):
    ids = np.array([big, 2], np.int64)
    _raises_like_torch(lambda: TF.embedding(torch.tensor(ids), torch.tensor(W)),
                       lambda: F.embedding(ids, W))
    with pytest.raises(IndexError, match="index out of range in self"):
        F.embedding_renorm(W, ids, 1.0)
    with pytest.raises(IndexError, match="index out of range in self"):
        F.embed_and_renorm(ids, W, max_norm=1.0)
    with pytest.raises(IndexError, match="index out of range in self"):
        jaxembed.Embed.from_pretrained(W)(ids)
    module = jaxembed.linen.Embed.from_pretrained(W)
    with pytest.raises(IndexError, match="index out of range in self"):
        module.init(jax.random.key(0), ids)
    bag = ids.reshape(1, 2)
    _raises_like_torch(
        lambda: TF.embedding_bag(torch.tensor(bag), torch.tensor(W), mode="sum"),
        lambda: F.embedding_bag(bag, W, mode="sum"),
    )


def test_uint64_ids_raise_eagerly_without_x64():
    for big in (2**63, 2**64 - 1, 2**32 + 1):
        with pytest.raises(IndexError, match="index out of range in self"):
            F.embedding(np.array([big], np.uint64), W)
    with pytest.raises(IndexError):  # uint32 beyond int32: not wrapped negative and dropped
        F.embedding(np.array([2**32 - 1], np.uint32), W)
    with pytest.raises(RuntimeError, match="Overflow"):  # numpy would make these floats
        F.embedding([-1, 2**63], W)


def test_offsets_beyond_2_32_raise_torchs_error_without_x64():
    ids, offsets = np.array([1, 2, 3, 4]), np.array([0, 2**32 + 2], np.int64)
    _raises_like_torch(
        lambda: TF.embedding_bag(torch.tensor(ids), torch.tensor(W), torch.tensor(offsets)),
        lambda: F.embedding_bag(ids, W, offsets),
    )


def test_row_gradients_never_train_another_row_for_64bit_ids():
    rows = sparse.row_gradients(np.array([2**32 + 1, 1], np.int64), jnp.ones((2, 3)), 6)
    np.testing.assert_array_equal(rows.ids, [6, 1])  # removed, not row 1
    np.testing.assert_array_equal(rows.values[0], 0)
    table, _ = sparse.sgd(1.0).update(rows, (), jnp.asarray(W))
    np.testing.assert_array_equal(table[1], W[1] - 1)  # only the real id 1 trained row 1


@pytest.mark.parametrize(
    "dtype,big",
    [(np.int64, 2**32 + 1), (np.int64, -(2**32) + 1), (np.int64, 2**63 - 1), (np.uint64, 2**63),
     (np.uint64, 2**64 - 1), (np.uint32, 2**32 - 1)],
)
def test_traced_64bit_ids_give_nan_rows_no_gradient_and_a_report(x64, dtype, big):
    w = jnp.asarray(W)
    ids = jnp.asarray(np.array([big, 2], dtype))
    reported, out = _reported(lambda w, i: F.embedding(i, w), w, ids)
    assert reported
    assert np.isnan(out[0]).all()
    np.testing.assert_array_equal(out[1], W[2])
    grad = jax.jit(jax.grad(lambda w, i: jnp.nansum(F.embedding(i, w))))(w, ids)
    want = np.zeros_like(W)
    want[2] = 1
    np.testing.assert_array_equal(grad, want)  # nothing reaches row big % 2**32
    renormed = jax.jit(lambda w, i: F.embedding_renorm(w, i, 1.0))(w, ids)
    np.testing.assert_array_equal(np.asarray(renormed)[[0, 1, 3, 4, 5]], W[[0, 1, 3, 4, 5]])
    rows = jax.jit(lambda i: sparse.row_gradients(i, jnp.ones((2, 3)), 6))(ids)
    np.testing.assert_array_equal(rows.ids, [6, 2])
    bags = jax.jit(lambda w, i: F.embedding_bag(i.reshape(1, 2), w, mode="sum"))(w, ids)
    assert np.isnan(bags).all()


def test_traced_64bit_offsets_give_nan_bags_no_gradient_and_a_report(x64):
    w, ids = jnp.asarray(W), jnp.array([1, 2, 3, 4])
    offsets = jnp.array([0, 2**32 + 2], jnp.int64)

    def f(w, i, o):
        return F.embedding_bag(i, w, o, mode="sum")

    reported, out = _reported(f, w, ids, offsets)
    assert reported and np.isnan(out).all()
    grad = jax.jit(jax.grad(lambda w, i, o: jnp.nansum(f(w, i, o))))(w, ids, offsets)
    np.testing.assert_array_equal(grad, 0)


# ---------------------------------------------------------------------------------------------
# 2. a sparse table looked up several times in one step: torch's row gradients
# ---------------------------------------------------------------------------------------------


def _torch_two_lookups(w0, a, b, lr=0.5):
    e = torch.nn.Embedding.from_pretrained(torch.tensor(w0), freeze=False, sparse=True)
    loss = e(torch.tensor(a)).sum() + 10 * (e(torch.tensor(b)) ** 2).sum()
    loss.backward()
    grad = e.weight.grad
    torch.optim.SGD(e.parameters(), lr=lr).step()
    return grad._indices()[0].numpy(), grad._values().numpy(), e.weight.detach().numpy()


@pytest.mark.parametrize("b", [[3, 4], [[3, 1, 5]]], ids=["same-shape", "other-shape"])
def test_nnx_sparse_table_looked_up_twice_gets_torchs_gradient(b):
    w0 = np.arange(12, dtype=np.float32).reshape(6, 2) / 7
    a = [1, 2]
    want_ids, want_values, want_table = _torch_two_lookups(w0, a, b)
    model = jaxembed.Embed.from_pretrained(w0, freeze=False, sparse=True)
    opt = sparse.Optimizer(model, sparse.sgd(0.5))

    def loss(m):
        return m(jnp.array(a)).sum() + 10 * (m(jnp.array(b)) ** 2).sum()

    @nnx.jit
    def step(model, opt):
        _, _, row_grads = sparse.value_and_grad(loss)(model)
        opt.update(model, row_grads)
        return row_grads

    row_grads = step(model, opt)
    got = row_grads["embedding"]
    np.testing.assert_array_equal(got.ids, want_ids)  # every lookup's entries, in call order
    np.testing.assert_array_equal(got.values, want_values)
    if ON_CPU:
        np.testing.assert_array_equal(model.embedding.get_value(), want_table)


def test_linen_sparse_table_looked_up_twice_gets_torchs_gradient():
    w0 = np.arange(12, dtype=np.float32).reshape(6, 2) / 7
    a, b = [1, 2], [[3, 1, 5]]
    want_ids, want_values, want_table = _torch_two_lookups(w0, a, b)

    class Tied(nn.Module):
        @nn.compact
        def __call__(self, a, b):
            e = jaxembed.linen.Embed(6, 2, sparse=True, name="e")
            return e(a).sum() + 10 * (e(b) ** 2).sum()

    model = Tied()
    tables = {"e": {"embedding": jnp.asarray(w0)}}
    tx = sparse.sgd(0.5)
    a, b = jnp.array(a), jnp.array(b)

    @jax.jit
    def step(tables, state):
        probes = jaxembed.linen.row_probes(model, {"sparse_params": tables}, a, b)

        def loss(probes):
            out, upd = model.apply(
                {"sparse_params": tables, "row_probes": probes}, a, b, mutable=["row_ids"]
            )
            return out, upd["row_ids"]

        probe_grads, row_ids = jax.grad(loss, has_aux=True)(probes)
        row_grads = jaxembed.linen.row_gradients(row_ids, probe_grads, tables)
        return tx.update(row_grads, state, tables) + (row_grads,)

    new_tables, _, row_grads = step(tables, tx.init(tables))
    np.testing.assert_array_equal(row_grads["e"]["embedding"].ids, want_ids)
    np.testing.assert_array_equal(row_grads["e"]["embedding"].values, want_values)
    if ON_CPU:
        np.testing.assert_array_equal(new_tables["e"]["embedding"], want_table)
    # Without "row_ids" mutable the lookups cannot find their slices: a clear error.
    probes = jaxembed.linen.row_probes(model, {"sparse_params": tables}, a, b)
    with pytest.raises(ValueError, match="make 'row_ids' mutable"):
        model.apply({"sparse_params": tables, "row_probes": probes}, a, b)


# ---------------------------------------------------------------------------------------------
# 3. EmbeddingBag under jit with invalid offsets: NaN output, zero gradient, a report
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode,offsets", [("sum", [1, 2]), ("mean", [0, 5]), ("max", [0, 3, 2])])
def test_bag_invalid_traced_offsets_give_zero_gradient(mode, offsets):
    ids, offsets = jnp.array([1, 2, 3, 4]), jnp.array(offsets)

    def f(w, i, o):
        return F.embedding_bag(i, w, o, mode=mode)

    grad = jax.jit(jax.grad(lambda w, i, o: jnp.nansum(f(w, i, o))))(jnp.ones((6, 2)), ids, offsets)
    np.testing.assert_array_equal(grad, 0)  # no NaN: one optimizer step would poison the table
    reported, out = _reported(f, jnp.ones((6, 2)), ids, offsets)
    assert reported and np.isnan(out).all()


# ---------------------------------------------------------------------------------------------
# 4. a trained sparse model saves and restores with plain orbax, like a dense one
# ---------------------------------------------------------------------------------------------


def test_trained_sparse_nnx_model_restores_from_orbax(tmp_path):
    import orbax.checkpoint as ocp

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.embed = jaxembed.Embed(10, 4, padding_idx=0, sparse=True, rngs=rngs)
            self.out = nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, ids):
            return self.out(self.embed(ids).mean(axis=1))

    def make():
        return Model(nnx.Rngs(0))

    model = make()
    opt = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
    sopt = sparse.Optimizer(model, sparse.sgd(0.1))

    @nnx.jit
    def step(model, opt, sopt, ids):
        loss, grads, row_grads = sparse.value_and_grad(lambda m: (m(ids) ** 2).sum())(model)
        opt.update(model, grads)
        sopt.update(model, row_grads)
        return loss

    step(model, opt, sopt, jnp.array([[1, 2, 3], [4, 0, 5]]))
    state = nnx.split(model)[1]
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "ckpt", state)
    ckpt.wait_until_finished()
    abstract = nnx.split(nnx.eval_shape(make))[1]
    restored = ckpt.restore(tmp_path / "ckpt", abstract)
    fresh = make()
    nnx.update(fresh, restored)
    np.testing.assert_array_equal(fresh.embed.embedding.get_value(), model.embed.embedding.get_value())
    ids = jnp.array([[7, 1, 1]])
    np.testing.assert_array_equal(fresh(ids), model(ids))


def test_trained_sparse_linen_tables_restore_from_orbax(tmp_path):
    import orbax.checkpoint as ocp
    model = jaxembed.linen.Embed(10, 4, sparse=True)
    ids = jnp.array([[1, 2, 3]])
    variables = model.init(jax.random.key(0), ids)
    assert set(variables) == {"sparse_params"}  # no scratch collection is ever saved
    tx = sparse.sgd(0.1)

    @jax.jit
    def step(tables):
        probes = jaxembed.linen.row_probes(model, {"sparse_params": tables}, ids)

        def loss(probes):
            variables = {"sparse_params": tables, "row_probes": probes}
            out, upd = model.apply(variables, ids, mutable=["row_ids"])
            return out.sum(), upd["row_ids"]

        probe_grads, row_ids = jax.grad(loss, has_aux=True)(probes)
        row_grads = jaxembed.linen.row_gradients(row_ids, probe_grads, tables)
        return tx.update(row_grads, tx.init(tables), tables)[0]

    tables = step(variables["sparse_params"])
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(tmp_path / "ckpt", {"sparse_params": tables})
    ckpt.wait_until_finished()
    abstract = jax.eval_shape(model.init, jax.random.key(0), ids)
    restored = ckpt.restore(tmp_path / "ckpt", abstract)
    np.testing.assert_array_equal(restored["sparse_params"]["embedding"], tables["embedding"])


# ---------------------------------------------------------------------------------------------
# 5. sparse optimizer state checked against its table; 11. integer tables refused
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tx", [sparse.sgd(0.1, momentum=0.9), sparse.adagrad(0.1), sparse.sparse_adam(0.1)],
    ids=["sgd-momentum", "adagrad", "sparse_adam"],
)
def test_sparse_optimizer_state_for_another_table_is_refused(tx):
    state = tx.init(jnp.ones((4, 2)))
    table = jnp.ones((6, 2))
    rows = sparse.row_gradients(jnp.array([5]), jnp.ones((1, 2)), 6)
    with pytest.raises(ValueError, match=r"shape \(4, 2\).*shape \(6, 2\)"):
        tx.update(rows, state, table)


@pytest.mark.parametrize("make", [sparse.sgd, sparse.adagrad, sparse.sparse_adam])
def test_sparse_optimizers_refuse_integer_tables(make):
    with pytest.raises(ValueError, match="requires floating point tables"):
        make(0.1).init(jnp.arange(6, dtype=jnp.int32).reshape(3, 2))


# ---------------------------------------------------------------------------------------------
# 6. max_norm on an integer table: torch's RuntimeError
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8])
def test_max_norm_on_integer_table_raises_torchs_error(dtype):
    table = np.arange(18).reshape(6, 3).astype(dtype)
    t_table = torch.tensor(table.astype(np.int64) if dtype == np.int64 else table)

    def torch_call():
        return TF.embedding(torch.tensor([1, 2]), t_table, max_norm=1.0)

    if dtype == np.int64:  # a 64-bit table without x64 is refused first (defect 8)
        with jax.enable_x64(True):
            _raises_like_torch(torch_call, lambda: F.embedding(np.array([1, 2]), table, max_norm=1.0))
        return
    _raises_like_torch(torch_call, lambda: F.embedding(np.array([1, 2]), table, max_norm=1.0))
    module = jaxembed.Embed.from_pretrained(table, max_norm=1.0)
    _raises_like_torch(torch_call, lambda: module(np.array([1, 2])))
    np.testing.assert_array_equal(module.embedding.get_value(), table)  # no zero rows stored
    linen = jaxembed.linen.Embed.from_pretrained(table, max_norm=1.0)
    _raises_like_torch(torch_call, lambda: linen.init(jax.random.key(0), np.array([1, 2])))
    # torch computes no norm for an empty input, and neither do we
    assert F.embedding(np.zeros((0,), np.int32), table, max_norm=1.0).shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# 8. float64 (and other 64-bit) tables are never narrowed silently: one rule, every door
# ---------------------------------------------------------------------------------------------

DOORS_64 = {
    "Embed.from_pretrained": lambda t: jaxembed.Embed.from_pretrained(t),
    "EmbeddingBag.from_pretrained": lambda t: jaxembed.EmbeddingBag.from_pretrained(t),
    "linen.Embed.from_pretrained": lambda t: jaxembed.linen.Embed.from_pretrained(t),
    "linen.EmbeddingBag.from_pretrained": lambda t: jaxembed.linen.EmbeddingBag.from_pretrained(t),
    "Pretrained": lambda t: jaxembed.Pretrained(t),
    "F.embedding": lambda t: F.embedding(np.array([1]), t),
    "F.embedding_renorm": lambda t: F.embedding_renorm(t, np.array([1]), 1.0),
    "F.embedding_bag": lambda t: F.embedding_bag(np.array([[1]]), t),
}


@pytest.mark.parametrize("door", list(DOORS_64))
def test_float64_tables_are_refused_without_x64(door):
    with pytest.raises(ValueError, match="float64.*jax_enable_x64 is off"):
        DOORS_64[door](W.astype(np.float64))
    with jax.enable_x64(True):  # with x64 the table keeps its dtype
        DOORS_64[door](W.astype(np.float64))


def test_int64_table_and_float64_per_sample_weights_are_refused_without_x64():
    with pytest.raises(ValueError, match="int64.*jax_enable_x64 is off"):
        jaxembed.Embed.from_pretrained(np.array([[2**40, 1]], np.int64))
    with pytest.raises(ValueError, match="per_sample_weights has dtype float64"):
        F.embedding_bag(np.array([[1, 2]]), W, mode="sum", per_sample_weights=np.ones((1, 2)))


def test_float64_table_kept_with_x64(x64):
    model = jaxembed.Embed.from_pretrained(W.astype(np.float64))
    assert model.embedding.get_value().dtype == np.float64
    assert F.embedding(np.array([1]), W.astype(np.float64)).dtype == np.float64


# ---------------------------------------------------------------------------------------------
# 12. a table with no rows
# ---------------------------------------------------------------------------------------------


def test_zero_row_table_eagerly_raises_torchs_errors():
    empty = np.zeros((0, 3), np.float32)
    _raises_like_torch(lambda: TF.embedding(torch.tensor([0]), torch.tensor(empty)),
                       lambda: F.embedding(np.array([0]), empty))
    _raises_like_torch(
        lambda: TF.embedding_bag(torch.tensor([[0]]), torch.zeros(0, 3), mode="sum"),
        lambda: F.embedding_bag(np.array([[0]]), empty, mode="sum"),
    )
    assert F.embedding(np.zeros((0,), np.int32), empty).shape == (0, 3)


def test_zero_row_table_under_jit_gives_nan_rows():
    w, ids = jnp.zeros((0, 3)), jnp.array([0, 2])
    reported, out = _reported(lambda w, i: F.embedding(i, w), w, ids)
    assert reported and out.shape == (2, 3) and np.isnan(out).all()
    for kw in ({}, {"scale_grad_by_freq": True}, {"max_norm": 1.0}, {"padding_idx": None}):
        grad = jax.jit(jax.grad(lambda w, i: jnp.nansum(F.embedding(i, w, **kw))))(w, ids)
        assert grad.shape == (0, 3)
    for mode in ("sum", "mean", "max"):
        bags = jax.jit(lambda w, i: F.embedding_bag(i.reshape(1, 2), w, mode=mode))(w, ids)
        assert bags.shape == (1, 3) and np.isnan(bags).all()
    assert jaxembed.Embed(0, 3, rngs=nnx.Rngs(0))(jnp.zeros((0,), jnp.int32)).shape == (0, 3)


# ---------------------------------------------------------------------------------------------
# 13. torch tensor ids; 14. torch bfloat16 tables, bit for bit by every door
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_torch_tensor_ids_are_accepted(dtype):
    ids = torch.tensor([[1, 5], [0, 2]], dtype=dtype)
    np.testing.assert_array_equal(F.embedding(ids, W), W[ids.numpy()])
    np.testing.assert_array_equal(jaxembed.Embed.from_pretrained(W)(ids), W[ids.numpy()])
    module = jaxembed.linen.Embed.from_pretrained(W)
    np.testing.assert_array_equal(module.apply(module.init(jax.random.key(0), ids), ids), W[ids.numpy()])
    flat, offsets = ids.reshape(-1), torch.tensor([0, 3], dtype=dtype)
    want = TF.embedding_bag(flat, torch.tensor(W), offsets, mode="sum").numpy()
    np.testing.assert_array_equal(F.embedding_bag(flat, W, offsets, mode="sum"), want)
    np.testing.assert_array_equal(sparse.row_gradients(ids, jnp.ones((2, 2, 3)), 6).ids, [1, 5, 0, 2])
    with pytest.raises(IndexError, match="index out of range in self"):
        F.embedding(torch.tensor([6]), W)


def _bf16_with_payloads():
    bits = np.array([[0x7FC1, 0x3F80, 0xFFC3], [0x0001, 0x8000, 0x7F81]], np.uint16)
    return bits, torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)


def _bits(x):
    return np.asarray(x).view(np.uint16)


def test_from_pretrained_torch_bfloat16_is_bit_exact_by_every_door():
    bits, t = _bf16_with_payloads()
    assert jaxembed.Embed.from_pretrained(t).embedding.get_value().dtype == jnp.bfloat16
    for got in (
        jaxembed.Embed.from_pretrained(t).embedding.get_value(),
        interop.to_nnx(t).embedding.get_value(),
        jaxembed.EmbeddingBag.from_pretrained(t).embedding.get_value(),
        jaxembed.linen.Embed.from_pretrained(t).init(jax.random.key(0), jnp.array([0]))["frozen"]["embedding"],
        F.embedding(np.array([0, 1]), t),
    ):
        np.testing.assert_array_equal(_bits(got), bits)


# ---------------------------------------------------------------------------------------------
# 18. bfloat16 NaN payloads survive the lookup (float16 and float32 already did)
# ---------------------------------------------------------------------------------------------


def test_bfloat16_lookup_keeps_nan_payloads():
    bits, t = _bf16_with_payloads()
    ids = np.array([1, 0, 0])
    want = _bits(TF.embedding(torch.tensor(ids), t).view(torch.int16).numpy())
    np.testing.assert_array_equal(want, bits[ids])  # torch copies every bit
    table = jnp.asarray(bits.view(ml_dtypes.bfloat16))
    np.testing.assert_array_equal(_bits(F.embedding(ids, table)), want)
    np.testing.assert_array_equal(_bits(jax.jit(F.embedding)(jnp.asarray(ids), table)), want)
    np.testing.assert_array_equal(_bits(F.embedding(ids, table, padding_idx=0)), want)
    np.testing.assert_array_equal(_bits(jaxembed.Embed.from_pretrained(table)(ids)), want)
    f16 = jnp.asarray(np.array([[0x7E01, 0x3C00]], np.uint16).view(np.float16))
    np.testing.assert_array_equal(_bits(jax.jit(F.embedding)(jnp.array([0]), f16)), [[0x7E01, 0x3C00]])


# ---------------------------------------------------------------------------------------------
# 15. errors that name the argument; optax schedules for the sparse optimizers
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("v,d", [(-1, 3), (3, -2)])
def test_negative_sizes_raise_torchs_error(v, d):
    for make in (
        lambda: jaxembed.Embed(v, d, rngs=nnx.Rngs(0)),
        lambda: jaxembed.EmbeddingBag(v, d, rngs=nnx.Rngs(0)),
        lambda: jaxembed.linen.Embed(v, d),
        lambda: jaxembed.linen.EmbeddingBag(v, d),
    ):
        _raises_like_torch(lambda: torch.nn.Embedding(v, d), make)
    with pytest.raises(TypeError, match="num_embeddings must be an int"):
        jaxembed.Embed(2.0, 3, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("name", ["max_norm", "norm_type"])
def test_traced_max_norm_or_norm_type_is_refused_by_name(name):
    kw = {"max_norm": 1.0, "norm_type": 2.0}
    with pytest.raises(TypeError, match=f"{name} must be a concrete number"):
        jax.jit(lambda x: F.embedding(jnp.array([1]), W, **{**kw, name: x}))(1.0)
    with pytest.raises(TypeError, match=f"{name} must be a concrete number"):
        jax.jit(lambda x: F.embedding_bag(jnp.array([[1]]), W, **{**kw, name: x}))(1.0)


V, STEPS = 13, 12


def _schedule_trajectories(torch_opt, tx, schedule, shape, seed=0):
    """torch with its lr set, before each step, to the value the schedule gives jaxembed."""
    return sparse_trajectories(torch_opt, tx, schedule_lr(schedule), V, shape, seed, STEPS)


SCHEDULES = {
    "constant": optax.constant_schedule(0.1),
    "exponential": optax.exponential_decay(0.1, 1, 0.9),
    "cosine": optax.cosine_decay_schedule(0.5, STEPS),
    "linear": optax.linear_schedule(0.3, 0.01, STEPS),
}


@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_sparse_sgd_follows_optax_schedules(schedule):
    """A schedule's value is traced under jit, so it cannot be compiled into the FMA scatter:
    one extra rounding per entry (a constant schedule stays bit-exact)."""
    sched = SCHEDULES[schedule]
    ref, got = _schedule_trajectories(torch.optim.SGD, sparse.sgd(sched), sched, (5, 20))
    err = relative_to_weights(ref, got)
    print(f"sgd {schedule}: {err:.3g} eps*(|w|+1)")
    if schedule == "constant" and ON_CPU:
        assert err == 0
    assert err <= SPARSE_SCHEDULE_SGD_EPS
    ref, got = _schedule_trajectories(
        functools.partial(torch.optim.SGD, momentum=0.9), sparse.sgd(sched, momentum=0.9), sched,
        (2, 8),
    )
    assert relative_to_weights(ref, got) <= SPARSE_MOMENTUM_EPS


@pytest.mark.skipif(not ON_CPU, reason="torch's MKL sqrt is a CPU kernel")
@pytest.mark.parametrize(
    "torch_opt,make", [(torch.optim.SparseAdam, sparse.sparse_adam), (torch.optim.Adagrad, sparse.adagrad)]
)
def test_sparse_adam_and_adagrad_follow_optax_schedules_bit_exactly(torch_opt, make, monkeypatch, x64):
    """With torch's sqrt and x64 (double step sizes, as torch), every bit is torch's: the
    schedule's value enters the step size exactly (batches of <= 16 ids)."""
    from jaxembed._src.core import sparse_optim
    from test_sparse import _torch_sqrt

    monkeypatch.setattr(sparse_optim, "_sqrt", _torch_sqrt)
    sched = SCHEDULES["cosine"]
    ref, got = _schedule_trajectories(torch_opt, make(sched), sched, (2, 8))
    for step, (a, b) in enumerate(zip(ref, got)):
        np.testing.assert_array_equal(b, a, err_msg=f"step {step}")


def test_sparse_optimizers_refuse_a_traced_learning_rate():
    with pytest.raises(TypeError, match="lr must be a number or an optax schedule"):
        jax.jit(lambda lr: sparse.sgd(lr).init(jnp.ones((2, 2))))(0.1)


# ---------------------------------------------------------------------------------------------
# 16. The functional EmbeddingBag (and lookup) on a row-sharded table: a clear error naming the
# vocab-parallel function (the modules dispatch there; test_sharding.py checks them)
# ---------------------------------------------------------------------------------------------


def test_bag_on_a_row_sharded_table_is_refused():
    mesh = jax.make_mesh((1,), ("model",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        table = jax.device_put(jnp.asarray(W), P("model", None))
        with pytest.raises(NotImplementedError, match="embedding_bag on a row-sharded table.*vocab_parallel_embedding_bag"):
            F.embedding_bag(jnp.array([[1, 2]]), table, mode="sum")
        with pytest.raises(NotImplementedError, match="embedding_bag on a row-sharded table.*vocab_parallel_embedding_bag"):
            jax.jit(lambda t: F.embedding_bag(jnp.array([1, 2]), t, jnp.array([0])))(table)
        with pytest.raises(NotImplementedError, match="vocab_parallel_embedding"):
            F.embedding(jnp.array([1]), table)
        # the vocab-parallel path takes it, with the same id checks
        with pytest.raises(IndexError, match="index out of range in self"):
            jaxembed.sharding.vocab_parallel_embedding(
                np.array([2**32 + 1], np.int64), table, vocab_axis="model"
            )


# ---------------------------------------------------------------------------------------------
# Documentation: torch's coalesce() order (SparseAdam, Adagrad) beyond 16 entries
# ---------------------------------------------------------------------------------------------


def _torch_sparse_grad(ids, gout, v):
    e = torch.nn.Embedding(v, gout.shape[-1], sparse=True)
    e(torch.tensor(ids)).backward(torch.tensor(gout))
    return e.weight.grad


def test_coalesce_is_torchs_up_to_16_entries_and_within_the_reorder_bound_beyond():
    """torch 2.13's coalesce() sums an id's duplicates in input order only while the whole
    gradient has at most 16 entries; beyond, in its sort's order. We sum in input order: bit-exact
    up to 16 entries, and per element within (k - 1) * eps * sum|g| beyond (k: the id's count),
    the bound for two orders of one sum. The issue's repro: 1e8, 1, -1e8 for one row."""
    from jaxembed._src.core import sparse_optim

    def both(ids, gout, v):
        grad = _torch_sparse_grad(ids, gout, v)
        want = grad.coalesce()
        rows = sparse.SparseRows(jnp.asarray(grad._indices()[0].numpy(), jnp.int32),
                                 jnp.asarray(grad._values().numpy()))
        got = jax.jit(sparse_optim._coalesce, static_argnums=1)(rows, v)
        k = int(want._nnz())
        return np.asarray(got.values)[:k], want._values().numpy(), want._indices()[0].numpy()

    for n in (16, 17):  # row 3 at the start, the middle and the end; other rows once
        ids = list(range(4, n + 1))
        ids.insert(0, 3)
        ids.insert(len(ids) // 2, 3)
        ids.append(3)
        ids = np.array(ids, np.int64)
        gout = np.ones((n, 1), np.float32)
        gout[ids == 3, 0] = [1e8, 1.0, -1e8]
        got, want, _ = both(ids, gout, 40)
        if n == 16:
            np.testing.assert_array_equal(got, want)  # input order: 1e8 + 1 - 1e8 = 0
        else:
            assert got[0, 0] == 0.0 and want[0, 0] == 1.0  # the order differs beyond 16
    rng = np.random.default_rng(0)
    worst = 0.0
    for n, v in ((400, 13),):  # ~30 duplicates per id
        ids = rng.integers(0, v, n)
        gout = rng.normal(size=(n, 16)).astype(np.float32)
        got, want, uids = both(ids, gout, v)
        counts = np.bincount(ids, minlength=v)[uids]
        abs_sum = np.zeros((v, 16))
        np.add.at(abs_sum, ids, np.abs(gout.astype(np.float64)))
        bound = (counts - 1)[:, None] * EPS32 * abs_sum[uids]
        diff = np.abs(got.astype(np.float64) - want)
        assert (diff <= bound).all()
        worst = max(worst, float((diff / np.maximum(bound, 1e-30)).max()))
    print(f"coalesced sums: max |diff| / ((k-1) eps sum|g|) = {worst:.3g}")
