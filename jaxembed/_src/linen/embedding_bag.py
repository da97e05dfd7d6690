"""``jaxembed.linen.EmbeddingBag``: torch's ``nn.EmbeddingBag`` as a ``flax.linen`` module.

A thin holder of the table; every rule is in ``embedding_bag.py`` and ``functional.py``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxembed._src.core import initializers, sharding, validation
from jaxembed._src.core.embedding_bag import embedding_bag_and_renorm
from jaxembed._src.linen.embed import FROZEN_COLLECTION, init_key


class EmbeddingBag(nn.Module):
    """torch's ``nn.EmbeddingBag`` with flax ``linen``'s conventions.

    The table is the variable ``embedding`` in ``params`` (or in ``"frozen"`` when ``freeze``).
    Options are those of ``jaxembed.EmbeddingBag``; see its docstring. ``max_norm`` persistence
    is that of ``jaxembed.linen.Embed``: the renormed table is written back only when its
    collection is mutable in ``apply`` (``mutable=["params"]``, or ``["frozen"]``).

    Sharding: as ``jaxembed.linen.Embed`` (``nn.with_partitioning`` on ``embedding_init``); a
    table whose rows are split is reduced vocab-parallel (per-device partial bags, one
    all-reduce or max-reduce).
    """

    num_embeddings: int
    features: int
    mode: str = "mean"
    padding_idx: int | None = None
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    include_last_offset: bool = False
    dtype: Any = None
    param_dtype: Any = jnp.float32
    embedding_init: Callable = initializers.default_embed_init
    freeze: bool = False

    def __post_init__(self):
        # Validate at construction (torch checks padding_idx there; mode at the first call).
        validation.check_sizes(self.num_embeddings, self.features)
        validation.check_bag_mode(self.mode, self.scale_grad_by_freq)
        self._normalized_padding_idx()
        super().__post_init__()

    def _normalized_padding_idx(self) -> int | None:
        return validation.normalize_bag_padding_idx(
            self.padding_idx, self.num_embeddings, module=True
        )

    @property
    def _collection(self) -> str:
        return FROZEN_COLLECTION if self.freeze else "params"

    def setup(self):
        def init():
            table = initializers.init_table(
                init_key(self),
                self.num_embeddings,
                self.features,
                self.param_dtype,
                self.embedding_init,
                self._normalized_padding_idx(),
            )
            return sharding.place_partitioned(table)

        self.table = self.variable(self._collection, "embedding", init)

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
        **kwargs,
    ) -> EmbeddingBag:
        """A module whose ``init`` returns ``embeddings`` as its table (padding row not zeroed);
        torch's argument order, without ``sparse``. ``freeze=True`` puts the table in
        ``"frozen"``."""
        return cls(
            mode=mode,
            padding_idx=padding_idx,
            max_norm=max_norm,
            norm_type=norm_type,
            scale_grad_by_freq=scale_grad_by_freq,
            include_last_offset=include_last_offset,
            dtype=dtype,
            **initializers.pretrained_kwargs(embeddings, freeze),
            **kwargs,
        )

    @property
    def embedding(self) -> jax.Array:
        return self.table.value

    def __call__(self, inputs, offsets=None, per_sample_weights=None, out_sharding=None):
        """``(B, L)`` ids, or ``(N,)`` ids and ``offsets`` -> ``(B, features)``; ``out_sharding``
        as ``jaxembed.linen.Embed``'s."""
        table = self.table.value
        assert self.scope is not None  # __call__ runs on a bound module only
        spec = sharding.partitioned_spec(self.scope.get_variable(self._collection, "embedding"))
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
            padding_idx=self._normalized_padding_idx(),
        )
        if (
            self.max_norm is not None
            and not self.is_initializing()
            and self.is_mutable_collection(self._collection)
        ):
            self.table.value = table  # torch's in-place renorm
        return out if self.dtype is None else out.astype(self.dtype)
