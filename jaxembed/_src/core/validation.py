"""Argument checks shared by every door: functional, NNX, Linen, bags, sparse, sharded, interop.

One path for each kind of argument, called by every entry point:

* ids (:func:`ids`, :func:`offsets`): the dtype and the values are checked on the array as the
  caller gave it (a numpy int64 or uint64 array, a torch tensor, a list), before anything casts
  them; only then do they become the gather's int32 index array (:func:`index_array`), with every
  id outside ``[0, num_embeddings)`` masked in its own dtype so that no narrowing can turn it into
  another row.
* tables (:func:`table`): a torch tensor is read bit for bit, and a 64-bit array that JAX would
  narrow (``jax_enable_x64`` off) is refused with the argument named (:func:`check_not_narrowed`).

Each check raises the exception type torch raises, with torch's message where torch has one, so
that code ported from torch keeps its ``except`` clauses.
"""

from __future__ import annotations

import operator

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed._src.core import arrays

# torch's message (torch/nn/modules/sparse.py and torch/nn/functional.py).
PADDING_IDX_MESSAGE = "Padding_idx must be within num_embeddings"
OUT_OF_RANGE_MESSAGE = "index out of range in self"
# torch 2.13's F.embedding on a table with no rows (index_select's check).
EMPTY_TABLE_MESSAGE = "index_select(): self indexing axis dim should be positive"
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


def check_sizes(num_embeddings, features) -> None:
    """A table's shape, checked before anything is allocated: non-negative ints.

    torch: ``RuntimeError: Trying to create tensor with negative dimension -1: [-1, 3]`` (its
    message, with the argument named), and a TypeError for a non-integer size.
    """
    sizes = {"num_embeddings": num_embeddings, "features": features}
    for name, n in sizes.items():
        if isinstance(n, (bool, np.bool_)) or not _is_integer_scalar(n):
            raise TypeError(f"{name} must be an int >= 0, got {n!r} of type {type(n).__name__}")
    dims = [operator.index(n) for n in sizes.values()]
    for name, n in zip(sizes, dims):
        if n < 0:
            raise RuntimeError(
                f"Trying to create tensor with negative dimension {n}: {dims} ({name}={n})"
            )


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------


def check_not_narrowed(array, argname: str, convert: str | None = None) -> None:
    """Refuses an array that JAX would narrow silently: a 64-bit dtype (float64, int64, uint64,
    complex128) while ``jax_enable_x64`` is off. ``jnp.asarray`` would turn float64 into float32
    and truncate int64 to int32 without a word; the caller decides instead.

    The one rule for every table and weight argument (``from_pretrained``, ``Pretrained``, the
    functional ``weight``, ``per_sample_weights``, ``jaxembed.interop``). Raises ``ValueError``
    naming the argument, its dtype and both ways out; ``convert`` replaces the default second
    way (``argname.astype(...)``) where the caller has its own (interop's ``param_dtype=``).
    """
    dtype = np.dtype(array.dtype)
    narrowed = np.dtype(jax.dtypes.canonicalize_dtype(dtype))
    if narrowed != dtype:
        if convert is None:
            convert = f"convert it explicitly (e.g. {argname}.astype(np.{narrowed}))"
        raise ValueError(
            f"{argname} has dtype {dtype}, which JAX would silently narrow to {narrowed} because "
            "jax_enable_x64 is off. Enable x64 to keep it (jax.config.update('jax_enable_x64', "
            f"True)), or {convert}."
        )


def table(weight, argname: str = "weight") -> jax.Array:
    """``weight`` as a JAX array with its own dtype and bits: a torch tensor read bit for bit
    (bfloat16 included), a 64-bit array refused when JAX would narrow it."""
    weight = arrays.as_array(weight)
    check_not_narrowed(weight, argname)
    return jnp.asarray(weight)


def check_weight(weight) -> None:
    """torch's ``F.embedding`` check: the table must be 2-D."""
    if jnp.ndim(weight) != 2:
        raise RuntimeError(f"'weight' must be 2-D (got shape {tuple(jnp.shape(weight))})")


