"""``jaxembed.linen.Embed``: torch's ``nn.Embedding`` as a ``flax.linen`` module.

A thin holder of the table; every rule is in ``functional.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import errors
from flax import linen as nn
from flax.linen import dtypes as linen_dtypes

from jaxembed._src.core import dtypes, initializers, sharding, validation
from jaxembed._src.core import functional as F
from jaxembed._src.linen import sparse as sparse_linen

#: The collection that holds a frozen (non-trainable) table.
FROZEN_COLLECTION = "frozen"


def init_key(module: nn.Module) -> jax.Array:
    """The key for ``module.embedding_init``: the ``"params"`` RNG, as flax's ``self.param``
    (``InvalidRngError`` without it, never a fixed key), except for a pretrained table, which
    needs none."""
    if initializers.is_pretrained(module.embedding_init) and not module.has_rng("params"):
        return jax.random.key(0)  # unused by Pretrained
    return module.make_rng("params")


class Embed(nn.Module):
    """torch's ``nn.Embedding`` with flax ``linen.Embed``'s attributes and dtypes.

    A drop-in for ``flax.linen.Embed``: its attributes come first, in flax's order (so positional
    arguments mean what they mean in flax), with flax's meaning: ``dtype`` None keeps the table's
    dtype for the rows and promotes ``attend``'s operands to their common dtype; ``promote_dtype``
    is flax's Linen (variadic) promotion function, called on the gathered rows as
    ``promote_dtype(rows, dtype=dtype, inexact=False)`` and in ``attend`` as
    ``promote_dtype(query, embedding, dtype=dtype)``; a stored table whose shape is not
    ``(num_embeddings, features)`` raises flax's ``ScopeParamShapeError``. torch's options follow,
    keyword-only. Options are those of ``jaxembed.Embed``; see its docstring. The default init is
    torch's N(0, 1); flax's is ``jaxembed.flax_embed_init``.

    The table is the variable ``embedding`` in ``params`` (or in ``"frozen"`` when ``freeze``).
    ``jaxembed.linen.TrainState`` carries both collections and max_norm's write-back.

    max_norm and persistence: torch renorms the stored weight in place on every forward. Here the
    forward always returns the renormed rows, and the renormed table is written back when the
    table's collection is mutable in ``apply`` (``mutable=["params"]``, or ``["frozen"]`` for a
    frozen table): take it from the returned variables, as with ``batch_stats``. When the
    collection is not mutable nothing is stored, so the next call renorms again from the stale
    table; the outputs match torch, the stored table does not. ``init`` never writes the renorm
    (torch's constructor does not renorm).

    Sharding: wrap ``embedding_init`` with ``nn.with_partitioning(init, ("model", None))`` (or
    ``nn.with_logical_partitioning``), as for any linen parameter; a table whose rows are split
    is looked up vocab-parallel (see ``jaxembed._src.core.sharding``).

    ``sparse=True`` (torch's row-sparse gradient): the table lives in ``"sparse_params"`` and is
    trained by a ``jaxembed.sparse`` optimizer from the rows' gradients (probes in
    ``"row_probes"``, ids in ``"row_ids"``; docs/guides/sparse.md). With max_norm the renorm
    is stored when ``"sparse_params"`` is mutable. ``scale_grad_by_freq`` with ``sparse`` raises
    torch's RuntimeError at construction (torch raises at backward).
    """

    # flax.linen.Embed's attributes, in its order.
    num_embeddings: int
    features: int
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Callable = initializers.default_embed_init
    promote_dtype: Callable = linen_dtypes.promote_dtype
    # torch's options, keyword-only.
    _: dataclasses.KW_ONLY
    padding_idx: int | None = None
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    freeze: bool = False
    sparse: bool = False

    def __post_init__(self):
        # Validate at construction, like torch's constructor.
        validation.check_sizes(self.num_embeddings, self.features)
        validation.normalize_padding_idx(self.padding_idx, self.num_embeddings)
        if self.sparse:
            validation.check_sparse(self.scale_grad_by_freq)
        super().__post_init__()

    @property
    def _padding_idx(self) -> int | None:
        return validation.normalize_padding_idx(self.padding_idx, self.num_embeddings)

    @property
    def _collection(self) -> str:
        if self.freeze:
            return FROZEN_COLLECTION
        return sparse_linen.SPARSE_COLLECTION if self.sparse else "params"

    def setup(self):
        def init():
            table = initializers.init_table(
                init_key(self),
                self.num_embeddings,
                self.features,
                self.param_dtype,
                self.embedding_init,
                self._padding_idx,
            )
            return sharding.place_partitioned(table)

        self.table = self.variable(self._collection, "embedding", init)
        shape = jnp.shape(self.table.value)
        if shape != (self.num_embeddings, self.features):  # as flax's self.param
            assert self.scope is not None  # setup runs on a bound module only
            raise errors.ScopeParamShapeError(
                "embedding", self.scope.path_text, shape, (self.num_embeddings, self.features)
            )

    @property
    def _promote(self) -> Callable:
        return dtypes.from_variadic(self.promote_dtype)

    @classmethod
    def from_pretrained(
        cls,
        embeddings,
        freeze: bool = True,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        dtype: Any = None,
        partitioning=None,
        **kwargs,
    ) -> Embed:
        """A module whose ``init`` returns ``embeddings`` as its table (padding row not zeroed).

        ``freeze=True`` (torch's default) puts the table in the ``"frozen"`` collection, so
        optax, which updates ``params`` only, never changes it::

            module = Embed.from_pretrained(weights)
            variables = module.init(jax.random.key(0), ids)   # {"frozen": {"embedding": ...}}
            out = module.apply(variables, ids)

        ``partitioning``: the table's mesh axes, e.g. ``("model", None)``
        (``nn.with_partitioning``).
        """
        pretrained = initializers.pretrained_kwargs(embeddings, freeze)
        if partitioning is not None:
            pretrained["embedding_init"] = nn.with_partitioning(
                pretrained["embedding_init"], partitioning
            )
        return cls(
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            dtype=dtype,
            **pretrained,
            **kwargs,
        )

    @property
    def embedding(self) -> jax.Array:
        return self.table.value

    def _table_spec(self):
        """The PartitionSpec declared by ``nn.with_partitioning`` on the table, if any."""
        assert self.scope is not None  # called from __call__: a bound module
        return sharding.partitioned_spec(self.scope.get_variable(self._collection, "embedding"))

    def __call__(self, inputs, out_sharding=None) -> jax.Array:
        """Looks up ``inputs`` (any integer shape) -> ``inputs.shape + (features,)``.

        ``out_sharding`` (a PartitionSpec, as flax's ``nnx.Embed``) lays the rows out on the
        context mesh; a row-sharded table is looked up vocab-parallel (one all-reduce).
        """
        if self.sparse and not self.freeze:
            rows = sparse_linen.lookup(self, inputs, out_sharding)
            return dtypes.promote_rows(rows, self.dtype, self._promote)
        table = self.table.value
        rules: dict[str, Any] = dict(
            padding_idx=self._padding_idx,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            scale_grad_by_freq=self.scale_grad_by_freq,
        )
        vocab_axes = sharding.vocab_parallel_axes(table, self._table_spec(), out_sharding)
        if vocab_axes is None:
            rows, table = F.embed_and_renorm(inputs, table, **rules)
        else:  # a row-sharded table, or a layout asked for: one all-reduce
            rows, table = sharding.vocab_parallel_embed_and_renorm(
                inputs, table, vocab_axis=vocab_axes, out_sharding=out_sharding, **rules
            )
        if (
            self.max_norm is not None
            and not self.is_initializing()
            and self.is_mutable_collection(self._collection)
        ):
            self.table.value = table  # torch's in-place renorm
        return dtypes.promote_rows(rows, self.dtype, self._promote)

    def attend(self, query, out_sharding=None) -> jax.Array:
        """Tied logits ``query @ embedding.T``, promoted as flax's Linen ``Embed.attend`` (with
        ``dtype`` None, a float32 query and a bfloat16 table give float32 logits, as in flax); a
        row-sharded table gives vocab-sharded logits without communication. ``out_sharding``:
        their layout."""
        validation.check_attend_not_sparse(self.sparse, self.freeze)
        logits = F.attend(query, self.table.value, self.dtype, self._promote)
        return sharding.constrain(logits, out_sharding)
