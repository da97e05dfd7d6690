"""Property-based adversarial ids: the contract, by every door, for every integer id dtype.

Hypothesis draws id dtypes (int8 .. uint64) and values (in range, negative, >= 2**31, >= 2**32,
the int64 and uint64 extremes), table dtypes (float32, bfloat16, float16, int32, float64 with
x64), tables with no rows, options (padding_idx, max_norm, scale_grad_by_freq), the door
(functional lookup, lookup + renorm, NNX, Linen, EmbeddingBag, sparse row gradients), how the
ids arrive (eagerly; as a jit argument; closed over inside jit) and x64 on or off, and checks:

* eagerly (and closed over in jit, where the ids are still concrete): torch's exception for any
  id outside ``[0, V)`` (torch's own message where torch can hold the ids: int64 range);
  otherwise every row bit for bit;
* as a jit argument: NaN rows (the minimum integer for integer tables) exactly at the
  out-of-range positions, every other row bit for bit, no gradient from them, no renorm for
  them, and a ``checkify`` report iff there is one;
* never another row.

The one case no library can see, numpy int64 ids passed straight into ``jax.jit`` with x64 off
(JAX narrows them before jaxembed runs), is not drawn; ``test_numpy_int64_into_jit_without_x64``
pins what happens there, as docs/guides/behaviour.md states. The budget is JAXEMBED_HYPOTHESIS_EXAMPLES
(default 40 here, a few seconds).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jax.experimental import checkify

import jaxembed
import jaxembed.functional as F
from jaxembed import sparse

EXAMPLES = int(os.environ.get("JAXEMBED_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

ID_DTYPES = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
EDGES = [-1, -(2**31), 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, -(2**32) + 1, 2**63 - 1,
         -(2**63), 2**63, 2**64 - 1, 127, 128, 255, 256, 65535, 65536]
DOORS = ["embedding", "embed_and_renorm", "nnx", "linen", "bag", "row_gradients"]
MODES = ["eager", "jit_arg", "jit_closure"]


def _fits(value, dtype) -> bool:
    info = np.iinfo(dtype)
    return info.min <= value <= info.max


@st.composite
def cases(draw):
    x64 = draw(st.booleans())
    id_dtype = draw(st.sampled_from(ID_DTYPES))
    mode = draw(st.sampled_from(MODES))
    if mode == "jit_arg" and not x64 and np.dtype(id_dtype).itemsize == 8:
        mode = "jit_closure"  # JAX would narrow them at the jit boundary (see the docstring)
    door = draw(st.sampled_from(DOORS))
    v = draw(st.sampled_from([0, 1, 6]))
    table_dtypes = ["float32", "bfloat16", "float16", "int32"] + (["float64"] if x64 else [])
    if door == "bag" or door == "row_gradients":
        table_dtypes = [t for t in table_dtypes if t != "int32"]  # torch's bags: floats only
    table_dtype = draw(st.sampled_from(table_dtypes))
    in_range = st.integers(0, v - 1) if v else st.nothing()
    edges = [e for e in EDGES + [v] if _fits(e, id_dtype)]
    values = draw(st.lists(in_range | st.sampled_from(edges), min_size=0, max_size=5))
    if door == "bag":  # fixed-length bags: (B, L)
        values = values[: len(values) - len(values) % 2]
    padding_idx = draw(st.none() | st.integers(0, v - 1)) if v else None
    floating = table_dtype != "int32"
    max_norm = draw(st.none() | st.just(0.5)) if floating and door == "embed_and_renorm" else None
    sgbf = draw(st.booleans()) if door in ("embedding", "nnx") and floating else False
    return dict(x64=x64, id_dtype=id_dtype, mode=mode, door=door, v=v, table_dtype=table_dtype,
                values=values, padding_idx=padding_idx, max_norm=max_norm, sgbf=sgbf)


def _table(c):
    rng = np.random.default_rng(len(c["values"]) + 7 * c["v"])
    dtype = {"bfloat16": ml_dtypes.bfloat16}.get(c["table_dtype"], c["table_dtype"])
    return (rng.normal(size=(c["v"], 3)) * 4).astype(dtype)


def _bits(x):
    x = np.asarray(x)
    return x.view(f"u{x.dtype.itemsize}") if x.dtype.kind == "f" or x.dtype == ml_dtypes.bfloat16 else x


def _call(c, table, ids):
    """The door, as ``(rows, table_after, grad)`` (grad None where there is none)."""
    door, kw = c["door"], dict(padding_idx=c["padding_idx"])
    floating = c["table_dtype"] != "int32"
    if door == "embedding":
        f = lambda w: F.embedding(ids, w, scale_grad_by_freq=c["sgbf"], **kw)  # noqa: E731
        rows = f(table)
        grad = jax.grad(lambda w: jnp.nansum(f(w).astype(jnp.float32)))(table) if floating else None
        return rows, table, grad
    if door == "embed_and_renorm":
        rows, new = F.embed_and_renorm(ids, table, max_norm=c["max_norm"], **kw)
        return rows, new, None
    if door == "nnx":
        model = jaxembed.Embed.from_pretrained(table, freeze=not floating,
                                               scale_grad_by_freq=c["sgbf"], **kw)
        rows = model(ids)
        grad = None
        if floating:
            grad = nnx.grad(lambda m: jnp.nansum(m(ids).astype(jnp.float32)))(model)
            grad = grad["embedding"].get_value()
        return rows, table, grad
    if door == "linen":
        module = jaxembed.linen.Embed.from_pretrained(table, **kw)
        variables = {"frozen": {"embedding": table}}
        return module.apply(variables, ids), table, None
    if door == "bag":
        f = lambda w: F.embedding_bag(ids.reshape(-1, 2), w, mode="sum", **kw)  # noqa: E731
        grad = jax.grad(lambda w: jnp.nansum(f(w).astype(jnp.float32)))(table)
        return f(table), table, grad
    rows = sparse.row_gradients(ids, jnp.ones(ids.shape + (3,)), c["v"], c["padding_idx"])
    return rows, table, None


def _torch_error(c, values):
    """torch's (type, message) for these ids, where torch can hold them (int64)."""
    if not all(_fits(x, np.int64) for x in values):
        return None
    ids = torch.tensor(np.array(values, np.int64))
    w = torch.zeros(c["v"], 3)
    try:
        if c["door"] == "bag":
            TF.embedding_bag(ids.reshape(-1, 2), w, mode="sum")
        else:
            TF.embedding(ids, w)
    except Exception as e:  # noqa: BLE001
        return type(e), str(e).splitlines()[0]
    return None


