"""``jaxembed.linen.Embed(sparse=True)``: collections and helpers for the Linen training step.

The table lives in ``"sparse_params"`` (not ``"params"``, so ``jax.grad`` over the params and
optax never see it). A lookup takes its probe (zeros shaped like its rows, see
``jaxembed._src.core.sparse.attach_probe``) from ``"row_probes"`` and, when ``"row_ids"`` is mutable,
records its ids there. Every collection names the variable ``"embedding"``, so the probes, the
ids and the row gradients are trees shaped like ``variables["sparse_params"]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxembed._src.core import sparse as S

SPARSE_COLLECTION = "sparse_params"
PROBE_COLLECTION = "row_probes"
IDS_COLLECTION = "row_ids"
_NAME = "embedding"


def lookup(module, inputs) -> jax.Array:
    """The sparse lookup of ``jaxembed.linen.Embed``."""
    table = module.table.value
    shape = jnp.shape(inputs) + (module.features,)
    initializing = module.is_initializing()
    probe = None
    if module.has_variable(PROBE_COLLECTION, _NAME):
        probe = module.get_variable(PROBE_COLLECTION, _NAME)
        if probe.shape != shape and module.is_mutable_collection(PROBE_COLLECTION):
            probe = None
    if probe is None and not initializing and module.is_mutable_collection(PROBE_COLLECTION):
        probe = jnp.zeros(shape, table.dtype)  # row_probes' sizing pass
        module.put_variable(PROBE_COLLECTION, _NAME, probe)
    rows, new_table = S.probed_embed_and_renorm(
        inputs,
        table,
        probe,
        padding_idx=module._padding_idx,
        max_norm=module.max_norm,
        norm_type=module.norm_type,
    )
    if not initializing and module.is_mutable_collection(IDS_COLLECTION):
        ids = S.row_ids(inputs, module.num_embeddings, module._padding_idx)
        module.put_variable(IDS_COLLECTION, _NAME, ids)
    if (
        module.max_norm is not None
        and not initializing
        and module.is_mutable_collection(SPARSE_COLLECTION)
    ):
        module.table.value = new_table  # torch's in-place renorm
    return rows  # in the table's dtype; the module promotes them to its dtype


def row_probes(module, variables, *args, method=None, **kwargs):
    """Zero probes for every sparse lookup of ``module.apply(variables, *args, **kwargs)``.

    Traced abstractly (``jax.eval_shape``: no computation, no state change). Pass the result as
    ``variables["row_probes"]`` and differentiate w.r.t. it.
    """

    def sizes(variables):
        _, state = module.apply(variables, *args, method=method, mutable=True, **kwargs)
        return state.get(PROBE_COLLECTION, {})

    shapes = jax.eval_shape(sizes, variables)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def row_gradients(ids, probe_grads, tables):
    """The tree of ``SparseRows`` (torch's sparse gradients) from the ``"row_ids"`` collection,
    the gradient w.r.t. the ``"row_probes"`` collection and the ``"sparse_params"`` tables."""
    return jax.tree.map(
        lambda i, g, t: S.rows_from_ids(i, g, t.shape[0]), ids, probe_grads, tables
    )
