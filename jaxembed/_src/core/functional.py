"""The functional core: every semantic rule of torch's embedding lives here, once.

torch reference: ``torch.nn.functional.embedding`` and ``torch.embedding_renorm_`` (2.13,
``aten/src/ATen/native/Embedding.cpp``). The modules in ``nnx_embed.py`` and ``linen_embed.py``
only hold the table and delegate to the functions below.

Rules, in the order torch applies them:

1. ``max_norm``: before the lookup, every row that ``input`` references (duplicates once, the
   padding row included) whose ``norm_type``-norm exceeds ``max_norm`` is scaled by
   ``max_norm / (norm + 1e-7)``, the scale rounded to the table's dtype. torch does this in place,
   under ``no_grad``: the lookup returns the renormed rows and the gradient is NOT multiplied by
   the scale. Here the lookup returns the renormed rows with a straight-through gradient, and
   ``embedding_renorm`` / the modules return or store the renormed table.
2. The lookup is a gather, bit-exact for every dtype.
3. The gradient w.r.t. the table is the scatter-add of the output gradient; positions equal to
   ``padding_idx`` contribute zero, and with ``scale_grad_by_freq`` each position's gradient is
   divided by the number of times its id occurs in the whole input (padding positions counted).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed._src.core import dtypes, validation

# torch adds this to the norm before dividing (Embedding.cpp, embedding_renorm_cpu_).
RENORM_EPS = 1e-7


# ---------------------------------------------------------------------------------------------
# The data path of a lookup, top to bottom: validate -> renorm (max_norm) -> gather -> custom
# gradient (padding_idx, scale_grad_by_freq); the public functions at the end compose them.
# Row-sharded tables take the same path with ``jaxembed._src.core.sharding``'s gather plugged
# into the gradient rule (``_GradRule.layout``); unsharded tables never go through it.
# ---------------------------------------------------------------------------------------------


# 1. Validate: torch's argument checks (``validation``), before any cast of the ids.


def _prepare(input, weight, padding_idx, sparse=False):
    weight = validation.table(weight, "weight")
    validation.check_weight(weight)
    if sparse:
        # The table gets no dense gradient: a sparse optimizer applies the row gradients
        # (see jaxembed.sparse).
        weight = jax.lax.stop_gradient(weight)
    num_embeddings = weight.shape[0]
    padding_idx = validation.normalize_padding_idx(padding_idx, num_embeddings)
    ids = validation.ids(input, num_embeddings)
    return ids, weight, padding_idx


def _check_unsharded(weight) -> None:
    validation.check_rows_unsharded(
        weight,
        "jaxembed.functional",
        "use jaxembed.sharding.vocab_parallel_embedding / vocab_parallel_embedding_renorm, or "
        "the modules (jaxembed.Embed, jaxembed.linen.Embed), which dispatch to them.",
    )


# ---------------------------------------------------------------------------------------------
# 2. max_norm: torch.embedding_renorm_ (the renorm happens before the lookup returns rows)
# ---------------------------------------------------------------------------------------------


def _row_norm(rows: jax.Array, norm_type: float) -> jax.Array:
    """``torch.linalg.vector_norm(row, norm_type)`` of each row (last axis), CPU semantics.

    torch's CUDA renorm kernel applies ``pow(x, p)`` without ``abs`` for p not in {1, 2}; we follow
    the CPU kernel (``vector_norm``), which is the documented semantics.
    """
    a = jnp.abs(rows)
    if norm_type == 2:
        return jnp.sqrt(jnp.sum(rows * rows, axis=-1))
    if norm_type == 1:
        return jnp.sum(a, axis=-1)
    if norm_type == math.inf:
        return jnp.max(a, axis=-1, initial=0)
    if norm_type == -math.inf:
        return jnp.min(a, axis=-1, initial=math.inf)
    if norm_type == 0:
        return jnp.sum(rows != 0, axis=-1).astype(rows.dtype)
    return jnp.sum(a**norm_type, axis=-1) ** (1.0 / norm_type)


def _largest_float32_at_most(x: float) -> np.float32:
    """The largest float32 <= x, so that ``norm32 > it`` equals torch's ``double(norm) > x``."""
    f = np.float32(x)
    if float(f) > x:
        f = np.nextafter(f, np.float32(-np.inf))
    return f


