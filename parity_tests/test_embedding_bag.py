"""jaxembed's EmbeddingBag against torch's: forward, gradients, renorm, errors, modules."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from flax import linen as nn
from flax import nnx
from jax.experimental import checkify

import jaxembed
import tolerances as tol
from conftest import TORCH_DEVICE, eps_of, from_torch, to_torch, ulp_distance
from jaxembed import functional as F

NP_DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float16": np.float16, "float32": np.float32}
V, D = 12, 7

# Bag layouts: (ids shape or N, offsets, include_last_offset). The 1-D layouts have an empty bag
# and a one-id bag; "1d_last" ignores the ids after its last offset (torch does).
LAYOUTS = {
    "2d": ((5, 6), None, False),
    "2d_long": ((3, 45), None, False),  # longer than the unrolled sum: its chunked loop
    "1d": (30, [0, 4, 4, 11, 29], False),
    "1d_last": (30, [0, 4, 4, 11, 25], True),
}


def _table(dtype_name, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    w = rng.integers(-2, 3, size=(V, D)) if ties else rng.normal(size=(V, D))
    return w.astype(NP_DTYPES[dtype_name])


def _bags(layout, padding_idx=None, seed=1):
    shape, offsets, last = LAYOUTS[layout]
    ids = np.random.default_rng(seed).integers(0, V, size=shape)
    if padding_idx is not None:
        flat = ids.reshape(-1)
        flat[: shape[1] if offsets is None else offsets[1]] = padding_idx % V  # all padding
        flat[7::5] = padding_idx % V
    offsets = None if offsets is None else np.array(offsets)
    return ids, offsets, last


def _segments(ids, offsets, last):
    """numpy reference of the bag of each flattened position (-1: in no bag) and the count."""
    if offsets is None:
        b, length = ids.shape
        return np.repeat(np.arange(b), length), b
    n = ids.shape[0]
    num = len(offsets) - 1 if last else len(offsets)
    ends = list(offsets[1:]) if last else list(offsets[1:]) + [n]
    seg = np.full(n, -1)
    for b in range(num):  # reference only: a loop is fine here
        seg[offsets[b] : ends[b]] = b
    return seg, num


def _torch_bag(ids, w, offsets, dtype_name, gout=None, psw=None, **kw):
    if kw.get("include_last_offset") and offsets[-1] < len(ids):
        # torch 2.13 is inconsistent about ids after the last offset (pytorch#52851): its
        # float32/half fast path (sum and mean, no padding_idx) leaves them out of the sum,
        # while float64, padding_idx, max mode and every backward put them in the last bag.
        # jaxembed leaves them out everywhere; torch agrees on the input cut at offsets[-1].
        ids = ids[: offsets[-1]]
        psw = None if psw is None else psw[: offsets[-1]]
    grad = gout is not None
    wt = to_torch(w, dtype_name, requires_grad=grad)
    pt = None if psw is None else to_torch(psw, dtype_name, requires_grad=grad)
    ot = None if offsets is None else to_torch(offsets.astype(np.int64))
    out = TF.embedding_bag(to_torch(ids.astype(np.int64)), wt, ot, per_sample_weights=pt, **kw)
    if grad:
        out.backward(to_torch(gout, dtype_name))
    wgrad = None if not grad else from_torch(wt.grad)
    pgrad = None if (pt is None or not grad) else from_torch(pt.grad)
    return from_torch(out), wgrad, pgrad, from_torch(wt)


def _jax_bag(ids, w, offsets, gout=None, psw=None, jit=True, **kw):
    def f(table, p, i, o):
        return F.embedding_bag(i, table, o, per_sample_weights=p, **kw)

    if jit:
        f = jax.jit(f)
    i = jnp.asarray(ids, jnp.int32)
    o = None if offsets is None else jnp.asarray(offsets, jnp.int32)
    p = None if psw is None else jnp.asarray(psw)
    if gout is None:
        return np.asarray(f(jnp.asarray(w), p, i, o)), None, None
    out, vjp = jax.vjp(lambda t, p: f(t, p, i, o), jnp.asarray(w), p)
    gw, gp = vjp(jnp.asarray(gout))
    return np.asarray(out), np.asarray(gw), None if gp is None else np.asarray(gp)


def _assert_within(got, want, mag, k, exact):
    """Bit-exact when ``exact``; else |got - want| <= k * eps * mag elementwise."""
    if exact:
        assert ulp_distance(got, want) == 0
        return
    diff = np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))
    if isinstance(k, dict):
        k = k[str(np.asarray(want).dtype)]
    bound = k * eps_of(want.dtype) * mag
    assert np.all(diff <= bound), f"max excess {np.max(diff - bound)}"


def _assert_forward(got, want, ids, offsets, last, table, mode, padding_idx, ulp=0):
    """Bag outputs: within ``ulp`` on CPU (torch sums in input order, as we do); elsewhere torch
    sums in another order, so within a bound on the bag's magnitude (max mode: exact)."""
    if tol.ON_CPU or mode == "max":
        assert ulp_distance(got, want) <= ulp
        return
    seg, num = _segments(ids, offsets, last)
    keep = ids.reshape(-1) != (V if padding_idx is None else padding_idx % V)
    mag = _out_magnitude(table, ids, seg, keep, num, mode)
    _assert_within(got, want, mag, tol.BAG_SUM_GRAD_BOUND_EPS, exact=False)