def check_pretrained(embeddings) -> None:
    """torch's ``nn.Embedding.from_pretrained`` check."""
    if jnp.ndim(embeddings) != 2:
        raise AssertionError("Embeddings parameter is expected to be 2-dimensional")


def check_rows_unsharded(weight, what: str, instead: str) -> None:
    """Refuses a table whose rows are split over an Explicit mesh axis where ``what`` has no
    vocab-parallel variant (a plain gather there fails deep in JAX with ShardingTypeError).
    Under an Auto mesh GSPMD handles the gather, so nothing is refused."""
    if not isinstance(weight, (jax.Array, jax.core.Tracer)):
        return  # numpy, torch: not laid out on a mesh
    sharding = getattr(jax.typeof(weight), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if sharding is None or mesh is None or mesh.empty:
        return
    spec = tuple(sharding.spec)
    if spec and spec[0] is not None:
        raise NotImplementedError(
            f"{what} on a row-sharded table is not supported (the table's sharding is "
            f"{sharding.spec}): {instead}"
        )


# torch's scalar type names, for its norm() error.
_TORCH_TYPE_NAMES = {
    "bool": "Bool",
    "int8": "Char",
    "int16": "Short",
    "int32": "Int",
    "int64": "Long",
    "uint8": "Byte",
    "uint16": "UInt16",
    "uint32": "UInt32",
    "uint64": "UInt64",
}


def check_renorm(max_norm, norm_type, dtype) -> None:
    """``max_norm`` / ``norm_type``: concrete numbers, and a floating table (torch's error).

    Both decide, at trace time, which norm is computed and which rows are renormed, as torch's
    Python floats do; a traced value (a jit argument) cannot. torch refuses the norm of an integer
    or bool table: ``RuntimeError: norm(): input dtype should be either floating point or
    complex. Got Int instead.``
    """
    for name, value in (("max_norm", max_norm), ("norm_type", norm_type)):
        if isinstance(value, jax.core.Tracer):
            raise TypeError(
                f"{name} must be a concrete number, got a traced value: it is compiled into the "
                f"lookup. Pass it as a static argument (jax.jit(..., static_argnames="
                f"'{name}')) or close over it."
            )
        try:
            float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"{name} must be a real number, got {value!r} of type {type(value).__name__}"
            ) from None
    if not jnp.issubdtype(dtype, jnp.inexact):
        name = _TORCH_TYPE_NAMES.get(np.dtype(dtype).name, np.dtype(dtype).name)
        raise RuntimeError(
            "norm(): input dtype should be either floating point or complex. "
            f"Got {name} instead. (max_norm needs a floating table)"
        )


# ---------------------------------------------------------------------------------------------
# Ids: checked on the values and dtype the caller gave, then masked, then narrowed
# ---------------------------------------------------------------------------------------------


def _integer_array(x, argname: str):
    """``x`` as an array of its own integer dtype (no cast); float and bool ids raise TypeError.

    torch accepts only int32/int64 ids and raises ``RuntimeError: Expected tensor for argument #1
    'indices' to have one of the following scalar types: Long, Int``. We accept every integer
    dtype (signed and unsigned): a gather is exact for all of them. Python ints that no common
    64-bit dtype holds (``[2**64]``, ``[-1, 2**63]``) raise torch's overflow RuntimeError, where
    numpy would make them floats or objects.
    """
    given = x
    x = arrays.as_array(x)
    if x.dtype.kind in "fO" and x.size and not isinstance(given, (np.ndarray, jax.Array)):
        values = np.asarray(given, dtype=object).reshape(-1).tolist()
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise RuntimeError(
                f"Overflow when unpacking long: '{argname}' holds Python ints that no 64-bit "
                f"integer dtype holds together (e.g. {max(values, key=abs)})"
            )
    dtype = x.dtype
    if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(
            f"Expected argument '{argname}' (the indices) to have an integer dtype; got {dtype}. "
            "(torch: Expected tensor for argument #1 'indices' to have one of the following "
            "scalar types: Long, Int)"
        )
    return x


