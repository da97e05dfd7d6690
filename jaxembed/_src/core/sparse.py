"""Row-sparse gradients: torch's ``nn.Embedding(sparse=True)`` backward.

torch's sparse backward (``Embedding.cpp``, ``embedding_sparse_backward``) returns an uncoalesced
COO tensor: one entry per position of the flattened input, in input order, duplicates kept,
positions equal to ``padding_idx`` removed; the values are the output-gradient rows there.

Here that gradient is a :class:`SparseRows` of static length ``n = input.size`` (shapes are
static under ``jit``): a removed position keeps its slot, with the id ``num_embeddings`` (one past
the last row) and a zero row. Out-of-range ids (which torch rejects with an IndexError and the
dense path drops) are removed the same way, so no consumer ever indexes out of bounds and
``checkify``'s index checks stay quiet.

How the row gradients are obtained (the table itself is never differentiated):

* functional: ``embedding(..., sparse=True)`` returns rows with no gradient to the table; take
  the gradient w.r.t. those rows and call :func:`row_gradients`;
* modules: the lookup adds a *probe*, an all-zero array shaped like its rows, through
  :func:`attach_probe`; the gradient w.r.t. the probe is the gradient w.r.t. the rows
  (``jaxembed.sparse.value_and_grad`` for NNX, ``jaxembed.linen`` helpers for Linen).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxembed._src.core import functional as F
from jaxembed._src.core import sharding, validation


class SparseRows(NamedTuple):
    """torch's sparse embedding gradient with a static number of entries.

    Attributes:
      ids: ``(n,)`` row ids in input order, int32 (whatever the input's integer dtype);
        ``num_embeddings`` marks a removed position (padding or out of range).
      values: ``(n, D)`` gradient rows; zero at removed positions.

    ``SparseRows`` is a pytree (a NamedTuple); sparse optimizers take a pytree of them shaped like
    the pytree of tables.
    """

    ids: jax.Array
    values: jax.Array


def row_ids(input, num_embeddings: int, padding_idx: int | None = None) -> jax.Array:
    """The flattened ``input`` with removed positions (padding, out of range) set to
    ``num_embeddings``: the ids of :class:`SparseRows`.

    Out-of-range ids are found on their original values and dtype (``validation.ids``, without
    its error: torch would have raised at the lookup), so ``2**32 + 1`` is removed, never row 1.
    """
    padding_idx = validation.normalize_padding_idx(padding_idx, num_embeddings)
    ids = validation.ids(input, num_embeddings, check=False).reshape(-1)
    removed = (ids < 0) | (ids >= num_embeddings)
    if padding_idx is not None:
        removed = removed | (ids == padding_idx)
    return jnp.where(removed, num_embeddings, ids)


def rows_from_ids(ids: jax.Array, rows_grad: jax.Array, num_embeddings: int) -> SparseRows:
    """:class:`SparseRows` from :func:`row_ids` and the gradient w.r.t. the looked-up rows."""
    values = jnp.reshape(rows_grad, (ids.shape[0], jnp.shape(rows_grad)[-1]))
    return SparseRows(ids, jnp.where((ids == num_embeddings)[:, None], 0, values))


def row_gradients(
    input, rows_grad, num_embeddings: int, padding_idx: int | None = None
) -> SparseRows:
    """torch's sparse gradient of ``embedding(input, weight, padding_idx, sparse=True)``.

    Args:
      input: the ids of the lookup (any shape).
      rows_grad: the gradient w.r.t. the looked-up rows, ``input.shape + (D,)``.
      num_embeddings: the table's number of rows.
      padding_idx: as in the lookup; its positions are removed (torch).

    Returns:
      :class:`SparseRows` with ``input.size`` entries in input order.
    """
    ids = row_ids(input, num_embeddings, padding_idx)
    if jnp.shape(rows_grad)[:-1] != jnp.shape(input):
        raise ValueError(
            f"rows_grad must have shape input.shape + (D,) = {tuple(jnp.shape(input))} + (D,); "
            f"got {jnp.shape(rows_grad)}"
        )
    return rows_from_ids(ids, rows_grad, num_embeddings)


def attach_probe(rows: jax.Array, probe: jax.Array) -> jax.Array:
    """``rows``, unchanged, whose derivative is that of ``probe`` (rows carry none).

    The gradient w.r.t. ``probe`` (all zeros, shaped like ``rows``) is therefore the gradient
    w.r.t. the looked-up rows. Unlike ``rows + probe`` this leaves every bit of the forward as
    torch's (``-0.0 + 0.0`` would be ``+0.0``).
    """
    return F.with_tangent_of(rows, probe)


def probed_embed_and_renorm(
    input,
    weight,
    probe,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    *,
    vocab_axes=None,
    out_sharding=None,
):
    """``functional.embed_and_renorm(..., sparse=True)`` with the row gradient routed to
    ``probe`` (see :func:`attach_probe`); ``probe`` None gives the plain sparse lookup.

    ``vocab_axes`` (from ``sharding.vocab_parallel_axes``): None for the plain lookup, else
    the vocab-parallel one (``sharding.vocab_parallel_embed_and_renorm``), its rows laid out as
    ``out_sharding``; the probe is laid out like the rows."""
    rules = (padding_idx, max_norm, norm_type, scale_grad_by_freq, True)
    if vocab_axes is None:
        rows, new_weight = F.embed_and_renorm(input, weight, *rules)
    else:
        rows, new_weight = sharding.vocab_parallel_embed_and_renorm(
            input, weight, *rules, vocab_axis=vocab_axes, out_sharding=out_sharding
        )
    if probe is not None:
        if jnp.shape(probe) != rows.shape:
            raise ValueError(
                f"the probe of a sparse lookup must have the rows' shape {rows.shape}; got "
                f"{jnp.shape(probe)} (the input's shape changed since the probe was made)"
            )
        probe = sharding.like(jnp.asarray(probe, rows.dtype), rows)
        rows = attach_probe(rows, probe)
    return rows, new_weight
