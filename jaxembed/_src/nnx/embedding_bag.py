"""``jaxembed.EmbeddingBag``: torch's ``nn.EmbeddingBag`` as a ``flax.nnx`` module.

A thin holder of the table; every rule is in ``embedding_bag.py`` and ``functional.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax.numpy as jnp
from flax import nnx

from jaxembed._src.core import initializers, sharding, validation
from jaxembed._src.core.embedding_bag import embedding_bag_and_renorm
from jaxembed._src.nnx.embed import FrozenParam


class EmbeddingBag(nnx.Module):
    """torch's ``nn.EmbeddingBag``: the sum, mean or max of each bag of embedding rows.

    Args:
      num_embeddings: number of rows (torch's ``num_embeddings``).
      features: row width (torch's ``embedding_dim``).
      mode: ``"sum"``, ``"mean"`` (default, as torch) or ``"max"``.
      padding_idx: this row is zeroed at init; positions holding it are left out of every bag
        and get no gradient. Negative values count from the end.
      max_norm, norm_type: renorm the referenced rows inside the forward and write them back
        into ``.embedding`` (torch renorms its weight in place); ``nnx.jit`` propagates the
        update. The gradient is not multiplied by the renorm scale.
      scale_grad_by_freq: divide each position's gradient by its id's count in the input
        (torch's documented rule; torch 2.13's CPU EmbeddingBag miscounts, pytorch#190063).
      include_last_offset: ``offsets`` carries the end of the last bag (torch's option).
      dtype: output dtype (None keeps the table's).
      param_dtype: the table's dtype.
      embedding_init: ``(key, shape, dtype) -> table``; default N(0, 1) as torch.
      freeze: store the table as a :class:`FrozenParam` (not trainable).
      rngs: ``nnx.Rngs`` for the init.
      embedding_metadata: metadata for the table's variable, as ``jaxembed.Embed``'s; e.g.
        ``{"out_sharding": ("model", None)}`` splits the rows over the mesh axis ``"model"``:
        each device then reduces its own rows' part of every bag and one all-reduce (sum,
        mean) or max-reduce (max) assembles the bags (``jaxembed.sharding.
        vocab_parallel_embedding_bag``).

    Calling: ``bag(input, offsets=None, per_sample_weights=None)`` as torch's ``forward``; see
    ``jaxembed.functional.embedding_bag`` for the semantics, the errors and the jit policy.

    Deliberate differences from torch: ``mode`` (and max with ``scale_grad_by_freq``) is checked
    in the constructor, not at the first call; no ``sparse`` option; ``from_pretrained`` copies
    the array.
    """

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        mode: str = "mean",
        padding_idx: int | None = None,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        include_last_offset: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        embedding_init: Callable = initializers.default_embed_init,
        freeze: bool = False,
        rngs: nnx.Rngs,
        embedding_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        validation.check_bag_mode(mode, scale_grad_by_freq)
        self.num_embeddings = num_embeddings
        self.features = features
        self.mode = mode
        self.padding_idx = validation.normalize_bag_padding_idx(
            padding_idx, num_embeddings, module=True
        )
        self.max_norm = max_norm
        self.norm_type = norm_type
        self.scale_grad_by_freq = scale_grad_by_freq
        self.include_last_offset = include_last_offset
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.freeze = freeze
        table = initializers.init_table(
            rngs.params(), num_embeddings, features, param_dtype, embedding_init, self.padding_idx
        )
        variable = FrozenParam if freeze else nnx.Param
        self.embedding = variable(table, **embedding_metadata)

    @classmethod
    def from_pretrained(
        cls,
        embeddings,
        freeze: bool = True,
        max_norm: float | None = None,
        norm_type: float = 2.0,
        scale_grad_by_freq: bool = False,
        mode: str = "mean",
        include_last_offset: bool = False,
        padding_idx: int | None = None,
        dtype: Any = None,
    ) -> EmbeddingBag:
        """torch's ``nn.EmbeddingBag.from_pretrained`` (same argument order, without ``sparse``).

        ``freeze=True`` (torch's default) stores the table as a :class:`FrozenParam`. The padding
        row is NOT zeroed (torch).
        """
        kwargs = initializers.pretrained_kwargs(embeddings, freeze)
        return cls(
            kwargs.pop("num_embeddings"),
            kwargs.pop("features"),
            mode=mode,
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            include_last_offset=include_last_offset,
            dtype=dtype,
            rngs=nnx.Rngs(0),  # unused by Pretrained
            **kwargs,
        )

    def __call__(self, inputs, offsets=None, per_sample_weights=None, out_sharding=None):
        """``(B, L)`` ids, or ``(N,)`` ids and ``offsets`` -> ``(B, features)``.

        ``out_sharding``: the layout of the bags on the context mesh (a row-sharded table is
        reduced vocab-parallel)."""
        table = self.embedding.get_value()
        spec = nnx.spmd.get_var_pspec(self.embedding)
        vocab_axes = sharding.vocab_parallel_axes(table, spec, out_sharding)
        bag = embedding_bag_and_renorm
        if vocab_axes is not None:
            bag = functools.partial(
                sharding.vocab_parallel_embedding_bag_and_renorm,
                vocab_axis=vocab_axes,
                out_sharding=out_sharding,
            )
        out, table = bag(
            inputs,
            table,
            offsets,
            max_norm=self.max_norm,
            norm_type=self.norm_type,
            scale_grad_by_freq=self.scale_grad_by_freq,
            mode=self.mode,
            per_sample_weights=per_sample_weights,
            include_last_offset=self.include_last_offset,
            padding_idx=self.padding_idx,
        )
        if self.max_norm is not None:
            self.embedding.set_value(table)  # torch's in-place renorm
        return out if self.dtype is None else out.astype(self.dtype)
