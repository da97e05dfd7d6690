"""jaxembed.Embed / jaxembed.linen.Embed as drop-ins for flax.nnx.Embed / flax.linen.Embed.

What flax's own Embed tests check (flax 0.12.8: tests/nnx/nn/embed_test.py,
tests/linen/linen_linear_test.py test_embed*, tests/nnx/nn/linear_test.py TestLayersSameGraph and
TestLayersParamsMetadata, tests/nnx/graph_utils_test.py test_tied_weights_example,
tests/nnx/spmd_test.py test_out_sharding_embed*, tests/nnx/bridge/wrappers_test.py
test_to_linen_*), run on jaxembed's modules and compared with flax's: the in-range halves must
match flax (bit for bit where flax's test compares arrays), and every by-design difference
(torch's rules: out-of-range and negative ids raise, the default init, padding_idx, the gradient
accumulated in param_dtype) is asserted explicitly, so a change on either side shows up here.
docs/migrating-from-flax.md lists the same differences.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import errors, linen, nnx
from flax.linen import dtypes as linen_dtypes
from flax.nnx.nn import dtypes as nnx_dtypes
from flax.nnx.nn import linear as nnx_linear

import jaxembed
from conftest import pairwise
from jaxembed import linen as jl

HERE = Path(__file__).parent


def _bits_equal(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# ---------------------------------------------------------------------------------------------
# Constructor keywords and attributes
# ---------------------------------------------------------------------------------------------


def test_nnx_accepts_every_flax_keyword_with_flax_defaults():
    flax_params = inspect.signature(nnx.Embed.__init__).parameters
    ours = inspect.signature(jaxembed.Embed.__init__).parameters
    for name, p in flax_params.items():
        assert name in ours, name
        assert ours[name].kind == p.kind, name  # keyword-only where flax's is
        if name == "embedding_init":  # by design: torch's N(0, 1)
            assert ours[name].default is jaxembed.default_embed_init
            assert p.default is nnx_linear.default_embed_init
        else:
            assert ours[name].default is p.default or ours[name].default == p.default, name
    assert ours["promote_dtype"].default is nnx_dtypes.promote_dtype


def test_linen_fields_are_flax_fields_in_flax_order_then_torch_keyword_only():
    flax_fields = [f for f in dataclasses.fields(linen.Embed) if f.name not in ("parent", "name")]
    ours = {f.name: f for f in dataclasses.fields(jl.Embed)}
    assert [f.name for f in dataclasses.fields(jl.Embed)][: len(flax_fields)] == [
        f.name for f in flax_fields
    ]
    for f in flax_fields:
        if f.name == "embedding_init":  # by design: torch's N(0, 1)
            assert ours[f.name].default is jaxembed.default_embed_init
        else:
            assert ours[f.name].default is f.default or ours[f.name].default == f.default, f.name
        assert not ours[f.name].kw_only, f.name
    for name in ("padding_idx", "max_norm", "norm_type", "scale_grad_by_freq", "freeze", "sparse"):
        assert ours[name].kw_only, name
    # Positional arguments mean what they mean in flax; torch's options cannot be positional.
    assert jl.Embed(5, 3, jnp.float16, jnp.bfloat16).dtype == linen.Embed(5, 3, jnp.float16).dtype
    assert jl.Embed(5, 3, jnp.float16, jnp.bfloat16).param_dtype == jnp.bfloat16
    with pytest.raises(TypeError):
        jl.Embed(5, 3, None, jnp.float32, jaxembed.default_embed_init,
                 linen_dtypes.promote_dtype, 0)


@pytest.mark.parametrize("dtype", [None, jnp.float32, jnp.float16])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16])
def test_nnx_attributes_are_flax_attributes(dtype, param_dtype):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    theirs, ours = nnx.Embed(6, 4, **kw), jaxembed.Embed(6, 4, **kw)
    for name in ("num_embeddings", "features", "dtype", "param_dtype", "promote_dtype"):
        assert getattr(ours, name) == getattr(theirs, name), name
    # flax: dtype None -> the table's dtype, held in .dtype
    assert ours.dtype == (param_dtype if dtype is None else dtype)
    assert type(ours.embedding) is type(theirs.embedding) is nnx.Param
    assert ours.embedding.shape == theirs.embedding.shape
    assert ours.embedding.dtype == theirs.embedding.dtype


def test_linen_attributes_and_bound_embedding_are_flax_ones():
    ids = jnp.array([[0, 3, 5]])
    theirs = linen.Embed(6, 4, param_dtype=jnp.bfloat16,
                         embedding_init=jaxembed.flax_embed_init)
    ours = jl.Embed(6, 4, param_dtype=jnp.bfloat16, embedding_init=jaxembed.flax_embed_init)
    v_theirs, v_ours = theirs.init(jax.random.key(0), ids), ours.init(jax.random.key(0), ids)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_theirs)
    assert ours.dtype is None and theirs.dtype is None  # Linen keeps None (NNX resolves it)
    assert ours.promote_dtype is theirs.promote_dtype is linen_dtypes.promote_dtype
    assert _bits_equal(ours.bind(v_ours).embedding, theirs.bind(v_theirs).embedding)
    assert hash(jl.Embed(2, 3)) == hash(jl.Embed(2, 3))  # flax's test_embed_hash
    assert hash(jl.Embed(3, 4)) != hash(jl.Embed(2, 3))


# ---------------------------------------------------------------------------------------------
# Init: torch's N(0, 1) by default (by design); flax's initializer in one keyword
# ---------------------------------------------------------------------------------------------


def test_flax_embed_init_gives_flax_table_bit_for_bit():
    ids = jnp.array([0, 1])
    for param_dtype in (jnp.float32, jnp.bfloat16):
        theirs = nnx.Embed(50, 16, param_dtype=param_dtype, rngs=nnx.Rngs(7))
        ours = jaxembed.Embed(50, 16, param_dtype=param_dtype,
                              embedding_init=jaxembed.flax_embed_init, rngs=nnx.Rngs(7))
        assert _bits_equal(ours.embedding.get_value(), theirs.embedding.get_value())
        lt = linen.Embed(50, 16, param_dtype=param_dtype).init(jax.random.key(7), ids)
        lo = jl.Embed(50, 16, param_dtype=param_dtype,
                      embedding_init=jaxembed.flax_embed_init).init(jax.random.key(7), ids)
        assert _bits_equal(lo["params"]["embedding"], lt["params"]["embedding"])


def test_default_init_is_torch_normal_not_flax_variance_scaling():
    # By design: torch's reset_parameters draws N(0, 1); flax's std is 1/sqrt(features).
    d = 64
    ours = np.asarray(jaxembed.Embed(4000, d, rngs=nnx.Rngs(0)).embedding.get_value())
    theirs = np.asarray(nnx.Embed(4000, d, rngs=nnx.Rngs(0)).embedding.get_value())
    assert abs(ours.std() - 1.0) < 0.01
    assert abs(theirs.std() - 1 / np.sqrt(d)) < 0.01 / np.sqrt(d)


def test_padding_idx_is_torchs_rule_only_when_asked():
    # Without padding_idx (flax has none) the table is embedding_init's draw, as flax's.
    init = jaxembed.flax_embed_init
    flax_table = nnx.Embed(6, 4, rngs=nnx.Rngs(1)).embedding.get_value()
    plain = jaxembed.Embed(6, 4, embedding_init=init, rngs=nnx.Rngs(1))
    padded = jaxembed.Embed(6, 4, embedding_init=init, padding_idx=2, rngs=nnx.Rngs(1))
    assert _bits_equal(plain.embedding.get_value(), flax_table)
    want = np.asarray(flax_table).copy()
    want[2] = 0  # torch: the padding row is zeroed at init
    assert _bits_equal(padded.embedding.get_value(), want)
    ids = jnp.array([2, 3, 2])
    grad = nnx.grad(lambda m: jnp.sum(m(ids)))(padded)["embedding"].get_value()
    assert np.all(np.asarray(grad)[2] == 0) and np.all(np.asarray(grad)[3] == 1)


# ---------------------------------------------------------------------------------------------
# NNX <-> Linen equivalence (flax's tests/nnx/nn/embed_test.py), and against flax's modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("input_dtype", [jnp.int16, jnp.int32])
@pytest.mark.parametrize("num_embeddings", [1, 7])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float16])
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.float16])
def test_nnx_linen_equivalence(input_dtype, num_embeddings, dtype, param_dtype):
    key, rngs = jax.random.key(42), nnx.Rngs(42)
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    ours_nnx = nnx.eval_shape(lambda r: jaxembed.Embed(num_embeddings, 32, **kw, rngs=r), rngs)
    ours_linen = jl.Embed(num_embeddings, 32, **kw)
    flax_nnx = nnx.eval_shape(lambda r: nnx.Embed(num_embeddings, 32, **kw, rngs=r), rngs)
    x = jnp.arange(num_embeddings, dtype=input_dtype)
    variables = ours_linen.init(key, x)
    ours_nnx.embedding.set_value(variables["params"]["embedding"])
    flax_nnx.embedding.set_value(variables["params"]["embedding"])

    # In range: flax's assertion (NNX == Linen), and both equal flax's rows.
    out_nnx, out_linen, out_flax = ours_nnx(x), ours_linen.apply(variables, x), flax_nnx(x)
    assert isinstance(out_linen, jax.Array)
    assert _bits_equal(out_nnx, out_linen)
    assert _bits_equal(out_nnx, out_flax)

    # Out of range (flax's second half, ids = 10): flax returns NaN rows, or, for a one-row
    # table, broadcasts that row whatever the id; torch and jaxembed raise.
    x = jnp.ones((10,), dtype=input_dtype) * 10
    flax_out = np.asarray(flax_nnx(x))
    if num_embeddings == 1:
        assert _bits_equal(flax_out, np.broadcast_to(out_flax[0], flax_out.shape))
    else:
        assert np.all(np.isnan(flax_out))
    with pytest.raises(IndexError, match="index out of range in self"):
        ours_nnx(x)
    with pytest.raises(IndexError, match="index out of range in self"):
        ours_linen.apply(variables, x)


def test_out_of_range_and_negative_ids_under_jit():
    # Under jit ids cannot raise: flax and jaxembed both give NaN rows for ids >= V, but flax
    # wraps negative ids to rows from the end, where jaxembed gives NaN (never another row).
    theirs = nnx.Embed(4, 3, rngs=nnx.Rngs(0))
    ours = jaxembed.Embed(4, 3, embedding_init=jaxembed.flax_embed_init, rngs=nnx.Rngs(0))
    ids = jnp.array([1, 4, -1])
    out_theirs = np.asarray(nnx.jit(lambda m, i: m(i))(theirs, ids))
    out_ours = np.asarray(nnx.jit(lambda m, i: m(i))(ours, ids))
    assert _bits_equal(out_ours[0], out_theirs[0])
    assert np.all(np.isnan(out_theirs[1])) and np.all(np.isnan(out_ours[1]))
    assert _bits_equal(out_theirs[2], theirs.embedding.get_value()[3])
    assert np.all(np.isnan(out_ours[2]))
    with pytest.raises(IndexError, match="index out of range in self"):
        ours(jnp.array([-1]))  # concrete ids raise, as torch


def test_non_integer_ids_raise_type_error_where_flax_raises_value_error():
    theirs = nnx.Embed(4, 3, rngs=nnx.Rngs(0))
    ours = jaxembed.Embed(4, 3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="Input type must be an integer"):
        theirs(jnp.array([1.0]))
    with pytest.raises(TypeError, match="integer dtype"):
        ours(jnp.array([1.0]))


# ---------------------------------------------------------------------------------------------
# flax's linen_linear_test.py: test_embed, test_embed_numpy
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("xp", [jnp, np], ids=["jax", "numpy"])
def test_linen_embed_custom_init_and_attend(xp):
    x = jnp.arange(4)[None]
    dummy = xp.broadcast_to(xp.arange(4)[..., None], (4, 3)).astype(xp.float32)
    for cls in (linen.Embed, jl.Embed):
        module = cls(num_embeddings=4, features=3, embedding_init=lambda k, s, d: dummy)
        y, variables = module.init_with_output(dict(params=jax.random.key(0)), x)
        np.testing.assert_array_equal(y, dummy[None])
        z = module.apply(variables, jnp.ones((3,)), method=module.attend)
        np.testing.assert_array_equal(z, 3.0 * jnp.arange(4))


def test_linen_wrong_table_shape_raises_flax_error():
    ids = jnp.array([5])
    table = {"params": {"embedding": jnp.zeros((6, 2))}}
    messages = []
    for module in (linen.Embed(4, 2), jl.Embed(4, 2)):
        with pytest.raises(errors.ScopeParamShapeError) as info:
            module.apply(table, ids)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


# ---------------------------------------------------------------------------------------------
# Graph and state structure (graph_utils_test, linear_test.TestLayersSameGraph)
# ---------------------------------------------------------------------------------------------


def test_state_structure_is_flax_structure():
    theirs = nnx.Embed(5, 3, rngs=nnx.Rngs(0))
    ours = jaxembed.Embed(5, 3, rngs=nnx.Rngs(0))
    flat = lambda m: [(path, type(v)) for path, v in nnx.to_flat_state(nnx.state(m))]
    assert flat(ours) == flat(theirs) == [(("embedding",), nnx.Param)]
    # nnx.split / merge round trip keeps the module working
    graphdef, state = nnx.split(ours)
    merged = nnx.merge(graphdef, state)
    assert _bits_equal(merged(jnp.array([4, 0])), ours(jnp.array([4, 0])))


def test_graphdef_does_not_depend_on_the_init():
    z = jaxembed.Embed(2, 4, embedding_init=nnx.initializers.zeros, rngs=nnx.Rngs(0))
    o = jaxembed.Embed(2, 4, embedding_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
    assert nnx.graphdef(z) == nnx.graphdef(o)


def test_tied_weights_example():
    class LinearTranspose(nnx.Module):
        def __init__(self, dout, din, *, rngs):
            self.kernel = nnx.Param(nnx.initializers.lecun_normal()(rngs(), (dout, din)))

        def __call__(self, x):
            return x @ self.kernel.T

    class Encoder(nnx.Module):
        def __init__(self, *, rngs):
            self.embed = jaxembed.Embed(10, 2, rngs=rngs)
            self.linear_out = LinearTranspose(10, 2, rngs=rngs)
            self.linear_out.kernel = self.embed.embedding  # tie the weights

        def __call__(self, x):
            return self.linear_out(self.embed(x))

    model = Encoder(rngs=nnx.Rngs(0))
    _, state = nnx.compat.split(model)
    assert len(nnx.to_flat_state(state)) == 1
    x = jax.random.randint(jax.random.key(0), (2,), 0, 10)
    assert model(x).shape == (2, 10)


# ---------------------------------------------------------------------------------------------
# Metadata and sharding annotations (linear_test.TestLayersParamsMetadata, spmd_test)
# ---------------------------------------------------------------------------------------------


def test_embedding_metadata_sets_out_sharding():
    mesh = jax.make_mesh((1, 1), ("din", "dout"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    with jax.set_mesh(mesh):
        meta = {"embedding_metadata": {"out_sharding": ("din", "dout")}}
        theirs = nnx.Embed(2, 4, **meta, rngs=nnx.Rngs(0))
        ours = jaxembed.Embed(2, 4, **meta, rngs=nnx.Rngs(0))
        assert ours.embedding.out_sharding == theirs.embedding.out_sharding == ("din", "dout")
        assert ours.embedding.get_value().sharding == theirs.embedding.get_value().sharding
        # A vocab (row) split is looked up vocab-parallel, with flax's rows.
        rows = {"embedding_metadata": {"out_sharding": ("din", None)},
                "embedding_init": jaxembed.flax_embed_init}
        theirs = nnx.Embed(6, 4, **rows, rngs=nnx.Rngs(0))
        ours = jaxembed.Embed(6, 4, **rows, rngs=nnx.Rngs(0))
        ids = jnp.array([[5, 0, 2]])
        assert _bits_equal(ours(ids), theirs(ids))


def test_nnx_with_partitioning_init_keeps_metadata_and_padding_row():
    # Regression: nnx.with_partitioning(init) returns an nnx.VariableMetadata box; zeroing the
    # padding row raised AttributeError ('VariableMetadata' object has no attribute 'at').
    mesh = jax.make_mesh((1,), ("model",), axis_types=(jax.sharding.AxisType.Auto,))
    with jax.set_mesh(mesh):
        init = nnx.with_partitioning(jaxembed.flax_embed_init, ("model", None))
        theirs = nnx.Embed(6, 4, embedding_init=init, rngs=nnx.Rngs(0))
        ours = jaxembed.Embed(6, 4, embedding_init=init, padding_idx=1, rngs=nnx.Rngs(0))
        assert ours.embedding.out_sharding == theirs.embedding.out_sharding == ("model", None)
        want = np.asarray(theirs.embedding.get_value()).copy()
        want[1] = 0
        assert _bits_equal(ours.embedding.get_value(), want)


_SPMD_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax, jax.numpy as jnp
    from jax.sharding import AxisType, PartitionSpec as P, reshard
    from flax import nnx
    import jaxembed

    mesh = jax.make_mesh((2, 2), ("X", "Y"), axis_types=(AxisType.Explicit,) * 2)
    out = {}
    with jax.set_mesh(mesh):
        for name, cls in (("flax", nnx.Embed), ("jaxembed", jaxembed.Embed)):
            emb = reshard(cls(num_embeddings=8, features=4, rngs=nnx.Rngs(0)), P("X"))
            ids = reshard(jnp.arange(4), P("Y"))
            try:
                out[name, "ids_sharded"] = str(jax.typeof(emb(ids)))
            except Exception as e:
                out[name, "ids_sharded"] = type(e).__name__
            out[name, "out_sharding"] = str(jax.typeof(emb(ids, out_sharding=P("X"))))
            q = reshard(jnp.arange(8).reshape(2, 4).astype(jnp.float32), P("X", None))
            layer = cls(num_embeddings=10, features=4, rngs=nnx.Rngs(0))
            out[name, "attend"] = str(jax.typeof(layer.attend(q)))
            out[name, "attend_out"] = str(jax.typeof(layer.attend(q, out_sharding=P("X", "Y"))))
    print(repr(out))
""")