def renorm_scale(rows: jax.Array, max_norm: float, norm_type: float = 2.0) -> jax.Array:
    """Per-row factor torch's ``embedding_renorm_`` multiplies a row by (1 where it keeps it).

    * norm: accumulated in float32 for half/bfloat16/float32 tables (float64 for float64), then,
      as torch's CPU kernel does, rounded to the table dtype for half and bfloat16;
    * renorm where ``norm > max_norm`` (compared exactly against the Python float, as torch does
      in double);
    * scale ``max_norm / (norm + 1e-7)``: torch computes it in double and rounds it to the table
      dtype. We compute it in float64 when ``jax_enable_x64`` is on (bit-exact) and in float32
      otherwise (the scale can then differ from torch's by 1 ulp of float32).
    """
    dtype = rows.dtype
    if math.prod(rows.shape[:-1]):  # torch computes no norm for an empty input
        validation.check_renorm(max_norm, norm_type, dtype)
    acc = jnp.float64 if dtype == jnp.float64 else jnp.float32
    norm = _row_norm(rows.astype(acc), norm_type).astype(dtype).astype(acc)
    if acc == jnp.float64:
        exceeds = norm > max_norm
    else:
        exceeds = norm > _largest_float32_at_most(max_norm)
    wide = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 under x64, else float32
    scale = (max_norm / (norm.astype(wide) + RENORM_EPS)).astype(dtype)
    return jnp.where(exceeds, scale, jnp.ones((), dtype))


@jax.custom_jvp
def _straight_through_scale(rows: jax.Array, scale: jax.Array) -> jax.Array:
    """``rows * scale[..., None]`` whose derivative w.r.t. ``rows`` is the identity.

    torch renorms the stored weight under ``no_grad`` before the lookup, so the gradient reaching
    the table is the plain output gradient, never multiplied by the scale.
    """
    return rows * scale[..., None]


@_straight_through_scale.defjvp
def _straight_through_scale_jvp(primals, tangents):
    rows, scale = primals
    rows_dot, _ = tangents
    return _straight_through_scale(rows, scale), rows_dot


@jax.custom_jvp
def with_tangent_of(x: jax.Array, other: jax.Array) -> jax.Array:
    """``x``, bit for bit, whose derivative is that of ``other`` (``x``'s own is dropped): for
    a value computed exactly by a non-differentiable route (a bit copy) or not at all (the
    sparse path's probe)."""
    return x


@with_tangent_of.defjvp
def _with_tangent_of_jvp(primals, tangents):
    return primals[0], tangents[1]


def embedding_renorm(weight, input, max_norm: float, norm_type: float = 2.0) -> jax.Array:
    """Functional ``torch.embedding_renorm_``: the table after torch's max_norm rule.

    Every row that ``input`` references (each unique id once; the padding row is not special)
    whose norm exceeds ``max_norm`` is scaled to ``max_norm`` (see :func:`renorm_scale`); every
    other row is returned untouched. Costs O(len(input) * D): only referenced rows are read and
    written (in place when the caller donates ``weight`` under ``jax.jit``).

    Unlike torch there is no in-place update: the new table is returned.
    """
    _check_unsharded(weight)
    ids, weight, _ = _prepare(input, weight, None)
    rows = _gather(weight, ids)
    renormed = rows * renorm_scale(rows, max_norm, norm_type)[..., None]
    return _scatter_set(weight, ids, renormed)


# ---------------------------------------------------------------------------------------------
# 3. Gather and scatter with torch's index rules: negative ids are out of range (no wrap-around).
# ---------------------------------------------------------------------------------------------


