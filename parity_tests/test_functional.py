"""jaxembed.functional against torch.nn.functional.embedding: forward, gradients, renorm, errors."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from jax.experimental import checkify

import tolerances as tol
from conftest import from_torch, to_torch, ulp_distance
from jaxembed._src.tools.parity import abs_diff, grad_tolerance, within
from jaxembed import functional as F

NP_DTYPES = {
    "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16,
    "float32": np.float32,
    "float64": np.float64,
}


def _table(v, d, dtype_name, scale=1.0, seed=0):
    w = np.random.default_rng(seed).normal(size=(v, d)) * scale
    return w.astype(NP_DTYPES[dtype_name])


def _torch_grad(ids, w, gout, dtype_name, **kw):
    wt = to_torch(w, dtype_name, requires_grad=True)
    out = TF.embedding(to_torch(ids.astype(np.int64)), wt, **kw)
    out.backward(to_torch(gout, dtype_name))
    return from_torch(out), from_torch(wt.grad), from_torch(wt)


def _jax_grad(ids, w, gout, **kw):
    out, vjp = jax.vjp(lambda t: F.embedding(jnp.asarray(ids), t, **kw), jnp.asarray(w))
    (g,) = vjp(jnp.asarray(gout))
    return np.asarray(out), np.asarray(g)


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 0), (2, 3, 2, 2)])
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32"])
def test_forward_bit_exact(shape, dtype_name):
    w = _table(11, 6, dtype_name)
    ids = np.random.default_rng(1).integers(0, 11, size=shape)
    want = from_torch(TF.embedding(to_torch(ids), to_torch(w, dtype_name)))
    got = np.asarray(F.embedding(jnp.asarray(ids, jnp.int32), jnp.asarray(w)))
    assert got.shape == shape + (6,)
    assert ulp_distance(got, want) == tol.FORWARD_ULP


def test_forward_bit_exact_float64(x64):
    w = _table(11, 6, "float64")
    ids = np.random.default_rng(1).integers(0, 11, size=(4, 5))
    want = from_torch(TF.embedding(to_torch(ids), to_torch(w)))
    got = np.asarray(F.embedding(jnp.asarray(ids), jnp.asarray(w)))
    assert got.dtype == np.float64
    assert ulp_distance(got, want) == 0


@pytest.mark.parametrize("id_dtype", [np.int8, np.uint8, np.int16, np.int32, np.uint32])
def test_any_integer_id_dtype(id_dtype):
    w = _table(11, 4, "float32")
    ids = np.array([[0, 3], [10, 3]], dtype=id_dtype)
    got = np.asarray(F.embedding(jnp.asarray(ids), jnp.asarray(w)))
    np.testing.assert_array_equal(got, w[ids.astype(np.int64)])


def test_forward_under_jit_matches_eager():
    w = jnp.asarray(_table(9, 5, "float32"))
    ids = jnp.array([[1, 2, 8], [0, 0, 4]])
    np.testing.assert_array_equal(
        jax.jit(F.embedding)(ids, w), F.embedding(ids, w)
    )


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


def _assert_grad_close(got, want, gout, ids, dtype_name, scale_by_count=None):
    """Bit-exact on CPU; otherwise within a bound on each row's magnitude sum."""
    bound = grad_tolerance(tol.BACKEND, gout, ids, want.shape[0], scale_by_count)
    assert within(got, want, bound), f"max |diff| {np.max(abs_diff(got, want))}"


@pytest.mark.parametrize("padding_idx", [None, 0, -1, 4])
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32"])
def test_gradient_matches_torch(padding_idx, dtype_name):
    v, d = 10, 7
    w = _table(v, d, dtype_name)
    rng = np.random.default_rng(2)
    ids = rng.integers(0, v, size=(6, 9))  # heavy duplicates: 54 positions, 10 rows
    ids[0, :4] = 9  # the -1 row is referenced too
    gout = rng.normal(size=ids.shape + (d,)).astype(NP_DTYPES[dtype_name])
    t_out, t_grad, _ = _torch_grad(ids, w, gout, dtype_name, padding_idx=padding_idx)
    j_out, j_grad = _jax_grad(ids, w, gout, padding_idx=padding_idx)
    assert ulp_distance(j_out, t_out) == 0
    _assert_grad_close(j_grad, t_grad, gout, ids, dtype_name)
    if padding_idx is not None:
        assert not np.any(np.asarray(j_grad, np.float32)[padding_idx % v])