def _check_eager(c, table, ids_np, bad):
    if c["door"] == "row_gradients":  # removes out-of-range ids rather than raising
        _check_row_gradients(c, _call(c, table, ids_np)[0], bad)
        return
    if bad.any():
        want = _torch_error(c, c["values"])
        kind = RuntimeError if c["door"] == "bag" or c["v"] == 0 else IndexError
        with pytest.raises(kind) as info:
            _call(c, table, ids_np)
        if want is not None:
            assert type(info.value) is want[0]
            # torch's bags sometimes fail with an internal assertion instead of their message
            if not want[1].startswith("Expected i < index_size"):
                assert str(info.value).startswith(want[1]), (str(info.value), want[1])
        return
    rows, new, _ = _call(c, table, ids_np)
    _check_rows(c, table, new, rows, ids_np.astype(np.int64), bad)


def _check_rows(c, table, new, rows, idx, bad):
    """In-range rows bit for bit (renormed where max_norm says), out-of-range rows the fill."""
    rows, new = np.asarray(rows), np.asarray(new)
    if c["door"] == "bag":  # sums of 2, accumulated in float32 (float64) and rounded once
        bags = bad.reshape(-1, 2).any(1)
        assert np.isnan(rows[bags].astype(np.float32)).all()
        if bags.all():
            return
        acc = np.float64 if c["table_dtype"] == "float64" else np.float32
        terms = np.where(bad[:, None], 0, table[np.maximum(idx, 0)]).astype(acc)
        if c["padding_idx"] is not None:
            terms[idx == c["padding_idx"]] = 0
        want = (acc(0) + terms[0::2] + terms[1::2]).astype(table.dtype)
        np.testing.assert_array_equal(_bits(rows[~bags]), _bits(want[~bags]))
        return
    good = ~bad
    np.testing.assert_array_equal(_bits(rows[good]), _bits(new[idx[good]]))
    if bad.any():
        fill = rows[bad]
        if c["table_dtype"] == "int32":
            assert (fill == np.iinfo(np.int32).min).all()
        else:
            assert np.isnan(fill.astype(np.float32)).all()
    touched = np.zeros(c["v"], bool)
    touched[idx[good]] = True
    # never another row: rows no in-range id references are exactly the old ones
    np.testing.assert_array_equal(_bits(new[~touched]), _bits(table[~touched]))
    if c["max_norm"] is None:
        np.testing.assert_array_equal(_bits(new), _bits(table))