def _gather(table: jax.Array, ids: jax.Array) -> jax.Array:
    # mode="fill": an out-of-range or negative id gives a NaN row (minimum int for integer
    # tables) instead of another row, and checkify's index_checks report the gather.
    if table.shape[0] == 0:
        # XLA cannot gather from a table without rows, and every id is out of range there: gather
        # from one appended row at index 1 instead (out of range: the NaN row, reported).
        table = jnp.concatenate([table, jnp.zeros((1,) + table.shape[1:], table.dtype)])
        ids = jnp.ones_like(ids)
    return table.at[ids].get(mode="fill", fill_value=None, wrap_negative_indices=False)


def _gather_bits(table: jax.Array, ids: jax.Array) -> jax.Array:
    """:func:`_gather` that copies every bit, NaN payloads included (the forward's gather).

    16-bit floats are gathered as byte pairs: XLA:CPU computes the fill-mode select of a bfloat16
    gather in float32 and rounds back, and even a same-width uint16 -> bfloat16 bitcast fused
    after the gather canonicalises NaN payloads (0x7FC1 -> 0x7FC0); a bytes -> bfloat16
    bitcast does not (checked for bfloat16 and float16, every width D). It is also faster than
    the float32 select: 4.4 against 25 ms for 64k rows of D=128 on the 2-vCPU dev VM. An
    out-of-range id gets the row of 0xFFFF, a NaN in both dtypes. Not differentiable (the
    gradient rule uses :func:`_gather`).
    """
    if table.dtype not in (jnp.bfloat16, jnp.float16):
        return _gather(table, ids)
    bytes_ = jax.lax.bitcast_convert_type(table, jnp.uint8)  # (V, D, 2)
    if bytes_.shape[0] == 0:  # as in _gather
        bytes_ = jnp.zeros((1,) + bytes_.shape[1:], bytes_.dtype)
        ids = jnp.ones_like(ids)
    rows = bytes_.at[ids].get(mode="fill", fill_value=0xFF, wrap_negative_indices=False)
    return jax.lax.bitcast_convert_type(rows, table.dtype)


def _scatter_set(table: jax.Array, ids: jax.Array, rows: jax.Array) -> jax.Array:
    # Duplicate ids write identical rows, so the result is deterministic on every backend.
    if table.shape[0] == 0:  # nothing to write (every id is out of range)
        return table
    return table.at[ids].set(rows, mode="drop", wrap_negative_indices=False)


# ---------------------------------------------------------------------------------------------
# 4. The lookup and its custom gradient; the public functions
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _GradRule:
    """Static description of how the table's gradient is formed (hashable for custom_jvp)."""

    num_embeddings: int
    padding_idx: int | None
    scale_grad_by_freq: bool
    # Where the rows live: None for an ordinary array; a ``sharding.VocabParallel`` for a
    # row-sharded table, which supplies its own gather and global id counts.
    layout: Any = None

    def gather(self, table: jax.Array, ids: jax.Array) -> jax.Array:
        return _gather_bits(table, ids) if self.layout is None else self.layout.gather(table, ids)

    def gather_tangent(self, table_dot: jax.Array, ids: jax.Array) -> jax.Array:
        """The same lookup as a linear (transposable) map of the table's tangent."""
        if self.layout is None:
            return _gather(table_dot, ids)
        return self.layout.gather(table_dot, ids, linear=True)

    def counts_at(self, ids: jax.Array) -> jax.Array:
        """How often each position's id occurs in the whole input (1 for out-of-range ids)."""
        if self.layout is not None:
            return self.layout.counts_at(ids)
        if self.num_embeddings == 0:  # every id is out of range (and XLA cannot scatter there)
            return jnp.ones(ids.shape, jnp.int32)
        counts = (
            jnp.zeros((self.num_embeddings,), jnp.int32)
            .at[ids]
            .add(1, mode="drop", wrap_negative_indices=False)
        )
        return counts.at[ids].get(mode="fill", fill_value=1, wrap_negative_indices=False)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _lookup(rule: _GradRule, table: jax.Array, ids: jax.Array) -> jax.Array:
    return rule.gather(table, ids)


