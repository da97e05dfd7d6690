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

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed._src import validation

# torch adds this to the norm before dividing (Embedding.cpp, embedding_renorm_cpu_).
RENORM_EPS = 1e-7


# ---------------------------------------------------------------------------------------------
# Gather and scatter with torch's index rules: negative ids are out of range (no wrap-around).
# ---------------------------------------------------------------------------------------------


def _gather(table: jax.Array, ids: jax.Array) -> jax.Array:
    # mode="fill": an out-of-range or negative id gives a NaN row (minimum int for integer
    # tables) instead of another row, and checkify's index_checks report the gather.
    return table.at[ids].get(mode="fill", fill_value=None, wrap_negative_indices=False)


def _scatter_set(table: jax.Array, ids: jax.Array, rows: jax.Array) -> jax.Array:
    # Duplicate ids write identical rows, so the result is deterministic on every backend.
    return table.at[ids].set(rows, mode="drop", wrap_negative_indices=False)


# ---------------------------------------------------------------------------------------------
# max_norm: torch.embedding_renorm_
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


def embedding_renorm(weight, input, max_norm: float, norm_type: float = 2.0) -> jax.Array:
    """Functional ``torch.embedding_renorm_``: the table after torch's max_norm rule.

    Every row that ``input`` references (each unique id once; the padding row is not special)
    whose norm exceeds ``max_norm`` is scaled to ``max_norm`` (see :func:`renorm_scale`); every
    other row is returned untouched. Costs O(len(input) * D): only referenced rows are read and
    written (in place when the caller donates ``weight`` under ``jax.jit``).

    Unlike torch there is no in-place update: the new table is returned.
    """
    validation.check_weight(weight)
    ids = validation.check_indices(input)
    weight = jnp.asarray(weight)
    validation.check_in_range(ids, weight.shape[0])
    rows = _gather(weight, ids)
    renormed = rows * renorm_scale(rows, max_norm, norm_type)[..., None]
    return _scatter_set(weight, ids, renormed)


# ---------------------------------------------------------------------------------------------
# The lookup and its gradient
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _GradRule:
    """Static description of how the table's gradient is formed (hashable for custom_jvp)."""

    num_embeddings: int
    padding_idx: int | None
    scale_grad_by_freq: bool


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _lookup(rule: _GradRule, table: jax.Array, ids: jax.Array) -> jax.Array:
    return _gather(table, ids)


def _out_of_range_where(mask: jax.Array, ids: jax.Array, num_embeddings: int) -> jax.Array:
    """``ids`` with the positions in ``mask`` set to ``num_embeddings`` (out of range, so a
    gather fills them and a scatter drops them)."""
    if jnp.iinfo(ids.dtype).max < num_embeddings:  # e.g. uint8 ids: no room for V
        ids = ids.astype(jax.dtypes.canonicalize_dtype(jnp.int64))
    return jnp.where(mask, num_embeddings, ids)


def _drop_padding(ids: jax.Array, rule: _GradRule) -> jax.Array:
    """``ids`` with padding positions moved out of range, for the gradient's gather only.

    The backward then drops those positions (the scatter's drop mode) instead of adding zeros
    into the padding row: with padding-heavy batches every padding token hits one row, and index
    contention is what turns XLA:GPU's f32 scatter-add into a compare-and-swap loop in jaxlib
    0.10.2-0.11.0 (openxla/xla#46225). The values are unchanged: those positions contribute zero.
    """
    if rule.padding_idx is None:
        return ids
    return _out_of_range_where(ids == rule.padding_idx, ids, rule.num_embeddings)


