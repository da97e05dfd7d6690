"""``jaxembed.linen.Embed(sparse=True)``: collections and helpers for the Linen training step.

The table lives in ``"sparse_params"`` (not ``"params"``, so ``jax.grad`` over the params and
optax never see it). A lookup takes its probe (zeros, one row per looked-up id, see
``jaxembed._src.core.sparse.attach_probe``) from ``"row_probes"`` and, when ``"row_ids"`` is
mutable, appends its ids there. A table looked up several times in one ``apply`` (tied
embeddings, two towers) takes consecutive slices of its probe, in call order, and its ids are
concatenated in the same order: one ``SparseRows`` with every lookup's entries, as torch's
accumulated sparse gradient. Every collection names the variable ``"embedding"``, so the probes,
the ids and the row gradients are trees shaped like ``variables["sparse_params"]``. ``init``
creates neither scratch collection: saved variables hold only the tables.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxembed._src.core import sharding
from jaxembed._src.core import sparse as S

SPARSE_COLLECTION = "sparse_params"
PROBE_COLLECTION = "row_probes"
IDS_COLLECTION = "row_ids"
_NAME = "embedding"


def lookup(module, inputs, out_sharding=None) -> jax.Array:
    """The sparse lookup of ``jaxembed.linen.Embed`` (vocab-parallel for a row-sharded table,
    as the dense one)."""
    table = module.table.value
    vocab_axes = sharding.vocab_parallel_axes(table, module._table_spec(), out_sharding)
    n = math.prod(jnp.shape(inputs))
    initializing = module.is_initializing()
    recording = not initializing and module.is_mutable_collection(IDS_COLLECTION)
    recorded = None
    if recording:
        recorded = jnp.zeros((0,), jnp.int32)
        if module.has_variable(IDS_COLLECTION, _NAME):
            recorded = module.get_variable(IDS_COLLECTION, _NAME)
    start = 0 if recorded is None else recorded.shape[0]  # ids looked up before, this apply
    probe = None
    if module.has_variable(PROBE_COLLECTION, _NAME):
        probes = module.get_variable(PROBE_COLLECTION, _NAME)
        if probes.shape[0] >= start + n:
            if recorded is None and probes.shape[0] != n:
                raise ValueError(
                    f"the row_probes hold {probes.shape[0]} rows but this lookup has {n} ids: "
                    "the table is looked up several times, so make 'row_ids' mutable in apply "
                    "(each lookup's slice of the probe starts after the ids recorded before it)"
                )
            probe = probes[start : start + n].reshape(jnp.shape(inputs) + (module.features,))
        elif module.is_mutable_collection(PROBE_COLLECTION):  # row_probes' sizing pass
            zeros = jnp.zeros((n, module.features), table.dtype)
            module.put_variable(PROBE_COLLECTION, _NAME, jnp.concatenate([probes, zeros]))
        else:
            raise ValueError(
                f"the row_probes hold {probes.shape[0]} rows but the sparse lookups of this "
                f"apply need at least {start + n}: make them with jaxembed.linen.row_probes for "
                "these inputs, and do not pass an earlier 'row_ids' collection in"
            )
    elif not initializing and module.is_mutable_collection(PROBE_COLLECTION):
        # row_probes' sizing pass: one zero row per looked-up id
        module.put_variable(PROBE_COLLECTION, _NAME, jnp.zeros((n, module.features), table.dtype))
    rows, new_table = S.probed_embed_and_renorm(
        inputs,
        table,
        probe,
        padding_idx=module._padding_idx,
        max_norm=module.max_norm,
        norm_type=module.norm_type,
        vocab_axes=vocab_axes,
        out_sharding=out_sharding,
    )
    if recorded is not None:  # recording
        ids = S.row_ids(inputs, module.num_embeddings, module._padding_idx)
        if start:  # the first lookup's ids as they are (concatenate refuses mixed shardings)
            ids = jnp.concatenate([recorded.astype(ids.dtype), ids])
        module.put_variable(IDS_COLLECTION, _NAME, ids)
    if (
        module.max_norm is not None
        and not initializing
        and module.is_mutable_collection(SPARSE_COLLECTION)
    ):
        module.table.value = new_table  # torch's in-place renorm
    return rows  # in the table's dtype; the module promotes them to its dtype


def row_probes(module, variables, *args, method=None, **kwargs):
    """Zero probes for every sparse lookup of ``module.apply(variables, *args, **kwargs)``: per
    table, one ``(n, features)`` array, ``n`` the number of ids of all its lookups together.

    Traced abstractly (``jax.eval_shape``: no computation, no state change). Pass the result as
    ``variables["row_probes"]``, make ``"row_ids"`` mutable, and differentiate w.r.t. the probes.
    """
    scratch = (PROBE_COLLECTION, IDS_COLLECTION)
    variables = {k: v for k, v in variables.items() if k not in scratch}

    def sizes(variables):
        _, state = module.apply(variables, *args, method=method, mutable=True, **kwargs)
        return state.get(PROBE_COLLECTION, {})

    shapes = jax.eval_shape(sizes, variables)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def row_gradients(ids, probe_grads, tables):
    """The tree of ``SparseRows`` (torch's sparse gradients) from the ``"row_ids"`` collection,
    the gradient w.r.t. the ``"row_probes"`` collection and the ``"sparse_params"`` tables."""
    return jax.tree.map(lambda i, g, t: S.rows_from_ids(i, g, t.shape[0]), ids, probe_grads, tables)
