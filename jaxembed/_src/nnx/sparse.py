"""``jaxembed.Embed(sparse=True)`` in ``flax.nnx``: the variables, the gradient helper and the
optimizer wrapper.

A sparse table is a :class:`SparseParam`, not an ``nnx.Param``: ``nnx.grad`` and
``nnx.Optimizer(..., wrt=nnx.Param)`` never see it, so no V x D gradient or optax state exists.
Each lookup routes its row gradient to a :class:`RowProbe` (zeros shaped like the rows, see
``jaxembed._src.core.sparse.attach_probe``) and records its ids in :class:`RowIds`.
:func:`value_and_grad` sizes the probes, differentiates w.r.t. ``nnx.Param`` and the probes,
and returns the probes' gradients as ``SparseRows``; :class:`Optimizer` applies them.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.training.optimizer import to_opt_state

from jaxembed._src.core import sparse as S
from jaxembed._src.core import sparse_optim


class SparseParam(nnx.Variable):
    """An embedding table trained from row-sparse gradients by a ``jaxembed.sparse`` optimizer
    (torch's ``nn.Embedding(sparse=True)`` weight). Not an ``nnx.Param``."""


class RowProbe(nnx.Variable):
    """Zeros shaped like a sparse lookup's rows; its gradient is the rows' gradient."""


class RowIds(nnx.Variable):
    """The ids of the last sparse lookup, flattened, removed positions set to num_embeddings."""


def init_sparse_table(embed, table: jax.Array) -> None:
    """Stores ``table`` as the module's sparse table, with an empty probe and ids."""
    embed.embedding = SparseParam(table)
    embed.row_probe = RowProbe(jnp.zeros((0, embed.features), table.dtype))
    embed.row_ids = RowIds(jnp.zeros((0,), jnp.int32))


def lookup(embed, inputs) -> jax.Array:
    """The sparse lookup of ``jaxembed.Embed``: rows, probe, ids, and torch's max_norm write.

    When the probe does not have the rows' shape (a plain call, or :func:`value_and_grad`'s
    sizing pass) a zero probe of the right shape is stored; it then receives no gradient.
    """
    table = embed.embedding.get_value()
    shape = jnp.shape(inputs) + (embed.features,)
    probe = embed.row_probe.get_value()
    if probe.shape != shape or probe.dtype != table.dtype:
        probe = jnp.zeros(shape, table.dtype)
        embed.row_probe.set_value(probe)
    rows, new_table = S.probed_embed_and_renorm(
        inputs,
        table,
        probe,
        padding_idx=embed.padding_idx,
        max_norm=embed.max_norm,
        norm_type=embed.norm_type,
    )
    embed.row_ids.set_value(S.row_ids(inputs, embed.num_embeddings, embed.padding_idx))
    if embed.max_norm is not None:
        embed.embedding.set_value(new_table)  # torch's in-place renorm
    return rows  # in the table's dtype; the module promotes them to its dtype


def _sparse_embeds(model) -> dict:
    return {
        path: m
        for path, m in nnx.iter_modules(model)
        if isinstance(getattr(m, "row_probe", None), RowProbe)
    }


def value_and_grad(fn: Callable, argnums: int = 0, *, has_aux: bool = False) -> Callable:
    """``nnx.value_and_grad`` for models holding ``jaxembed.Embed(sparse=True)`` tables.

    ``value_and_grad(fn)(*args)`` returns ``(value, grads, row_grads)``:

    * ``value``: ``fn(*args)`` (``(loss, aux)`` with ``has_aux``);
    * ``grads``: the ``nnx.Param`` gradients of ``args[argnums]`` (an ``nnx.State``), for
      ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, grads)``;
    * ``row_grads``: an ``nnx.State`` shaped like ``nnx.state(model, SparseParam)`` whose leaves
      are ``SparseRows`` (torch's sparse gradients), for :class:`Optimizer`.

    ``fn`` is traced twice: once abstractly (``nnx.eval_shape``, no state changes) to size each
    sparse lookup's probe, then under ``nnx.value_and_grad``. State updates of the second call
    (max_norm renorms, batch statistics, rng counts) reach the model as with ``nnx.grad``. Each
    sparse table may be looked up once per call of ``fn`` (concatenate the ids of several
    lookups into one).
    """

    def wrapper(*args):
        model = args[argnums]

        def probes(*a):
            fn(*a)
            return {path: e.row_probe.get_value() for path, e in _sparse_embeds(a[argnums]).items()}

        shapes = nnx.eval_shape(probes, *args)
        embeds = _sparse_embeds(model)
        for path, e in embeds.items():
            e.row_probe.set_value(jnp.zeros(shapes[path].shape, shapes[path].dtype))
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
        tables = nnx.as_pure(nnx.state(model, SparseParam))
        new_tables, new_state = self.tx.update(
            nnx.as_pure(row_grads), nnx.as_pure(self.opt_state), tables
        )
        nnx.update(model, new_tables)
        nnx.update(self.opt_state, nnx.state(new_state))