@pytest.fixture(scope="module")
def spmd():
    """flax's spmd_test Embed cases on a 2x2 Explicit mesh of host devices, in a subprocess
    (XLA_FLAGS must be set before JAX starts; this process runs single-device)."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", _SPMD_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import ast

    return ast.literal_eval(proc.stdout.strip().splitlines()[-1])


def test_out_sharding_embed_and_attend_match_flax(spmd):
    assert spmd["jaxembed", "out_sharding"] == spmd["flax", "out_sharding"] == "float32[4@X,4]"
    assert spmd["jaxembed", "attend"] == spmd["flax", "attend"] == "float32[2@X,10]"
    assert spmd["jaxembed", "attend_out"] == spmd["flax", "attend_out"] == "float32[2@X,10@Y]"


def test_row_sharded_table_with_ids_sharded_elsewhere(spmd):
    # flax raises (jnp.take cannot resolve the gather's output sharding, the test's
    # assertRaises); jaxembed looks the row-sharded table up vocab-parallel and lays the rows
    # out as the ids.
    assert spmd["flax", "ids_sharded"] == "ShardingTypeError"
    assert spmd["jaxembed", "ids_sharded"] == "float32[4@Y,4]"


# ---------------------------------------------------------------------------------------------
# nnx.bridge (bridge/wrappers_test.py)
# ---------------------------------------------------------------------------------------------


def test_bridge_to_linen_method_call():
    class Foo(linen.Module):
        def setup(self):
            self.embedding = nnx.bridge.to_linen(jaxembed.Embed, 2, 3)

        def __call__(self, x):
            return self.embedding(x)

        def attend(self, x):
            return self.embedding.attend(x)

    module = Foo()
    x, z = jnp.ones((1,), dtype=jnp.int32), jnp.ones((1, 3))
    y, params = module.init_with_output(jax.random.key(0), x)
    assert y.shape == (1, 3)
    assert params["params"]["embedding"]["embedding"].shape == (2, 3)
    assert module.apply(params, z, method="attend").shape == (1, 2)


def test_bridge_to_linen_nnx_method_arg():
    module = nnx.bridge.to_linen(jaxembed.Embed, 2, 3)
    x, z = jnp.ones((1,), dtype=jnp.int32), jnp.ones((1, 3))
    y, params = module.init_with_output(jax.random.key(0), x)
    assert y.shape == (1, 3)
    assert params["params"]["embedding"].shape == (2, 3)
    assert module.apply(params, z, nnx_method="attend").shape == (1, 2)


def test_bridge_keeps_max_norm_write_back_in_mutable_params():
    module = nnx.bridge.to_linen(jaxembed.Embed, 4, 3, max_norm=0.5)
    variables = module.init(jax.random.key(0), jnp.array([0]))
    table = np.asarray(variables["params"]["embedding"])
    out, mutated = module.apply(variables, jnp.array([1, 2]), mutable=["params"])
    new = np.asarray(mutated["params"]["embedding"])
    assert np.all(np.linalg.norm(table[1:3], axis=1) > 0.5)  # both rows need a renorm
    np.testing.assert_allclose(np.linalg.norm(new[1:3], axis=1), 0.5, rtol=1e-6)
    assert _bits_equal(new[[0, 3]], table[[0, 3]])
    assert _bits_equal(out, new[1:3])


# ---------------------------------------------------------------------------------------------
# dtype promotion: the lookup and attend (flax's promote_dtype, called as flax calls it)
# ---------------------------------------------------------------------------------------------

# Every pair of (table dtype, module dtype, query dtype) values, in 9 configurations.
PROMOTION = [
    (row["param_dtype"], row["dtype"], row["query_dtype"])
    for row in pairwise(
        param_dtype=[jnp.float32, jnp.bfloat16, jnp.float16],
        dtype=[None, jnp.float32, jnp.bfloat16],
        query_dtype=[jnp.float32, jnp.bfloat16, jnp.int32],
    )
]


def _dtype_id(p):
    return "-".join(getattr(d, "__name__", str(d)) for d in p)


@pytest.mark.parametrize("param_dtype,dtype,query_dtype", PROMOTION, ids=map(_dtype_id, PROMOTION))
def test_nnx_promotion_matches_flax(param_dtype, dtype, query_dtype):
    kw = dict(dtype=dtype, param_dtype=param_dtype, embedding_init=jaxembed.flax_embed_init)
    theirs = nnx.Embed(9, 8, **kw, rngs=nnx.Rngs(3))
    ours = jaxembed.Embed(9, 8, **kw, rngs=nnx.Rngs(3))
    ids = jnp.array([[8, 0, 3, 3]])
    assert _bits_equal(ours(ids), theirs(ids))
    query = (jax.random.normal(jax.random.key(1), (2, 8)) * 3).astype(query_dtype)
    assert _bits_equal(ours.attend(query), theirs.attend(query))


@pytest.mark.parametrize("param_dtype,dtype,query_dtype", PROMOTION, ids=map(_dtype_id, PROMOTION))
def test_linen_promotion_matches_flax(param_dtype, dtype, query_dtype):
    kw = dict(dtype=dtype, param_dtype=param_dtype, embedding_init=jaxembed.flax_embed_init)
    ids = jnp.array([[8, 0, 3, 3]])
    theirs, ours = linen.Embed(9, 8, **kw), jl.Embed(9, 8, **kw)
    variables = theirs.init(jax.random.key(3), ids)
    assert _bits_equal(ours.apply(variables, ids), theirs.apply(variables, ids))
    query = (jax.random.normal(jax.random.key(1), (2, 8)) * 3).astype(query_dtype)
    want = theirs.apply(variables, query, method="attend")
    assert _bits_equal(ours.apply(variables, query, method="attend"), want)


def test_attend_on_a_bfloat16_table():
    # NNX resolves dtype None to the table's dtype, so attend returns bfloat16 (flax's NNX);
    # Linen keeps None and promotes the operands: float32 query -> float32 logits (flax's Linen).
    query = jnp.ones((2, 4), jnp.float32)
    m = jaxembed.Embed(5, 4, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert m.attend(query).dtype == nnx.Embed(5, 4, param_dtype=jnp.bfloat16,
                                              rngs=nnx.Rngs(0)).attend(query).dtype == jnp.bfloat16
    lm = jl.Embed(5, 4, param_dtype=jnp.bfloat16)
    variables = lm.init(jax.random.key(0), jnp.array([0]))
    assert lm.apply(variables, query, method="attend").dtype == jnp.float32


def test_custom_promote_dtype_is_called_as_flax_calls_it():
    """Same calls (arguments' count and dtypes, dtype=, inexact=) as flax's; the lookup's
    argument is the gathered rows instead of the whole table (by design), so its value equals
    flax's for an elementwise promotion."""

    def recorder(calls, base, variadic):
        def promote(*args, dtype=None, inexact=True):
            arrays = args if variadic else args[0]
            calls.append(([jnp.asarray(a).dtype for a in arrays], dtype, inexact))
            # An elementwise promotion that ignores ``dtype``: always bfloat16.
            return base(*arrays, dtype=jnp.bfloat16) if variadic else base(
                arrays, dtype=jnp.bfloat16)
        return promote

    ids, query = jnp.array([[4, 1, 1]]), jnp.ones((3, 6), jnp.float32)
    calls = {}
    outs = {}
    for name, cls in (("flax", nnx.Embed), ("ours", jaxembed.Embed)):
        calls[name] = []
        m = cls(5, 6, embedding_init=jaxembed.flax_embed_init, rngs=nnx.Rngs(0),
                promote_dtype=recorder(calls[name], nnx_dtypes.promote_dtype, False))
        outs[name] = (m(ids), m.attend(query))
    assert calls["ours"] == calls["flax"] == [
        ([jnp.float32], jnp.float32, False), ([jnp.float32, jnp.float32], jnp.float32, True)]
    assert all(_bits_equal(a, b) for a, b in zip(outs["ours"], outs["flax"]))
    assert outs["ours"][0].dtype == jnp.bfloat16

    for name, cls in (("flax", linen.Embed), ("ours", jl.Embed)):
        calls[name] = []
        m = cls(5, 6, embedding_init=jaxembed.flax_embed_init,
                promote_dtype=recorder(calls[name], linen_dtypes.promote_dtype, True))
        variables = m.init(jax.random.key(0), ids)
        calls[name].clear()
        outs[name] = (m.apply(variables, ids), m.apply(variables, query, method="attend"))
    assert calls["ours"] == calls["flax"] == [
        ([jnp.float32], None, False), ([jnp.float32, jnp.float32], None, True)]
    assert all(_bits_equal(a, b) for a, b in zip(outs["ours"], outs["flax"]))


def test_gradient_is_flax_gradient_in_float32_and_accumulated_in_param_dtype():
    ids = jnp.array([[1, 3, 1, 1, 0, 3]])
    g = jax.random.normal(jax.random.key(5), ids.shape + (4,))

    def table_grad(m):
        return np.asarray(nnx.grad(lambda m: jnp.sum(m(ids).astype(jnp.float32) * g))(m)[
            "embedding"].get_value())

    kw = dict(embedding_init=jaxembed.flax_embed_init, rngs=nnx.Rngs(0))
    # Same dtype: the same scatter-add, bit for bit.
    assert _bits_equal(table_grad(jaxembed.Embed(5, 4, **kw)), table_grad(nnx.Embed(5, 4, **kw)))
    # dtype=float16 over a float32 table: flax casts the table, so its gradient is summed in
    # float16; jaxembed casts the rows, so the sum runs in float32 (the table's dtype) over the
    # float16-rounded cotangents.
    kw["dtype"] = jnp.float16
    ours, theirs = table_grad(jaxembed.Embed(5, 4, **kw)), table_grad(nnx.Embed(5, 4, **kw))
    cot = np.asarray(g.astype(jnp.float16)).reshape(-1, 4)
    want32, want16 = np.zeros((5, 4), np.float32), np.zeros((5, 4), np.float16)
    np.add.at(want32, np.asarray(ids).ravel(), cot.astype(np.float32))
    np.add.at(want16, np.asarray(ids).ravel(), cot)
    assert _bits_equal(ours, want32)
    assert _bits_equal(theirs, want16.astype(np.float32))
    assert not _bits_equal(ours, theirs)


def test_linen_random_init_needs_the_params_rng():
    # Regression: without a "params" RNG the modules drew their table from a fixed key(0)
    # (every such table in a model got the same draw); flax raises InvalidRngError.
    ids = jnp.array([[1]])
    for module in (linen.Embed(4, 2), jl.Embed(4, 2), jl.EmbeddingBag(4, 2)):
        with pytest.raises(errors.InvalidRngError):
            module.init({}, ids)
    # A pretrained table needs no key.
    table = np.arange(6, dtype=np.float32).reshape(3, 2)
    for cls in (jl.Embed, jl.EmbeddingBag):
        variables = cls.from_pretrained(table).init({}, ids)
        assert _bits_equal(variables[jl.FROZEN_COLLECTION]["embedding"], table)
