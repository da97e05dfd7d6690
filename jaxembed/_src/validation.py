"""Argument checks shared by the functional API and the modules.

Each check raises the exception type torch raises, with torch's message where torch has one, so
that code ported from torch keeps its ``except`` clauses.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

# torch's message (torch/nn/modules/sparse.py and torch/nn/functional.py).
PADDING_IDX_MESSAGE = "Padding_idx must be within num_embeddings"
OUT_OF_RANGE_MESSAGE = "index out of range in self"
# torch's messages for sparse gradients (aten/src/ATen/native/Embedding.cpp, torch/optim).
SPARSE_SGBF_MESSAGE = "embedding_backward: scale_grad_by_freq not supported with sparse gradients"


def normalize_padding_idx(padding_idx, num_embeddings: int) -> int | None:
    """Returns ``padding_idx`` as a non-negative row number, or None.

    As torch: ``-num_embeddings <= padding_idx < num_embeddings`` is required
    (``AssertionError: Padding_idx must be within num_embeddings``) and a negative value counts
    from the end (-1 is the last row).
    """
    if padding_idx is None:
        return None
    if isinstance(padding_idx, (float, np.floating)) or not _is_integer_scalar(padding_idx):
        raise TypeError(
            f"padding_idx must be an int in [-{num_embeddings}, {num_embeddings}), "
            f"got {padding_idx!r} of type {type(padding_idx).__name__}"
        )
    padding_idx = operator.index(padding_idx)
    if padding_idx >= num_embeddings or padding_idx < -num_embeddings:
        raise AssertionError(PADDING_IDX_MESSAGE)
    return padding_idx + num_embeddings if padding_idx < 0 else padding_idx


def _is_integer_scalar(x) -> bool:
    try:
        operator.index(x)
    except TypeError:
        return False
    return True


def check_weight(weight) -> None:
    """torch's ``F.embedding`` check: the table must be 2-D."""
    if jnp.ndim(weight) != 2:
        raise RuntimeError(f"'weight' must be 2-D (got shape {tuple(jnp.shape(weight))})")


def check_pretrained(embeddings) -> None:
    """torch's ``nn.Embedding.from_pretrained`` check."""
    if jnp.ndim(embeddings) != 2:
        raise AssertionError("Embeddings parameter is expected to be 2-dimensional")


def check_indices(input, argname: str = "input") -> jax.Array:
    """Returns ``input`` as a JAX integer array; float and bool ids raise TypeError.

    torch accepts only int32/int64 ids and raises ``RuntimeError: Expected tensor for argument #1
    'indices' to have one of the following scalar types: Long, Int``. We accept every integer
    dtype (signed and unsigned): a gather is exact for all of them.
    """
    dtype = jnp.result_type(input) if not hasattr(input, "dtype") else input.dtype
    if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(
            f"Expected argument '{argname}' (the indices) to have an integer dtype; got {dtype}. "
            "(torch: Expected tensor for argument #1 'indices' to have one of the following "
            "scalar types: Long, Int)"
        )
    return jnp.asarray(input)


def check_in_range(indices: jax.Array, num_embeddings: int) -> None:
    """Raises torch's ``IndexError`` when concrete ids fall outside ``[0, num_embeddings)``.

    Only concrete (non-traced) ids can raise; under ``jax.jit`` the policy is the NaN row with a
    bound that ``jax.experimental.checkify`` reports (see ``functional.embedding``).
    """
    if isinstance(indices, jax.core.Tracer) or indices.size == 0:
        return
    # Concrete ids closed over inside a jit trace: evaluate now, not staged into the trace.
    with jax.ensure_compile_time_eval():
        bad = jnp.any(indices >= num_embeddings)
        if jnp.issubdtype(indices.dtype, jnp.signedinteger):
            bad = bad | jnp.any(indices < 0)
        bad = bool(bad)
    if bad:
        raise IndexError(OUT_OF_RANGE_MESSAGE)


def check_from_pretrained_dtype(embeddings, freeze: bool) -> None:
    """torch refuses trainable integer tables (``requires_grad`` on an integer tensor)."""
    if not freeze and not jnp.issubdtype(jnp.asarray(embeddings).dtype, jnp.inexact):
        raise RuntimeError(
            "Only Tensors of floating point and complex dtype can require gradients "
            f"(from_pretrained(freeze=False) got dtype {jnp.asarray(embeddings).dtype})"
        )


def check_sparse(scale_grad_by_freq: bool) -> None:
    """torch refuses ``scale_grad_by_freq`` with ``sparse=True`` (at backward; we refuse at the
    lookup, where the sparse gradient's rows are formed)."""
    if scale_grad_by_freq:
        raise RuntimeError(SPARSE_SGBF_MESSAGE)


def check_attend_not_sparse(sparse: bool, freeze: bool) -> None:
    """Tied logits on a sparse table would need the table's dense gradient (torch adds a dense
    gradient to the sparse one); refuse rather than silently drop it."""
    if sparse and not freeze:
        raise NotImplementedError(
            "attend() on a sparse=True table: the logits' gradient w.r.t. the table is dense "
            "(V x D) and a sparse table receives none. Use sparse=False for tied embeddings."
        )


def check_sparse_unsharded(sharding) -> None:
    """The row-sparse path (``sparse=True``) has no vocab-parallel variant yet."""
    if sharding is not None:
        raise NotImplementedError(
            "sparse=True with a sharded table or out_sharding is not supported: the row-sparse "
            f"path runs on one device (got sharding {sharding!r}). Use sparse=False to shard."
        )
