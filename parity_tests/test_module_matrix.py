"""jaxembed.Embed (NNX) and jaxembed.linen.Embed against torch.nn.Embedding.

Forward rows, the table gradient, the gradient w.r.t. a downstream input, and the table after
max_norm's in-place renorm, over a pairwise cover of the configuration matrix (api x padding_idx x
dtype x input shape x id distribution x scale_grad_by_freq x (max_norm, norm_type)). The
functional API's own matrix is in test_functional.py; the low-precision norm types are here.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxembed
import tolerances as tol
from conftest import from_torch, pairwise, to_torch, ulp_distance
from jaxembed import functional as F
from jaxembed._src.tools.parity import NP_DTYPES, grad_tolerance, within

V, D = 11, 9
MIDDLE = 5

MATRIX = pairwise(
    api=["nnx", "linen"],
    padding_idx=[None, 0, -1, MIDDLE],
    dtype=["float32", "float64", "bfloat16", "float16"],
    shape=[(), (0,), (9,), (3, 5), (2, 3, 2, 2)],
    ids=["uniform", "heavy_duplicates", "all_padding"],
    scale_grad_by_freq=[False, True],
    # (max_norm, norm_type): small / 1 / large, each norm type at least once.
    norm=[None, (0.1, 1.0), (1.0, 2.0), (100.0, 3.0), (1.0, math.inf), (0.1, 0.5)],
)


def _ids(kind, shape, padding_idx, rng):
    if kind == "uniform":
        return rng.integers(0, V, size=shape)
    if kind == "heavy_duplicates":
        return rng.choice([1, 4], size=shape)
    # all padding (all one row when there is no padding_idx)
    return np.full(shape, MIDDLE if padding_idx is None else padding_idx % V)


def _torch_run(w, ids, x, dtype, opts):
    """torch: out = emb(ids); loss = sum(out * x). Returns out, dW, dx, table afterwards."""
    emb = torch.nn.Embedding.from_pretrained(to_torch(w, dtype), freeze=False, **opts)
    xt = to_torch(x, dtype, requires_grad=True)
    out = emb(to_torch(ids.astype(np.int64)))
    (out * xt).sum().backward()
    return from_torch(out), from_torch(emb.weight.grad), from_torch(xt.grad), from_torch(emb.weight)


def _jax_run(api, w, ids, x, opts):
    ids, x = jnp.asarray(ids, jnp.int32), jnp.asarray(x)
    if api == "nnx":
        model = jaxembed.Embed.from_pretrained(jnp.asarray(w), freeze=False, **opts)

        def loss(model, x):
            out = model(ids)
            return jnp.sum(out * x), out

        (gm, gx), out = nnx.grad(loss, argnums=(0, 1), has_aux=True)(model, x)
        return out, gm["embedding"].get_value(), gx, model.embedding.get_value()
    module = jaxembed.linen.Embed.from_pretrained(jnp.asarray(w), freeze=False, **opts)
    params = module.init(jax.random.key(0), ids)["params"]

    def loss(params, x):
        out, new = module.apply({"params": params}, ids, mutable=["params"])
        return jnp.sum(out * x), (out, new["params"])

    (gp, gx), (out, new) = jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x)
    return out, gp["embedding"], gx, new["embedding"]


@pytest.mark.parametrize("cfg", MATRIX, ids=lambda c: "-".join(map(str, c.values())))
def test_module_matches_torch(cfg):
    dtype, padding_idx = cfg["dtype"], cfg["padding_idx"]
    max_norm, norm_type = cfg["norm"] or (None, 2.0)
    opts = dict(padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                scale_grad_by_freq=cfg["scale_grad_by_freq"])
    rng = np.random.default_rng(len(str(cfg)))
    w = (rng.normal(size=(V, D)) * 1.5).astype(NP_DTYPES[dtype])
    ids = _ids(cfg["ids"], cfg["shape"], padding_idx, rng)
    x = rng.normal(size=ids.shape + (D,)).astype(NP_DTYPES[dtype])

    with jax.enable_x64(dtype == "float64"):
        t_out, t_grad, t_gx, t_table = _torch_run(w, ids, x, dtype, opts)
        j_out, j_grad, j_gx, j_table = map(np.asarray, _jax_run(cfg["api"], w, ids, x, opts))

    assert j_out.shape == ids.shape + (D,) and j_out.dtype == t_out.dtype
    renorm_ulp = 0 if max_norm is None else tol.RENORM_ULP[dtype]
    # Forward rows (renormed when max_norm) and the gradient w.r.t. the downstream input x,
    # which is the forward rows.
    assert ulp_distance(j_out, t_out) <= renorm_ulp
    assert ulp_distance(j_gx, t_gx) <= renorm_ulp
    # The table after the in-place renorm (the module persists it).
    assert ulp_distance(j_table, t_table) <= renorm_ulp
    # The table gradient: x scattered, padding masked, 1/count scaling; not scaled by renorm.
    counts = np.bincount(ids.reshape(-1), minlength=V) if opts["scale_grad_by_freq"] else None
    assert within(j_grad, t_grad, grad_tolerance(tol.BACKEND, x, ids, V, counts))
    if padding_idx is not None:
        assert not np.asarray(j_grad, np.float32)[padding_idx % V].any()


@pytest.mark.parametrize("dtype", ["float64", "bfloat16", "float16"])
@pytest.mark.parametrize("norm_type", [1.0, 3.0, math.inf, 0.5])
@pytest.mark.parametrize("max_norm", [0.05, 1.0, 50.0])
def test_renorm_norm_types_other_dtypes(dtype, norm_type, max_norm):
    # test_functional.py covers float32 x every norm type, and p=2 for the other dtypes.
    w = (np.random.default_rng(3).normal(size=(40, 16)) * 1.5).astype(NP_DTYPES[dtype])
    ids = np.random.default_rng(4).integers(0, 40, size=(5, 6))
    with jax.enable_x64(dtype == "float64"):
        wt = to_torch(w, dtype)
        torch.nn.functional.embedding(to_torch(ids), wt, max_norm=max_norm, norm_type=norm_type)
        got = np.asarray(F.embedding_renorm(jnp.asarray(w), jnp.asarray(ids), max_norm,
                                            norm_type))
    assert ulp_distance(got, from_torch(wt)) <= tol.RENORM_ULP[dtype]


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_renorm_persists_across_calls_like_torch(api):
    # torch renorms its weight in place on every forward; the second call sees the first's.
    w = (np.random.default_rng(5).normal(size=(V, D)) * 2).astype(np.float32)
    calls = [np.array([1, 2, 2]), np.array([2, 3]), np.array([[1], [9]])]
    emb = torch.nn.Embedding.from_pretrained(to_torch(w), max_norm=0.7, norm_type=1.0)
    want = [from_torch(emb(to_torch(i))) for i in calls]
    if api == "nnx":
        m = jaxembed.Embed.from_pretrained(jnp.asarray(w), max_norm=0.7, norm_type=1.0)
        got = [np.asarray(m(jnp.asarray(i))) for i in calls]
        table = m.embedding.get_value()
    else:
        m = jaxembed.linen.Embed.from_pretrained(jnp.asarray(w), max_norm=0.7, norm_type=1.0)
        variables = m.init(jax.random.key(0), jnp.asarray(calls[0]))
        got = []
        for i in calls:
            out, upd = m.apply(variables, jnp.asarray(i), mutable=["frozen"])
            variables = {**variables, **upd}
            got.append(np.asarray(out))
        table = variables["frozen"]["embedding"]
    for g, t in zip(got, want):
        assert ulp_distance(g, t) <= tol.RENORM_ULP["float32"]
    assert ulp_distance(np.asarray(table), from_torch(emb.weight)) <= tol.RENORM_ULP["float32"]


def test_nnx_jit_matches_eager_torch():
    # Under nnx.jit the forward and the persisted renorm are the same numbers.
    w = (np.random.default_rng(6).normal(size=(V, D)) * 2).astype(np.float32)
    ids = np.random.default_rng(7).integers(0, V, size=(4, 6))
    emb = torch.nn.Embedding.from_pretrained(to_torch(w), padding_idx=-1, max_norm=1.0)
    want = from_torch(emb(to_torch(ids)))
    m = jaxembed.Embed.from_pretrained(jnp.asarray(w), padding_idx=-1, max_norm=1.0)
    got = np.asarray(nnx.jit(lambda m, i: m(i))(m, jnp.asarray(ids)))
    assert ulp_distance(got, want) <= tol.RENORM_ULP["float32"]
    assert ulp_distance(np.asarray(m.embedding.get_value()), from_torch(emb.weight)) <= (
        tol.RENORM_ULP["float32"])