def _grad_magnitude(ids, seg, keep, gout, scale):
    """sum over the positions of each row of |gout[bag] * scale|: the scale of its gradient."""
    flat = ids.reshape(-1)
    m = (seg >= 0) & keep
    mag = np.zeros((V, gout.shape[1]))
    np.add.at(mag, flat[m], np.abs(gout.astype(np.float64)[seg[m]] * scale[m][:, None]))
    return mag


def _position_scale(mode, seg, keep, num):
    """What multiplies each position's row in the bag: 1 / (bag size) for the mean, else 1."""
    if mode != "mean":
        return np.ones(seg.shape)
    size = np.maximum(np.bincount(seg[(seg >= 0) & keep], minlength=num), 1).astype(np.float64)
    return np.where(seg >= 0, 1 / size[seg], 0)


def _out_magnitude(table, ids, seg, keep, num, mode):
    """sum over the positions of each bag of |row * scale|: the scale of a bag's rounding."""
    flat = ids.reshape(-1)
    m = (seg >= 0) & keep
    scale = _position_scale(mode, seg, keep, num)
    mag = np.zeros((num, table.shape[1]))
    np.add.at(mag, seg[m], np.abs(np.asarray(table, np.float64)[flat[m]]) * scale[m][:, None])
    return mag


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["1d", "1d_last", "2d"])
@pytest.mark.parametrize("padding_idx", [None, 2])
@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_forward_float32_bit_exact(mode, padding_idx, layout):
    w = _table("float32")
    ids, offsets, last = _bags(layout, padding_idx)
    kw = dict(mode=mode, padding_idx=padding_idx, include_last_offset=last)
    want = _torch_bag(ids, w, offsets, "float32", **kw)[0]
    got = _jax_bag(ids, w, offsets, **kw)[0]
    assert got.shape == want.shape
    _assert_forward(got, want, ids, offsets, last, w, mode, padding_idx)
    if padding_idx is not None:
        assert not np.any(got[0])  # an all-padding bag is zeros in every mode
    if offsets is not None:
        assert not np.any(got[1])  # so is an empty bag


@pytest.mark.parametrize("max_work_per_id", [0, 10**9])  # always segment sums / always the loop
@pytest.mark.parametrize("mode, padding_idx, weighted, last",
                         [("mean", 2, False, False), ("sum", None, True, True)])
def test_offset_bags_loop_and_segment_fallback_match_torch(
        monkeypatch, max_work_per_id, mode, padding_idx, weighted, last):
    # Bags cut by offsets are summed by a column loop unless the batch is skewed, then by
    # segment sums (embedding_bag._MAX_WORK_PER_ID); each path alone must give torch's bits and
    # gradients, and NaN for a bag with an out-of-range id under jit. Bag lengths 0..11 (more
    # than one 8-position step; an empty bag; an all-padding bag first).
    from jaxembed._src.core import embedding_bag as EB

    monkeypatch.setattr(EB, "_MAX_WORK_PER_ID", max_work_per_id)
    rng = np.random.default_rng(11)
    w = _table("float32")
    sizes = [3, 0, 11, 1, 9, 2]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    ids = rng.integers(0, V, size=sum(sizes) + (4 if last else 0))
    if last:
        offsets = np.append(offsets, sum(sizes))
    if padding_idx is not None:
        ids[:3] = padding_idx
    psw = rng.uniform(0.5, 2, size=ids.shape).astype(np.float32) if weighted else None
    gout = rng.normal(size=(len(sizes), D)).astype(np.float32)
    kw = dict(mode=mode, padding_idx=padding_idx, include_last_offset=last)
    t_out, t_grad, _, _ = _torch_bag(ids, w, offsets, "float32", gout=gout, psw=psw, **kw)
    j_out, j_grad, _ = _jax_bag(ids, w, offsets, gout=gout, psw=psw, **kw)
    seg, num = _segments(ids, offsets, last)
    keep = ids != (V if padding_idx is None else padding_idx)
    scale = _position_scale(mode, seg, keep, num) * (1 if psw is None else np.abs(psw))
    if psw is None:
        assert ulp_distance(j_out, t_out) == 0
    else:  # torch: fma(psw, row, acc); we round psw * row first
        terms = np.abs(w.astype(np.float64)[ids] * psw[:, None]) * keep[:, None]
        mag = np.zeros((num, D))
        np.add.at(mag, seg[seg >= 0], terms[seg >= 0])
        _assert_within(j_out, t_out, mag, tol.BAG_PSW_BOUND_EPS, exact=False)
    k = tol.BAG_MEAN_GRAD_BOUND_EPS if mode == "mean" else (
        tol.BAG_PSW_BOUND_EPS if psw is not None else tol.BAG_SUM_GRAD_BOUND_EPS)
    _assert_within(j_grad, t_grad, _grad_magnitude(ids, seg, keep, gout, scale), k, exact=False)
    bad = ids.copy()
    bad[sum(sizes[:4]) + 1] = V  # in bag 4
    out = _jax_bag(bad, w, offsets, psw=psw, **kw)[0]
    assert np.isnan(out[4]).all() and not np.isnan(np.delete(out, 4, axis=0)).any()


