"""Property-based parity: random configurations, weights and ids, torch vs jaxembed.

Each run draws fresh examples. The budget is JAXEMBED_HYPOTHESIS_EXAMPLES examples per test
(default 10, which keeps CI fast); raise it for a long run, e.g.
``JAXEMBED_HYPOTHESIS_EXAMPLES=2000 pytest parity_tests/test_properties.py``.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch.nn.functional as TF
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxembed
import tolerances as tol
from conftest import from_torch, to_torch, ulp_distance
from jaxembed import functional as F
from jaxembed._src.tools.parity import NP_DTYPES, grad_tolerance, within

EXAMPLES = int(os.environ.get("JAXEMBED_HYPOTHESIS_EXAMPLES", "10"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def configs(draw):
    v = draw(st.integers(1, 24))
    d = draw(st.integers(1, 40))
    dtype = draw(st.sampled_from(["float32", "float64", "bfloat16", "float16"]))
    padding_idx = draw(st.none() | st.integers(-v, v - 1))
    max_norm = draw(st.none() | st.sampled_from([0.05, 1.0, 50.0])
                    | st.floats(0.01, 20.0, allow_nan=False))
    norm_type = draw(st.sampled_from([1.0, 2.0, 3.0, math.inf, 0.5]))
    shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    ids_kind = draw(st.sampled_from(["uniform", "heavy_duplicates", "all_padding"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if ids_kind == "uniform":
        ids = rng.integers(0, v, size=shape)
    elif ids_kind == "heavy_duplicates":
        ids = rng.choice(rng.integers(0, v, size=2), size=shape)
    else:
        ids = np.full(shape, 0 if padding_idx is None else padding_idx % v)
    scale = draw(st.sampled_from([0.1, 1.0, 3.0]))
    w = (rng.normal(size=(v, d)) * scale).astype(NP_DTYPES[dtype])
    gout = rng.normal(size=shape + (d,)).astype(NP_DTYPES[dtype])
    opts = dict(padding_idx=padding_idx, max_norm=max_norm, norm_type=norm_type,
                scale_grad_by_freq=draw(st.booleans()))
    return dict(w=w, ids=ids, gout=gout, dtype=dtype, opts=opts)


def _torch(cfg):
    wt = to_torch(cfg["w"], cfg["dtype"], requires_grad=True)
    out = TF.embedding(to_torch(cfg["ids"].astype(np.int64)), wt, **cfg["opts"])
    out.backward(to_torch(cfg["gout"], cfg["dtype"]))
    return from_torch(out), from_torch(wt.grad), from_torch(wt)


def _check(cfg, out, grad, table, t_out, t_grad, t_table):
    renorm_ulp = 0 if cfg["opts"]["max_norm"] is None else tol.RENORM_ULP[cfg["dtype"]]
    assert out.shape == cfg["ids"].shape + (cfg["w"].shape[1],)
    assert ulp_distance(out, t_out) <= renorm_ulp
    assert ulp_distance(table, t_table) <= renorm_ulp
    v = cfg["w"].shape[0]
    counts = (np.bincount(cfg["ids"].reshape(-1), minlength=v)
              if cfg["opts"]["scale_grad_by_freq"] else None)
    assert within(grad, t_grad, grad_tolerance(tol.BACKEND, cfg["gout"], cfg["ids"], v, counts))


@SETTINGS
@given(configs())
def test_functional_matches_torch(cfg):
    t_out, t_grad, t_table = _torch(cfg)
    with jax.enable_x64(cfg["dtype"] == "float64"):
        (out, table), vjp = jax.vjp(
            lambda w: F.embed_and_renorm(jnp.asarray(cfg["ids"]), w, **cfg["opts"]),
            jnp.asarray(cfg["w"]),
        )
        (grad,) = vjp((jnp.asarray(cfg["gout"]), jnp.zeros_like(table)))
        _check(cfg, *map(np.asarray, (out, grad, table)), t_out, t_grad, t_table)


@SETTINGS
@given(configs(), st.sampled_from(["nnx", "linen"]))
def test_modules_match_torch(cfg, api):
    t_out, t_grad, t_table = _torch(cfg)
    with jax.enable_x64(cfg["dtype"] == "float64"):
        ids, gout, w = jnp.asarray(cfg["ids"]), jnp.asarray(cfg["gout"]), jnp.asarray(cfg["w"])
        if api == "nnx":
            model = jaxembed.Embed.from_pretrained(w, freeze=False, **cfg["opts"])

            def loss(m):
                out = m(ids)  # one forward, one renorm (persisted by nnx.grad), as torch
                return jnp.sum(out * gout), out

            grads, out = nnx.grad(loss, has_aux=True)(model)
            grad, table = grads["embedding"].get_value(), model.embedding.get_value()
        else:
            module = jaxembed.linen.Embed.from_pretrained(w, freeze=False, **cfg["opts"])
            params = module.init(jax.random.key(0), ids)["params"]

            def loss(params):
                out, new = module.apply({"params": params}, ids, mutable=["params"])
                return jnp.sum(out * gout), (out, new["params"]["embedding"])

            grads, (out, table) = jax.grad(loss, has_aux=True)(params)
            grad = grads["embedding"]
        _check(cfg, *map(np.asarray, (out, grad, table)), t_out, t_grad, t_table)
