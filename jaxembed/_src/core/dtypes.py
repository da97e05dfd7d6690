"""flax's dtype promotion for the lookup and ``attend``, once for the NNX and Linen modules.

flax's ``Embed`` calls its ``promote_dtype`` function on ``(embedding,)`` with ``dtype=self.dtype,
inexact=False`` before ``jnp.take`` (the whole table is cast), and on ``(query, embedding)`` with
``dtype=self.dtype`` before ``attend``'s dot. jaxembed calls the same function with the same
arguments, with one change in the lookup: it is applied to the gathered rows, not to the table.
torch's rules (max_norm's renorm, the gradient's scatter-add) then run in the table's dtype, so
the rows torch returns are gathered bit-exactly, and for an elementwise promotion (flax's, any
cast) the values equal flax's. The gradient reaching the table is accumulated in its own dtype
(flax accumulates it in ``dtype``, then casts).

The functions take the promotion in the NNX convention, ``promote_dtype(args_tuple, *, dtype,
inexact)``; :func:`from_variadic` adapts Linen's ``promote_dtype(*args, dtype, inexact)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax.nnx.nn import dtypes as _nnx_dtypes

#: flax's default (``flax.nnx.nn.dtypes.promote_dtype``): ``dtype`` given -> cast to it; None ->
#: ``jnp.result_type`` of the arguments, lifted to float32 when ``inexact`` and not inexact.
promote_dtype = _nnx_dtypes.promote_dtype


def from_variadic(fn: Callable) -> Callable:
    """A Linen-convention ``promote_dtype(*args, dtype=, inexact=)`` in the NNX convention."""
    return lambda args, **kwargs: tuple(fn(*args, **kwargs))


def promote_rows(rows: jax.Array, dtype: Any, promote: Callable = promote_dtype) -> jax.Array:
    """The looked-up rows in the module's ``dtype``: flax's lookup promotion, on the rows."""
    (rows,) = promote((rows,), dtype=dtype, inexact=False)
    return rows