def _spread_padding_on_this_backend() -> bool:
    """Spreading is for atomic scatters (GPU/TPU). XLA:CPU scatters sequentially, with no
    contention; there an interleaved A/B (V=32k, D=128, n=64k, padding-heavy) measured the spread
    backward at 1.59x the plain one against 1.43x without it, so CPU keeps the padding ids."""
    return jax.default_backend() != "cpu"


def _spread_padding(ids: jax.Array, rule: _GradRule) -> jax.Array:
    """``ids`` with each padding position sent to its own row (position mod V), for the
    gradient's gather only.

    Those positions contribute an exact zero either way (masked below), but in a padding-heavy
    batch they would all hit one row, and that index contention is what turns XLA:GPU's f32
    scatter-add into a compare-and-swap loop in jaxlib 0.10.2-0.11.0 (openxla/xla#46225). The
    ids stay in range, so ``checkify.index_checks`` reports only genuinely out-of-range ids;
    adding +0.0 leaves every row's bits unchanged (a sum started at +0.0 is never -0.0).
    Row-sharded tables (``rule.layout``) keep their ids: each device scatters only its own rows,
    and a replicated iota would not match the ids' sharding under an Explicit mesh.
    """
    if (
        rule.padding_idx is None
        or rule.layout is not None
        or rule.num_embeddings == 0
        or not _spread_padding_on_this_backend()
    ):
        return ids
    spread = jnp.arange(ids.size, dtype=ids.dtype).reshape(ids.shape) % rule.num_embeddings
    return jnp.where(ids == rule.padding_idx, spread, ids)


def divide_by_count(out_dot: jax.Array, count: jax.Array, table_dtype) -> jax.Array:
    """scale_grad_by_freq: each position's gradient row divided by its id's count."""
    acc = jnp.float64 if table_dtype == jnp.float64 else jnp.float32
    inv = 1 / count.astype(acc)  # torch: double(1) / count, rounded to float32
    # Half types: torch multiplies in float32 (opmath) and rounds once, as here.
    return (out_dot.astype(acc) * inv[..., None]).astype(out_dot.dtype)


@_lookup.defjvp
def _lookup_jvp(rule: _GradRule, primals, tangents):
    # The tangent is linear in table_dot, so reverse mode transposes it into torch's backward:
    # mask padding positions (spread over rows, see _spread_padding), scale by 1/count,
    # scatter-add in input order (XLA:CPU scatters sequentially, which is torch's CPU order);
    # out-of-range ids are dropped by the scatter.
    table, ids = primals
    table_dot, _ = tangents
    out_dot = rule.gather_tangent(table_dot, _spread_padding(ids, rule))
    if rule.scale_grad_by_freq:
        # Counts over the whole input, padding positions included (torch). torch adds each
        # contribution as fma(g, float32(1/count), acc); we round g * (1/count) first, which is
        # within 1 rounding of the product per term (measured: docs/guides/exactness.md).
        out_dot = divide_by_count(out_dot, rule.counts_at(ids), table.dtype)
    if rule.padding_idx is not None:
        out_dot = jnp.where((ids == rule.padding_idx)[..., None], 0, out_dot)
    return _lookup(rule, table, ids), out_dot


def _lookup_rows(ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq, layout=None):
    rule = _GradRule(weight.shape[0], padding_idx, bool(scale_grad_by_freq), layout)
    rows = _lookup(rule, weight, ids)
    if max_norm is not None:
        scale = jax.lax.stop_gradient(renorm_scale(rows, max_norm, norm_type))
        rows = _straight_through_scale(rows, scale)
    return rows


