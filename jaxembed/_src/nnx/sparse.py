"""``jaxembed.Embed(sparse=True)`` in ``flax.nnx``: the variables, the gradient helper and the
optimizer wrapper.

A sparse table is a :class:`SparseParam`, not an ``nnx.Param``: ``nnx.grad`` and
``nnx.Optimizer(..., wrt=nnx.Param)`` never see it, so no V x D gradient or optax state exists.
While :func:`value_and_grad` traces a step, each sparse module carries two scratch variables:
a :class:`RowProbe` (zeros, one row per id the step looks up, see
``jaxembed._src.core.sparse.attach_probe``), from which each lookup takes its own slice so that
its row gradient lands there, and :class:`RowIds`, to which each lookup appends its ids. A table
looked up several times in one step (tied embeddings, two towers) thus gets torch's gradient:
one ``SparseRows`` holding the entries of every lookup, in call order. The scratch exists only
inside :func:`value_and_grad`: a model's state, and so its checkpoint, holds the tables only, as
``nnx.eval_shape`` of its constructor does. :class:`Optimizer` applies the row gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.training.optimizer import to_opt_state

from jaxembed._src.core import sharding, sparse_optim
from jaxembed._src.core import sparse as S


class SparseParam(nnx.Variable):
    """An embedding table trained from row-sparse gradients by a ``jaxembed.sparse`` optimizer
    (torch's ``nn.Embedding(sparse=True)`` weight). Not an ``nnx.Param``."""


class RowProbe(nnx.Variable):
    """Step scratch (only inside :func:`value_and_grad`): zeros with one row per id the step
    looks up; its gradient is the rows' gradient."""


class RowIds(nnx.Variable):
    """Step scratch (only inside :func:`value_and_grad`): the ids of the step's sparse lookups,
    flattened and concatenated in call order, removed positions set to num_embeddings."""


# True while value_and_grad traces the step: only then do lookups record their ids.
_RECORDING = contextvars.ContextVar("jaxembed_sparse_recording", default=False)


@contextlib.contextmanager
def _recording():
    token = _RECORDING.set(True)
    try:
        yield
    finally:
        _RECORDING.reset(token)


def init_sparse_table(embed, table: jax.Array, metadata=None) -> None:
    """Stores ``table`` as the module's sparse table (``metadata`` as ``nnx.Param``'s, e.g.
    ``{"out_sharding": ("model", None)}`` for a row-sharded table; no scratch: see
    :func:`value_and_grad`)."""
    embed.embedding = SparseParam(table, **(metadata or {}))


def lookup(embed, inputs, out_sharding=None) -> jax.Array:
    """The sparse lookup of ``jaxembed.Embed``: rows, and torch's max_norm write.

    Inside :func:`value_and_grad` the lookup also appends its ids to ``row_ids`` and, in the
    differentiated pass (where the probe was sized for the whole step), attaches its slice of the
    probe: the rows from ``len(row_ids)`` on, in call order. Elsewhere it is a plain lookup whose
    rows carry no gradient, and no state but the max_norm renorm changes. A row-sharded table is
    looked up vocab-parallel (as the dense ``Embed``).
    """
    table = embed.embedding.get_value()
    spec = nnx.spmd.get_var_pspec(embed.embedding)
    vocab_axes = sharding.vocab_parallel_axes(table, spec, out_sharding)
    recording = _RECORDING.get() and isinstance(getattr(embed, "row_ids", None), RowIds)
    probe = None
    if recording:
        recorded = embed.row_ids.get_value()
        start, n = recorded.shape[0], math.prod(jnp.shape(inputs))
        probes = embed.row_probe.get_value()
        if probes.shape[0] >= start + n:  # the differentiated pass: this lookup's slice
            probe = probes[start : start + n].reshape(jnp.shape(inputs) + (embed.features,))
    rows, new_table = S.probed_embed_and_renorm(
        inputs,
        table,
        probe,
        padding_idx=embed.padding_idx,
        max_norm=embed.max_norm,
        norm_type=embed.norm_type,
        vocab_axes=vocab_axes,
        out_sharding=out_sharding,
    )
    if recording:
        ids = S.row_ids(inputs, embed.num_embeddings, embed.padding_idx)
        # The first lookup's ids as they are: under an Explicit mesh they may be sharded
        # (P('data')), and the empty start array is not, which concatenate refuses.
        embed.row_ids.set_value(
            jnp.concatenate([recorded.astype(ids.dtype), ids]) if recorded.shape[0] else ids
        )
    if embed.max_norm is not None:
        embed.embedding.set_value(new_table)  # torch's in-place renorm
    return rows  # in the table's dtype; the module promotes them to its dtype


def _sparse_embeds(model) -> dict:
    return {
        path: m
        for path, m in nnx.iter_modules(model)
        if isinstance(getattr(m, "embedding", None), SparseParam)
    }


def _attach_scratch(embed, rows: int) -> None:
    dtype = embed.embedding.get_value().dtype
    embed.row_probe = RowProbe(jnp.zeros((rows, embed.features), dtype))
    embed.row_ids = RowIds(jnp.zeros((0,), jnp.int32))


def _detach_scratch(embed) -> None:
    for name in ("row_probe", "row_ids"):
        if hasattr(embed, name):
            delattr(embed, name)


def value_and_grad(fn: Callable, argnums: int = 0, *, has_aux: bool = False) -> Callable:
    """``nnx.value_and_grad`` for models holding ``jaxembed.Embed(sparse=True)`` tables.

    ``value_and_grad(fn)(*args)`` returns ``(value, grads, row_grads)``:

    * ``value``: ``fn(*args)`` (``(loss, aux)`` with ``has_aux``);
    * ``grads``: the ``nnx.Param`` gradients of ``args[argnums]`` (an ``nnx.State``), for
      ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, grads)``;
    * ``row_grads``: an ``nnx.State`` shaped like ``nnx.state(model, SparseParam)`` whose leaves
      are ``SparseRows`` (torch's sparse gradients), for :class:`Optimizer`.

    ``fn`` is traced twice: once abstractly (``nnx.eval_shape``, no state changes) to count the
    ids each sparse table is looked up with, then under ``nnx.value_and_grad``. State updates of
    the second call (max_norm renorms, batch statistics, rng counts) reach the model as with
    ``nnx.grad``. A table may be looked up any number of times per call (tied embeddings, two
    towers): its ``SparseRows`` holds the entries of every lookup in call order, as torch's
    accumulated sparse gradient does. The probe and ids exist only during the call.
    """

    def wrapper(*args):
        model = args[argnums]
        embeds = _sparse_embeds(model)

        def recorded_ids(*a):
            fn(*a)
            return {path: e.row_ids.get_value() for path, e in _sparse_embeds(a[argnums]).items()}

        try:
            with _recording():
                for e in embeds.values():
                    _attach_scratch(e, 0)
                counts = nnx.eval_shape(recorded_ids, *args)
                for path, e in embeds.items():
                    _attach_scratch(e, counts[path].shape[0])
                wrt = nnx.DiffState(argnums, nnx.Any(nnx.Param, RowProbe))
                value, grads = nnx.value_and_grad(fn, argnums=wrt, has_aux=has_aux)(*args)
            dense, probe_grads = nnx.split_state(grads, nnx.Param, RowProbe)
            flat_probe = dict(nnx.to_flat_state(probe_grads))
            rows = {}
            for path, e in embeds.items():
                g = flat_probe[path + ("row_probe",)]
                g = g.get_value() if isinstance(g, nnx.Variable) else g
                rows[path + ("embedding",)] = S.rows_from_ids(
                    e.row_ids.get_value(), g, e.num_embeddings
                )
        finally:
            for e in embeds.values():
                _detach_scratch(e)
        return value, dense, nnx.from_flat_state(rows)

    return wrapper


class Optimizer(nnx.Pytree):
    """``nnx.Optimizer`` for the sparse tables (``SparseParam``) of a model.

    ``Optimizer(model, jaxembed.sparse.sparse_adam(1e-3)).update(model, row_grads)`` applies
    :func:`value_and_grad`'s ``row_grads`` to the tables in place. Use it beside an
    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` for the other parameters, as torch pairs
    ``SparseAdam`` with ``Adam``.
    """

    def __init__(self, model, tx: sparse_optim.SparseGradientTransformation):
        self.tx = tx
        tables = nnx.as_pure(nnx.state(model, SparseParam))
        self.opt_state = nnx.data(to_opt_state(tx.init(tables)))

    def update(self, model, row_grads: Any) -> None:
        variables = nnx.state(model, SparseParam)
        tables = nnx.as_pure(variables)
        # The tables' declared layouts (row-sharded tables are updated row-sharded; under an
        # Auto mesh inside jit only the variables' metadata carries it).
        specs = jax.tree.map(
            nnx.spmd.get_var_pspec, variables, is_leaf=lambda x: isinstance(x, nnx.Variable)
        )
        new_tables, new_state = self.tx.update(
            nnx.as_pure(row_grads), nnx.as_pure(self.opt_state), tables, table_specs=specs
        )
        nnx.update(model, new_tables)
        nnx.update(self.opt_state, nnx.state(new_state))
