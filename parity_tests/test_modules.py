"""jaxembed.Embed (NNX) and jaxembed.linen.Embed against torch.nn.Embedding."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

import jaxembed
import tolerances as tol
from conftest import TORCH_DEVICE, from_torch, to_torch, ulp_distance
from jaxembed import linen as jl

# ---------------------------------------------------------------------------------------------
# Training steps, one per API, all jitted (XLA contracts optax's p - lr*g into torch's FMA).
# ---------------------------------------------------------------------------------------------


def nnx_trainer(module, tx):
    opt = nnx.Optimizer(module, tx, wrt=nnx.Param)

    @nnx.jit
    def step(module, opt, ids, target):
        def loss_fn(m):
            return jnp.sum((m(ids) - target) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn)(module)
        opt.update(module, grads)
        return loss

    def run(ids, target):
        step(module, opt, jnp.asarray(ids), jnp.asarray(target))
        return np.asarray(module.embedding.get_value())

    return run


def linen_trainer(module, variables, tx):
    """Training with Linen: the renormed table comes back from the mutable ``apply`` and the
    optimizer updates it (torch's optimizer sees the weight its forward renormed in place)."""
    collection = jl.FROZEN_COLLECTION if module.freeze else "params"
    state = {"variables": variables, "opt": tx.init(variables.get("params", {}))}

    @jax.jit
    def step(variables, opt_state, ids, target):
        def loss_fn(params):
            out, mutated = module.apply(
                {**variables, "params": params}, ids, mutable=[collection]
            )
            return jnp.sum((out - target) ** 2), mutated

        (loss, mutated), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables.get("params", {})
        )
        variables = {**variables, **mutated}
        updates, opt_state = tx.update(grads, opt_state, variables.get("params", {}))
        params = optax.apply_updates(variables.get("params", {}), updates)
        return {**variables, "params": params} if params else variables, opt_state

    def run(ids, target):
        state["variables"], state["opt"] = step(
            state["variables"], state["opt"], jnp.asarray(ids), jnp.asarray(target)
        )
        return np.asarray(state["variables"][collection]["embedding"])

    return run


def torch_trainer(emb, make_opt):
    opt = make_opt(emb.parameters())

    def run(ids, target):
        opt.zero_grad()
        loss = ((emb(to_torch(ids)) - to_torch(target)) ** 2).sum()
        loss.backward()
        opt.step()
        return from_torch(emb.weight)

    return run


def _batches(v, d, steps, seed, padding_idx=None):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = rng.integers(0, v, size=(6, 7))
        if padding_idx is not None:
            ids[:, 0] = padding_idx
        yield ids, rng.normal(size=(6, 7, d)).astype(np.float32)


def _make(api, weights, freeze=False, **options):
    if api == "nnx":
        return jaxembed.Embed.from_pretrained(weights, freeze=freeze, **options)
    module = jl.Embed.from_pretrained(weights, freeze=freeze, **options)
    return module, module.init(jax.random.key(0), jnp.zeros((1,), jnp.int32))


def _trainer(api, weights, tx, freeze=False, **options):
    made = _make(api, weights, freeze=freeze, **options)
    return nnx_trainer(made, tx) if api == "nnx" else linen_trainer(*made, tx)


# ---------------------------------------------------------------------------------------------
# Trajectories
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["nnx", "linen"])
@pytest.mark.parametrize(
    "options",
    [
        dict(padding_idx=0),
        dict(padding_idx=3, scale_grad_by_freq=True),
        dict(padding_idx=0, max_norm=1.0),
        dict(max_norm=1.3, norm_type=1.0, scale_grad_by_freq=True),
    ],
    ids=["padding", "padding+freq", "padding+max_norm", "max_norm_p1+freq"],
)
def test_sgd_trajectory_matches_torch(api, options):
    v, d, lr, steps = 12, 8, 0.5, 5
    torch.manual_seed(0)
    temb = torch.nn.Embedding(v, d, **options).to(TORCH_DEVICE)
    with torch.no_grad():
        temb.weight.mul_(1.5)  # norms well above max_norm so the renorm bites every step
    w0 = from_torch(temb.weight)
    ours = _trainer(api, w0, optax.sgd(lr), **options)
    theirs = torch_trainer(temb, lambda p: torch.optim.SGD(p, lr=lr))
    worst_ulp, worst_rel = 0, 0.0
    for ids, target in _batches(v, d, steps, seed=1, padding_idx=options.get("padding_idx")):
        got, want = ours(ids, target), theirs(ids, target)
        worst_ulp = max(worst_ulp, ulp_distance(got, want))
        worst_rel = max(worst_rel, tol.relative_to_table(got, want))
    exact = tol.GRAD_EXACT and "max_norm" not in options and not options.get("scale_grad_by_freq")
    if exact:
        assert worst_ulp == 0
    else:
        assert worst_rel <= tol.TRAJECTORY_EPS["sgd"], worst_rel
    if "max_norm" in options:
        assert not np.allclose(w0, got)  # it trained


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_frozen_table_never_changes_under_adamw(api):
    w0 = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    w0[0] = 1.0  # a non-zero padding row: weight decay would move it if it were trainable
    tx = optax.adamw(0.1, weight_decay=0.5)
    frozen = _trainer(api, w0, tx, freeze=True, padding_idx=0)
    trainable = _trainer(api, w0, tx, freeze=False, padding_idx=0)
    for ids, target in _batches(10, 4, 3, seed=2, padding_idx=0):
        np.testing.assert_array_equal(frozen(ids, target), w0)
        moved = trainable(ids, target)
    assert not np.array_equal(moved[0], w0[0])  # torch's AdamW moves a non-zero padding row too