def test_eager_equals_jit_default_mode_is_mean_negative_padding_idx():
    w = _table("float32")
    ids, offsets, _ = _bags("1d", -1)
    eager = np.asarray(F.embedding_bag(ids, w, offsets, padding_idx=-1))
    jitted = _jax_bag(ids, w, offsets, padding_idx=-1)[0]
    np.testing.assert_array_equal(eager, jitted)
    as_lists = F.embedding_bag(ids.tolist(), w, offsets.tolist(), padding_idx=-1)
    np.testing.assert_array_equal(as_lists, eager)
    want = _torch_bag(ids, w, offsets, "float32", padding_idx=-1)[0]
    _assert_forward(eager, want, ids, offsets, False, w, "mean", -1)
    assert not np.any(eager[0])  # all padding (id V - 1)


@pytest.mark.parametrize(
    "dtype_name, mode, padding_idx",
    [("bfloat16", m, p) for m in ("sum", "mean", "max") for p in (None, 5)]
    + [("float16", "mean", None)],
)
def test_forward_low_precision(dtype_name, mode, padding_idx):
    # Bags of 40 ids, so the float32 accumulation matters: summing in bfloat16 would differ.
    w = (np.random.default_rng(2).normal(size=(V, 64)) * 4).astype(NP_DTYPES[dtype_name])
    ids = np.random.default_rng(3).integers(0, V, size=(6, 40))
    kw = dict(mode=mode, padding_idx=padding_idx)
    want = _torch_bag(ids, w, None, dtype_name, **kw)[0]
    got = _jax_bag(ids, w, None, **kw)[0]
    fast_path = padding_idx is None and mode != "max" and dtype_name == "bfloat16"
    ulp = tol.BAG_BF16_FAST_PATH_ULP if fast_path else 0
    _assert_forward(got, want, ids, None, False, w, mode, padding_idx, ulp)


def test_float64_bit_exact(x64):
    w = np.random.default_rng(9).normal(size=(V, D))
    for layout, pad in (("1d", None), ("2d", 3)):
        ids, offsets, last = _bags(layout, pad)
        for mode in ("sum", "mean", "max"):
            kw = dict(mode=mode, padding_idx=pad, include_last_offset=last)
            got = _jax_bag(ids, w, offsets, **kw)[0]
            assert got.dtype == np.float64
            want = _torch_bag(ids, w, offsets, "float64", **kw)[0]
            _assert_forward(got, want, ids, offsets, last, w, mode, pad)


def test_low_precision_sum_is_float32_accumulated():
    # 257 ones: float32 sum 257, rounded once to bfloat16 (to even: 256); the mean divides by
    # bfloat16(257) = 256 as torch does. With padding_idx torch takes its round-to-nearest-even
    # slow path: bit-exact.
    w = np.ones((3, 2), ml_dtypes.bfloat16)
    ids = np.zeros((1, 258), np.int64)
    ids[0, 0] = 2  # padding
    for mode, value in (("sum", 256.0), ("mean", 1.0)):
        want = _torch_bag(ids, w, None, "bfloat16", mode=mode, padding_idx=2)[0]
        got = _jax_bag(ids, w, None, mode=mode, padding_idx=2)[0]
        assert ulp_distance(got, want) == 0
        assert float(got[0, 0]) == value


def test_empty_inputs():
    w = _table("float32")
    for mode in ("sum", "mean", "max"):
        want = _torch_bag(np.zeros((0,), np.int64), w, np.array([0, 0]), "float32", mode=mode)[0]
        got = _jax_bag(np.zeros((0,), np.int64), w, np.array([0, 0]), mode=mode)[0]
        np.testing.assert_array_equal(got, want)  # two zero rows
        assert _jax_bag(np.zeros((0, 3), np.int64), w, None, mode=mode)[0].shape == (0, D)
        assert _jax_bag(np.arange(3), w, np.zeros((0,), np.int64), mode=mode)[0].shape == (0, D)
        # (B, 0): B empty bags. torch fails here (arange with step 0); we give zeros.
        np.testing.assert_array_equal(_jax_bag(np.zeros((2, 0), np.int64), w, None)[0], 0)


