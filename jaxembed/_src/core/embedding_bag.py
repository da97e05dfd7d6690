"""``torch.nn.functional.embedding_bag``: the sum, mean or max of each bag of embedding rows.

torch reference: ``torch.nn.functional.embedding_bag`` and ``aten/src/ATen/native/EmbeddingBag.cpp``
(2.13, CPU). The lookup and its rules (``padding_idx`` in the gradient, ``scale_grad_by_freq``,
``max_norm``) come from :func:`jaxembed._src.core.functional.embed_and_renorm`; this module only
cuts the looked-up rows into bags and reduces each bag.

Bags. A 2-D ``input`` of shape ``(B, L)`` is B bags of L ids. A 1-D ``input`` of N ids is cut by
``offsets``: bag ``b`` holds positions ``offsets[b] <= i < offsets[b + 1]``, the last bag running
to N. With ``include_last_offset`` ``offsets`` has B + 1 entries and positions from
``offsets[B]`` on belong to no bag. The number of bags is static (it is the shape of
``offsets``) while the offsets are data: each position gets the number of its bag (a segment id)
and the bags are reduced with segment sums and maxima. Sums and means (no ``max_norm``) are
instead summed column after column: step ``j`` adds the ``j``-th row of every bag at once, so
XLA fuses the gathers into the additions and never stores the N gathered rows
(:func:`_fixed_bag_sum` for 2-D input, :func:`_offset_bag_sum` for bags cut by offsets, whose
number of steps is the longest bag's length). No loop runs over bags or over ids.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxembed._src.core import functional as F
from jaxembed._src.core import validation


@dataclasses.dataclass(frozen=True)
class _Bags:
    """How the N flattened positions fall into ``num_bags`` bags."""

    num_bags: int  # static
    seg: jax.Array  # (N,) bag of each position; ``num_bags`` marks a position in no bag
    # (num_bags,) number of positions of each bag, padding included (None: the shard-local bags
    # of jaxembed.sharding, which never read it)
    sizes: jax.Array | None
    ok: jax.Array | None  # traced offsets: whether they are valid (None: checked already)
    length: int | None = None  # 2-D input: the fixed bag length

    def sum(self, x: jax.Array) -> jax.Array:
        # One extra segment collects the positions in no bag, so every index is in bounds
        # (checkify reports out-of-bounds scatters). XLA:CPU adds the updates one after another in
        # position order, which is torch's order for float32 bags.
        return jax.ops.segment_sum(x, self.seg, self.num_bags + 1)[: self.num_bags]

    def max(self, x: jax.Array) -> jax.Array:
        return jax.ops.segment_max(x, self.seg, self.num_bags + 1)[: self.num_bags]

    def min(self, x: jax.Array) -> jax.Array:
        return jax.ops.segment_min(x, self.seg, self.num_bags + 1)[: self.num_bags]


def _fixed_bags(num_bags: int, length: int) -> _Bags:
    """``(B, L)`` input: bag ``i // L``."""
    seg = jnp.arange(num_bags * length, dtype=jnp.int32) // max(length, 1)
    return _Bags(num_bags, seg, jnp.full((num_bags,), length, jnp.int32), None, length)


def _offset_bags(offsets: jax.Array, ok, num_inputs: int, include_last_offset: bool) -> _Bags:
    """1-D input cut at ``offsets`` (``validation.offsets``: int32, checked already when concrete;
    ``ok`` says whether traced ones are valid)."""
    num_offsets = offsets.shape[0]
    num_bags = num_offsets - 1 if include_last_offset else num_offsets
    # seg[i] = (number of offsets <= i) - 1: a scatter of ones at the offsets and a prefix sum,
    # O(N + B). With include_last_offset, positions from offsets[B] on get B: no bag.
    marks = (
        jnp.zeros((num_inputs + 1,), jnp.int32)
        .at[offsets]
        .add(1, mode="drop", wrap_negative_indices=False)
    )
    seg = jnp.cumsum(marks[:num_inputs]) - 1
    seg = jnp.where((seg < 0) | (seg > num_bags), num_bags, seg)  # only with invalid offsets
    ends = offsets[1:] if include_last_offset else jnp.append(offsets[1:], num_inputs)
    sizes = ends[:num_bags] - offsets[:num_bags]
    return _Bags(num_bags, seg, sizes, ok)


