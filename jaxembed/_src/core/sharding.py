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

Limitation: ``jax.experimental.checkify`` cannot transform ``shard_map`` in jax 0.10.2 (it raises
a ValueError about the context mesh), so out-of-range ids are not reported by checkify on this
path; they still give NaN rows and a dropped gradient. (GSPMD would not help under an Explicit
mesh: checkify raises on its sharded gather too; only Auto-mesh GSPMD is checkable.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from jaxembed._src.core import functional as F

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

    def _psum_vocab(self, x):
        return jax.lax.psum(x, self.vocab_axes) if self.vocab_axes else x

    def gather(self, table, ids, linear=False):
        """``functional._gather`` on the sharded table: bit-exact rows, NaN rows out of range.

        ``linear=True``: the tangent map used by the gradient rule (a float all-reduce, which
        JAX can transpose, and zero rather than NaN tangents for out-of-range ids).
        """

        def local_lookup(t, i):
            ok, owned, local = self._local(i, t.shape[0])
            rows = t.at[local].get(mode="promise_in_bounds")
            if linear:
                rows = self._psum_vocab(jnp.where(owned[..., None], rows, 0))
                return jnp.where(ok[..., None], rows, 0)
            rows = _as_bits(rows)
            rows = self._psum_vocab(jnp.where(owned[..., None], rows, jnp.zeros((), rows.dtype)))
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
            n = self._psum_vocab(jnp.where(owned, counts.at[local].get(), 0))
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
            for dim, entry in enumerate(ids_spec):
                if _axes(entry):
                    i = jax.lax.all_gather(i, _axes(entry), axis=dim, tiled=True, to="invarying")
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

    Returns ``(rows, new_weight)``: rows laid out as ``out_sharding``; ``new_weight`` the table
    with torch's max_norm renorm written into the referenced rows, still row-sharded.

    Collectives: forward one all-reduce of the ``N x D`` rows over the vocab axes; backward the
    table gradient stays row-sharded (plus the usual data-parallel all-reduce of the local
    ``V/k x D`` gradient over the batch axes); scale_grad_by_freq adds an all-reduce of ``V/k``
    counts over the batch axes and of ``N`` counts over the vocab axes; max_norm an all-gather
    of the ``N`` ids over the batch axes and an all-reduce of ``N`` scale factors over the
    vocab axes.
    """
    ids, weight, padding_idx = F._prepare(input, weight, padding_idx)
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
    *,
    vocab_axis,
    out_sharding=None,
    mesh=None,
) -> jax.Array:
    """:func:`jaxembed.functional.embedding` on a row-sharded table (see
    :func:`vocab_parallel_embed_and_renorm` for the arguments and the collectives)."""
    rows, _ = vocab_parallel_embed_and_renorm(
        input, weight, padding_idx, max_norm, norm_type, scale_grad_by_freq,
        vocab_axis=vocab_axis, out_sharding=out_sharding, mesh=mesh,
    )  # under jit the unused renormed table is dead code
    return rows


def vocab_parallel_embedding_renorm(
    weight, input, max_norm: float, norm_type: float = 2.0, *, vocab_axis, mesh=None
) -> jax.Array:
    """:func:`jaxembed.functional.embedding_renorm` on a row-sharded table; stays sharded."""
    ids, weight, _ = F._prepare(input, weight, None)
    layout, ids, weight = _place(ids, weight, vocab_axis, None, mesh)
    return layout.renorm(weight, ids, max_norm, norm_type)[1]


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