def test_include_last_offset_ignores_trailing_ids():
    # ids after the last offset belong to no bag: they take no part in the forward and get no
    # gradient. That is torch's float32 fast path forward (sum, no padding_idx), compared here
    # on the uncut input; torch's other paths put them in the last bag (pytorch#52851).
    w = _table("float32")
    ids = np.arange(10) % V
    offsets = np.array([0, 3, 6])
    got, grad, _ = _jax_bag(ids, w, offsets, gout=np.ones((2, D), np.float32), mode="sum",
                            include_last_offset=True)
    if tol.ON_CPU:  # torch's CUDA path is not documented here (source only)
        want = from_torch(TF.embedding_bag(to_torch(ids), to_torch(w), to_torch(offsets),
                                           mode="sum", include_last_offset=True))
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, [w[0:3].sum(0), w[3:6].sum(0)], rtol=1e-6)
    assert not np.any(grad[6:10]) and np.all(grad[:6] == 1)


def test_max_ties_and_nan_follow_torch():
    # Per column, the first row of the bag seeds the max and only a strictly greater row
    # replaces it: ties keep the first; a NaN first stays; a NaN later is skipped.
    w = np.array([[1.0, 5.0], [3.0, 2.0], [3.0, 7.0], [np.nan, 0.0], [-0.0, 0.0]], np.float32)
    for ids in ([0, 1, 2], [3, 0, 1], [1, 3, 2], [4, 4], [0, 3]):
        ids = np.array(ids)
        want = _torch_bag(ids, w, np.array([0]), "float32", mode="max")[0]
        got = _jax_bag(ids, w, np.array([0]), mode="max")[0]
        assert ulp_distance(got, want) == 0, (ids, got, want)


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


GRADIENT_CASES = (
    [("float32", m, p, "1d_last") for m in ("sum", "mean", "max") for p in (None, 2)]
    + [("float32", m, 2, "2d") for m in ("sum", "mean")]  # the fused fixed-length sum
    + [("bfloat16", m, None, "1d_last") for m in ("sum", "mean", "max")]
    + [("bfloat16", "sum", None, "2d_long"), ("bfloat16", "mean", 2, "2d_long")]
)


@pytest.mark.parametrize("dtype_name, mode, padding_idx, layout", GRADIENT_CASES)
def test_table_gradient_matches_torch(dtype_name, mode, padding_idx, layout):
    w = _table(dtype_name, ties=(mode == "max"))  # max: ties between rows decide the argmax
    ids, offsets, last = _bags(layout, padding_idx)
    seg, num = _segments(ids, offsets, last)
    gout = np.random.default_rng(4).normal(size=(num, D)).astype(NP_DTYPES[dtype_name])
    kw = dict(mode=mode, padding_idx=padding_idx, include_last_offset=last)
    t_out, t_grad, _, _ = _torch_bag(ids, w, offsets, dtype_name, gout=gout, **kw)
    j_out, j_grad, _ = _jax_bag(ids, w, offsets, gout=gout, **kw)
    if mode == "max" or tol.ON_CPU:
        assert ulp_distance(j_out, t_out) <= (tol.BAG_BF16_FAST_PATH_ULP if dtype_name ==
                                              "bfloat16" and padding_idx is None else 0)
    keep = ids.reshape(-1) != (V if padding_idx is None else padding_idx)
    if mode == "mean":
        # torch adds fma(g, dtype(1/size), acc); we round g * dtype(1/size) first.
        k, exact = tol.BAG_MEAN_GRAD_BOUND_EPS, False
    else:
        # torch's sum backward walks the ids in (unstable) sorted order, not in input order; its
        # max backward adds bag after bag, as we do: bit-exact.
        k, exact = tol.BAG_SUM_GRAD_BOUND_EPS, tol.GRAD_EXACT and mode == "max"
    mag = _grad_magnitude(ids, seg, keep, gout, _position_scale(mode, seg, keep, num))
    _assert_within(j_grad, t_grad, mag, k, exact)
    if padding_idx is not None:
        assert not np.any(np.asarray(j_grad, np.float32)[padding_idx])


def test_max_gradient_goes_to_first_argmax_row():
    w = np.array([[1.0, 5.0], [3.0, 2.0], [3.0, 7.0]], np.float32)
    gout = np.array([[10.0, 20.0]], np.float32)
    _, t_grad, _, _ = _torch_bag(np.array([0, 1, 2]), w, np.array([0]), "float32", gout=gout,
                                 mode="max")
    _, j_grad, _ = _jax_bag(np.array([0, 1, 2]), w, np.array([0]), gout=gout, mode="max")
    np.testing.assert_array_equal(j_grad, t_grad)
    np.testing.assert_array_equal(j_grad, [[0, 0], [10, 0], [0, 20]])


