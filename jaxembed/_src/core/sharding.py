"""Vocab-parallel (row-sharded) tables: torch's embedding rules on a ``jax.sharding`` mesh.

The table's rows are split over one or more mesh axes (the "vocab" axes, e.g. ``P("model",
None)``); the ids are split over other axes (e.g. the batch over ``"data"``). Every device looks
up only the ids that fall in its own rows, writes zeros for the others, and one ``psum`` over
the vocab axes (an all-reduce of the output, ``N x D`` per data shard) assembles the rows. This is
Megatron's ``VocabParallelEmbedding``, written with ``jax.shard_map``.

Why shard_map and not GSPMD's ``table.at[ids].get(out_sharding=...)``: both compile to one
all-reduce under an Explicit mesh and, on the 8-device CPU mesh, run in the same time (medians
within noise, ``benchmarks/bench_sharding.py``), so speed does not decide. What does, measured
on jax 0.10.2: ``.get(out_sharding=)`` raises under an Auto mesh, and there (``jnp.take`` plus
a sharding constraint) GSPMD's gradient, its layout left to propagation, all-reduced the full
``V x D`` table where shard_map's stays ``V/k x D``; with shard_map the
collective pattern is fixed by construction rather than by sharding propagation, and the rules
stay ours: the gradient rule (padding_idx, scale_grad_by_freq with global counts) plugs in, the
rows are summed as same-width unsigned integers so the forward is a bit-exact copy (a float
all-reduce turns ``-0.0`` entries into ``+0.0``), and out-of-range ids give NaN rows instead of
the zero rows a masked lookup would otherwise produce.

Every rule is the functional core's: the gradient is ``functional._lookup``'s custom_jvp (padding
mask, 1/count) with this module's gather and global counts plugged in, and max_norm uses
``functional.renorm_scale`` on the local rows.

Also here: ``sparse=True`` (the sparse optimizers update each device's own rows,
:func:`vocab_parallel_sparse_update`) and EmbeddingBag (per-device partial bags, one reduction
over the vocab axes, :func:`vocab_parallel_embedding_bag_and_renorm`).

Limitation: ``jax.experimental.checkify`` cannot transform ``shard_map`` in jax 0.10.2: it
raises a ValueError about the context mesh for any shard_map whose body has a checked operation
or that follows one, whatever the error set. So out-of-range ids are reported by
:func:`count_out_of_range`, not by checkify; they still give NaN rows and a dropped gradient.
(GSPMD would not help under an Explicit mesh: checkify raises on its sharded gather too; only
Auto-mesh GSPMD is checkable.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxembed._src.core import embedding_bag as EB
from jaxembed._src.core import functional as F
from jaxembed._src.core import validation

# ---------------------------------------------------------------------------------------------
# Specs and meshes
# ---------------------------------------------------------------------------------------------


def _axes(entry) -> tuple[str, ...]:
    """The mesh axes of one PartitionSpec entry (None, a name, or a tuple of names)."""
    if entry is None or entry is P.UNCONSTRAINED:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def _entry(axes: tuple[str, ...]):
    return None if not axes else axes[0] if len(axes) == 1 else axes


def row_axes(spec) -> tuple[str, ...]:
    """The mesh axes that split a table's rows, from its PartitionSpec (or metadata tuple).

    Raises ``NotImplementedError`` when the feature (column) axis is sharded: a vocab-parallel
    table keeps whole rows on a device (max_norm needs each row's full norm).
    """
    if spec is None:
        return ()
    spec = tuple(spec)
    if len(spec) > 1 and _axes(spec[1]):
        raise NotImplementedError(
            f"vocab-parallel tables shard rows only; got the table sharding {P(*spec)} with the "
            "feature axis sharded. Use P(vocab_axes, None)."
        )
    return _axes(spec[0]) if spec else ()


def _context_mesh():
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh.empty else mesh


def _resolve_mesh(mesh, weight):
    if mesh is not None:
        return mesh
    mesh = _context_mesh()
    if mesh is None:  # no mesh context: the table's own mesh (typed under an Explicit mesh)
        own = getattr(jax.typeof(weight), "sharding", None)
        if own is not None and not own.mesh.empty:
            mesh = own.mesh
        elif isinstance(getattr(weight, "sharding", None), NamedSharding):
            mesh = weight.sharding.mesh  # a concrete array outside jit
    if mesh is None:
        raise ValueError(
            "a vocab-parallel lookup needs a mesh: call it under `with jax.set_mesh(mesh):` or "
            "pass mesh="
        )
    return mesh


def _explicit(mesh) -> bool:
    return any(t == AxisType.Explicit for t in mesh.axis_types)


def constrain(x, spec, mesh=None):
    """``x`` laid out as ``spec``: ``reshard`` on an Explicit mesh, a sharding constraint on an
    Auto one (``with_sharding_constraint`` is only an assertion under Explicit axes)."""
    if spec is None:
        return x
    mesh = mesh or _context_mesh()
    target = spec if mesh is None else NamedSharding(mesh, spec)
    if mesh is not None and _explicit(mesh):
        return jax.sharding.reshard(x, target)
    return jax.lax.with_sharding_constraint(x, target)


def like(x, other):
    """``x`` laid out as ``other`` under an Explicit mesh (a probe must have its rows' type);
    unchanged elsewhere."""
    want = getattr(jax.typeof(other), "sharding", None)
    if want is None or want.mesh.empty or not _explicit(want.mesh):
        return x
    if jax.typeof(x).sharding.spec == want.spec:
        return x
    return jax.sharding.reshard(x, want.spec)


def partitioned_spec(box):
    """The mesh PartitionSpec of a linen ``nn.with_partitioning`` (or logical) box, else None."""
    if isinstance(box, nn.LogicallyPartitioned):  # logical names -> mesh axes
        return nn.logical_to_mesh_axes(box.names, box.rules)
    return box.get_partition_spec() if isinstance(box, nn.Partitioned) else None


def place_partitioned(table):
    """A table boxed by ``nn.with_partitioning``, laid out as its box says on an Explicit context
    mesh (linen checks the box with ``with_sharding_constraint``, an assertion there); under
    an Auto mesh or none, unchanged (linen constrains it when it is read)."""
    mesh = _context_mesh()
    spec = partitioned_spec(table)
    if mesh is None or not _explicit(mesh) or spec is None:
        return table
    return table.replace_boxed(jax.sharding.reshard(table.value, spec))


def _ids_spec(ids, ndim, vocab_axes, out_sharding, mesh) -> P:
    """How the ids are split inside the lookup: as ``out_sharding``'s leading dims, else as the
    ids' own (Explicit) sharding, else replicated; never over a vocab axis (every vocab shard
    must see all ids of its batch shard)."""
    if out_sharding is not None:
        entries = tuple(out_sharding)[:ndim]
    elif _explicit(mesh):
        entries = tuple(jax.typeof(ids).sharding.spec)
    else:
        entries = ()
    entries = tuple(entries) + (None,) * (ndim - len(entries))
    return P(*(_entry(tuple(a for a in _axes(e) if a not in vocab_axes)) for e in entries))


# ---------------------------------------------------------------------------------------------
# The layout: the gather, counts and renorm of a row-sharded table
# ---------------------------------------------------------------------------------------------


def _fill_value(dtype):
    """What ``functional._gather`` returns for an out-of-range id (jax's ``fill_value=None``)."""
    if jnp.issubdtype(dtype, jnp.inexact):
        return jnp.nan
    if jnp.issubdtype(dtype, jnp.signedinteger):
        return jnp.iinfo(dtype).min
    return jnp.iinfo(dtype).max


def _as_bits(x):
    """Float rows as unsigned integers, so that the all-reduce that assembles the rows (one
    owner, zeros elsewhere) copies every bit: a float sum starts from +0.0 on XLA:CPU and turns
    -0.0 entries into +0.0. The same bytes travel: 16-bit floats go in pairs as uint32 (XLA:GPU
    widens a 16-bit integer all-reduce to 32 bits, which would double the bytes)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x  # integer tables are exact already; complex ones sum as floats
    if x.dtype.itemsize == 2 and x.shape[-1] % 2 == 0:
        pairs = x.reshape(*x.shape[:-1], x.shape[-1] // 2, 2)
        return jax.lax.bitcast_convert_type(pairs, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))


def _from_bits(bits, dtype, features):
    if bits.dtype == dtype:
        return bits
    x = jax.lax.bitcast_convert_type(bits, dtype)
    if bits.dtype.itemsize != jnp.dtype(dtype).itemsize:  # uint32 -> a trailing pair axis
        x = x.reshape(*x.shape[:-2], features)
    return x


def _in_range(ids, num_embeddings):
    ok = ids < num_embeddings if num_embeddings <= jnp.iinfo(ids.dtype).max else True
    if jnp.issubdtype(ids.dtype, jnp.signedinteger):
        ok = ok & (ids >= 0)
    return jnp.broadcast_to(ok, ids.shape)


@dataclasses.dataclass(frozen=True)
class VocabParallel:
    """Where a row-sharded table's rows live; hashable, so it can ride in the gradient rule.

    ``mesh``: the (abstract or concrete) mesh; ``vocab_axes``: mesh axes splitting the rows;
    ``ids_spec``: how the ids are split (never over a vocab axis).
    """

    mesh: Any
    vocab_axes: tuple[str, ...]
    ids_spec: P
    num_embeddings: int

    @property
    def shards(self) -> int:
        return math.prod(self.mesh.shape[a] for a in self.vocab_axes)

    @property
    def ids_axes(self) -> tuple[str, ...]:
        return tuple(a for e in self.ids_spec for a in _axes(e))

    @property
    def table_spec(self) -> P:
        return P(_entry(self.vocab_axes), None)

    def _smap(self, f, in_specs, out_specs):
        return jax.shard_map(f, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs)

    def _local(self, ids, rows):
        """(in_range, owned, local row) of each id on this device; local rows are in bounds."""
        ok = _in_range(ids, self.num_embeddings)
        gid = jnp.where(ok, ids, 0).astype(jnp.int32)
        start = jax.lax.axis_index(self.vocab_axes) * rows if self.vocab_axes else 0
        local = gid - start
        owned = ok & (local >= 0) & (local < rows)
        return ok, owned, jnp.where(owned, local, 0)

    def _gather_batch(self, x):
        """``x`` (split like the ids) gathered whole on every device, in the global order."""
        for dim, entry in enumerate(self.ids_spec):
            if _axes(entry):
                x = jax.lax.all_gather(x, _axes(entry), axis=dim, tiled=True, to="invarying")
        return x

    def _reduce_vocab(self, x, reduce=jax.lax.psum):
        """``reduce`` (psum, pmax, pmin) over the vocab axes; ``x`` itself with none."""
        return reduce(x, self.vocab_axes) if self.vocab_axes else x

    def gather(self, table, ids, linear=False):
        """``functional._gather`` on the sharded table: bit-exact rows, NaN rows out of range.

        ``linear=True``: the tangent map used by the gradient rule (a float all-reduce, which
        JAX can transpose, and zero rather than NaN tangents for out-of-range ids).
        """

        def local_lookup(t, i):
            ok, owned, local = self._local(i, t.shape[0])
            rows = t.at[local].get(mode="promise_in_bounds")
            if linear:
                rows = self._reduce_vocab(jnp.where(owned[..., None], rows, 0))
                return jnp.where(ok[..., None], rows, 0)
            rows = _as_bits(rows)
            rows = self._reduce_vocab(jnp.where(owned[..., None], rows, jnp.zeros((), rows.dtype)))
            rows = _from_bits(rows, t.dtype, t.shape[1])
            # No shard owns an out-of-range id: give it the fill row, not the zero row.
            return jnp.where(ok[..., None], rows, jnp.array(_fill_value(t.dtype), t.dtype))

        out_spec = P(*self.ids_spec, None)
        return self._smap(local_lookup, (self.table_spec, self.ids_spec), out_spec)(table, ids)

    def counts_at(self, ids):
        """The count of each position's id in the whole input (all batch shards)."""
        rows = self.num_embeddings // self.shards

        def local_counts(i):
            ok, owned, local = self._local(i, rows)
            counts = jnp.zeros((rows,), jnp.int32).at[local].add(owned.astype(jnp.int32))
            if self.ids_axes:  # the ids are split over these axes: sum their counts
                counts = jax.lax.psum(counts, self.ids_axes)
            n = self._reduce_vocab(jnp.where(owned, counts.at[local].get(), 0))
            return jnp.where(ok, n, 1)  # an out-of-range id's gradient is dropped anyway

        return self._smap(local_counts, (self.ids_spec,), self.ids_spec)(ids)

    def renorm(self, table, ids, max_norm, norm_type):
        """``functional.embedding_renorm`` on the sharded table, and each row's scale.

        Returns ``(row_scale, new_table)``, both row-sharded: ``row_scale`` is torch's renorm
        factor of every row (1 where untouched), ``new_table`` the table with the referenced
        rows multiplied by it. The lookup multiplies its rows by the same factors, so the rows
        returned and the rows written back are the same products, bit for bit.

        The ids of every batch shard are all-gathered (N integers), since the table is
        replicated over the batch axes and every replica must renorm the same rows.
        """
        ids_spec = self.ids_spec

        def local_renorm(t, i):
            i = self._gather_batch(i)
            _, owned, local = self._local(i, t.shape[0])
            rows = t.at[local].get(mode="promise_in_bounds")
            scale = jnp.where(owned, F.renorm_scale(rows, max_norm, norm_type), 1)
            # Ids this shard does not own are pointed at local row 0, so every write to a row
            # must carry the same value (duplicate scatter order is unspecified): the per-row
            # scale is the minimum over its positions (owned positions of one row agree; the
            # others carry 1, and a renorm scale is <= 1), and each write is row * that scale.
            row_scale = jnp.ones((t.shape[0],), t.dtype).at[local].min(scale)
            new_rows = rows * row_scale.at[local].get()[..., None]
            return row_scale, t.at[local].set(new_rows, mode="promise_in_bounds")

        out_specs = (P(_entry(self.vocab_axes)), self.table_spec)
        return self._smap(local_renorm, (self.table_spec, ids_spec), out_specs)(table, ids)

    def sparse_update(self, update_one, grad, state, table):
        """A sparse optimizer's one-table step on this device's rows (see
        :func:`vocab_parallel_sparse_update`); ``grad`` is split like ``self.ids_spec``."""

        def local_update(ids, values, state, t):
            # Every replica of a row must apply the same entries in the same (input) order:
            # gather the entries of all batch shards, then keep those of this device's rows.
            ids, values = self._gather_batch(ids), self._gather_batch(values)
            rows = t.shape[0]
            _, owned, local = self._local(ids, rows)
            local = jnp.where(owned, local, rows)  # row ``rows``: removed, as num_embeddings
            # Zero rows at removed slots, as SparseRows has them (this also types the values
            # as varying over the vocab axes, like the ids: the optimizers' scatters bind lax
            # primitives directly, which want operands of one variance).
            values = jnp.where(owned[:, None], values, jnp.zeros((), values.dtype))
            return update_one(grad._replace(ids=local, values=values), state, t)

        state_spec = jax.tree.map(lambda x: self.table_spec if jnp.ndim(x) == 2 else P(), state)
        values_spec = P(*self.ids_spec, None)
        in_specs = (self.ids_spec, values_spec, state_spec, self.table_spec)
        f = self._smap(local_update, in_specs, (self.table_spec, state_spec))
        return f(grad.ids, grad.values, state, table)

    def renormed_rows(self, rows, row_scale, ids):
        """The looked-up ``rows`` times their rows' renorm factors (straight-through gradient,
        as ``functional.embedding``)."""
        scale = self.gather(row_scale[:, None], ids)[..., 0]  # N factors: one small all-reduce
        return F._straight_through_scale(rows, jax.lax.stop_gradient(scale))


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def vocab_parallel_layout(ids, weight, vocab_axis, out_sharding=None, mesh=None) -> VocabParallel:
    """The :class:`VocabParallel` layout for looking up ``ids`` in ``weight`` (validated)."""
    mesh = _resolve_mesh(mesh, weight)
    vocab_axes = _axes(vocab_axis)
    for a in vocab_axes:
        if a not in mesh.axis_names:
            raise ValueError(f"vocab_axis {a!r} is not an axis of the mesh {mesh.axis_names}")
    layout = VocabParallel(
        mesh, vocab_axes, _ids_spec(ids, jnp.ndim(ids), vocab_axes, out_sharding, mesh), 0
    )
    num_embeddings = jnp.shape(weight)[0]
    if num_embeddings % layout.shards:
        raise ValueError(
            f"num_embeddings ({num_embeddings}) must be divisible by the number of vocab shards "
            f"({layout.shards} over mesh axes {vocab_axes})"
        )
    if num_embeddings >= 2**31:
        raise ValueError("vocab-parallel tables are limited to 2**31 - 1 rows (int32 row ids)")
    return dataclasses.replace(layout, num_embeddings=num_embeddings)


def _place(ids, weight, vocab_axis, out_sharding, mesh):
    """The layout, and the ids and table put in it (no-ops when they already are)."""
    layout = vocab_parallel_layout(ids, weight, vocab_axis, out_sharding, mesh)
    ids = constrain(ids, layout.ids_spec, layout.mesh)
    weight = constrain(weight, layout.table_spec, layout.mesh)
    return layout, ids, weight


def vocab_parallel_embed_and_renorm(
    input,
    weight,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    vocab_axis,
    out_sharding=None,
    mesh=None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`jaxembed.functional.embed_and_renorm` on a table whose rows are split over the
    mesh axes ``vocab_axis`` (a name or tuple of names; ``()`` for a replicated table).

    Args:
      out_sharding: PartitionSpec of the result (``input.ndim + 1`` entries), as flax's
        ``nnx.Embed``; its leading entries say how the ids are split over the batch axes. None:
        the ids' own sharding under an Explicit mesh, replicated under an Auto mesh.
      mesh: defaults to the context mesh (``jax.set_mesh``), else the table's own mesh.

      sparse: as in ``functional.embedding``: the same rows, no gradient to the table; the
        row gradients go to a sparse optimizer (``jaxembed.sparse``), which updates each
        device's own rows (:func:`vocab_parallel_sparse_update`).

    Returns ``(rows, new_weight)``: rows laid out as ``out_sharding``; ``new_weight`` the table
    with torch's max_norm renorm written into the referenced rows, still row-sharded.

    Collectives: forward one all-reduce of the ``N x D`` rows over the vocab axes; backward the
    table gradient stays row-sharded (plus the usual data-parallel all-reduce of the local
    ``V/k x D`` gradient over the batch axes); scale_grad_by_freq adds an all-reduce of ``V/k``
    counts over the batch axes and of ``N`` counts over the vocab axes; max_norm an all-gather
    of the ``N`` ids over the batch axes and an all-reduce of ``N`` scale factors over the
    vocab axes.
    """
    if sparse:
        validation.check_sparse(scale_grad_by_freq)
    ids, weight, padding_idx = F._prepare(input, weight, padding_idx, sparse)
    layout, ids, weight = _place(ids, weight, vocab_axis, out_sharding, mesh)
    rows = F._lookup_rows(ids, weight, padding_idx, None, norm_type, scale_grad_by_freq, layout)
    if max_norm is None:
        return constrain(rows, out_sharding, layout.mesh), weight
    # torch renorms the referenced rows, then looks them up: the owner of each row computes
    # its factor once, for both the rows returned and the table written back.
    row_scale, new_weight = layout.renorm(jax.lax.stop_gradient(weight), ids, max_norm, norm_type)
    rows = layout.renormed_rows(rows, row_scale, ids)
    return constrain(rows, out_sharding, layout.mesh), new_weight


def vocab_parallel_embedding(
    input,
    weight,
    padding_idx: int | None = None,
    max_norm: float | None = None,
    norm_type: float = 2.0,
    scale_grad_by_freq: bool = False,
    sparse: bool = False,
    *,
    vocab_axis,
    out_sharding=None,
    mesh=None,
) -> jax.Array:
    """:func:`jaxembed.functional.embedding` on a row-sharded table (see
    :func:`vocab_parallel_embed_and_renorm` for the arguments and the collectives)."""
    rows, _ = vocab_parallel_embed_and_renorm(
        input,
        weight,
        padding_idx,
        max_norm,
        norm_type,
        scale_grad_by_freq,
        sparse,
        vocab_axis=vocab_axis,
        out_sharding=out_sharding,
        mesh=mesh,
    )  # under jit the unused renormed table is dead code
    return rows


def vocab_parallel_embedding_renorm(
    weight, input, max_norm: float, norm_type: float = 2.0, *, vocab_axis, mesh=None
) -> jax.Array:
    """:func:`jaxembed.functional.embedding_renorm` on a row-sharded table; stays sharded."""
    ids, weight, _ = F._prepare(input, weight, None)
    layout, ids, weight = _place(ids, weight, vocab_axis, None, mesh)
    return layout.renorm(weight, ids, max_norm, norm_type)[1]


def vocab_parallel_sparse_update(update_one, grad, state, table, *, vocab_axis, mesh=None):
    """A sparse optimizer's step on a row-sharded table: each device updates its own rows.

    ``update_one(grad, state, table)`` is the one-table step of a ``jaxembed.sparse`` optimizer
    (``SparseRows`` gradient, state and table of one device); ``table`` and every table-shaped
    (2-D) leaf of ``state`` are split over ``vocab_axis`` like the table, scalar leaves
    replicated. The sparse optimizers call this for a table whose rows are split (see
    ``jaxembed.sparse``); it is not needed directly.

    Each device gathers the gradient's entries over the axes they are split over (the batch
    axes: ``n`` ids and ``n x D`` values, O(n·D) bytes, never O(V·D)), keeps those of the ids it
    owns, in input order, and runs ``update_one`` on its ``V/k`` rows and their state. So every
    row sees exactly the entries, in the order, that it sees on one device: the step is the
    unsharded step, row for row. No device holds a ``V x D`` gradient or state.
    """
    layout = vocab_parallel_layout(grad.ids, table, vocab_axis, None, mesh)
    ids = constrain(grad.ids, layout.ids_spec, layout.mesh)
    values = constrain(grad.values, P(*layout.ids_spec, None), layout.mesh)
    table = constrain(table, layout.table_spec, layout.mesh)
    return layout.sparse_update(update_one, grad._replace(ids=ids, values=values), state, table)


def count_out_of_range(input, num_embeddings: int) -> jax.Array:
    """The number of ids in ``input`` outside ``[0, num_embeddings)`` (int32; jit-able).

    The error channel of row-sharded tables under ``jit``: there an out-of-range id gives a NaN
    row and a dropped gradient, as on one device, but ``checkify`` cannot report it. In jax
    0.10.2 ``checkify.checkify`` raises a ``ValueError`` ("context mesh ... should match the
    aval mesh") on any ``shard_map`` whose body has a checked operation or that follows one, so
    no checkify error set can transform a vocab-parallel step. Return this count from the step
    and raise on the host (see docs/guides/sharding.md). Ids split over a mesh axis cost
    one all-reduce of a scalar.
    """
    # 64-bit ids out of range are masked to num_embeddings in their own dtype before narrowing
    ids = validation.ids(input, num_embeddings, check=False)
    return jnp.sum(~_in_range(ids, num_embeddings), dtype=jnp.int32)


# ---------------------------------------------------------------------------------------------
# EmbeddingBag on a row-sharded table: per-device partial bags, one reduction over the vocab axes
# ---------------------------------------------------------------------------------------------


@jax.custom_jvp
def _count_scaled_grad(rows, count):
    """``rows``, whose tangent is divided by ``count`` (scale_grad_by_freq), as
    ``functional._lookup``'s gradient rule does."""
    return rows


@_count_scaled_grad.defjvp
def _count_scaled_grad_jvp(primals, tangents):
    rows, count = primals
    return rows, F.divide_by_count(tangents[0], count, rows.dtype)


def _ordered_key(x):
    """Integers ordered like the floats ``x`` (+0.0 and -0.0 equal), for a max-reduce whose
    ties go to the first position: the reduction itself never decides between equal values."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    x = jnp.where(x == 0, jnp.zeros((), x.dtype), x)
    itype = jnp.dtype(f"int{8 * x.dtype.itemsize}")
    bits = jax.lax.bitcast_convert_type(x, itype)
    return jnp.where(bits >= 0, bits, bits ^ jnp.iinfo(itype).max)


def _local_bag_rows(layout, t, i, row_scale, count):
    """This device's rows of the positions ``i`` (zero rows where another device owns the id),
    renormed by ``row_scale`` (max_norm) and with the scale_grad_by_freq gradient rule."""
    _, owned, local = layout._local(i, t.shape[0])
    rows = t.at[local].get(mode="promise_in_bounds")
    if row_scale is not None:
        scale = jnp.where(owned, row_scale.at[local].get(mode="promise_in_bounds"), 1)
        rows = F._straight_through_scale(rows, jax.lax.stop_gradient(scale))
    if count is not None:
        rows = _count_scaled_grad(rows, count)
    return owned, jnp.where(owned[..., None], rows, jnp.zeros((), rows.dtype))


def _bag_max_partial(layout, rows, owned, keep, bags):
    """torch's per-column max (ties to the first position, a NaN in first place wins) over the
    positions of every device: a max-reduce of ordered keys, a min-reduce of the first position
    holding the maximum, and an all-reduce of that row's bits (its one owner sends it)."""
    n, d = rows.shape
    if n == 0:
        return jnp.zeros((bags.num_bags, d), rows.dtype)
    pos = jnp.arange(n, dtype=jnp.int32)
    first = bags.min(jnp.where(keep, pos, n))  # every device agrees: the ids are everywhere
    comparable = (owned & keep)[:, None] & ~jnp.isnan(rows)
    key = _ordered_key(rows)
    lowest, highest = jnp.iinfo(key.dtype).min, jnp.iinfo(key.dtype).max
    key = jnp.where(comparable, key, lowest)
    seed_at = jnp.minimum(first, n - 1)
    seed_nan = ((first < n) & owned[seed_at])[:, None] & jnp.isnan(rows[seed_at])
    top = layout._reduce_vocab(jnp.where(seed_nan, highest, bags.max(key)), jax.lax.pmax)
    top_at = jnp.append(top, jnp.full((1, d), lowest, top.dtype), axis=0)[bags.seg]
    hit = comparable & (key == top_at) & (top_at != lowest)
    arg = jnp.where(seed_nan, first[:, None], bags.min(jnp.where(hit, pos[:, None], n)))
    arg = layout._reduce_vocab(arg, jax.lax.pmin)  # (B, D): the position of each maximum
    at = jnp.minimum(arg, n - 1)
    mine = (arg < n) & owned[at]
    picked = jnp.take_along_axis(rows, at, axis=0, mode="promise_in_bounds")
    value = jnp.where(mine, picked, jnp.zeros((), rows.dtype))
    exact = _from_bits(layout._reduce_vocab(_as_bits(value)), rows.dtype, d)
    # The bits copy is not differentiable: its gradient is that of the float all-reduce.
    return F.with_tangent_of(exact, layout._reduce_vocab(value))


def vocab_parallel_embedding_bag_and_renorm(
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
    *,
    vocab_axis,
    out_sharding=None,
    mesh=None,
) -> tuple[jax.Array, jax.Array]:
    """:func:`jaxembed.functional.embedding_bag` (and the renormed table, as
    ``embedding_bag_and_renorm``) on a table whose rows are split over ``vocab_axis``.

    Each device reduces the positions whose ids it owns into per-bag partial results; one
    reduction over the vocab axes assembles them: an all-reduce of the ``B x D`` partial sums
    (sum, mean: the mean divides the assembled sum), or for max a max-reduce of ``B x D`` keys,
    a min-reduce of ``B x D`` positions (torch's tie to the first position) and a ``B x D``
    all-reduce of the winning rows' bits. Every rule is the unsharded bag's (same checks,
    per_sample_weights, padding_idx, max_norm, include_last_offset, scale_grad_by_freq with
    global counts, NaN bags for out-of-range ids and invalid offsets under jit); the gradient
    stays row-sharded.

    ``(B, L)`` input is split over the batch axes like ``out_sharding``'s first entry (or the
    ids' own sharding under an Explicit mesh); 1-D input with ``offsets`` is replicated (a bag
    may span any positions).

    Exactness: max is bit-exact; sums add each device's partial sum (in input order) across
    devices, another order than one device's: within a few eps of the sum of magnitudes
    (docs/guides/sharding.md).
    """
    ids, weight, offsets, psw, padding_idx, bags = EB.prepare(
        input,
        weight,
        offsets,
        scale_grad_by_freq,
        mode,
        per_sample_weights,
        include_last_offset,
        padding_idx,
    )
    fixed = offsets is None
    batch = None if out_sharding is None or not fixed else P(*tuple(out_sharding)[:1], None)
    layout, ids, weight = _place(ids, weight, vocab_axis, batch, mesh)
    if not fixed:  # 1-D ids: every device holds them all
        layout = dataclasses.replace(layout, ids_spec=P(None))
        ids = constrain(ids, layout.ids_spec, layout.mesh)
    if psw is not None:
        psw = constrain(psw, layout.ids_spec, layout.mesh)
    row_scale, new_weight = None, weight
    if max_norm is not None:
        row_scale, new_weight = layout.renorm(
            jax.lax.stop_gradient(weight), ids, max_norm, norm_type
        )
    count = layout.counts_at(ids) if scale_grad_by_freq else None
    num_bags = bags.num_bags

    def local_bag(t, i, psw, row_scale, count, seg):
        owned, rows = _local_bag_rows(layout, t, i, row_scale, count)
        d = rows.shape[-1]
        local_bags = EB._fixed_bags(*i.shape) if fixed else EB._Bags(num_bags, seg, None, None)
        i, owned, rows = i.reshape(-1), owned.reshape(-1), rows.reshape(-1, d)
        if mode == "max":
            keep = jnp.ones_like(owned) if padding_idx is None else i != padding_idx
            return _bag_max_partial(layout, rows, owned, keep, local_bags)
        psw = None if psw is None else psw.reshape(-1)
        x = EB._summands(rows, i, psw, padding_idx)
        return layout._reduce_vocab(local_bags.sum(x))

    vocab = P(_entry(layout.vocab_axes))
    specs = (layout.table_spec, layout.ids_spec, layout.ids_spec, vocab, layout.ids_spec, P())
    out_spec = P(*layout.ids_spec[:1], None)
    seg = None if fixed else bags.seg
    total = layout._smap(local_bag, specs, out_spec)(weight, ids, psw, row_scale, count, seg)
    flat = ids.reshape(-1)
    if mode == "max":
        out = total
    else:
        out = EB._finish(total.astype(weight.dtype), flat, bags, mode, padding_idx)
    if isinstance(ids, jax.core.Tracer):  # an out-of-range id makes its bag NaN (unsharded)
        oob = ~_in_range(ids, weight.shape[0])
        bad = jnp.any(oob, axis=1) if fixed else bags.max(oob)
        out = jnp.where(bad[:, None], jnp.array(jnp.nan, out.dtype), out)
    if bags.ok is not None:
        out = EB._nan_unless(bags.ok, out, offsets)
    return constrain(out, out_sharding, layout.mesh), new_weight


def vocab_parallel_embedding_bag(
    input, weight, offsets=None, *args, vocab_axis, out_sharding=None, mesh=None, **kwargs
) -> jax.Array:
    """:func:`jaxembed.functional.embedding_bag` on a row-sharded table (arguments and
    collectives: :func:`vocab_parallel_embedding_bag_and_renorm`)."""
    out, _ = vocab_parallel_embedding_bag_and_renorm(
        input,
        weight,
        offsets,
        *args,
        vocab_axis=vocab_axis,
        out_sharding=out_sharding,
        mesh=mesh,
        **kwargs,
    )
    return out


def _vocab_axes_of(table, spec) -> tuple[str, ...]:
    """The axes splitting ``table``'s rows: from its declared spec (Param metadata or
    ``nn.with_partitioning``), else from the array's own sharding."""
    axes = row_axes(spec)
    if axes:
        return axes
    own = getattr(jax.typeof(table), "sharding", None)  # Explicit meshes type the sharding
    if own is not None and not getattr(own.mesh, "empty", True):
        axes = row_axes(own.spec)
    if not axes and isinstance(getattr(table, "sharding", None), NamedSharding):
        axes = row_axes(table.sharding.spec)  # a concrete array outside jit
    return axes


def vocab_parallel_axes(table, spec, out_sharding):
    """The modules' dispatch: the vocab axes to look ``table`` up over, or None for the plain
    path (:func:`jaxembed.functional.embed_and_renorm`).

    Vocab-parallel when the table's rows are split, an ``out_sharding`` is asked for, or the
    context mesh is Explicit (where a plain gather raises ``ShardingTypeError``); ``()`` then
    means a replicated table.
    """
    vocab_axes = _vocab_axes_of(table, spec)
    mesh = _context_mesh()
    if vocab_axes or out_sharding is not None or (mesh is not None and _explicit(mesh)):
        return vocab_axes
    return None