@pytest.mark.parametrize("padding_idx", [None, 0, 3])
@pytest.mark.parametrize("dtype_name", ["bfloat16", "float32"])
def test_scale_grad_by_freq_matches_torch(padding_idx, dtype_name):
    v, d = 8, 37
    w = _table(v, d, dtype_name)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, v, size=(10, 12))
    gout = rng.normal(size=ids.shape + (d,)).astype(NP_DTYPES[dtype_name])
    kw = dict(padding_idx=padding_idx, scale_grad_by_freq=True)
    _, t_grad, _ = _torch_grad(ids, w, gout, dtype_name, **kw)
    _, j_grad = _jax_grad(ids, w, gout, **kw)
    counts = np.bincount(ids.reshape(-1), minlength=v).astype(np.float64)  # padding counted
    _assert_grad_close(j_grad, t_grad, gout, ids, dtype_name, scale_by_count=counts)
    if padding_idx is not None:
        assert not np.any(np.asarray(j_grad, np.float32)[padding_idx])


def test_scale_grad_by_freq_counts_padding_positions():
    # Row 1 appears once and padding row 0 three times: row 1's gradient is not scaled, and
    # the padding positions change nothing else (torch's example from the semantics notes).
    w = np.ones((4, 2), np.float32)
    ids = np.array([0, 0, 1, 0, 2, 2])
    _, t_grad, _ = _torch_grad(ids, w, np.ones((6, 2), np.float32), "float32",
                               padding_idx=0, scale_grad_by_freq=True)
    _, j_grad = _jax_grad(ids, w, np.ones((6, 2), np.float32), padding_idx=0,
                          scale_grad_by_freq=True)
    np.testing.assert_array_equal(j_grad, t_grad)
    np.testing.assert_array_equal(j_grad[:, 0], [0, 1, 1, 0])


def test_gradient_float64(x64):
    w = _table(6, 5, "float64")
    rng = np.random.default_rng(4)
    ids = rng.integers(0, 6, size=(20,))
    gout = rng.normal(size=(20, 5))
    _, t_grad, _ = _torch_grad(ids, w, gout, "float64", padding_idx=2)
    _, j_grad = _jax_grad(ids, w, gout, padding_idx=2)
    _assert_grad_close(j_grad, t_grad, gout, ids, "float64")


# ---------------------------------------------------------------------------------------------
# max_norm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_type", [1.0, 2.0, 3.0, math.inf, 0.0, 0.5])
@pytest.mark.parametrize("max_norm", [0.3, 1.0, 1.3, 6.0])
def test_renorm_matches_torch(norm_type, max_norm):
    v, d = 40, 17
    w = _table(v, d, "float32", scale=1.5, seed=5)
    w[3] = 0.0  # a zero row: norm 0, never renormed
    ids = np.random.default_rng(6).integers(0, v, size=(5, 7))
    ids[0, 0] = 3
    pad = int(ids[1, 1])  # the padding row is renormed too
    wt = to_torch(w, requires_grad=True)
    out_t = TF.embedding(to_torch(ids), wt, padding_idx=pad, max_norm=max_norm,
                         norm_type=norm_type)
    gout = np.random.default_rng(7).normal(size=ids.shape + (d,)).astype(np.float32)
    out_t.backward(to_torch(gout))
    t_table = from_torch(wt)

    j_table = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.asarray(ids), max_norm,
                                            norm_type))
    ulp = ulp_distance(j_table, t_table)
    assert ulp <= tol.RENORM_ULP_F32[norm_type], ulp
    untouched = np.setdiff1d(np.arange(v), ids)
    np.testing.assert_array_equal(j_table[untouched], w[untouched])

    # The forward returns the renormed rows; the gradient is torch's, not scaled.
    j_out, j_grad = _jax_grad(ids, w, gout, padding_idx=pad, max_norm=max_norm,
                              norm_type=norm_type)
    assert ulp_distance(j_out, from_torch(out_t)) <= tol.RENORM_ULP_F32[norm_type]
    _assert_grad_close(j_grad, from_torch(wt.grad), gout, ids, "float32")


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_renorm_low_precision_matches_torch(dtype_name):
    v, d = 60, 16
    w = _table(v, d, dtype_name, scale=0.6, seed=8)
    ids = np.arange(v)
    wt = to_torch(w, dtype_name)
    TF.embedding(to_torch(ids), wt, max_norm=2.0)
    j_table = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.asarray(ids), 2.0))
    assert ulp_distance(j_table, from_torch(wt)) <= tol.RENORM_ULP[dtype_name]


def test_renorm_float64_bit_exact(x64):
    w = _table(30, 9, "float64", scale=2.0)
    ids = np.arange(0, 30, 2)
    wt = to_torch(w)
    TF.embedding(to_torch(ids), wt, max_norm=1.5, norm_type=math.inf)
    j_table = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.asarray(ids), 1.5, math.inf))
    assert ulp_distance(j_table, from_torch(wt)) == 0