@pytest.mark.parametrize(
    "dtype_name, padding_idx, layout",
    [("float32", None, "1d"), ("float32", 2, "1d"), ("bfloat16", None, "1d"),
     ("float32", 2, "2d"), ("bfloat16", 2, "2d")],
)
def test_per_sample_weights_forward_and_gradients(dtype_name, padding_idx, layout):
    w = _table(dtype_name)
    ids, offsets, last = _bags(layout, padding_idx)
    seg, num = _segments(ids, offsets, last)
    rng = np.random.default_rng(5)
    psw = rng.uniform(-2, 2, size=ids.shape).astype(NP_DTYPES[dtype_name])
    gout = rng.normal(size=(num, D)).astype(NP_DTYPES[dtype_name])
    kw = dict(mode="sum", padding_idx=padding_idx)
    t_out, t_grad, t_pgrad, _ = _torch_bag(ids, w, offsets, dtype_name, gout=gout, psw=psw, **kw)
    j_out, j_grad, j_pgrad = _jax_bag(ids, w, offsets, gout=gout, psw=psw, **kw)
    flat = ids.reshape(-1)
    keep = flat != (V if padding_idx is None else padding_idx)
    w64, g64 = np.asarray(w, np.float64), np.asarray(gout, np.float64)
    p64 = np.asarray(psw, np.float64).reshape(-1)
    terms = np.abs(w64[flat] * p64[:, None]) * keep[:, None]
    out_mag = np.zeros((num, D))
    np.add.at(out_mag, seg, terms)
    # torch: fma(psw, row, acc) in float32; we round psw * row first.
    _assert_within(j_out, t_out, out_mag, tol.BAG_PSW_BOUND_EPS, exact=False)
    _assert_within(j_grad, t_grad, _grad_magnitude(ids, seg, keep, gout, np.abs(p64)),
                   tol.BAG_PSW_BOUND_EPS, exact=False)
    # d out / d psw[i] = dot(gout[bag], row): summation order of the dot differs.
    p_mag = (np.abs(g64[seg] * w64[flat]).sum(1)) * keep
    j_pgrad, t_pgrad = j_pgrad.reshape(-1), t_pgrad.reshape(-1)
    _assert_within(j_pgrad, t_pgrad, p_mag, tol.BAG_PSW_BOUND_EPS, exact=False)
    if padding_idx is not None:
        assert not np.any(np.asarray(j_pgrad, np.float32)[~keep])


@pytest.mark.parametrize(
    "mode, padding_idx, layout",
    [("sum", None, "1d"), ("mean", 0, "1d"), ("sum", 0, "2d"), ("mean", None, "2d")],
)
def test_scale_grad_by_freq_matches_torch_embedding_plus_reduction(mode, padding_idx, layout):
    # torch 2.13's CPU EmbeddingBag divides by a wrong count (pytorch#190063: counts[i] with i
    # the unique group's number). The documented rule, which torch's Embedding implements, is
    # 1 / count of the id in the whole input; the reference here is Embedding + the reduction.
    w = _table("float32")
    ids = np.array([0, 0, 0, 1, 3, 3, 4, 5, 0, 3])
    offsets = np.array([0, 3, 7]) if layout == "1d" else None
    seg, num = _segments(ids if offsets is not None else ids.reshape(2, 5), offsets, False)
    gout = np.random.default_rng(6).normal(size=(num, D)).astype(np.float32)
    wt = to_torch(w, requires_grad=True)
    rows = TF.embedding(to_torch(ids), wt, padding_idx=padding_idx, scale_grad_by_freq=True)
    keep = ids != (V if padding_idx is None else padding_idx)
    rows = rows * to_torch(keep.astype(np.float32))[:, None]
    out = torch.zeros(num, D, device=TORCH_DEVICE).index_add(0, to_torch(seg), rows)
    if mode == "mean":
        size = np.maximum(np.bincount(seg[keep], minlength=num), 1).astype(np.float32)
        out = out / to_torch(size)[:, None]
    out.backward(to_torch(gout))
    j_ids = ids if offsets is not None else ids.reshape(2, 5)
    j_out, j_grad, _ = _jax_bag(j_ids, w, offsets, gout=gout, mode=mode, padding_idx=padding_idx,
                                scale_grad_by_freq=True)
    _assert_forward(j_out, from_torch(out), j_ids, offsets, False, w, mode, padding_idx)
    counts = np.bincount(ids, minlength=V).astype(np.float64)
    scale = 1 / counts[ids]
    if mode == "mean":
        scale = scale / size[seg]
    mag = _grad_magnitude(ids, seg, keep, gout, scale)
    _assert_within(j_grad, from_torch(wt.grad), mag, tol.BAG_MEAN_GRAD_BOUND_EPS, exact=False)
    if padding_idx is not None:
        assert not np.any(j_grad[padding_idx])


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_max_norm_renorms_before_the_reduction(mode):
    w = _table("float32") * 2
    ids, offsets, last = _bags("1d", 2)  # torch renorms ids after a last offset too
    seg, num = _segments(ids, offsets, last)
    gout = np.random.default_rng(7).normal(size=(num, D)).astype(np.float32)
    kw = dict(mode=mode, padding_idx=2, include_last_offset=last, max_norm=1.5)
    t_out, t_grad, _, t_table = _torch_bag(ids, w, offsets, "float32", gout=gout, **kw)
    j_out, j_table = F.embedding_bag_and_renorm(ids, w, offsets, **kw)
    assert ulp_distance(np.asarray(j_table), t_table) <= tol.RENORM_ULP["float32"]
    # The renormed rows differ by the renorm ulps; the reduction adds its own rounding on top.
    keep = ids != 2
    mag = _out_magnitude(t_table, ids, seg, keep, num, mode)
    _assert_within(np.asarray(j_out), t_out, mag, tol.BAG_RENORM_BOUND_EPS, exact=False)
    # The gradient is torch's, not multiplied by the renorm scale.
    _, j_grad, _ = _jax_bag(ids, w, offsets, gout=gout, **kw)
    if mode == "max":  # renorm ulps could move an argmax between near-tied rows; not here
        np.testing.assert_array_equal(j_grad, t_grad)
    else:
        mag = _grad_magnitude(ids, seg, keep, gout, _position_scale(mode, seg, keep, num))
        _assert_within(j_grad, t_grad, mag, tol.BAG_MEAN_GRAD_BOUND_EPS, exact=False)