def _out_of_range(x, num_embeddings: int, xp):
    """Where ``x`` (any integer dtype, numpy or JAX) is outside ``[0, num_embeddings)``,
    compared in ``x``'s own dtype (no cast, so no value can wrap into range)."""
    info = xp.iinfo(x.dtype)
    if num_embeddings <= info.max:
        bad = x >= num_embeddings
    else:
        bad = xp.zeros(x.shape, bool)
    if info.min < 0:
        bad = bad | (x < 0)
    return bad


def _raise_out_of_range(flat_values, bad, num_embeddings: int, bag: bool):
    if bag:
        i = int(np.flatnonzero(np.asarray(bad))[0])
        raise RuntimeError(
            f"Index {i} of input takes value {int(flat_values[i])} which is not in the valid "
            f"range [0, {num_embeddings})"
        )
    if num_embeddings == 0:
        raise RuntimeError(EMPTY_TABLE_MESSAGE)
    raise IndexError(OUT_OF_RANGE_MESSAGE)


def _check_range(x, num_embeddings: int, bag: bool) -> None:
    """torch's error for concrete ids outside ``[0, num_embeddings)``, on their own values."""
    if x.size == 0:
        return
    if isinstance(x, np.ndarray):
        flat = x.reshape(-1)
        bad = _out_of_range(flat, num_embeddings, np)
        if bad.any():
            _raise_out_of_range(flat, bad, num_embeddings, bag)
        return
    # A concrete JAX array, possibly closed over inside a jit trace: evaluate now, on device.
    with jax.ensure_compile_time_eval():
        flat = x.reshape(-1)
        bad = _out_of_range(flat, num_embeddings, jnp)
        if bool(jnp.any(bad)):
            _raise_out_of_range(np.asarray(flat), bad, num_embeddings, bag)


def index_array(x, num_embeddings: int) -> jax.Array:
    """Integer ids (checked, or traced) as the gather's index array, never another row.

    int32 ids are the index array (a fill-mode gather bounds them in int32). Narrower dtypes are
    widened to int32. uint32, int64 and uint64 ids are first compared in their own dtype and
    every id outside ``[0, num_embeddings)`` is replaced by ``num_embeddings`` (out of range, so
    the gather gives its NaN row and ``checkify`` reports it); only then are they narrowed to
    int32. Without this, XLA's gather (and ``jnp.asarray`` with x64 off) would wrap ``2**32 + 1``
    to row 1. Works alike on every backend: plain comparisons and a select.
    """
    dtype = np.dtype(x.dtype)
    if dtype.itemsize < 4:
        return jnp.asarray(x).astype(jnp.int32)
    if dtype == np.int32 or num_embeddings >= 2**31:
        # Tables of 2**31 rows or more need 64-bit ids (x64); JAX keeps them as they are.
        return jnp.asarray(x)
    xp = np if isinstance(x, np.ndarray) else jnp
    masked = xp.where(_out_of_range(x, num_embeddings, xp), num_embeddings, x)
    return jnp.asarray(masked.astype(np.int32))


def ids(
    input, num_embeddings: int, argname: str = "input", *, bag: bool = False, check: bool = True
) -> jax.Array:
    """The one door for ids: ``input`` as the gather's int32 index array.

    1. dtype: any integer dtype (float and bool raise TypeError); a torch tensor or a list is
       read as it is (:mod:`arrays`), never cast.
    2. range, when ``input`` is concrete and ``check``: an id outside ``[0, num_embeddings)`` on
       its original value raises torch's error (``IndexError: index out of range in self``; with
       ``bag`` EmbeddingBag's ``RuntimeError: Index i of input takes value v which is not in the
       valid range [0, V)``; a table with no rows torch's ``index_select`` RuntimeError). Traced
       ids cannot raise: see 3.
    3. :func:`index_array`: out-of-range ids are masked in their own dtype, then narrowed.
    """
    x = _integer_array(input, argname)
    if check and not isinstance(x, jax.core.Tracer):
        _check_range(x, num_embeddings, bag)
    return index_array(x, num_embeddings)