def _check_row_gradients(c, rows, bad):
    idx = np.array([x if 0 <= x < c["v"] else -1 for x in c["values"]], np.int64)
    want = np.where(bad | (idx == (-1 if c["padding_idx"] is None else c["padding_idx"])),
                    c["v"], idx)
    np.testing.assert_array_equal(np.asarray(rows.ids), want)


def _check_grad(c, grad, idx, bad):
    if grad is None:
        return
    keep = ~bad
    if c["door"] == "bag":  # a NaN bag's cotangent from nansum is 0: none of its rows learn
        keep &= ~np.repeat(bad.reshape(-1, 2).any(1), 2)
    if c["padding_idx"] is not None:
        keep &= idx != c["padding_idx"]
    want = np.zeros((c["v"], 3))
    np.add.at(want, idx[keep], 1.0)
    if c["sgbf"]:
        want = np.minimum(want, 1.0)  # each position 1/count: a referenced row sums to 1
    np.testing.assert_allclose(np.asarray(grad, np.float64), want, rtol=2e-2)


@SETTINGS
@given(cases())
def test_adversarial_ids_keep_the_contract(c):
    ids_np = np.array(c["values"], c["id_dtype"])
    bad = np.array([not (0 <= x < c["v"]) for x in c["values"]], bool)
    with jax.enable_x64(c["x64"]):
        table = jnp.asarray(_table(c))
        if c["mode"] == "eager":
            _check_eager(c, table, ids_np, bad)
            return
        if c["mode"] == "jit_closure":  # concrete inside the trace: the eager contract
            if bad.any() and c["door"] != "row_gradients":
                with pytest.raises((IndexError, RuntimeError)):
                    jax.jit(lambda t: _call(c, t, ids_np))(table)
            else:
                jax.jit(lambda t: _call(c, t, ids_np))(table)
            return
        ids = jnp.asarray(ids_np)
        assert ids.dtype == ids_np.dtype  # no narrowing before jaxembed sees them
        checked = jax.jit(checkify.checkify(lambda t, i: _call(c, t, i), errors=checkify.index_checks))
        err, (rows, new, grad) = checked(table, ids)
        if c["door"] == "row_gradients":
            _check_row_gradients(c, rows, bad)
            return
        assert (err.get() is not None) == bool(bad.any()), err.get()
        idx = np.array([x if 0 <= x < c["v"] else -1 for x in c["values"]], np.int64)
        _check_rows(c, np.asarray(table), new, rows, idx, bad)
        _check_grad(c, grad, idx, bad)


def test_numpy_int64_into_jit_without_x64():
    """The one unseeable case of docs/guides/behaviour.md: with x64 off JAX narrows a numpy int64 jit argument to
    int32 (2**32 + 1 -> 1) before jaxembed runs, so no library can check it. Closing over the
    ids (or checking them eagerly first) or enabling x64 keeps the contract."""
    w = jnp.arange(18.0).reshape(6, 3)
    ids = np.array([2**32 + 1])
    narrowed = jax.jit(lambda i: F.embedding(i, w))(ids)
    np.testing.assert_array_equal(narrowed, w[1:2])  # JAX's conversion, not jaxembed's
    with pytest.raises(IndexError):
        jax.jit(lambda: F.embedding(ids, w))()
    with jax.enable_x64(True):
        assert np.isnan(jax.jit(lambda i: F.embedding(i, w))(ids)).all()