def test_renorm_boundary_compares_like_torch_double():
    # max_norm=1.1 is not a float32; float32(1.1) > 1.1. A row whose float32 norm equals
    # float32(1.1) is above 1.1 in torch's double comparison and must be renormed.
    w = np.zeros((2, 1), np.float32)
    w[0, 0] = np.float32(1.1)
    wt = to_torch(w)
    TF.embedding(to_torch(np.array([0])), wt, max_norm=1.1)
    j = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.array([0]), 1.1))
    assert from_torch(wt)[0, 0] != w[0, 0]  # torch renormed it
    assert ulp_distance(j, from_torch(wt)) <= 1


def test_renorm_only_referenced_rows_and_duplicates_once():
    w = np.full((5, 2), 3.0, np.float32)
    j = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.array([1, 1, 1, 4]), 1.0))
    wt = to_torch(w)
    TF.embedding(to_torch(np.array([1, 1, 1, 4])), wt, max_norm=1.0)
    assert ulp_distance(j, from_torch(wt)) <= tol.RENORM_ULP_F32[2.0]
    np.testing.assert_array_equal(j[[0, 2, 3]], w[[0, 2, 3]])
    np.testing.assert_array_equal(j[1], j[4])  # duplicates renormed once, like row 4


def test_renorm_inside_jit_matches_torch():
    w = _table(12, 8, "float32", scale=2.0)
    ids = np.array([[1, 5], [5, 11]])
    wt = to_torch(w)
    TF.embedding(to_torch(ids), wt, max_norm=1.0)
    jitted = jax.jit(F.embedding_renorm, static_argnums=(2, 3))(jnp.asarray(w), ids, 1.0, 2.0)
    assert ulp_distance(np.asarray(jitted), from_torch(wt)) <= tol.RENORM_ULP_F32[2.0]


# ---------------------------------------------------------------------------------------------
# dtype and attend
# ---------------------------------------------------------------------------------------------


def test_attend_is_tied_logits():
    w = _table(7, 4, "float32")
    q = np.random.default_rng(9).normal(size=(3, 4)).astype(np.float32)
    np.testing.assert_allclose(F.attend(jnp.asarray(q), jnp.asarray(w)), q @ w.T, rtol=1e-6)
    assert F.attend(jnp.asarray(q, jnp.bfloat16), jnp.asarray(w, jnp.bfloat16)).dtype == jnp.bfloat16


# ---------------------------------------------------------------------------------------------
# Errors and the out-of-range policy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [[0, 5], [-1, 2], [[1], [7]]])
def test_out_of_range_concrete_raises_like_torch(bad):
    w = jnp.zeros((5, 3))
    with pytest.raises(IndexError, match="index out of range in self"):
        TF.embedding(torch.tensor(bad), torch.zeros(5, 3))
    with pytest.raises(IndexError, match="index out of range in self"):
        F.embedding(jnp.asarray(bad), w)
    with pytest.raises(IndexError, match="index out of range in self"):
        F.embedding_renorm(w, jnp.asarray(bad), 1.0)


@pytest.mark.parametrize("bad_dtype", [jnp.float32, jnp.bool_])
def test_non_integer_ids_raise_type_error(bad_dtype):
    with pytest.raises(RuntimeError, match="Expected tensor for argument #1 'indices'"):
        TF.embedding(torch.tensor([0.0]), torch.zeros(5, 3))
    with pytest.raises(TypeError, match="'input'.*integer dtype"):
        F.embedding(jnp.zeros((2,), bad_dtype), jnp.zeros((5, 3)))


@pytest.mark.parametrize("padding_idx", [5, -6, 100])
def test_padding_idx_out_of_range(padding_idx):
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        TF.embedding(torch.tensor([0]), torch.zeros(5, 3), padding_idx=padding_idx)
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        F.embedding(jnp.array([0]), jnp.zeros((5, 3)), padding_idx=padding_idx)


def test_padding_idx_must_be_an_int():
    with pytest.raises(TypeError, match="padding_idx"):
        F.embedding(jnp.array([0]), jnp.zeros((5, 3)), padding_idx=2.0)


@pytest.mark.parametrize("shape", [(5,), (2, 5, 3)])
def test_weight_must_be_2d(shape):
    with pytest.raises(RuntimeError, match="'weight' must be 2-D"):
        TF.embedding(torch.tensor([0]), torch.zeros(shape))
    with pytest.raises(RuntimeError, match="'weight' must be 2-D"):
        F.embedding(jnp.array([0]), jnp.zeros(shape))


