"""``jaxembed.Embed``: torch's ``nn.Embedding`` as a ``flax.nnx`` module.

A thin holder of the table; every rule is in ``functional.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxembed._src.core import dtypes, initializers, sharding, validation
from jaxembed._src.core import functional as F
from jaxembed._src.nnx import sparse as sparse_nnx


class FrozenParam(nnx.Variable):
    """A table that is state but not a trainable parameter (torch's ``requires_grad=False``).

    ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` and ``nnx.grad`` (which differentiate
    ``nnx.Param``) never see it, so no optax transformation, weight decay included, changes it.
    """


class Embed(nnx.Module):
    """torch's ``nn.Embedding`` with flax ``nnx.Embed``'s constructor, attributes and dtypes.

    A drop-in for ``flax.nnx.Embed``: every flax keyword has flax's meaning, and
    ``.num_embeddings``, ``.features``, ``.dtype``, ``.param_dtype``, ``.promote_dtype`` and
    ``.embedding`` are as flax sets them. What changes is torch's rules: the default init,
    out-of-range ids, and the options flax lacks (docs/migrating-from-flax.md lists each).

    Args:
      num_embeddings: number of rows (torch's ``num_embeddings``).
      features: row width (torch's ``embedding_dim``).
      padding_idx: this row is zeroed at init and positions holding it get zero gradient; the
        forward still returns the row's value. Negative values count from the end.
      max_norm: renorm, inside the forward, the referenced rows whose ``norm_type``-norm exceeds
        it, and write them back into ``.embedding`` (torch renorms its weight in place). Inside
        ``nnx.jit`` the write-back is a state update that ``nnx.jit`` propagates. The gradient is
        not multiplied by the renorm scale (torch).
      norm_type: the p of that norm.
      scale_grad_by_freq: divide each position's gradient by its id's count in the input.
      dtype: the rows' and ``attend``'s dtype, as flax; None -> the table's dtype, and
        ``.dtype`` then holds it (flax). The gathered rows are promoted, not the whole table
        (flax casts the table): the values are flax's, torch's rules run in ``param_dtype``.
      param_dtype: the table's dtype.
      embedding_init: ``(key, shape, dtype) -> table``. Default N(0, 1) as torch; flax's default
        (variance scaling, std ``1/sqrt(features)``) is ``jaxembed.flax_embed_init``.
      promote_dtype: flax's promotion function, called as flax calls it:
        ``promote_dtype((rows,), dtype=self.dtype, inexact=False)`` on the gathered rows and
        ``promote_dtype((query, embedding), dtype=self.dtype)`` in ``attend``. Default flax's
        ``flax.nnx.nn.dtypes.promote_dtype``.
      freeze: store the table as a :class:`FrozenParam` (not trainable) instead of ``nnx.Param``.
      sparse: torch's ``sparse=True``: the table is a ``jaxembed.sparse.SparseParam`` trained
        from row-sparse gradients (``jaxembed.sparse.value_and_grad`` and
        ``jaxembed.sparse.Optimizer``; docs/guides/sparse.md). With ``scale_grad_by_freq``
        this raises torch's RuntimeError here (torch raises at backward). A row-sharded sparse
        table (``embedding_metadata``) is updated row-sharded, each device its own rows.
      rngs: ``nnx.Rngs`` for the init.
      embedding_metadata: metadata for the table's variable, as flax's ``nnx.Embed``; e.g.
        ``{"out_sharding": ("model", None)}`` shards the rows over the mesh axis ``"model"``
        (vocab-parallel: see ``jaxembed._src.core.sharding``).

    Deliberate differences from torch: ``from_pretrained`` copies the array (torch shares the
    caller's storage, so its renorm and optimizer steps mutate the caller's tensor); out-of-range
    ids under ``jit`` give NaN rows instead of raising (see ``jaxembed.functional.embedding``).
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Callable = initializers.default_embed_init,
        promote_dtype: Callable = dtypes.promote_dtype,
        freeze: bool = False,
        sparse: bool = False,
        rngs: nnx.Rngs,
        embedding_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        if sparse:
            validation.check_sparse(scale_grad_by_freq)
        self.num_embeddings = num_embeddings
        self.features = features
        self.padding_idx = validation.normalize_padding_idx(padding_idx, num_embeddings)
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.param_dtype = param_dtype
        self.promote_dtype = promote_dtype
        self.freeze = freeze
        self.sparse = sparse
        table = initializers.init_table(
            rngs.params(), num_embeddings, features, param_dtype, embedding_init, self.padding_idx
        )
        if sparse and not freeze:
            sparse_nnx.init_sparse_table(self, table, embedding_metadata)
        else:
            variable = FrozenParam if freeze else nnx.Param
            self.embedding = variable(table, **embedding_metadata)
        # flax: ``dtype or self.embedding.dtype``: None resolves to the table's dtype.
        self.dtype = self.embedding.dtype if dtype is None else dtype

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
        embedding_metadata: Mapping[str, Any] = MappingProxyType({}),
        sparse: bool = False,
        promote_dtype: Callable = dtypes.promote_dtype,
    ) -> Embed:
        """torch's ``nn.Embedding.from_pretrained``: a module holding ``embeddings``.

        ``freeze=True`` (the default, as torch) stores it as a :class:`FrozenParam`. The padding
        row is NOT zeroed (torch). ``embeddings`` must be 2-D (torch's AssertionError).
        """
        return cls(
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            dtype=dtype,
            promote_dtype=promote_dtype,
            **initializers.pretrained_kwargs(embeddings, freeze),
            sparse=sparse,
            rngs=nnx.Rngs(0),  # unused by Pretrained
            embedding_metadata=embedding_metadata,
        )

    def __call__(self, inputs, out_sharding=None) -> jax.Array:
        """Looks up ``inputs`` (any integer shape) -> ``inputs.shape + (features,)``.

        ``out_sharding`` (a PartitionSpec, as flax's ``nnx.Embed``) lays the rows out on the
        context mesh; a row-sharded table is looked up vocab-parallel (one all-reduce).
        """
        if self.sparse and not self.freeze:
            rows = sparse_nnx.lookup(self, inputs, out_sharding)
            return dtypes.promote_rows(rows, self.dtype, self.promote_dtype)
        table = self.embedding.get_value()
        rules: dict[str, Any] = dict(
            padding_idx=self.padding_idx,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            scale_grad_by_freq=self.scale_grad_by_freq,
        )
        spec = nnx.spmd.get_var_pspec(self.embedding)
        vocab_axes = sharding.vocab_parallel_axes(table, spec, out_sharding)
        if vocab_axes is None:
            rows, table = F.embed_and_renorm(inputs, table, **rules)
        else:  # a row-sharded table, or a layout asked for: one all-reduce
            rows, table = sharding.vocab_parallel_embed_and_renorm(
                inputs, table, vocab_axis=vocab_axes, out_sharding=out_sharding, **rules
            )
        if self.max_norm is not None:
            self.embedding.set_value(table)  # torch's in-place renorm
        return dtypes.promote_rows(rows, self.dtype, self.promote_dtype)

    def attend(self, query, out_sharding=None) -> jax.Array:
        """Tied logits ``query @ embedding.T`` in ``.dtype``, as flax's ``Embed.attend`` (a
        bfloat16 table gives bfloat16 logits); a row-sharded table gives vocab-sharded logits
        without communication. ``out_sharding``: their layout."""
        validation.check_attend_not_sparse(self.sparse, self.freeze)
        logits = F.attend(query, self.embedding.get_value(), self.dtype, self.promote_dtype)
        return sharding.constrain(logits, out_sharding)
