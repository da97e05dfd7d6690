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
    if not hasattr(input, "dtype"):
        input = np.asarray(input)  # Python lists and scalars
    dtype = input.dtype
    if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(
            f"Expected argument '{argname}' (the indices) to have an integer dtype; got {dtype}. "
            "(torch: Expected tensor for argument #1 'indices' to have one of the following "
            "scalar types: Long, Int)"
        )
    ids = jnp.asarray(input)
    if jnp.iinfo(ids.dtype).bits < 32:
        # Widen int8/int16/uint8/uint16 ids: comparing them with num_embeddings or padding_idx
        # would otherwise cast those Python ints to the narrow dtype (256 -> 0 for uint8).
        ids = ids.astype(jnp.int32)
    return ids


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


# ---------------------------------------------------------------------------------------------
# EmbeddingBag (torch/nn/functional.py embedding_bag and aten/src/ATen/native/EmbeddingBag.cpp)
# ---------------------------------------------------------------------------------------------

BAG_MODES = ("sum", "mean", "max")
# nn.EmbeddingBag's constructor (lower-case "padding_idx", unlike nn.Embedding's message).
BAG_MODULE_PADDING_IDX_MESSAGE = "padding_idx must be within num_embeddings"


def normalize_bag_padding_idx(padding_idx, num_embeddings: int, module: bool = False):
    """:func:`normalize_padding_idx` with torch's EmbeddingBag errors.

    ``F.embedding_bag`` raises ``RuntimeError: padding_idx must be within the number of
    embeddings, -V through V-1, but got X``; the ``nn.EmbeddingBag`` constructor (``module``)
    raises ``AssertionError: padding_idx must be within num_embeddings``.
    """
    try:
        return normalize_padding_idx(padding_idx, num_embeddings)
    except AssertionError:
        if module:
            raise AssertionError(BAG_MODULE_PADDING_IDX_MESSAGE) from None
        raise RuntimeError(
            f"padding_idx must be within the number of embeddings, -{num_embeddings} through "
            f"{num_embeddings - 1}, but got {padding_idx}"
        ) from None


def check_bag_mode(mode, scale_grad_by_freq: bool = False) -> None:
    """torch's mode checks: one of sum/mean/max; max refuses ``scale_grad_by_freq``."""
    if mode not in BAG_MODES:
        raise ValueError("mode has to be one of sum, mean or max")
    if mode == "max" and scale_grad_by_freq:
        raise ValueError("max mode does not support scaling the gradient by the frequency")


def check_bag_weight(weight) -> None:
    """torch's ``embedding_bag`` table checks: 2-D, and a floating dtype."""
    if jnp.ndim(weight) != 2:
        raise ValueError(
            f"weight has to be a 2D Tensor, but got Tensor of dimension {jnp.ndim(weight)}"
        )
    dtype = jnp.result_type(weight)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise RuntimeError(
            "Expected tensor for argument #1 'weight' to have one of the following scalar "
            f"types: Half, BFloat16, Float, Double; but got {dtype} instead (while checking "
            "arguments for embedding_bag)"
        )


def check_bag_inputs(input, offsets, include_last_offset: bool):
    """torch's rank rules for ``input`` and ``offsets``; returns ``(ids, offsets)`` as arrays.

    2-D ``input`` is a batch of fixed-size bags and takes no offsets; 1-D ``input`` needs 1-D
    ``offsets`` (the start of each bag, plus the end of the last one with
    ``include_last_offset``).
    """
    # Python lists too (check_indices wants an array).
    ids = check_indices(input if hasattr(input, "dtype") else np.asarray(input))
    if ids.ndim == 2:
        if offsets is not None:
            raise ValueError(
                "if input is 2D, then offsets has to be None, as input is treated is a "
                "mini-batch of fixed length sequences. However, found offsets of type "
                f"{type(offsets)}"
            )
        return ids, None
    if ids.ndim != 1:
        raise ValueError(f"input has to be 1D or 2D Tensor, but got Tensor of dimension {ids.ndim}")
    if offsets is None:
        raise ValueError("offsets has to be a 1D Tensor but got None")
    offsets = check_indices(
        offsets if hasattr(offsets, "dtype") else np.asarray(offsets), "offsets"
    )
    if offsets.ndim != 1:
        raise ValueError("offsets has to be a 1D Tensor")
    if include_last_offset and offsets.shape[0] < 1:
        raise RuntimeError("include_last_offset: number of offset should be at least 1")
    return ids, offsets


def check_offsets(offsets: jax.Array, num_inputs: int) -> None:
    """torch's checks on concrete offsets (traced offsets: see ``embedding_bag``'s NaN policy).

    ``offsets[0] == 0`` and ``offsets[-1] <= len(input)`` raise torch's RuntimeErrors. Decreasing
    offsets are also refused, with a message of ours: torch 2.13 fails there with an internal
    ``Expected i < index_size to be true`` or crashes (pytorch#175368).
    """
    if isinstance(offsets, jax.core.Tracer) or offsets.shape[0] == 0:
        return
    o = np.asarray(offsets).astype(np.int64)
    if o[0] != 0:
        raise RuntimeError(
            "offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to start "
            f"from position 0. However, got {o[0]}"
        )
    if o[-1] > num_inputs:
        raise RuntimeError(
            f"offsets[-1] can not be greater than input's length {num_inputs} but got "
            f"offsets[-1] of {o[-1]}"
        )
    down = np.flatnonzero(o[1:] < o[:-1])
    if down.size:
        i = int(down[0]) + 1
        raise RuntimeError(
            f"offsets must be non-decreasing, but offsets[{i}] = {o[i]} < "
            f"offsets[{i - 1}] = {o[i - 1]}"
        )


def check_bag_in_range(indices: jax.Array, num_embeddings: int) -> None:
    """torch's EmbeddingBag error for concrete ids outside ``[0, num_embeddings)``."""
    if isinstance(indices, jax.core.Tracer) or indices.size == 0:
        return
    flat = np.asarray(indices).reshape(-1).astype(np.int64)
    bad = np.flatnonzero((flat < 0) | (flat >= num_embeddings))
    if bad.size:
        i = int(bad[0])
        raise RuntimeError(
            f"Index {i} of input takes value {flat[i]} which is not in the valid range "
            f"[0, {num_embeddings})"
        )


def check_per_sample_weights(per_sample_weights, input_shape, weight_dtype, mode):
    """torch's ``per_sample_weights`` checks: same shape as ``input``, mode 'sum' only, and the
    table's dtype. Returns it as an array (or None)."""
    if per_sample_weights is None:
        return None
    per_sample_weights = jnp.asarray(per_sample_weights)
    if tuple(jnp.shape(per_sample_weights)) != tuple(input_shape):
        raise ValueError(
            f"embedding_bag: If per_sample_weights ({tuple(jnp.shape(per_sample_weights))}) is "
            f"not None, then it must have the same shape as the input ({tuple(input_shape)})"
        )
    if mode != "sum":
        raise NotImplementedError(
            "embedding_bag: per_sample_weights was not None. per_sample_weights is only "
            f"supported for mode='sum' (got mode='{mode}'). Please open a feature request on "
            "GitHub."
        )
    dtype = jnp.result_type(per_sample_weights)
    if dtype != weight_dtype:
        raise RuntimeError(
            "Expected tensor for argument #1 'weight' to have the same type as tensor for "
            f"argument #1 'per_sample_weights'; but type {weight_dtype} does not equal {dtype} "
            "(while checking arguments for embedding_bag)"
        )
    return per_sample_weights