def test_frozen_table_is_not_a_param():
    m = jaxembed.Embed.from_pretrained(np.ones((3, 2), np.float32))
    assert isinstance(m.embedding, jaxembed.FrozenParam)
    assert not jax.tree.leaves(nnx.state(m, nnx.Param))
    assert isinstance(jaxembed.Embed.from_pretrained(np.ones((3, 2)), freeze=False).embedding,
                      nnx.Param)
    lm = jl.Embed.from_pretrained(np.ones((3, 2), np.float32))
    variables = lm.init(jax.random.key(0), jnp.array([0]))
    assert set(variables) == {jl.FROZEN_COLLECTION}


@pytest.mark.parametrize("api", ["nnx", "linen"])
def test_max_norm_renorms_a_frozen_table_in_place(api):
    # torch renorms under no_grad whatever requires_grad says.
    w = np.full((4, 2), 3.0, np.float32)
    temb = torch.nn.Embedding.from_pretrained(to_torch(w), max_norm=1.0)
    temb(to_torch(np.array([2])))
    if api == "nnx":
        m = jaxembed.Embed.from_pretrained(w, max_norm=1.0)
        nnx.jit(lambda m, i: m(i))(m, jnp.array([2]))
        table = m.embedding.get_value()
    else:
        m = jl.Embed.from_pretrained(w, max_norm=1.0)
        variables = m.init(jax.random.key(0), jnp.array([0]))
        _, mutated = m.apply(variables, jnp.array([2]), mutable=[jl.FROZEN_COLLECTION])
        table = mutated[jl.FROZEN_COLLECTION]["embedding"]
    assert ulp_distance(np.asarray(table), from_torch(temb.weight)) <= tol.RENORM_ULP_F32[2.0]
    np.testing.assert_array_equal(np.asarray(table)[[0, 1, 3]], w[[0, 1, 3]])


def test_linen_immutable_apply_returns_renormed_rows_but_keeps_table():
    w = np.full((4, 2), 3.0, np.float32)
    m = jl.Embed.from_pretrained(w, freeze=False, max_norm=1.0)
    variables = m.init(jax.random.key(0), jnp.array([0]))
    np.testing.assert_array_equal(variables["params"]["embedding"], w)  # init does not renorm
    out = m.apply(variables, jnp.array([1]))
    assert abs(float(jnp.linalg.norm(out)) - 1.0) < 1e-6
    np.testing.assert_array_equal(variables["params"]["embedding"], w)


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


def test_default_init_is_standard_normal_with_zero_padding_row():
    m = jaxembed.Embed(2000, 64, padding_idx=-1, rngs=nnx.Rngs(0))
    table = np.asarray(m.embedding.get_value())
    assert m.padding_idx == 1999
    assert not table[1999].any()
    assert abs(table[:1999].std() - 1.0) < 0.01  # torch: N(0, 1); flax: 1/sqrt(64)
    lm = jl.Embed(2000, 64, padding_idx=5)
    lt = lm.init(jax.random.key(0), jnp.array([0]))["params"]["embedding"]
    assert not np.asarray(lt)[5].any() and abs(float(lt.std()) - 1.0) < 0.01


def test_from_pretrained_keeps_the_padding_row():
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    t = torch.nn.Embedding.from_pretrained(torch.from_numpy(w), padding_idx=1)
    assert t.weight[1].tolist() == [2.0, 3.0]
    m = jaxembed.Embed.from_pretrained(w, padding_idx=1)
    np.testing.assert_array_equal(m.embedding.get_value(), w)
    lm = jl.Embed.from_pretrained(w, padding_idx=1)
    np.testing.assert_array_equal(
        lm.init(jax.random.key(0), jnp.array([0]))["frozen"]["embedding"], w
    )