def check_from_pretrained_dtype(embeddings, freeze: bool) -> None:
    """torch refuses trainable integer tables (``requires_grad`` on an integer tensor)."""
    if not freeze and not jnp.issubdtype(embeddings.dtype, jnp.inexact):
        raise RuntimeError(
            "Only Tensors of floating point and complex dtype can require gradients "
            f"(from_pretrained(freeze=False) got dtype {embeddings.dtype})"
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
    """torch's rank rules for ``input`` and ``offsets``; returns ``(ids, offsets)`` as arrays of
    the dtypes given (nothing cast yet: :func:`ids` and :func:`offsets` check the values).

    2-D ``input`` is a batch of fixed-size bags and takes no offsets; 1-D ``input`` needs 1-D
    ``offsets`` (the start of each bag, plus the end of the last one with
    ``include_last_offset``).
    """
    ids = _integer_array(input, "input")
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
    offsets = _integer_array(offsets, "offsets")
    if offsets.ndim != 1:
        raise ValueError("offsets has to be a 1D Tensor")
    if include_last_offset and offsets.shape[0] < 1:
        raise RuntimeError("include_last_offset: number of offset should be at least 1")
    return ids, offsets


def offsets(offsets, num_inputs: int) -> tuple[jax.Array, jax.Array | None]:
    """The bags' offsets (from :func:`check_bag_inputs`) as int32, checked on their own values.

    Concrete offsets raise torch's errors: ``offsets[0] == 0`` and ``offsets[-1] <=
    len(input)`` (torch's RuntimeErrors); decreasing offsets are refused with a message of ours
    (torch 2.13 fails with an internal ``Expected i < index_size to be true`` or crashes,
    pytorch#175368). Returns ``(offsets, None)``.

    Traced offsets cannot raise: returns ``(offsets, ok)``, ``ok`` a traced bool saying whether
    they are valid, computed in their own dtype (so ``2**32 + 2`` is not mistaken for 2), and
    the offsets clipped to ``[0, len(input)]`` before they are narrowed to int32.
    """
    if isinstance(offsets, jax.core.Tracer):
        if offsets.dtype.itemsize < 4:  # comparing int8 offsets with len(input) could overflow
            offsets = offsets.astype(jnp.int32)
        ok = None
        if offsets.shape[0] > 0:
            ok = (
                (offsets[0] == 0)
                & (offsets[-1] <= num_inputs)
                & jnp.all(offsets[1:] >= offsets[:-1])
            )
        if offsets.dtype != jnp.int32:
            offsets = jnp.clip(offsets, 0, num_inputs).astype(jnp.int32)
        return offsets, ok
    o = np.asarray(offsets)
    if o.shape[0] > 0:
        if o[0] != 0:
            raise RuntimeError(
                "offsets[0] has to be 0, i.e., the first sequence in the mini-batch has to "
                f"start from position 0. However, got {int(o[0])}"
            )
        if o[-1] > num_inputs:
            raise RuntimeError(
                f"offsets[-1] can not be greater than input's length {num_inputs} but got "
                f"offsets[-1] of {int(o[-1])}"
            )
        down = np.flatnonzero(o[1:] < o[:-1])
        if down.size:
            i = int(down[0]) + 1
            raise RuntimeError(
                f"offsets must be non-decreasing, but offsets[{i}] = {int(o[i])} < "
                f"offsets[{i - 1}] = {int(o[i - 1])}"
            )
    return jnp.asarray(o.astype(np.int32)), None  # every value is in [0, len(input)]


def check_per_sample_weights(per_sample_weights, input_shape, weight_dtype, mode):
    """torch's ``per_sample_weights`` checks: same shape as ``input``, mode 'sum' only, and the
    table's dtype. Returns it as an array (or None)."""
    if per_sample_weights is None:
        return None
    per_sample_weights = table(per_sample_weights, "per_sample_weights")
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