@jax.custom_jvp
def _nan_unless(ok: jax.Array, out: jax.Array, flag_source: jax.Array) -> jax.Array:
    """``out`` where ``ok``, else NaN everywhere, reported by ``checkify.index_checks``; the
    gradient is zero where not ``ok``.

    The NaN comes from an out-of-bounds fill-mode gather from ``flag_source`` (the offsets), so
    that ``checkify.checkify(f, errors=checkify.index_checks)`` reports invalid offsets the way
    it reports out-of-range ids. Multiplying by 1 keeps every other value's bits. The tangent is
    ``out``'s, zeroed when not ``ok`` (the derivative of ``out * NaN`` would put NaN into the
    table's gradient, and one optimizer step would poison the table).
    """
    index = jnp.where(ok, 0, flag_source.shape[0])
    flag = (
        jnp.ones(flag_source.shape, out.dtype)
        .at[index]
        .get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)
    )
    return out * flag


@_nan_unless.defjvp
def _nan_unless_jvp(primals, tangents):
    ok, out, flag_source = primals
    _, out_dot, _ = tangents
    return _nan_unless(ok, out, flag_source), jnp.where(ok, out_dot, jnp.zeros((), out_dot.dtype))


@jax.custom_jvp
def _divide_by_size(total: jax.Array, size: jax.Array) -> jax.Array:
    """The mean: ``total / size`` in the output dtype (torch divides the finished sum)."""
    # XLA rewrites x / broadcast(y) into x * broadcast(1 / y), which is not x / y; the barrier
    # keeps the division a true division (bit-exact with torch).
    size = jnp.broadcast_to(size.astype(total.dtype)[:, None], total.shape)
    return total / jax.lax.optimization_barrier(size)


@_divide_by_size.defjvp
def _divide_by_size_jvp(primals, tangents):
    # torch's backward multiplies the gradient by dtype(1.0 / bag_size) (the reciprocal
    # computed in double, rounded to the table dtype) instead of dividing by bag_size.
    total, size = primals
    total_dot, _ = tangents
    wide = jax.dtypes.canonicalize_dtype(jnp.float64)  # float64 under x64, else float32
    inv = (1 / size.astype(wide)).astype(total.dtype)
    return _divide_by_size(total, size), total_dot * inv[:, None]


def _bag_max(rows: jax.Array, keep: jax.Array | None, bags: _Bags) -> jax.Array:
    """torch's max: per column, the first row of the bag seeds the maximum and a later row
    replaces it only when strictly greater. So ties go to the first position, a NaN in first
    place is the result and NaNs elsewhere are skipped. Empty bags give 0.

    The result is gathered from the argmax position, so the gradient goes to that position's row
    only (torch's max_indices).
    """
    n, d = rows.shape
    if n == 0:
        return jnp.zeros((bags.num_bags, d), rows.dtype)
    pos = jnp.arange(n, dtype=jnp.int32)
    valid = jnp.ones((n,), bool) if keep is None else keep
    first = bags.min(jnp.where(valid, pos, n))  # (B,) first non-padding position; n if none
    comparable = valid[:, None] & ~jnp.isnan(rows)
    top = bags.max(jnp.where(comparable, rows, -jnp.inf))  # (B, D)
    top_at = jnp.append(top, jnp.full((1, d), jnp.nan, top.dtype), axis=0)[bags.seg]
    hit = comparable & (rows == top_at)
    arg = bags.min(jnp.where(hit, pos[:, None], n))  # (B, D) first position of the max
    seed = rows[jnp.minimum(first, n - 1)]  # (B, D)
    arg = jnp.where(jnp.isnan(seed) & (first < n)[:, None], first[:, None], arg)
    picked = jnp.take_along_axis(rows, jnp.minimum(arg, n - 1), axis=0, mode="promise_in_bounds")
    return jnp.where(arg < n, picked, jnp.zeros((), rows.dtype))