@_lookup.defjvp
def _lookup_jvp(rule: _GradRule, primals, tangents):
    # The tangent is linear in table_dot, so reverse mode transposes it into torch's backward:
    # mask padding positions, scale by 1/count, scatter-add in input order (XLA:CPU scatters
    # sequentially, which is torch's CPU order); out-of-range ids (padding positions included,
    # see _drop_padding) are dropped by the scatter.
    table, ids = primals
    table_dot, _ = tangents
    out_dot = _gather(table_dot, _drop_padding(ids, rule))
    if rule.scale_grad_by_freq:
        # Counts over the whole input, padding positions included (torch). torch adds each
        # contribution as fma(g, float32(1/count), acc); we round g * (1/count) first, which is
        # within 1 rounding of the product per term (see README for the measured bound).
        counts = jnp.zeros((rule.num_embeddings,), jnp.int32).at[ids].add(
            1, mode="drop", wrap_negative_indices=False
        )
        count = counts.at[ids].get(mode="fill", fill_value=1, wrap_negative_indices=False)
        acc = jnp.float64 if table.dtype == jnp.float64 else jnp.float32
        inv = 1 / count.astype(acc)  # torch: double(1) / count, rounded to float32
        # Half types: torch multiplies in float32 (opmath) and rounds once, as here.
        out_dot = (out_dot.astype(acc) * inv[..., None]).astype(out_dot.dtype)
    if rule.padding_idx is not None:
        out_dot = jnp.where((ids == rule.padding_idx)[..., None], 0, out_dot)
    return _lookup(rule, table, ids), out_dot


def _prepare(input, weight, padding_idx):
    validation.check_weight(weight)
    weight = jnp.asarray(weight)
    ids = validation.check_indices(input)
    num_embeddings = weight.shape[0]
    padding_idx = validation.normalize_padding_idx(padding_idx, num_embeddings)
    validation.check_in_range(ids, num_embeddings)
    return ids, weight, padding_idx


def _lookup_rows(ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq):
    """(rows, renorm scale per position); the scale is None without max_norm."""
    rule = _GradRule(weight.shape[0], padding_idx, bool(scale_grad_by_freq))
    rows = _lookup(rule, weight, ids)
    scale = None
    if max_norm is not None:
        scale = jax.lax.stop_gradient(renorm_scale(rows, max_norm, norm_type))
        rows = _straight_through_scale(rows, scale)
    return rows, scale


def embedding(
    input,
    weight,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
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

    Returns:
      ``input.shape + (D,)`` rows in ``weight``'s dtype.

    Out-of-range ids (``< 0`` or ``>= num_embeddings``): with concrete ids this raises
    ``IndexError: index out of range in self`` like torch. Under ``jax.jit`` the ids are traced
    and cannot raise: such a position yields a NaN row (the minimum integer for integer tables),
    its gradient is dropped, and ``checkify.checkify(f, errors=checkify.index_checks)`` reports
    it. Negative ids never wrap around.
    """
    ids, weight, padding_idx = _prepare(input, weight, padding_idx)
    return _lookup_rows(ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)[0]


def embed_and_renorm(
    input,
    weight,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """:func:`embedding` plus the table torch would hold afterwards, from one gather.

    Returns ``(rows, new_weight)``. ``new_weight`` is ``weight`` with torch's max_norm renorm
    written into the referenced rows (``weight`` itself when ``max_norm`` is None); it carries no
    gradient. The modules store it to reproduce torch's in-place update.
    """
    ids, weight, padding_idx = _prepare(input, weight, padding_idx)
    rows, scale = _lookup_rows(ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq)
    if max_norm is None:
        return rows, weight
    # Write back only the rows the renorm changes (a scale of exactly 1 leaves a row as it is):
    # the others go out of range and the scatter drops them. Once rows are renormed, a batch
    # that does not push them over max_norm again writes nothing (torch also skips those rows).
    write_ids = _out_of_range_where(scale == 1, ids, weight.shape[0])
    new_weight = _scatter_set(
        jax.lax.stop_gradient(weight), write_ids, jax.lax.stop_gradient(rows)
    )
    return rows, new_weight


def attend(query, weight, dtype=None) -> jax.Array:
    """Tied output logits ``query @ weight.T`` (flax's ``Embed.attend``), in ``dtype``.

    ``dtype`` None promotes ``query`` and ``weight`` to a common inexact dtype, as flax does.
    """
    validation.check_weight(weight)
    if dtype is None:
        dtype = jnp.result_type(query, weight, 0.0)  # the weak float keeps half types, lifts ints
    return jnp.dot(jnp.asarray(query, dtype), jnp.asarray(weight, dtype).T)
