"""Sparse optimizers with torch's semantics: ``SGD``, ``SparseAdam`` and ``Adagrad`` on
:class:`~jaxembed._src.core.sparse.SparseRows` gradients.

optax-style: ``init(tables) -> state`` and ``update(row_grads, state, tables) -> (new_tables,
new_state)`` on pytrees (one table per leaf, one ``SparseRows`` per table), pure and ``jit``-able.
Deliberate difference from optax: ``update`` returns the new tables, not updates to add. A dense
update would be a V x D temporary, and torch's step rounds ``p + (-lr) * g`` once (an FMA),
which adding a separately rounded update cannot reproduce. Only the rows in the gradient are read
and written (plus the whole momentum buffer for SGD with momentum, as torch): under
``jax.jit(..., donate_argnums=...)`` the tables and the state are updated in place.

torch reference: ``torch/optim/{sgd,sparse_adam,adagrad,_functional}.py`` (2.13) and
``reference/torch-semantics.md`` section 5.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed._src.core import sharding
from jaxembed._src.core.sparse import SparseRows


class SparseUpdate(Protocol):
    """``update(row_grads, state, tables, table_specs=None) -> (new_tables, new_state)``."""

    def __call__(
        self, row_grads: Any, state: Any, tables: Any, /, table_specs: Any = None
    ) -> tuple[Any, Any]: ...


class SparseGradientTransformation(NamedTuple):
    """A sparse optimizer: ``init(tables)`` and
    ``update(row_grads, state, tables, table_specs=None)``."""

    init: Callable[[Any], Any]
    update: SparseUpdate


# ---------------------------------------------------------------------------------------------
# Row kernels
# ---------------------------------------------------------------------------------------------


# The square root of SparseAdam and Adagrad. A module attribute so that the parity tests can
# substitute torch's CPU sqrt (MKL, not correctly rounded) and check every other bit.
_sqrt = jnp.sqrt


def _rounder(step: jax.Array, dtype):
    """A function that rounds a product on its own, as torch does before the next add.

    XLA:CPU contracts ``a * b + c`` into one FMA (one rounding) and removes optimization
    barriers. Adding ``-0.0`` keeps every value (``x + -0.0 == x``, signed zeros included) and
    ``fma(a, b, -0.0)`` is the rounded product, so ``a * b + z`` is the rounded product whether
    or not it is contracted; ``z`` is computed from the runtime step count (never negative) so
    that no compiler can fold the addition away.
    """
    z = -(step < 0).astype(dtype)  # -0.0, opaque
    return lambda x: x + z


def _wide_float():
    # torch computes scalar step sizes in Python double. float64 when jax_enable_x64 is on
    # (exact), float32 otherwise (may differ from torch's rounded scalar by 1 ulp).
    return jax.dtypes.canonicalize_dtype(jnp.float64)


def _valid(ids: jax.Array, num_embeddings: int) -> jax.Array:
    return (ids >= 0) & (ids < num_embeddings)


def _scatter_fma(table: jax.Array, ids: jax.Array, values: jax.Array, alpha) -> jax.Array:
    """``table[ids[i]] = fma(values[i], alpha, table[ids[i]])`` for each ``i``, in order.

    torch's ``param.add_(sparse_grad, alpha=alpha)`` applies each uncoalesced entry on its own,
    one rounding each (``ufunc/add.h``: ``vec::fmadd``). A scatter-add of ``values * alpha``
    rounds the product first; so this is a scatter whose combiner is ``x + y * alpha``
    (``lax.scatter_p`` with a custom update computation, the mechanism behind
    ``lax.scatter_apply``). XLA:CPU applies the updates in input order and contracts the
    combiner to an FMA (pinned by the parity tests); other backends apply them in an unspecified
    order.

    A concrete ``alpha`` is compiled into the combiner. A traced one (a learning-rate schedule's
    value under ``jit``) cannot be: XLA's combiner takes no operands besides the two values. Then
    the products ``values * alpha`` are rounded first and scatter-added in the same order, one
    extra rounding per entry (``|error| <= 2**-24 |lr g|`` for float32 per entry; the measured
    bound over trajectories is in ``tolerances.py``).
    """
    if isinstance(alpha, jax.core.Tracer):
        updates = values.astype(table.dtype) * alpha.astype(table.dtype)
        return table.at[ids].add(updates, mode="drop", wrap_negative_indices=False)
    alpha = np.asarray(alpha, table.dtype)
    combiner = jax.make_jaxpr(lambda x, y: x + y * alpha)(
        jnp.zeros((), table.dtype), jnp.zeros((), table.dtype)
    )
    dnums = jax.lax.ScatterDimensionNumbers(
        update_window_dims=(1,), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
    )
    return jax.lax.scatter_p.bind(
        table,
        ids[:, None],
        values.astype(table.dtype),
        update_jaxpr=combiner.jaxpr,
        update_consts=tuple(combiner.consts),
        dimension_numbers=dnums,
        indices_are_sorted=False,
        unique_indices=False,
        mode=jax.lax.GatherScatterMode.FILL_OR_DROP,
    )


class _Coalesced(NamedTuple):
    ids: jax.Array  # (n,) distinct ids ascending, then num_embeddings in unused slots
    values: jax.Array  # (n, D) the sum of each id's rows
    valid: jax.Array  # (n,) bool: slot holds a real row


def _coalesce(grad: SparseRows, num_embeddings: int) -> _Coalesced:
    """torch's ``coalesce()``: one slot per distinct id (ascending), its rows summed.

    Sums run in input order (XLA:CPU's sequential scatter-add, started from -0.0 so that a single
    entry is copied bit for bit). torch sums in the order of its (unstable) sort's permutation,
    which is input order while the gradient has at most 16 entries (in total, not per id) and
    differs beyond: then an id's sum is within ``(k - 1) * eps * sum|g|`` of torch's (k: its
    count), the bound for two orders of one sum (measured in ``test_bad_inputs.py``).
    """
    ids = jnp.where(_valid(grad.ids, num_embeddings), grad.ids, num_embeddings)
    n = ids.shape[0]
    if n == 0:
        return _Coalesced(ids, grad.values, jnp.zeros((0,), bool))
    order = jnp.argsort(ids, stable=True)
    sorted_ids = ids[order]
    first = jnp.concatenate([jnp.ones((1,), bool), sorted_ids[1:] != sorted_ids[:-1]])
    slot_sorted = jnp.cumsum(first) - 1
    slot = jnp.zeros((n,), jnp.int32).at[order].set(slot_sorted.astype(jnp.int32))
    # Every entry of a slot writes the same id: deterministic on every backend.
    uids = jnp.full((n,), num_embeddings, ids.dtype).at[slot_sorted].set(sorted_ids)
    values = jnp.full(grad.values.shape, -0.0, grad.values.dtype).at[slot].add(grad.values)
    return _Coalesced(uids, values, uids < num_embeddings)


def _slot_sources(c: _Coalesced) -> tuple[jax.Array, jax.Array]:
    """Per slot: the row it writes and the slot whose computation it repeats.

    Valid slots form a prefix. An unused slot repeats slot 0 exactly (same row, same inputs, so
    the same bits): duplicate writes are then identical and the scatter is deterministic, with no
    out-of-range index. With no valid slot, slot 0 targets row 0 and writes it back unchanged.
    """
    n = c.ids.shape[0]
    src = jnp.where(c.valid, jnp.arange(n), 0)
    rows = jnp.where(c.valid[src], c.ids[src], 0)
    return rows, src


def _coalesced_rows(grad, table, maximize: bool, name: str):
    """The adaptive optimizers' common start: check ``grad``, negate it for ``maximize``,
    coalesce duplicates (torch's ``coalesce()``), and return ``(coalesced, rows, src, values)``
    with one gradient row per slot (see :func:`_slot_sources`)."""
    _check_grad(grad, table, name)
    g = -grad.values if maximize else grad.values
    c = _coalesce(SparseRows(grad.ids, g.astype(table.dtype)), table.shape[0])
    rows, src = _slot_sources(c)
    return c, rows, src, c.values[src]


def _update_rows(tables, rows, src, valid, compute):
    """Gathers ``tables`` at ``rows``, applies ``compute`` and writes back the valid slots."""
    old = [t[rows] for t in tables]
    new = compute(*old)
    keep = valid[src][:, None]
    return [t.at[rows].set(jnp.where(keep, x, o)) for t, x, o in zip(tables, new, old)]


def _check_grad(grad, table, name: str):
    if not isinstance(grad, SparseRows):
        if name == "SparseAdam":
            raise RuntimeError(
                "SparseAdam does not support dense gradients, please consider Adam instead"
            )
        raise TypeError(
            f"sparse {name} takes SparseRows gradients (jaxembed.sparse); got "
            f"{type(grad).__name__}. For dense gradients use optax."
        )
    n = grad.ids.shape[0]
    if grad.values.shape != (n, table.shape[1]):
        raise ValueError(
            f"SparseRows values must have shape ({n}, {table.shape[1]}) for a table of shape "
            f"{table.shape}; got {grad.values.shape}"
        )


def _check_state(name: str, table, **arrays) -> None:
    """Each table-sized state array must have been made for this table (same shape and dtype):
    a state made for a (4, 2) table would otherwise be gathered out of bounds and clamped."""
    for what, a in arrays.items():
        if a is None:
            continue
        if tuple(a.shape) != tuple(table.shape) or a.dtype != table.dtype:
            raise ValueError(
                f"{name} state '{what}' has shape {tuple(a.shape)} and dtype {a.dtype}, but the "
                f"table has shape {tuple(table.shape)} and dtype {table.dtype}: the state was "
                "made by init() for another table (init the optimizer on the tables it updates)"
            )


def _check_float_table(name: str, table) -> None:
    # An integer table would round every step to zero (lr * g < 1): refuse, as SparseAdam does.
    if not jnp.issubdtype(table.dtype, jnp.floating):
        raise ValueError(f"{name} requires floating point tables; got dtype {table.dtype}")


def _check_lr(lr, positive: bool = False):
    """torch's learning-rate check for a number; an optax schedule (a callable of the step
    count) is evaluated per update by :func:`_lr_at`."""
    if callable(lr):
        return lr
    if isinstance(lr, jax.core.Tracer):
        raise TypeError(
            "lr must be a number or an optax schedule (a function of the step count); got a "
            "traced value. Pass a schedule to vary it inside jit."
        )
    if (lr <= 0.0) if positive else (lr < 0.0):
        raise ValueError(f"Invalid learning rate: {lr}")
    return float(lr)


def _lr_at(lr, count):
    """The learning rate of the update that follows ``count`` updates (optax's convention: a
    schedule is evaluated on the number of updates applied before, 0 for the first)."""
    return lr(count) if callable(lr) else lr


def _per_table(init_one, update_one) -> SparseGradientTransformation:
    """Lifts a one-table optimizer to pytrees of tables (``SparseRows`` leaves in the grads).

    ``update(grads, state, tables, table_specs=None)``: a table whose rows are split over mesh
    axes is updated row-sharded, each device its own rows (``sharding.vocab_parallel_sparse_
    update``, the same step row for row). Its layout is read from the table (an Explicit mesh
    types it; a concrete array carries it) or, under an Auto mesh inside ``jit``, from
    ``table_specs``: a tree like ``tables`` of ``PartitionSpec`` (or None) leaves, e.g.
    ``nn.get_partition_spec(variables)["sparse_params"]``.
    """

    def init(tables):
        return jax.tree.map(init_one, tables)

    def update_table(grad, state, table, spec):
        vocab_axes = sharding.vocab_parallel_axes(table, spec, None)
        if vocab_axes is None:
            return update_one(grad, state, table)
        return sharding.vocab_parallel_sparse_update(
            update_one, grad, state, table, vocab_axis=vocab_axes
        )

    def update(grads, state, tables, table_specs=None):
        leaves, treedef = jax.tree.flatten(grads, is_leaf=lambda x: isinstance(x, SparseRows))
        # Any: jaxlib ships its compiled PyTreeDef (jaxlib._jax) without a stub, so mypy cannot
        # see flatten_up_to / unflatten.
        structure: Any = treedef
        specs = (
            [None] * len(leaves) if table_specs is None else structure.flatten_up_to(table_specs)
        )
        out = [
            update_table(g, s, t, spec)
            for g, s, t, spec in zip(
                leaves, structure.flatten_up_to(state), structure.flatten_up_to(tables), specs
            )
        ]
        return structure.unflatten([o[0] for o in out]), structure.unflatten([o[1] for o in out])

    return SparseGradientTransformation(init, update)


def _scalar(x, dtype):
    if isinstance(x, jax.Array):  # a schedule's value
        return x.astype(dtype)
    return np.asarray(x, dtype)  # torch rounds a Python scalar to the tensor's dtype


# ---------------------------------------------------------------------------------------------
# SGD
# ---------------------------------------------------------------------------------------------


class SGDState(NamedTuple):
    momentum_buffer: jax.Array | None  # V x D, dense (torch's sparse buffer covers every row seen)
    started: jax.Array | None  # torch creates the buffer on the first step (no dampening)
    # updates applied so far, kept only for a schedule's lr. The public name shadows
    # tuple.count, which mypy reports for any NamedTuple field called count.
    count: jax.Array | None = None  # type: ignore[assignment]


def sgd(
    lr: float = 1e-3,
    momentum: float = 0.0,
    dampening: float = 0.0,
    weight_decay: float = 0.0,
    nesterov: bool = False,
    *,
    maximize: bool = False,
) -> SparseGradientTransformation:
    """``torch.optim.SGD`` on sparse gradients.

    Without momentum: each entry, duplicates included, is applied on its own in input order,
    ``p[k] = fma(g, -lr, p[k])``: bit-exact with torch on CPU (it is not the dense step, which
    sums duplicates first). Cost O(n * D).

    With momentum: torch's buffer is a sparse tensor whose entries all decay every step, so it
    soon covers every row ever seen, and every step updates all those rows. Here the buffer is a
    dense V x D array with the same mathematics (``buf = momentum * buf + (1 - dampening) * g``,
    the first step ``buf = g``; nesterov ``p -= lr * (g + momentum * buf)``): each step costs
    O(V * D), in place when donated. torch applies the buffer's uncoalesced entries one by one,
    so the last bits differ (a measured bound is in the parity tests).

    ``weight_decay`` raises torch's error (torch cannot add a dense parameter to a sparse grad).

    ``lr``: a number, or an optax schedule (``optax.exponential_decay(...)``, any function of the
    step count), evaluated on the number of updates applied before, as optax does. A number (and
    a schedule whose value is a Python number, such as ``optax.constant_schedule``) is compiled
    into the FMA scatter: bit-exact. A traced schedule value cannot be (see
    :func:`_scatter_fma`): each entry's ``lr * g`` is then rounded before it is added, one extra
    rounding per entry (measured bound in ``jaxembed/_src/tolerances.py``).
    """
    lr = _check_lr(lr)
    if momentum < 0.0:
        raise ValueError(f"Invalid momentum value: {momentum}")
    if weight_decay < 0.0:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")
    if weight_decay != 0:
        raise RuntimeError(
            "add(sparse, dense) is not supported. Use add(dense, sparse) instead. "
            "(torch.optim.SGD with weight_decay cannot take sparse gradients)"
        )

    scheduled = callable(lr)

    def init_one(table):
        _check_float_table("SGD", table)
        count = jnp.zeros((), jnp.int32) if scheduled else None
        if momentum == 0:
            return SGDState(None, None, count)
        return SGDState(jnp.zeros_like(table), jnp.zeros((), bool), count)

    def update_one(grad, state, table):
        _check_grad(grad, table, "SGD")
        num_embeddings = table.shape[0]
        valid = _valid(grad.ids, num_embeddings)
        ids = jnp.where(valid, grad.ids, 0)  # removed: fma(0, -lr, p) = p, exactly
        g = -grad.values if maximize else grad.values
        g = jnp.where(valid[:, None], g, 0).astype(table.dtype)
        if momentum == 0 and not scheduled:  # stateless: any empty state is accepted
            return _scatter_fma(table, ids, g, -lr), state
        neg_lr = -_lr_at(lr, state.count)
        count = None if state.count is None else state.count + 1
        if momentum == 0:
            return _scatter_fma(table, ids, g, neg_lr), state._replace(count=count)
        _check_state("SGD", table, momentum_buffer=state.momentum_buffer)
        buf = jnp.where(state.started, state.momentum_buffer * _scalar(momentum, table.dtype), 0)
        if dampening == 0:
            buf = _scatter_fma(buf, ids, g, 1.0)
        else:
            # First step: torch's buf = grad.clone() (no dampening). Two in-place scatters; the
            # masked one adds fma(-0.0, alpha, x) = x. (A lax.cond would copy the buffer.)
            buf = _scatter_fma(buf, ids, jnp.where(state.started, g, -0.0), 1 - dampening)
            buf = _scatter_fma(buf, ids, jnp.where(state.started, -0.0, g), 1.0)
        if nesterov:
            table = table + (buf * _scalar(momentum, table.dtype)) * _scalar(neg_lr, table.dtype)
            table = _scatter_fma(table, ids, g, neg_lr)
        else:
            table = table + buf * _scalar(neg_lr, table.dtype)
        return table, SGDState(buf, jnp.ones((), bool), count)

    return _per_table(init_one, update_one)


# ---------------------------------------------------------------------------------------------
# SparseAdam
# ---------------------------------------------------------------------------------------------


class SparseAdamState(NamedTuple):
    step: jax.Array  # per table, counts every update (all-padding ones included), as torch
    exp_avg: jax.Array
    exp_avg_sq: jax.Array


def sparse_adam(
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    *,
    maximize: bool = False,
) -> SparseGradientTransformation:
    """``torch.optim.SparseAdam``: lazy Adam on the rows present in the gradient.

    Per update: the step count ``t`` (one per table) is incremented, even when every position is
    padding. The gradient is coalesced (duplicates summed); for each present row, in torch's
    order of operations::

        m += f(1-b1) * (g - m);  v += f(1-b2) * (g*g - v)
        p += f(-lr * sqrt(1 - b2**t) / (1 - b1**t)) * (m / (sqrt(v) + eps))

    (``f`` rounds to the table's dtype; ``eps`` is added to ``sqrt(v)``, not bias-corrected).
    Absent rows keep ``p``, ``m`` and ``v`` untouched (no decay). Cost O(n * D + n log n).

    Differences in the last bits: torch's CPU float32 ``sqrt`` (MKL) is 1 ulp off the correctly
    rounded one on ~20% of elements, the step size is computed in float32 unless
    ``jax_enable_x64`` is on, and with more than 16 entries in the gradient torch sums
    duplicates in its sort's order (see :func:`_coalesce`; bounds measured in the parity tests).

    ``lr``: a number, or an optax schedule of the step count (optax's convention: evaluated on
    the number of updates applied before); its value enters the step size exactly.
    """
    lr = _check_lr(lr, positive=True)
    if not 0.0 < eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if not 0.0 <= betas[0] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
    if not 0.0 <= betas[1] < 1.0:
        raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
    beta1, beta2 = betas

    def init_one(table):
        _check_float_table("SparseAdam", table)
        return SparseAdamState(
            jnp.zeros((), jnp.int32), jnp.zeros_like(table), jnp.zeros_like(table)
        )

    def update_one(grad, state, table):
        c, rows, src, gv = _coalesced_rows(grad, table, maximize, "SparseAdam")
        _check_state("SparseAdam", table, exp_avg=state.exp_avg, exp_avg_sq=state.exp_avg_sq)
        dtype = table.dtype
        step = state.step + 1
        wide = _wide_float()
        t = step.astype(wide)
        # 1 - beta**t as -expm1(t * log(beta)), log taken in double on the host: in float32,
        # 1 - 0.999**t would lose half its digits to cancellation.
        bc1 = -jnp.expm1(t * np.asarray(math.log(beta1) if beta1 > 0 else -np.inf, wide))
        bc2 = -jnp.expm1(t * np.asarray(math.log(beta2) if beta2 > 0 else -np.inf, wide))
        step_size = jnp.asarray(_lr_at(lr, state.step), wide) * jnp.sqrt(bc2) / bc1
        neg_step = (-step_size).astype(dtype)

        _rounded = _rounder(step, dtype)

        def compute(p, m, v):
            # _rounded: torch rounds these products before the next add; XLA would fuse them
            # into FMAs.
            upd_m = _rounded((gv - m) * _scalar(1 - beta1, dtype))
            upd_v = _rounded((_rounded(gv * gv) - v) * _scalar(1 - beta2, dtype))
            m_new = m + upd_m
            v_new = v + upd_v
            denom = _sqrt(v_new) + _scalar(eps, dtype)
            return p + _rounded(neg_step * (m_new / denom)), m_new, v_new

        p, m, v = _update_rows(
            [table, state.exp_avg, state.exp_avg_sq], rows, src, c.valid, compute
        )
        return p, SparseAdamState(step, m, v)

    return _per_table(init_one, update_one)


# ---------------------------------------------------------------------------------------------
# Adagrad
# ---------------------------------------------------------------------------------------------


class AdagradState(NamedTuple):
    step: jax.Array
    sum: jax.Array  # dense V x D, as torch's state_sum


def adagrad(
    lr: float = 1e-2,
    lr_decay: float = 0.0,
    weight_decay: float = 0.0,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-10,
    *,
    maximize: bool = False,
) -> SparseGradientTransformation:
    """``torch.optim.Adagrad`` on sparse gradients (torch's sparse branch).

    Per update: ``t += 1``, ``clr = lr / (1 + (t - 1) * lr_decay)``; the gradient is coalesced;
    for each present row ``s += g*g``, ``p = fma(g / (sqrt(s) + eps), -clr, p)``. Absent rows
    are untouched. ``weight_decay`` raises torch's error. Same last-bit caveats as
    :func:`sparse_adam` (sqrt, float32 ``clr`` without x64, the coalesce order beyond 16
    entries). ``lr``: a number or an optax schedule, as in :func:`sparse_adam`.
    """
    lr = _check_lr(lr)
    if not 0.0 <= lr_decay:
        raise ValueError(f"Invalid lr_decay value: {lr_decay}")
    if not 0.0 <= weight_decay:
        raise ValueError(f"Invalid weight_decay value: {weight_decay}")
    if not 0.0 <= initial_accumulator_value:
        raise ValueError(f"Invalid initial_accumulator_value value: {initial_accumulator_value}")
    if not 0.0 <= eps:
        raise ValueError(f"Invalid epsilon value: {eps}")
    if weight_decay != 0:
        raise RuntimeError("weight_decay option is not compatible with sparse gradients")

    def init_one(table):
        _check_float_table("Adagrad", table)
        return AdagradState(
            jnp.zeros((), jnp.int32), jnp.full_like(table, initial_accumulator_value)
        )

    def update_one(grad, state, table):
        c, rows, src, gv = _coalesced_rows(grad, table, maximize, "Adagrad")
        _check_state("Adagrad", table, sum=state.sum)
        dtype = table.dtype
        step = state.step + 1
        wide = _wide_float()
        clr = jnp.asarray(_lr_at(lr, state.step), wide) / (1 + (step.astype(wide) - 1) * lr_decay)
        neg_clr = (-clr).astype(dtype)

        _rounded = _rounder(step, dtype)

        def compute(p, s):
            s_new = s + _rounded(gv * gv)  # torch: g.pow(2), then a separate add
            std = _sqrt(s_new) + _scalar(eps, dtype)
            return p + (gv / std) * neg_clr, s_new

        p, s = _update_rows([table, state.sum], rows, src, c.valid, compute)
        return p, AdagradState(step, s)

    return _per_table(init_one, update_one)