def _summands(rows, ids, per_sample_weights, padding_idx):
    """Each position's term of the bag sum, in the accumulation dtype: the row (times its
    per-sample weight), 0 at padding. Half types: torch accumulates bags in float32 and rounds
    the sum once."""
    acc = jnp.promote_types(rows.dtype, jnp.float32)
    x = rows.astype(acc)
    if per_sample_weights is not None:
        x = x * per_sample_weights.astype(acc)[..., None]
    if padding_idx is not None:
        x = jnp.where((ids == padding_idx)[..., None], jnp.zeros((), acc), x)
    return x


@dataclasses.dataclass(frozen=True)
class _FixedSumRule:
    """Static part of a fixed-length bag sum (hashable for custom_jvp)."""

    padding_idx: int | None
    scale_grad_by_freq: bool


# Bags up to this length are summed in one unrolled expression; longer ones loop over chunks of
# _CHUNK columns (still vectorised over every bag).
_UNROLL = 32
_CHUNK = 16


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fixed_bag_sum(rule: _FixedSumRule, weight, per_sample_weights, ids) -> jax.Array:
    """Sum of the rows of each ``(B, L)`` bag, left to right, without storing the B*L rows.

    Each step gathers one column of rows and adds it to the running sums: XLA fuses the gathers
    into the additions, where a gather followed by a reduction (or a segment sum) writes and
    reads all B*L*D gathered values. The order is torch's (sequential from 0), so bit-exact.
    """
    b, length = ids.shape
    num_embeddings = weight.shape[0]
    # A fill-mode gather (NaN rows for out-of-range ids) costs a select per element inside the
    # fused loop, doubling its time on CPU. So gather in-bounds rows and apply the NaN policy
    # per bag: a bag with an out-of-range id is NaN, as its sum of a NaN row would be.
    oob = None
    if isinstance(ids, jax.core.Tracer):  # concrete ids were checked (torch's error)
        # This gather of flags is what checkify.index_checks reports, like functional.embedding.
        oob = (
            jnp.zeros((num_embeddings,), bool)
            .at[ids]
            .get(mode="fill", fill_value=True, wrap_negative_indices=False)
        )
        ids = jnp.where(oob, 0, ids)

    def add_column(total, j):
        column = jax.lax.dynamic_index_in_dim(ids, j, axis=1, keepdims=False)
        rows = weight.at[column].get(mode="promise_in_bounds")
        psw = None
        if per_sample_weights is not None:
            psw = jax.lax.dynamic_index_in_dim(per_sample_weights, j, axis=1, keepdims=False)
        return total + _summands(rows, column, psw, rule.padding_idx)

    acc = jnp.promote_types(weight.dtype, jnp.float32)
    total = jnp.zeros((b, weight.shape[1]), acc)
    if length <= _UNROLL:
        for j in range(length):
            total = add_column(total, j)
    else:

        def chunk(c, total):
            for k in range(_CHUNK):
                total = add_column(total, c * _CHUNK + k)
            return total

        total = jax.lax.fori_loop(0, length // _CHUNK, chunk, total)
        for j in range(length - length % _CHUNK, length):
            total = add_column(total, j)
    total = total.astype(weight.dtype)
    if oob is not None:
        total = jnp.where(jnp.any(oob, axis=1)[:, None], jnp.nan, total)
    return total


@_fixed_bag_sum.defjvp
def _fixed_bag_sum_jvp(rule, primals, tangents):
    # The tangent is that of the plain formulation: functional.embedding (whose custom_jvp holds
    # the padding and scale_grad_by_freq rules) then the per-bag sum. It is linear in the
    # table's tangent, so reverse mode transposes it into torch's backward.
    weight, per_sample_weights, ids = primals
    weight_dot, psw_dot, _ = tangents

    def plain(weight, per_sample_weights):
        rows = F.embedding(
            ids, weight, rule.padding_idx, scale_grad_by_freq=rule.scale_grad_by_freq
        )
        return jnp.sum(_summands(rows, ids, per_sample_weights, rule.padding_idx), axis=1)

    if per_sample_weights is None:
        _, total_dot = jax.jvp(lambda w: plain(w, None), (weight,), (weight_dot,))
    else:
        _, total_dot = jax.jvp(plain, (weight, per_sample_weights), (weight_dot, psw_dot))
    return _fixed_bag_sum(rule, weight, per_sample_weights, ids), total_dot.astype(weight.dtype)


@dataclasses.dataclass(frozen=True)
class _OffsetSumRule:
    """Static part of a sum over bags cut by offsets (hashable for custom_jvp)."""

    padding_idx: int | None
    scale_grad_by_freq: bool
    include_last_offset: bool


# Rows added per step of the offsets loop (one fused kernel per step): fewer steps re-read and
# re-write the (B, D) running sums less often; more waste more work on bags already finished.
# 8 was the fastest of 4, 8, 16, 32 (benchmarks/investigations/bag_ab.py, logs/bag_ab.txt).
_STEP = 8
# The loop does (number of bags) x (longest bag) steps' work where a segment sum does N: past
# this much work per id a skewed batch (one long bag among short ones) takes the segment sum.
_MAX_WORK_PER_ID = 4


def _bag_sizes(offsets: jax.Array, num_inputs: int, include_last_offset: bool) -> jax.Array:
    """Each bag's number of positions (``_offset_bags(...).sizes`` without the segment ids)."""
    offsets = offsets.astype(jnp.int32)
    num_bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    ends = offsets[1:] if include_last_offset else jnp.append(offsets[1:], num_inputs)
    return ends[:num_bags] - offsets[:num_bags]


def _in_bounds(x: jax.Array, index: jax.Array) -> jax.Array:
    """``x[index]`` for indices known to be in range (no bounds code in the fused loop)."""
    return x.at[index].get(mode="promise_in_bounds", wrap_negative_indices=False)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _offset_bag_sum(rule: _OffsetSumRule, weight, per_sample_weights, ids, offsets):
    """Sum of each bag of a 1-D input cut by ``offsets``, left to right, and each bag's number
    of non-padding positions: ``(total (B, D) in weight's dtype, count (B,) int32)``.

    Step ``j`` adds position ``offsets[b] + j`` of every bag ``b`` still that long, so the
    gathers fuse into the additions (as in :func:`_fixed_bag_sum`) and the N gathered rows are
    never stored; the number of steps is the longest bag's length (a while loop). Each bag is
    summed from 0 in input order, which is torch's order (bit-exact). A batch so skewed that the
    loop would do more than ``_MAX_WORK_PER_ID`` times the work of a segment sum takes the
    segment sum instead (same order, same bits).

    Under jit an out-of-range id makes its bag NaN; the fill-mode gather of flags that detects
    it is what ``checkify.index_checks`` reports, as for ``functional.embedding``.
    """
    num_inputs, num_embeddings = ids.shape[0], weight.shape[0]
    sizes = _bag_sizes(offsets, num_inputs, rule.include_last_offset)
    b, d = sizes.shape[0], weight.shape[1]
    starts = offsets[:b].astype(jnp.int32)
    acc = jnp.promote_types(weight.dtype, jnp.float32)
    check = isinstance(ids, jax.core.Tracer)  # concrete ids were checked (torch's error)
    zeros = (jnp.zeros((b, d), acc), jnp.zeros((b,), jnp.int32), jnp.zeros((b,), bool))

    def out_of_range(ids):
        return (
            jnp.zeros((num_embeddings,), bool)
            .at[ids]
            .get(mode="fill", fill_value=True, wrap_negative_indices=False)
        )

    def add_steps(c, state):
        # Positions c*_STEP .. c*_STEP + _STEP - 1 of every bag: their ids, validity and checks
        # as one (B, _STEP) block (one small kernel), then one fused gather-and-add pass.
        total, count, bad = state
        j = c * _STEP + jnp.arange(_STEP, dtype=jnp.int32)
        valid = j < sizes[:, None]
        pos = jnp.clip(starts[:, None] + j, 0, num_inputs - 1)
        block = jnp.where(valid, _in_bounds(ids, pos), 0)
        if check:
            oob = (block < 0) | (block >= num_embeddings)
            bad = bad | jnp.any(oob, axis=1)
            block = jnp.where(oob, 0, block)
        if rule.padding_idx is not None:
            count = count + jnp.sum(valid & (block != rule.padding_idx), axis=1, dtype=jnp.int32)
        psw = None
        if per_sample_weights is not None:
            psw = _in_bounds(per_sample_weights, pos)
        for k in range(_STEP):
            rows = _in_bounds(weight, block[:, k])
            term = _summands(
                rows, block[:, k], None if psw is None else psw[:, k], rule.padding_idx
            )
            total = jnp.where(valid[:, k, None], total + term, total)
        return total, count, bad

    def loop(_):
        steps = (jnp.max(sizes) + _STEP - 1) // _STEP
        return jax.lax.fori_loop(0, steps, add_steps, zeros)

    def segments(_):
        bags = _offset_bags(offsets, None, num_inputs, rule.include_last_offset)
        safe, bad = ids, zeros[2]
        if check:
            oob = out_of_range(ids)
            safe, bad = jnp.where(oob, 0, ids), bags.max(oob)
        rows = _in_bounds(weight, safe)
        total = bags.sum(_summands(rows, safe, per_sample_weights, rule.padding_idx))
        count = zeros[1]
        if rule.padding_idx is not None:
            count = bags.sum((safe != rule.padding_idx).astype(jnp.int32))
        return total, count, bad

    if num_inputs == 0 or b == 0:
        total, count, bad = zeros
    else:
        work = b * (jnp.max(sizes).astype(jnp.float32) + _STEP)
        total, count, bad = jax.lax.cond(
            work <= float(_MAX_WORK_PER_ID * num_inputs), loop, segments, None
        )
    total = total.astype(weight.dtype)
    if check:
        # The loop tests the ids with compares (cheap inside its fused steps); this gather of
        # flags over all ids is what checkify.index_checks reports.
        bad = bad & jnp.any(out_of_range(ids))
        total = jnp.where(bad[:, None], jnp.nan, total)
    return total, (sizes if rule.padding_idx is None else count)


@_offset_bag_sum.defjvp
def _offset_bag_sum_jvp(rule, primals, tangents):
    # As _fixed_bag_sum_jvp: the tangent of the plain formulation (functional.embedding, whose
    # custom_jvp holds the padding and scale_grad_by_freq rules, then a segment sum).
    weight, per_sample_weights, ids, offsets = primals
    weight_dot, psw_dot, _, _ = tangents
    bags = _offset_bags(offsets, None, ids.shape[0], rule.include_last_offset)

    def plain(weight, per_sample_weights):
        rows = F.embedding(
            ids, weight, rule.padding_idx, scale_grad_by_freq=rule.scale_grad_by_freq
        )
        return bags.sum(_summands(rows, ids, per_sample_weights, rule.padding_idx))

    if per_sample_weights is None:
        _, total_dot = jax.jvp(lambda w: plain(w, None), (weight,), (weight_dot,))
    else:
        _, total_dot = jax.jvp(plain, (weight, per_sample_weights), (weight_dot, psw_dot))
    total, count = _offset_bag_sum(rule, weight, per_sample_weights, ids, offsets)
    count_dot = np.zeros(count.shape, jax.dtypes.float0)
    return (total, count), (total_dot.astype(weight.dtype), count_dot)


def _reduce(rows, ids, bags: _Bags, mode: str, per_sample_weights, padding_idx, num_embeddings):
    """Reduces ``rows`` (N, D) into ``(num_bags, D)``; padding positions take no part."""
    if mode == "max":
        keep = None if padding_idx is None else ids != padding_idx
        out = _bag_max(rows, keep, bags)
        if isinstance(ids, jax.core.Tracer):
            # An out-of-range id under jit has a NaN row, which max would skip: make its bag NaN
            # (the policy of jaxembed.functional.embedding).
            oob = (ids < 0) | (ids >= num_embeddings)
            out = jnp.where(bags.max(oob)[:, None], jnp.nan, out)
        return out
    total = bags.sum(_summands(rows, ids, per_sample_weights, padding_idx)).astype(rows.dtype)
    return _finish(total, ids, bags, mode, padding_idx)


def _finish(total, ids, bags: _Bags, mode: str, padding_idx, count=None):
    """The bag sums as the output of ``mode``: the sum itself, or the mean (``count``: each
    bag's number of non-padding positions, when known already)."""
    if mode == "sum":
        return total
    if count is None and padding_idx is None:
        count = bags.sizes
    elif count is None and bags.length is not None:
        count = jnp.sum(ids.reshape(-1, bags.length) != padding_idx, axis=1, dtype=jnp.int32)
    elif count is None:
        count = bags.sum((ids != padding_idx).astype(jnp.int32))
    return _divide_by_size(total, jnp.maximum(count, 1))


def prepare(
    input,
    weight,
    offsets,
    scale_grad_by_freq,
    mode,
    per_sample_weights,
    include_last_offset,
    padding_idx,
):
    """torch's argument checks, then ``(ids, weight, offsets, per_sample_weights, padding_idx,
    bags)`` as arrays (shared with the row-sharded bags of ``sharding.py``)."""
    weight = validation.table(weight, "weight")
    validation.check_bag_weight(weight)
    ids, offsets = validation.check_bag_inputs(input, offsets, include_last_offset)
    input_shape = tuple(ids.shape)
    validation.check_bag_mode(mode, scale_grad_by_freq)
    psw = validation.check_per_sample_weights(per_sample_weights, input_shape, weight.dtype, mode)
    num_embeddings = weight.shape[0]
    padding_idx = validation.normalize_bag_padding_idx(padding_idx, num_embeddings)
    if offsets is None:
        bags = _fixed_bags(*ids.shape)
    else:
        offsets, ok = validation.offsets(offsets, ids.shape[0])
        bags = _offset_bags(offsets, ok, ids.shape[0], include_last_offset)
    ids = validation.ids(ids, num_embeddings, bag=True)
    return ids, weight, offsets, psw, padding_idx, bags


def embedding_bag_and_renorm(
    input,
    weight,
    offsets=None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    per_sample_weights=None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`embedding_bag` plus the table torch holds afterwards (see ``embed_and_renorm``)."""
    ids, weight, offsets, psw, padding_idx, bags = prepare(
        input,
        weight,
        offsets,
        scale_grad_by_freq,
        mode,
        per_sample_weights,
        include_last_offset,
        padding_idx,
    )
    # The row-sharded bags are jaxembed.sharding.vocab_parallel_embedding_bag (the modules
    # dispatch there); this plain path would fail deep in JAX on them.
    validation.check_rows_unsharded(
        weight,
        "jaxembed.functional.embedding_bag",
        "use jaxembed.sharding.vocab_parallel_embedding_bag, or the modules "
        "(jaxembed.EmbeddingBag, jaxembed.linen.EmbeddingBag), which dispatch to it.",
    )
    num_embeddings = weight.shape[0]
    if offsets is None and mode != "max" and max_norm is None and num_embeddings > 0:
        # Fixed-length bags: the fused sum (same numbers and gradients, fewer bytes moved).
        rule = _FixedSumRule(padding_idx, bool(scale_grad_by_freq))
        total = _fixed_bag_sum(rule, weight, psw, ids)
        out = _finish(total, ids.reshape(-1), bags, mode, padding_idx)
        return out, weight
    if offsets is not None and mode != "max" and max_norm is None and num_embeddings > 0:
        # Bags cut by offsets: the fused sum too (no stored N x D rows).
        offset_rule = _OffsetSumRule(
            padding_idx, bool(scale_grad_by_freq), bool(include_last_offset)
        )
        total, count = _offset_bag_sum(offset_rule, weight, psw, ids, offsets)
        out = _finish(total, ids, bags, mode, padding_idx, count)
        if bags.ok is not None:
            out = _nan_unless(bags.ok, out, offsets)
        return out, weight
    ids = ids.reshape(-1)
    rows, new_weight = F.embed_and_renorm(
        ids, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq
    )
    psw = None if psw is None else psw.reshape(-1)
    out = _reduce(rows, ids, bags, mode, psw, padding_idx, num_embeddings)
    if bags.ok is not None:
        out = _nan_unless(bags.ok, out, offsets)
    return out, new_weight


def embedding_bag(
    input,
    weight,
    offsets=None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    mode: str = "mean",
    per_sample_weights=None,
    include_last_offset: bool = False,
    padding_idx: int | None = None,
) -> jax.Array:
    """``torch.nn.functional.embedding_bag``: the sum, mean or max of each bag of rows.

    Args:
      input: integer ids, ``(B, L)`` (B bags of L ids) or ``(N,)`` cut into bags by ``offsets``.
      weight: the ``(num_embeddings, D)`` table, a floating dtype.
      offsets: 1-D integer starts of the bags in a 1-D ``input`` (None for 2-D input). Must
        start at 0, never decrease, and not exceed ``N``; ``offsets[b] == offsets[b + 1]`` is an
        empty bag.
      max_norm, norm_type: torch's renorm of the referenced rows (all of ``input``, padding and
        positions in no bag included) before the reduction; the gradient is not scaled. The
        renormed table is what :func:`embedding_bag_and_renorm` and the modules return/store.
      scale_grad_by_freq: divide each position's gradient by its id's count in the whole input
        (not with ``mode="max"``). This is torch's documented rule; torch 2.13's CPU
        EmbeddingBag divides by a wrong count (pytorch#190063), ``Embedding`` does it right.
      mode: ``"sum"``, ``"mean"`` (default, as torch) or ``"max"``.
      per_sample_weights: ``input``-shaped weights multiplying each row before the sum
        (``mode="sum"`` only), the table's dtype. Differentiable.
      include_last_offset: ``offsets`` has B + 1 entries, the last one the end of the last bag;
        ids after it belong to no bag: no part in the output, no gradient (they still count for
        ``max_norm`` and ``scale_grad_by_freq``, as in torch). That is torch's float32/half
        forward without ``padding_idx``; torch's other paths (padding_idx, float64, max, every
        backward) put them in the last bag, which makes its forward and backward disagree
        (pytorch#52851). Static-shape code can pad the ids and mark the end this way.
      padding_idx: positions holding this id are left out of the sum, of the mean's count and of
        the max, and get no gradient. A bag of padding only (or an empty bag) gives zeros.
        ``-num_embeddings <= padding_idx < num_embeddings``, negative counts from the end.

    Returns:
      ``(B, D)`` in ``weight``'s dtype. bfloat16/float16 sums are accumulated in float32 and
      rounded once (torch). The mean is the rounded sum divided by the count; its gradient is
      torch's ``grad * (1 / count)``. The max is per column, ties to the first position (its
      row gets the gradient).

    Errors: torch's exception types and messages for bad ranks, modes, offsets (concrete), ids
    (concrete: ``RuntimeError: Index i of input takes value v which is not in the valid range
    [0, V)``), ``per_sample_weights`` and ``padding_idx``. Decreasing offsets raise a
    RuntimeError of ours (torch 2.13 fails with an internal assertion or crashes).

    Under ``jax.jit`` ids and offsets are data and cannot raise. An out-of-range id makes its
    bag NaN; invalid offsets (``offsets[0] != 0``, decreasing, beyond N) make the whole output
    NaN. ``checkify.checkify(f, errors=checkify.index_checks)`` reports both.

    Deliberate differences: any integer dtype for ids and offsets (float ids raise TypeError
    instead of torch's RuntimeError); a ``(B, 0)`` input gives B zero rows (torch fails in
    ``arange``); ids after an ``include_last_offset`` end are in no bag on every path (above);
    no ``sparse`` argument here.

    Exactness on CPU (tests in ``parity_tests/test_embedding_bag.py``): float32 outputs are
    bit-exact in every mode (sums in input order, as torch's); bfloat16/float16 sums are
    accumulated in float32 and rounded once, bit-exact except torch's FBGEMM fast path (no
    ``padding_idx``), which rounds exact ties away from even (1 ulp). The max gradient is
    bit-exact; sum/mean gradients, ``per_sample_weights`` and ``scale_grad_by_freq`` are within
    1.5 eps times the sum of the magnitudes (torch adds with fused multiply-adds in sorted-id
    order).
    """
    out, _ = embedding_bag_and_renorm(
        input,
        weight,
        offsets,
        max_norm,
        norm_type,
        scale_grad_by_freq,
        mode,
        per_sample_weights,
        include_last_offset,
        padding_idx,
    )
    return out