def test_out_of_range_under_jit_is_nan_dropped_and_checkified():
    w = jnp.asarray(_table(4, 3, "float32"))
    ids = jnp.array([0, 3, 4, -1, 100])
    f = jax.jit(F.embedding)
    out = np.asarray(f(ids, w))
    np.testing.assert_array_equal(out[:2], np.asarray(w)[[0, 3]])
    assert np.isnan(out[2:]).all()  # never another row: no clamp, no wrap of -1

    grad = jax.grad(lambda t: jnp.sum(jnp.nan_to_num(f(ids, t))))(w)
    np.testing.assert_array_equal(grad, np.array([[1, 1, 1], [0] * 3, [0] * 3, [1, 1, 1]]))

    checked = checkify.checkify(f, errors=checkify.index_checks)
    err, _ = checked(ids, w)
    assert "out-of-bounds" in err.get()
    err, _ = checked(jnp.array([0, 3]), w)
    assert err.get() is None


def test_library_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, jaxembed, jaxembed.linen; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_python_list_ids_like_torch_tensors():
    w = _table(5, 3, "float32")
    want = from_torch(TF.embedding(torch.tensor([[4, 0], [1, 1]]), to_torch(w)))
    np.testing.assert_array_equal(F.embedding([[4, 0], [1, 1]], jnp.asarray(w)), want)
    with pytest.raises(TypeError, match="'input'.*integer dtype"):
        F.embedding([0.0, 1.0], jnp.asarray(w))


def test_checkify_reports_only_genuine_out_of_range_ids_in_a_training_step():
    # padding_idx and max_norm must not use out-of-range sentinels internally, or checkify would
    # fire on every valid batch and could no longer find the real ones.
    w = jnp.asarray(_table(6, 4, "float32", scale=2.0))

    def loss(t, ids):
        return jnp.sum(F.embedding(ids, t, padding_idx=0, max_norm=1.0,
                                   scale_grad_by_freq=True) ** 2)

    checked = checkify.checkify(jax.jit(jax.grad(loss)), errors=checkify.index_checks)
    err, _ = checked(w, jnp.array([[0, 0, 3], [5, 0, 0]]))
    assert err.get() is None
    err, _ = checked(w, jnp.array([[0, 6, 3], [5, 0, 0]]))
    assert "out-of-bounds" in err.get()


@pytest.mark.parametrize("id_dtype", [np.uint8, np.int8, np.int16, np.uint16])
def test_narrow_id_dtypes_with_large_tables(id_dtype):
    # 256 or 299 must not be cast to the ids' dtype (uint8: 256 -> 0).
    w = _table(300, 2, "float32")
    ids = np.array([0, 43, 100, 127], dtype=id_dtype)
    got = F.embedding(jnp.asarray(ids), jnp.asarray(w), padding_idx=299)
    np.testing.assert_array_equal(got, w[ids.astype(np.int64)])
    grad = jax.grad(lambda t: F.embedding(jnp.asarray(ids), t, padding_idx=299).sum())(
        jnp.asarray(w))
    assert np.asarray(grad)[43].tolist() == [1.0, 1.0]  # 299 % 256 == 43 is not padding


def test_padding_spread_backward_is_bit_exact_and_checkify_clean(monkeypatch):
    # The accelerator backward sends padding positions to distinct rows (no atomic contention).
    # Force it on here so CPU CI checks its bits against torch and its ids against checkify.
    from jaxembed._src.core import functional as core

    monkeypatch.setattr(core, "_spread_padding_on_this_backend", lambda: True)
    w = _table(7, 5, "float32")
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 7, size=(8, 9))
    ids[:, ::2] = 2  # padding-heavy
    gout = rng.normal(size=ids.shape + (5,)).astype(np.float32)
    for kw in (dict(padding_idx=2), dict(padding_idx=2, scale_grad_by_freq=True)):
        _, t_grad, _ = _torch_grad(ids, w, gout, "float32", **kw)
        _, j_grad = _jax_grad(ids, w, gout, **kw)
        counts = np.bincount(ids.reshape(-1), minlength=7).astype(np.float64)
        _assert_grad_close(j_grad, t_grad, gout, ids, "float32",
                           counts if kw.get("scale_grad_by_freq") else None)
    checked = checkify.checkify(
        jax.jit(jax.grad(lambda t, i: F.embedding(i, t, padding_idx=2).sum())),
        errors=checkify.index_checks,
    )
    err, _ = checked(jnp.asarray(w), jnp.asarray(ids))
    assert err.get() is None