# ---------------------------------------------------------------------------------------------
# Errors and the jit policy
# ---------------------------------------------------------------------------------------------

_X1 = np.arange(40) % 10
_OFF = np.array([0, 7, 7, 30])
_W = np.zeros((10, 4), np.float32)
ERRORS = [
    # (description, kwargs of embedding_bag, exception type, message regex)
    ("offsets[0] != 0", dict(input=_X1, offsets=np.array([1, 5])), RuntimeError,
     r"offsets\[0\] has to be 0, i.e., the first sequence in the mini-batch has to start "
     r"from position 0. However, got 1"),
    ("offsets[-1] > len", dict(input=_X1, offsets=np.array([0, 41])), RuntimeError,
     r"offsets\[-1\] can not be greater than input's length 40 but got offsets\[-1\] of 41"),
    ("2-D input with offsets", dict(input=_X1.reshape(4, 10), offsets=np.array([0])),
     ValueError, "if input is 2D, then offsets has to be None"),
    ("1-D input without offsets", dict(input=_X1), ValueError,
     "offsets has to be a 1D Tensor but got None"),
    ("offsets 2-D", dict(input=_X1, offsets=np.array([[0]])), ValueError,
     "offsets has to be a 1D Tensor"),
    ("3-D input", dict(input=_X1.reshape(2, 2, 10)), ValueError,
     "input has to be 1D or 2D Tensor, but got Tensor of dimension 3"),
    ("bad mode", dict(input=_X1.reshape(4, 10), mode="min"), ValueError,
     "mode has to be one of sum, mean or max"),
    ("max + scale_grad_by_freq", dict(input=_X1.reshape(4, 10), mode="max",
                                      scale_grad_by_freq=True), ValueError,
     "max mode does not support scaling the gradient by the frequency"),
    ("per_sample_weights with mean", dict(input=_X1, offsets=_OFF, mode="mean",
                                          per_sample_weights=np.ones(40, np.float32)),
     NotImplementedError,
     r"embedding_bag: per_sample_weights was not None. per_sample_weights is only supported "
     r"for mode='sum' \(got mode='mean'\). Please open a feature request on GitHub."),
    ("per_sample_weights with max", dict(input=_X1, offsets=_OFF, mode="max",
                                         per_sample_weights=np.ones(40, np.float32)),
     NotImplementedError, r"only supported for mode='sum' \(got mode='max'\)"),
    ("per_sample_weights shape", dict(input=_X1, offsets=_OFF, mode="sum",
                                      per_sample_weights=np.ones(5, np.float32)), ValueError,
     r"embedding_bag: If per_sample_weights \(.*5.*\) is not None, then it must have the same "
     r"shape as the input \(.*40.*\)"),
    ("include_last_offset, empty offsets", dict(input=_X1, offsets=np.zeros(0, np.int64),
                                                include_last_offset=True), RuntimeError,
     "include_last_offset: number of offset should be at least 1"),
    ("padding_idx too large", dict(input=_X1, offsets=_OFF, padding_idx=10), RuntimeError,
     "padding_idx must be within the number of embeddings, -10 through 9, but got 10"),
    ("padding_idx too small", dict(input=_X1, offsets=_OFF, padding_idx=-11), RuntimeError,
     "padding_idx must be within the number of embeddings, -10 through 9, but got -11"),
    ("id too large", dict(input=np.array([10]), offsets=np.array([0])), RuntimeError,
     r"Index 0 of input takes value 10 which is not in the valid range \[0, 10\)"),
    ("negative id", dict(input=np.array([3, -1]), offsets=np.array([0])), RuntimeError,
     r"Index 1 of input takes value -1 which is not in the valid range \[0, 10\)"),
    ("weight 1-D", dict(input=_X1.reshape(4, 10), weight=np.zeros(10, np.float32)), ValueError,
     "weight has to be a 2D Tensor, but got Tensor of dimension 1"),
    ("integer weight", dict(input=_X1.reshape(4, 10), weight=np.zeros((10, 4), np.int32)),
     RuntimeError, "Expected tensor for argument #1 'weight' to have one of the following"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_match_torch(case):
    _, kwargs, exc, pattern = case
    kwargs = dict(kwargs)
    kwargs.setdefault("weight", _W)
    with pytest.raises(exc, match=pattern):
        F.embedding_bag(**kwargs)
    t = {k: (torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v)
         for k, v in kwargs.items()}
    with pytest.raises(exc, match=pattern):
        TF.embedding_bag(**t)


def test_decreasing_offsets_raise():
    with pytest.raises(RuntimeError):  # torch: an internal assertion (pytorch#175368)
        TF.embedding_bag(torch.from_numpy(_X1), torch.zeros(10, 4), torch.tensor([0, 20, 10]))
    with pytest.raises(RuntimeError, match=r"non-decreasing.*offsets\[2\] = 10 < offsets\[1\]"):
        F.embedding_bag(_X1, _W, np.array([0, 20, 10]))


def test_per_sample_weights_dtype_must_match_table():
    with pytest.raises(RuntimeError, match="to have the same type as tensor for argument #1 "
                                           "'per_sample_weights'"):
        F.embedding_bag(_X1, _W, _OFF, mode="sum",
                        per_sample_weights=jnp.ones(40, jnp.bfloat16))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_invalid_data_under_jit_is_nan_and_checkified(mode):
    w = jnp.asarray(_table("float32"))
    f = jax.jit(lambda i, o: F.embedding_bag(i, w, o, mode=mode, padding_idx=0))
    checked = checkify.checkify(f, errors=checkify.index_checks)
    ids = jnp.array([1, 2, 3, 4, 5, 0, 0])
    good = jnp.array([0, 2, 2, 5])  # an empty bag and an all-padding bag: no false alarm
    err, out = checked(ids, good)
    assert err.get() is None
    assert not np.isnan(out).any()
    for bad in ([1, 2, 2, 5], [0, 3, 2, 5], [0, 2, 2, 8]):  # first != 0, decreasing, > N
        err, out = checked(ids, jnp.array(bad))
        assert np.isnan(out).all()
        assert "out-of-bounds" in err.get()
    err, out = checked(jnp.array([1, 2, 12, 4, 5, 0, 0]), good)  # id 12 is out of range
    assert np.isnan(out[2]).all() and not np.isnan(np.asarray(out)[[0, 1, 3]]).any()
    assert "out-of-bounds" in err.get()
    if mode != "max":  # fixed-length bags take another path: same policy
        f2 = jax.jit(lambda i: F.embedding_bag(i, w, mode=mode, padding_idx=0))
        err, out = checkify.checkify(f2, errors=checkify.index_checks)(ids[:6].reshape(2, 3))
        assert err.get() is None and not np.isnan(out).any()
        err, out = checkify.checkify(f2, errors=checkify.index_checks)(
            jnp.array([[1, 2, 3], [4, -1, 0]]))
        assert np.isnan(out[1]).all() and not np.isnan(out[0]).any()
        assert "out-of-bounds" in err.get()
    # include_last_offset: positions after the last offset are ignored, not an error.
    g = jax.jit(lambda i, o: F.embedding_bag(i, w, o, mode=mode, include_last_offset=True))
    err, out = checkify.checkify(g, errors=checkify.index_checks)(ids, jnp.array([0, 2, 4]))
    assert err.get() is None
    assert out.shape == (2, D)


# ---------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------


def _torch_module(w, **kw):
    m = torch.nn.EmbeddingBag.from_pretrained(torch.from_numpy(w.copy()), freeze=False, **kw)
    return m.to(TORCH_DEVICE)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_nnx_module_matches_torch_and_persists_renorm(mode):
    w = _table("float32") * 2
    ids, offsets, _ = _bags("1d", 2)
    kw = dict(mode=mode, padding_idx=2, max_norm=1.0)
    tm = _torch_module(w, **kw)
    out_t = tm(to_torch(ids), to_torch(offsets))
    gout = np.random.default_rng(8).normal(size=out_t.shape).astype(np.float32)
    out_t.backward(to_torch(gout))

    bag = jaxembed.EmbeddingBag.from_pretrained(w, freeze=False, **kw)
    assert isinstance(bag.embedding, nnx.Param)

    @nnx.jit
    def step(bag, i, o):
        def loss(bag):
            return jnp.sum(bag(i, o) * gout)

        return nnx.grad(loss)(bag)

    grads = step(bag, jnp.asarray(ids), jnp.asarray(offsets))
    # torch renormed its weight in place inside the forward; so did the module.
    t_table = from_torch(tm.weight)
    assert ulp_distance(np.asarray(bag.embedding.get_value()), t_table) <= tol.RENORM_ULP[
        "float32"]
    out_j = np.asarray(bag(jnp.asarray(ids), jnp.asarray(offsets)))  # renormed table: no-op now
    seg, num = _segments(ids, offsets, False)
    keep = ids != 2
    mag = _out_magnitude(t_table, ids, seg, keep, num, mode)
    _assert_within(out_j, from_torch(out_t), mag, tol.BAG_RENORM_BOUND_EPS, exact=False)
    g = np.asarray(grads["embedding"].get_value())
    mag = _grad_magnitude(ids, seg, keep, gout, _position_scale(mode, seg, keep, num))
    _assert_within(g, from_torch(tm.weight.grad), mag, tol.BAG_MEAN_GRAD_BOUND_EPS,
                   exact=tol.GRAD_EXACT and mode == "max")


def test_nnx_module_init_and_errors():
    bag = jaxembed.EmbeddingBag(10, 4, padding_idx=-1, mode="sum", rngs=nnx.Rngs(0))
    assert bag.padding_idx == 9
    assert not np.any(np.asarray(bag.embedding.get_value())[9])  # torch zeroes it at init
    frozen = jaxembed.EmbeddingBag.from_pretrained(_table("float32"), padding_idx=0)
    assert isinstance(frozen.embedding, jaxembed.FrozenParam)
    np.testing.assert_array_equal(frozen.embedding.get_value()[0], _table("float32")[0])
    for pad in (10, -11):
        with pytest.raises(AssertionError, match="padding_idx must be within num_embeddings"):
            torch.nn.EmbeddingBag(10, 4, padding_idx=pad)
        with pytest.raises(AssertionError, match="padding_idx must be within num_embeddings"):
            jaxembed.EmbeddingBag(10, 4, padding_idx=pad, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="mode has to be one of sum, mean or max"):
        jaxembed.EmbeddingBag(10, 4, mode="min", rngs=nnx.Rngs(0))
    with pytest.raises(AssertionError, match="Embeddings parameter is expected to be 2-dim"):
        jaxembed.EmbeddingBag.from_pretrained(np.zeros(3, np.float32))


def test_linen_module_matches_torch_and_persists_renorm():
    w = _table("float32") * 2
    ids, offsets, _ = _bags("1d", 2)
    offsets = np.append(offsets, len(ids))  # the same bags with include_last_offset
    kw = dict(mode="mean", padding_idx=2, max_norm=1.0, include_last_offset=True)
    tm = _torch_module(w, **kw)
    out_t = from_torch(tm(to_torch(ids), to_torch(offsets)))

    module = jaxembed.linen.EmbeddingBag.from_pretrained(w, freeze=True, **kw)
    variables = module.init(jax.random.key(0), ids, offsets)
    np.testing.assert_array_equal(variables["frozen"]["embedding"], w)  # init never renorms
    out, updated = module.apply(variables, ids, offsets, mutable=["frozen"])
    assert ulp_distance(np.asarray(updated["frozen"]["embedding"]), from_torch(tm.weight)) <= \
        tol.RENORM_ULP["float32"]
    seg, num = _segments(ids, offsets, True)
    mag = _out_magnitude(from_torch(tm.weight), ids, seg, ids != 2, num, "mean")
    _assert_within(np.asarray(out), out_t, mag, tol.BAG_RENORM_BOUND_EPS, exact=False)

    plain = jaxembed.linen.EmbeddingBag(V, D, mode="max", padding_idx=0)
    params = plain.init(jax.random.key(1), ids.reshape(6, 5))
    assert not np.any(np.asarray(params["params"]["embedding"])[0])
    want = _torch_bag(ids.reshape(6, 5), np.asarray(params["params"]["embedding"]), None,
                      "float32", mode="max", padding_idx=0)[0]
    np.testing.assert_array_equal(plain.apply(params, ids.reshape(6, 5)), want)
    with pytest.raises(AssertionError, match="padding_idx must be within num_embeddings"):
        jaxembed.linen.EmbeddingBag(10, 4, padding_idx=10)
    assert isinstance(plain, nn.Module)