@pytest.mark.parametrize("shape", [(4,), (2, 2, 2)])
def test_from_pretrained_needs_2d(shape):
    with pytest.raises(AssertionError, match="Embeddings parameter is expected to be 2-dimensional"):
        torch.nn.Embedding.from_pretrained(torch.zeros(shape))
    for cls in (jaxembed.Embed, jl.Embed):
        with pytest.raises(AssertionError,
                           match="Embeddings parameter is expected to be 2-dimensional"):
            cls.from_pretrained(np.zeros(shape, np.float32))


def test_from_pretrained_integer_table():
    w = np.arange(6).reshape(3, 2)
    with pytest.raises(RuntimeError, match="Only Tensors of floating point"):
        torch.nn.Embedding.from_pretrained(torch.from_numpy(w), freeze=False)
    with pytest.raises(RuntimeError, match="Only Tensors of floating point"):
        jaxembed.Embed.from_pretrained(w, freeze=False)
    np.testing.assert_array_equal(jaxembed.Embed.from_pretrained(w)(jnp.array([2, 0])), w[[2, 0]])


def test_from_pretrained_copies_the_array():
    # Deliberate difference: torch's from_pretrained shares the caller's storage, so its renorm
    # (and optimizer steps) write into the caller's tensor; jaxembed copies the array.
    w = np.arange(8, dtype=np.float32).reshape(4, 2)
    original = w.copy()
    tw = torch.from_numpy(w.copy())
    torch.nn.Embedding.from_pretrained(tw, max_norm=1.0)(torch.tensor([3]))
    assert float(torch.linalg.norm(tw[3])) <= 1.0 + 1e-6  # torch renormed the caller's tensor
    m = jaxembed.Embed.from_pretrained(w, max_norm=1.0)
    m(jnp.array([3]))
    np.testing.assert_array_equal(w, original)  # the caller's array is untouched
    w[0, 0] = 100.0
    np.testing.assert_array_equal(m.embedding.get_value()[0], original[0])  # and not aliased


@pytest.mark.parametrize("padding_idx", [4, -5])
def test_constructor_validates_padding_idx(padding_idx):
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        torch.nn.Embedding(4, 2, padding_idx=padding_idx)
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        jaxembed.Embed(4, 2, padding_idx=padding_idx, rngs=nnx.Rngs(0))
    with pytest.raises(AssertionError, match="Padding_idx must be within num_embeddings"):
        jl.Embed(4, 2, padding_idx=padding_idx)


def test_modules_raise_for_out_of_range_ids():
    m = jaxembed.Embed(4, 2, rngs=nnx.Rngs(0))
    with pytest.raises(IndexError, match="index out of range in self"):
        m(jnp.array([4]))
    lm = jl.Embed(4, 2)
    variables = lm.init(jax.random.key(0), jnp.array([0]))
    with pytest.raises(IndexError, match="index out of range in self"):
        lm.apply(variables, jnp.array([-1]))


# ---------------------------------------------------------------------------------------------
# dtypes and attend
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("param_dtype", [jnp.float16, jnp.bfloat16, jnp.float32])
def test_dtype_casts_rows_not_table(param_dtype):
    m = jaxembed.Embed(6, 3, dtype=jnp.float32, param_dtype=param_dtype, rngs=nnx.Rngs(1))
    table = m.embedding.get_value()
    assert table.dtype == param_dtype
    out = m(jnp.array([[5, 1]]))
    assert out.dtype == jnp.float32
    np.testing.assert_array_equal(out, np.asarray(table).astype(np.float32)[[[5, 1]]])
    lm = jl.Embed(6, 3, dtype=jnp.bfloat16, param_dtype=param_dtype)
    variables = lm.init(jax.random.key(0), jnp.array([0]))
    assert variables["params"]["embedding"].dtype == param_dtype
    assert lm.apply(variables, jnp.array([2])).dtype == jnp.bfloat16


def test_attend_matches_tied_logits():
    w = np.random.default_rng(3).normal(size=(7, 4)).astype(np.float32)
    q = np.random.default_rng(4).normal(size=(2, 4)).astype(np.float32)
    want = from_torch(to_torch(q) @ to_torch(w).T)
    m = jaxembed.Embed.from_pretrained(w)
    np.testing.assert_allclose(m.attend(jnp.asarray(q)), want, rtol=1e-6, atol=1e-6)
    lm = jl.Embed.from_pretrained(w)
    variables = lm.init(jax.random.key(0), jnp.array([0]))
    np.testing.assert_allclose(
        lm.apply(variables, jnp.asarray(q), method=lm.attend), want, rtol=1e-6, atol=1e-6
    )