def embedding(
    input,
    weight,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> jax.Array:
    """``torch.nn.functional.embedding``: the rows of ``weight`` at ``input``.

    Args:
      input: integer ids of any shape (0-d and empty included); any integer dtype.
      weight: the ``(num_embeddings, D)`` table.
      padding_idx: positions holding this id contribute zero gradient; the forward still returns
        the row's value. ``-num_embeddings <= padding_idx < num_embeddings``; negative counts
        from the end. As torch's ``F.embedding``, the row itself is not zeroed.
      max_norm: rows referenced by ``input`` with norm above ``max_norm`` are returned renormed to
        ``max_norm`` (torch's rule, see :func:`renorm_scale`); the gradient is not scaled. torch
        also writes the renormed rows back into ``weight`` in place; a JAX array cannot be
        mutated, so use :func:`embedding_renorm` (or ``jaxembed.Embed``, which persists it).
      norm_type: the p of the norm for ``max_norm`` (1, 2, inf, 0, fractional, negative).
      scale_grad_by_freq: divide each position's gradient by the frequency of its id in the
        whole input (padding positions counted, as torch).
      sparse: torch's row-sparse gradient. The rows are the same, but ``weight`` gets no
        gradient: differentiate w.r.t. the returned rows and turn that into torch's sparse
        gradient with ``jaxembed.sparse.row_gradients`` (docs/guides/sparse.md).
        With ``scale_grad_by_freq`` this raises torch's RuntimeError.

    Returns:
      ``input.shape + (D,)`` rows in ``weight``'s dtype.

    Out-of-range ids (``< 0`` or ``>= num_embeddings``): with concrete ids this raises
    ``IndexError: index out of range in self`` like torch, checked on the ids' own values and
    dtype (numpy int64 ``2**32 + 1`` raises; it is never narrowed to 1 first). Under
    ``jax.jit`` the ids are traced and cannot raise: such a position yields a NaN row (the
    minimum integer for integer tables), its gradient is dropped, and
    ``checkify.checkify(f, errors=checkify.index_checks)`` reports it; 64-bit ids are compared
    in their own dtype before they are narrowed. Negative ids never wrap around. (numpy int64
    ids passed as a ``jax.jit`` argument with x64 off are narrowed by JAX before this function
    runs: see docs/guides/behaviour.md, "Out-of-range ids".)

    Dtypes: any integer id dtype, torch tensors included. A 64-bit ``weight`` with x64 off
    raises ``ValueError`` (JAX would narrow it silently); the forward copies every bit, NaN
    payloads included (see :func:`_gather_bits`).
    """
    if sparse:
        validation.check_sparse(scale_grad_by_freq)
    _check_unsharded(weight)
    ids, weight, padding_idx = _prepare(input, weight, padding_idx, sparse)
    return _lookup_rows(ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)


def embed_and_renorm(
    input,
    weight,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """:func:`embedding` plus the table torch would hold afterwards, from one gather.

    Returns ``(rows, new_weight)``. ``new_weight`` is ``weight`` with torch's max_norm renorm
    written into the referenced rows (``weight`` itself when ``max_norm`` is None); it carries no
    gradient. The modules store it to reproduce torch's in-place update. ``sparse`` as in
    :func:`embedding`.
    """
    if sparse:
        validation.check_sparse(scale_grad_by_freq)
    _check_unsharded(weight)
    ids, weight, padding_idx = _prepare(input, weight, padding_idx, sparse)
    rows = _lookup_rows(ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)
    if max_norm is None:
        return rows, weight
    new_weight = _scatter_set(jax.lax.stop_gradient(weight), ids, jax.lax.stop_gradient(rows))
    return rows, new_weight


def attend(query, weight, dtype=None, promote_dtype=dtypes.promote_dtype) -> jax.Array:
    """Tied output logits ``query @ weight.T``, as flax's ``Embed.attend``.

    ``query`` and ``weight`` are promoted as flax does (``promote_dtype((query, weight),
    dtype=dtype)``, flax's default): cast to ``dtype`` when given, else to their common dtype,
    lifted to float32 when both are integers.
    """
    validation.check_weight(weight)
    query, weight = promote_dtype((query, weight), dtype=dtype)
    return jnp.dot(query, weight.T)
